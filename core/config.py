"""Configuration with pydantic-settings.

Highest first: the ``config`` argument and keyword arguments, ``WEAVER_*`` environment variables
(``__`` nests: ``WEAVER_LLM__MODEL``), a ``.env`` file, ``taskweaver_config.json`` in the app dir
(TaskWeaver's flat dotted keys such as ``"llm.api_key"``), then defaults.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.compat.config_keys import OWN_MODEL_ROLES, as_list, translate
from core.errors import ConfigError
from core.roles.prompts.templates import load_templates
from core.roles.verification import DEFAULT_ALLOWED_MODULES, DEFAULT_BLOCKED_FUNCTIONS

CONFIG_FILE_NAME = "taskweaver_config.json"
# The API types with no default model, and an example for the message that asks for one.
MODEL_REQUIRED = {"anthropic": "claude-sonnet-4-5", "google_genai": "gemini-2.5-flash"}


class MockSettings(BaseModel):
    """TaskWeaver's ``llm.mock.*``: how ``llm.use_mock`` records and replays model calls (core/llm/mock.py)."""

    mode: Literal["playback_or_record", "record_only", "playback_only"] = Field(
        "playback_or_record",
        description="playback_or_record: replay, else call and record; record_only: call and record; "
        "playback_only: replay, never call a model",
    )
    cache_path: Path | None = Field(
        None, description="folder of the recorded calls, one JSON file each; default <app_dir>/cache/llm"
    )
    playback_delay: float = Field(-1.0, description="seconds before each replayed chunk; negative: no wait")

    @field_validator("cache_path", mode="after")
    @classmethod
    def _a_folder(cls, value: Path | None) -> Path | None:
        """TaskWeaver's cache is one file (``cache/mock.yaml``); Weaver's is a folder: that name
        without its suffix."""
        if value is not None and value.suffix.lower() in (".yaml", ".yml", ".json"):
            return value.with_suffix("")
        return value


class LLMSettings(BaseModel):
    api_type: (
        Literal[
            "offline", "openai", "azure", "azure_ad", "ollama", "groq", "qwen", "zhipuai", "anthropic", "google_genai"
        ]
        | None
    ) = Field(None, description="None picks openai when an api_key or api_base is set, else offline")
    api_base: str | None = None
    api_key: SecretStr | None = None
    model: str = "gpt-4o-mini"
    api_version: str = "2024-06-01"
    azure_deployment: str | None = None
    timeout: float = Field(60.0, gt=0, description="seconds to wait for the next bytes of an answer")
    connect_timeout: float = Field(10.0, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_backoff: float = Field(0.5, ge=0, description="first backoff in seconds, doubled per retry")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0, description="TaskWeaver's llm.max_output_tokens is the same key")
    # Sampling (core/llm/sampling.py): unset keys are not sent; a provider that lacks one warns once.
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, gt=0)
    seed: int | None = None
    stop_token: list[str] | None = Field(None, description="sequences that end the answer (a string is one)")
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: Literal["json_object", "text"] = Field(
        "json_object", description="null (TaskWeaver's setting for older models) means text"
    )
    models: list[dict[str, Any]] = Field(
        [], description="named model choices for a chat: each a name plus any llm.* keys it overrides"
    )
    # Azure AD sign-in for api_type azure_ad (core/llm/azure_ad.py); TaskWeaver's aad_* names.
    aad_auth_mode: Literal["default_azure_credential", "aad_app", "device_login"] = Field(
        "default_azure_credential", description="how azure-identity gets the token"
    )
    aad_tenant_id: str | None = Field(None, description="the directory (tenant); aad_app needs it")
    aad_client_id: str | None = Field(None, description="the app registration (aad_app), or a user-assigned identity")
    aad_client_secret: SecretStr | None = Field(None, description="the app registration's secret (aad_app)")
    aad_api_resource: str = "https://cognitiveservices.azure.com"
    aad_api_scope: str = ".default"
    aad_skip_interactive: bool = Field(True, description="device_login: never open a browser, print a code")
    aad_authority_host: str | None = Field(
        None, description="sign-in host (https), e.g. a sovereign cloud's; default azure-identity's"
    )
    # Embeddings (core/llm/embeddings.py): TaskWeaver's embedding_api_type / embedding_model.
    embedding_api_type: Literal[
        "offline", "openai", "azure", "azure_ad", "ollama", "qwen", "zhipuai", "glm", "sentence_transformers"
    ] = Field("offline", description="offline: feature hashing, no model; sentence_transformers reads as offline")
    embedding_model: str | None = Field(None, description="default per type (core/llm/embeddings.py)")
    embedding_api_base: str | None = Field(None, description="default: llm.api_base if the chat uses the same type")
    embedding_api_key: SecretStr | None = Field(None, description="default: llm.api_key if the same type")
    embedding_batch_size: int = Field(64, gt=0, description="texts per embedding request")
    embedding_cache_size: int = Field(10000, ge=0, description="embeddings of distinct texts kept in memory")
    # Record and replay (core/llm/mock.py): TaskWeaver's llm.use_mock and llm.mock.*.
    use_mock: bool = Field(False, description="record the model's answers and replay them (llm.mock.mode)")
    mock: MockSettings = MockSettings()
    # Cost (core/usage.py): no built-in price table; a round's cost is shown only when both are set.
    price_per_1k_prompt_tokens: float | None = Field(None, ge=0, description="your price per 1000 prompt tokens")
    price_per_1k_completion_tokens: float | None = Field(
        None, ge=0, description="your price per 1000 completion tokens"
    )

    @field_validator("stop_token", mode="before")
    @classmethod
    def _one_stop_token(cls, value: Any) -> Any:
        """TaskWeaver accepts one stop sequence as a plain string."""
        return [value] if isinstance(value, str) else value

    @field_validator("response_format", mode="before")
    @classmethod
    def _taskweaver_response_formats(cls, value: Any) -> Any:
        """TaskWeaver's ``json_schema`` asks for JSON, as our ``json_object`` does; its ``null`` asks
        for no format at all, which is our ``text``."""
        if value is None:
            return "text"
        return "json_object" if value == "json_schema" else value

    @model_validator(mode="after")
    def _model_named(self) -> LLMSettings:
        """Anthropic and Gemini have no model Weaver could guess (the default is an OpenAI model)."""
        if self.api_type in MODEL_REQUIRED and ("model" not in self.model_fields_set or not self.model.strip()):
            raise ValueError(f"llm.api_type {self.api_type} needs llm.model, e.g. {MODEL_REQUIRED[self.api_type]!r}")
        return self

    @model_validator(mode="after")
    def _check_models(self) -> LLMSettings:
        """Each named choice must build valid settings, so a bad one stops the app at start."""
        seen = {self.default_model_name}
        for index, entry in enumerate(self.models):
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"llm.models[{index}] needs a non-empty 'name'")
            if name in seen:
                raise ValueError(f"llm.models[{index}]: the name {name!r} is used twice (or is the default model's)")
            seen.add(name)
            if "models" in entry:
                raise ValueError(f"llm.models[{index}] ({name}): a choice cannot hold 'models'")
            try:
                self.for_model(name)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"llm.models[{index}] ({name}): {problems}") from None
        return self

    @property
    def default_model_name(self) -> str:
        """The name of the base llm.* settings among the choices: the model, or "offline"."""
        return "offline" if self.resolved_api_type == "offline" else self.model

    @property
    def model_names(self) -> list[str]:
        """Every choice a chat may pick, the default first."""
        return [self.default_model_name, *(str(entry["name"]) for entry in self.models)]

    def for_model(self, name: str | None) -> LLMSettings:
        """The settings of the named choice (None or the default's name: these settings)."""
        if name is None or name == self.default_model_name:
            return self
        entry = next((e for e in self.models if e.get("name") == name), None)
        if entry is None:
            raise KeyError(f"no model named {name!r} in llm.models (choices: {', '.join(self.model_names)})")
        base = self.model_dump(exclude={"models"})
        overrides = {k: v for k, v in entry.items() if k != "name"}
        if overrides.get("api_type") in MODEL_REQUIRED and overrides["api_type"] != self.api_type:
            base.pop("model")  # another provider's model name: the choice must name its own

        return LLMSettings(**{**base, **overrides})

    @property
    def resolved_api_type(self) -> str:
        """The backend to use; a key or base (ours, or the OpenAI client's OPENAI_API_KEY) means OpenAI."""
        if self.api_type:
            return self.api_type
        return "openai" if (self.api_key or self.api_base or os.environ.get("OPENAI_API_KEY")) else "offline"


class ExecutionSettings(BaseModel):
    timeout: float = Field(120.0, gt=0, description="seconds one code execution may run")
    kernel_start_timeout: float = Field(60.0, gt=0)
    prewarm: bool = Field(
        False, description="start a session's own kernel at its creation, not its first code (if the pool had none)"
    )
    pool_size: int = Field(2, ge=0, description="warm kernels kept started ahead, each handed to one new session")
    pool_refill_quiet_s: float = Field(
        1.0,
        ge=0,
        description="the pool refills only once no session has asked for a kernel for this many seconds "
        "(then several at once): refills never take CPU from a crowd; 0 refills at once",
    )
    max_concurrent_starts: int = Field(
        0, ge=0, description="kernels starting at once (pool refills included); 0 means 4 per core"
    )
    fork_kernels: bool = Field(
        True,
        description="fork sandboxed kernels from one pre-imported process (zygote.py) instead of starting "
        "Python anew: ~5x less CPU per start; each still gets the sandbox bubblewrap built",
    )
    max_output_chars: int = Field(1500, gt=0)
    live_output_s: float = Field(
        0.3, ge=0, description="seconds between two updates of a running cell's printed output (0: only at the end)"
    )
    # Output caps: one user's huge result must not grow the server or every other user's page.
    max_table_rows: int = Field(20, gt=0, description="rows of a table result kept and shown")
    max_table_columns: int = Field(30, gt=0, description="columns of a table result kept and shown")
    max_artifacts: int = Field(20, gt=0, description="files of one execution listed to the model and shown")
    # The kernel's sandbox and limits (core/execution/sandbox.py, limits.py); 0 turns a limit off.
    sandbox: Literal["auto", "bwrap", "none"] = Field(
        "auto", description="auto: bubblewrap when it works, else unsandboxed with a warning"
    )
    allow_unsandboxed: bool = Field(False, description="serve logins / non-loopback addresses without a sandbox")
    network: bool = Field(False, description="let user code open network connections")
    memory_mb: int = Field(2048, ge=0, description="memory of a kernel and everything it starts")
    max_processes: int = Field(64, ge=0, description="processes and threads of a kernel and its children")
    disk_mb: int = Field(1024, ge=0, description="size of a session's folder")
    max_file_mb: int = Field(512, ge=0, description="size of any single file the kernel writes")
    max_open_files: int = Field(
        1024, ge=0, description="files and sockets one kernel process holds open at once (its RLIMIT_NOFILE)"
    )
    nice: int = Field(10, ge=0, le=19, description="CPU priority of kernels below the server's")
    data_dir: Path | None = Field(
        None, description="project datasets, read-only in every kernel; default <app_dir>/data"
    )
    # Where kernels run (core/execution/backend.py): a registered backend's name.
    backend: str | None = Field(
        None,
        description="'local' (sandboxed child processes) or 'gateway' (a Jupyter kernel gateway); "
        "unset: 'gateway' when gateway_url is set, else 'local'",
    )
    kernel_uid_range: str = Field(
        "200000-299999",
        description="host uids (and gids) kernels run as, one per live kernel, 'first-last'; '' keeps the "
        "server's own uid (for baselines only)",
    )
    seccomp: bool = Field(True, description="refuse system calls a data kernel never needs (ptrace, mount, ...)")
    # Remote kernels (core/execution/gateway*.py): unset, every kernel is a local child process.
    gateway_url: str | None = Field(
        None,
        description="base URL of a Jupyter kernel gateway (http(s)://host:port); every session's kernel starts there",
    )
    gateway_token: SecretStr | None = Field(
        None, description="the gateway's auth token, sent as 'Authorization: token ...' on every request"
    )
    gateway_validate_cert: bool = Field(True, description="check the gateway's TLS certificate (https only)")
    gateway_ca_file: Path | None = Field(None, description="CA bundle that signed the gateway's certificate")
    gateway_client_cert: Path | None = Field(None, description="client certificate for mutual TLS with the gateway")
    gateway_client_key: Path | None = Field(None, description="private key of gateway_client_cert")
    gateway_kernel_name: str = Field("python3", min_length=1, description="kernelspec the gateway starts")
    gateway_request_timeout: float = Field(
        60.0, gt=0, description="seconds one gateway request may take (a kernel start included)"
    )
    gateway_sync_mb: int = Field(
        256, ge=0, description="bytes moved between the web tier and a remote kernel per execution, each way; 0: no cap"
    )

    @property
    def backend_name(self) -> str:
        """The kernel backend in use: ``backend``, else the one the other keys imply (so configs
        written before ``execution.backend`` existed keep working)."""
        return self.backend or ("gateway" if self.gateway_url else "local")

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        """A name in any case; an empty string means unset."""
        return (value.strip().lower() or None) if value is not None else None

    @field_validator("kernel_uid_range")
    @classmethod
    def _uid_range(cls, value: str) -> str:
        """'' or 'first-last' with 0 < first <= last < 2**32 - 1 (root and the invalid uid never)."""
        value = value.strip()
        if value:
            first, sep, last = value.partition("-")
            if not (sep and first.strip().isdigit() and last.strip().isdigit()):
                raise ValueError("must be 'first-last' (e.g. '200000-299999') or ''")
            if not 0 < int(first) <= int(last) < 2**32 - 1:
                raise ValueError("needs 0 < first <= last < 4294967295")
        return value

    @property
    def kernel_uids(self) -> tuple[int, int] | None:
        """The ``kernel_uid_range`` as (first, last), or None when kernels keep the server's uid."""
        if not self.kernel_uid_range:
            return None
        first, _, last = self.kernel_uid_range.partition("-")
        return int(first), int(last)

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, value: str | None) -> str | None:
        """An http(s) base without a trailing slash; an empty string means local kernels."""
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class SessionSettings(BaseModel):
    """The ``session.*`` keys: limits on sessions, rounds and files."""

    max_internal_chat_round_num: int = Field(10, gt=0)
    max_live_sessions: int = Field(100, gt=0, description="each holds a kernel (~55 MB idle)")
    max_file_mb: float = Field(100.0, gt=0)
    resume_replay: bool = Field(True, description="rebuild a resumed chat's variables by running its code again")
    resume_replay_timeout: float = Field(120.0, gt=0, description="bound on that replay, in seconds")
    snapshot_max_mb: float = Field(
        200.0, ge=0, description="bound on a chat's saved variables (its snapshot); 0: none, resume replays code"
    )
    idle_timeout: float = Field(3600.0, gt=0, description="a chat nobody has used this long stops its kernel")
    max_dataset_prompt_chars: int = Field(2000, ge=0, description="bound on the datasets listed in the prompts")
    max_session_vars: int = Field(100, gt=0, description="session variables a session may hold (plugins' writes)")
    max_session_var_chars: int = Field(4000, gt=0, description="longest value a plugin may write to one")
    experience_dir: Path | None = Field(
        None, description="folder a chat saved as experience goes to (raw rounds and tip); default <app_dir>/experience"
    )
    roles: list[str] = Field(
        ["planner", "code_interpreter"],
        description="the Planner (always there) and the workers: code_interpreter, a shipped role "
        "(echo, code_interpreter_cli_only, code_interpreter_plugin_only, document_retriever, web_search, "
        "web_explorer, image_reader) or a folder of <app_dir>/roles/",
    )

    _roles_list = field_validator("roles", mode="before")(classmethod(lambda cls, v: as_list(v)))


class ExtLLMSettings(BaseModel):
    """TaskWeaver's ``ext_llms.llm_configs``: extra models by name, each a set of ``llm.*`` keys
    over the primary ``llm.*`` settings (as TaskWeaver clones its config and overrides them)."""

    llm_configs: dict[str, dict[str, Any]] = Field(
        {}, description='named models for <role>.llm_alias: each {"llm.model": ..., "llm.api_base": ...}'
    )

    @field_validator("llm_configs", mode="before")
    @classmethod
    def _each_a_dict(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, entry in value.items():
                if not isinstance(entry, dict):
                    raise ValueError(f"{name!r} must be an object of llm.* keys")
        return value


_ALIAS = "the name of an ext_llms.llm_configs entry this role calls (unset: the primary llm.* model)"


_EXAMPLES = "folder of TaskWeaver-format example conversations (*.yaml); default %s"
_USE_EXPERIENCE = "add the saved experience tips relevant to the request to the prompt"
_EXPERIENCE_DIR = "folder of experience tips this role reads (core/experience.py); default <app_dir>/experience"
_EXPERIENCE_SUB_PATH = (
    "read tips from the sub-folder the chat names (session variable experience_sub_path, or a role's "
    "shared_memory_entry of type experience_sub_path); none named: no tips"
)
_SUB_PATH = (
    "read examples from the sub-folder the chat names (session variable example_sub_path, or a role's "
    "shared_memory_entry of type example_sub_path); none named: no examples"
)


_COMPRESSION = (
    "summarise older rounds into a running summary sent instead of them (round_compressor.*; "
    "the summary is kept in the chat's folder)"
)


class PlannerSettings(BaseModel):
    llm_alias: str | None = Field(None, description=_ALIAS)
    use_experience: bool = Field(False, description=_USE_EXPERIENCE)
    experience_dir: Path | None = Field(None, description=_EXPERIENCE_DIR)
    dynamic_experience_sub_path: bool = Field(False, description=_EXPERIENCE_SUB_PATH)
    use_example: bool = Field(True, description="show the example conversations of example_base_path in the prompt")
    example_base_path: Path | None = Field(
        None, description=_EXAMPLES % "<app_dir>/planner_examples, else <app_dir>/examples/planner_examples"
    )
    dynamic_example_sub_path: bool = Field(False, description=_SUB_PATH)
    prompt_compression: bool = Field(False, description=_COMPRESSION)
    prompt_file_path: Path | None = Field(
        None, description="YAML replacing some or all of the Planner's prompts (core/roles/prompts/planner.yaml)"
    )


class CodeInterpreterSettings(BaseModel):
    llm_alias: str | None = Field(None, description=_ALIAS + "; TaskWeaver's code_generator.llm_alias")
    use_experience: bool = Field(False, description=_USE_EXPERIENCE)
    experience_dir: Path | None = Field(None, description=_EXPERIENCE_DIR)
    dynamic_experience_sub_path: bool = Field(False, description=_EXPERIENCE_SUB_PATH)
    max_retry_count: int = Field(3, ge=0)
    use_example: bool = Field(True, description="show the example conversations of example_base_path in the prompt")
    example_base_path: Path | None = Field(
        None,
        description=_EXAMPLES % "<app_dir>/codeinterpreter_examples, else <app_dir>/examples/code_generator_examples",
    )
    dynamic_example_sub_path: bool = Field(False, description=_SUB_PATH)
    prompt_compression: bool = Field(False, description=_COMPRESSION + "; TaskWeaver's code_generator.*")
    # Checked before each execution (core/roles/verification.py): a guard rail, not a sandbox.
    code_verification_on: bool = False
    allowed_modules: list[str] = Field(
        list(DEFAULT_ALLOWED_MODULES), description="top-level modules code may import; [] allows none"
    )
    blocked_functions: list[str] = Field(list(DEFAULT_BLOCKED_FUNCTIONS), description="names code may not use")
    use_local_uri: bool = Field(True, description="artifact_paths hold absolute paths; false: names in the cwd")
    require_confirmation: bool = Field(
        False, description="generated code waits for the user's Run, Edit or Cancel before it runs (core/approval.py)"
    )
    confirmation_timeout: float = Field(
        300.0, gt=0, le=86_400, description="seconds code waits for approval; then it is not run and the round ends"
    )
    # core/plugins/selection.py: TaskWeaver's code_generator.enable_auto_plugin_selection / _topk.
    enable_auto_plugin_selection: bool = Field(
        False, description="offer the model only the plugins relevant to the request (and those it used before)"
    )
    auto_plugin_selection_topk: int = Field(
        3, ge=1, le=1000, description="plugins picked per request when enable_auto_plugin_selection is on"
    )

    _lists = field_validator("allowed_modules", "blocked_functions", mode="before")(
        classmethod(lambda cls, v: as_list(v))
    )
    prompt_file_path: Path | None = Field(
        None, description="YAML replacing some or all of the CodeInterpreter's prompts (code_interpreter.yaml)"
    )


class RoundCompressorSettings(BaseModel):
    """TaskWeaver's ``round_compressor.*`` (core/compression.py): when a role's prompt_compression is
    on and this many rounds are not summarised yet, all but the last ``rounds_to_retain`` are."""

    llm_alias: str | None = Field(None, description=_ALIAS + "; unset: the chat's model")
    rounds_to_compress: int = Field(
        2, ge=1, le=1000, description="rounds summarised at a time (once that many are older than the retained ones)"
    )
    rounds_to_retain: int = Field(
        3, ge=1, le=1000, description="the latest rounds (the current one included) always sent verbatim"
    )


class ExperienceSettings(BaseModel):
    """TaskWeaver's ``experience.*``: the model that distils a saved chat into a tip, and how tips are
    chosen (core/experience.py)."""

    llm_alias: str | None = Field(None, description=_ALIAS)
    retrieve_threshold: float = Field(
        0.2, ge=0, description="a tip is used when its relevance (0-1) to the request is at least this (TaskWeaver's)"
    )
    max_tips: int = Field(3, ge=1, le=100, description="tips added to a role's prompt at most, the most similar first")
    max_chat_chars: int = Field(
        40_000, ge=1000, le=2_000_000, description="characters of a saved chat sent to be summarised (older rounds cut)"
    )
    max_tip_chars: int = Field(4000, ge=100, le=100_000, description="characters of a tip kept (longer: cut)")


class LoggingSettings(BaseModel):
    level: str = "INFO"
    # TaskWeaver's keys: set either, and the app also logs to <app_dir>/<log_folder>/<log_file>.
    log_folder: str | None = None
    log_file: str | None = None


class TracingSettings(BaseModel):
    """TaskWeaver's ``tracing.*``: OpenTelemetry spans over OTLP/HTTP (core/tracing.py)."""

    enabled: bool = Field(False, description="export spans to where the OTEL_EXPORTER_OTLP_* variables say")


class MetricsSettings(BaseModel):
    enabled: bool = Field(True, description="count rounds, model calls and kernel starts for /metrics")


class AppConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WEAVER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    llm: LLMSettings = LLMSettings()
    execution: ExecutionSettings = ExecutionSettings()
    session: SessionSettings = SessionSettings()
    planner: PlannerSettings = PlannerSettings()
    code_interpreter: CodeInterpreterSettings = CodeInterpreterSettings()
    round_compressor: RoundCompressorSettings = RoundCompressorSettings()
    experience: ExperienceSettings = ExperienceSettings()
    ext_llms: ExtLLMSettings = ExtLLMSettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    metrics: MetricsSettings = MetricsSettings()
    plugin_dir: Path | None = None
    # The config sections of roles beyond the two built-in ones (``echo.decorator`` → ``{"echo": {...}}``),
    # read by each role (core/roles/ext.py).
    role_settings: dict[str, dict[str, Any]] = {}

    def llm_alias_of(self, section: str) -> str | None:
        """The ``<section>.llm_alias`` set for a role (``ROLE_MODEL_SECTIONS``), None when unset.
        A shipped role's section (``OWN_MODEL_ROLES``, e.g. ``image_reader``) is in ``role_settings``."""
        if section in OWN_MODEL_ROLES:
            alias = self.role_settings.get(section, {}).get("llm_alias")
            return str(alias) if alias else None
        return getattr(self, section).llm_alias or None

    def llm_for_alias(self, alias: str) -> LLMSettings:
        """The settings of ``ext_llms.llm_configs[alias]``: the primary ``llm.*`` keys with the
        entry's own over them. Raises ``ConfigError`` naming the key for an unknown alias or a bad value."""
        entry = self.ext_llms.llm_configs.get(alias)
        if entry is None:
            known = ", ".join(sorted(self.ext_llms.llm_configs)) or "none are configured"
            raise ConfigError(f"no model named {alias!r} in ext_llms.llm_configs ({known})")
        base = self.llm.model_dump(exclude={"models"})
        api_type = entry.get("llm.api_type") or entry.get("api_type") or self.llm.resolved_api_type
        overrides = _ext_llm_keys(alias, entry, str(api_type))
        try:
            return LLMSettings(**{**base, **overrides})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"ext_llms.llm_configs.{alias}: {problems}") from None


# The config sections whose ``llm_alias`` picks a role's model (TaskWeaver's code_generator is
# Weaver's code_interpreter); round_compressor is the summary call of prompt compression
# (core/compression.py); experience has no role yet, only its model.
ROLE_MODEL_SECTIONS = ("planner", "code_interpreter", "round_compressor", "experience")


def _ext_llm_keys(alias: str, entry: dict[str, Any], api_type: str) -> dict[str, Any]:
    """An ``ext_llms.llm_configs`` entry's keys as ``LLMSettings`` fields: ``llm.model`` or
    ``model``; ``llm.<type>.<key>`` for the entry's own type; ``max_output_tokens`` is ``max_tokens``."""
    fields = LLMSettings.model_fields
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = key.removeprefix("llm.")
        kind, dot, rest = name.partition(".")
        if dot:
            if kind != api_type:
                continue  # another type's section, as TaskWeaver reads only the active type's
            name = rest
        name = "max_tokens" if name == "max_output_tokens" else name
        if name in fields and name != "models":
            out[name] = value
        else:
            logging.getLogger("weaver.config").warning(
                "ext_llms.llm_configs.%s: %s is ignored (not a Weaver llm.* key)", alias, key
            )
    return out


# TaskWeaver types a Session's ``config`` as ``AppSessionConfig``. A Weaver session reads every
# section (its model, kernel limits, prompts, session limits), so it is given the app's whole config;
# the name is kept so the Session constructor matches TaskWeaver's signature.
AppSessionConfig = AppConfig


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"llm.api_key": x}`` → ``{"llm": {"api_key": x}}``; nested dicts pass through."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r} conflicts with a plain value at {part!r}")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return nested


class _JsonFileSource(PydanticBaseSettingsSource):
    """Reads ``taskweaver_config.json`` (flat dotted keys) as the lowest-priority source."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None, notes: list[str] | None = None) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.notes = notes if notes is not None else []

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
            raise ConfigError(f"{self.path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: expected a JSON object of config keys")
        weaver_keys, notes = translate(data, known_keys(), self.path.parent)
        self.notes[:] = notes
        return unflatten(weaver_keys)


def known_keys() -> frozenset[str]:
    """Every flat key Weaver reads: ``llm.model``, ``plugin_dir``..."""
    keys: set[str] = set()
    for name, info in AppConfig.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys.update(f"{name}.{sub}" for sub in section.model_fields)
        else:
            keys.add(name)
    return frozenset(keys)


def load_config(
    app_dir: Path | None = None, overrides: dict[str, Any] | None = None, env_file: Path | None = None
) -> AppConfig:
    """Build the app's config; a bad value raises one ``ConfigError`` naming the key(s).

    TaskWeaver's keys are mapped onto Weaver's (core/compat/config_keys.py); each key Weaver does
    not use is logged once, with the reason."""
    json_path = app_dir / CONFIG_FILE_NAME if app_dir else None
    file_notes: list[str] = []

    class _Config(AppConfig):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, dotenv_settings, _JsonFileSource(settings_cls, json_path, file_notes)

    given, notes = translate(overrides or {}, known_keys(), app_dir)
    kwargs = unflatten(given)
    if env_file is not None:
        kwargs["_env_file"] = env_file
    try:
        config = _Config(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    _check_prompt_files(config, app_dir)
    _place_mock_cache(config, app_dir)
    _place_examples(config, app_dir)
    _place_experience(config, app_dir)
    _check_llm_aliases(config)
    for note in dict.fromkeys(notes + file_notes):  # each once, in order
        logging.getLogger("weaver.config").warning("%s", note)
    return config


def _place_mock_cache(config: AppConfig, app_dir: Path | None) -> None:
    """The recorded model calls live in the app folder: ``<app_dir>/cache/llm``, or a relative
    ``llm.mock.cache_path`` there (TaskWeaver's paths are relative to the app folder too)."""
    mock = config.llm.mock
    base = app_dir if app_dir is not None else Path.cwd()
    if mock.cache_path is None:
        mock.cache_path = base / "cache" / "llm"
    elif not mock.cache_path.is_absolute():
        mock.cache_path = base / mock.cache_path


# Where each role's examples are when example_base_path is not set: TaskWeaver's older place, then its newer.
EXAMPLE_FOLDERS = {
    "planner": ("planner_examples", "examples/planner_examples"),
    "code_interpreter": ("codeinterpreter_examples", "examples/code_generator_examples"),
}


def _place_examples(config: AppConfig, app_dir: Path | None) -> None:
    """Each role's example folder as an absolute path (``${AppBaseDir}`` and relative paths are the
    app folder). Unset: the first default folder that exists (none: no examples). Set but missing,
    with use_example on: a ``ConfigError`` now, as a typo should stop the app."""
    sections: tuple[tuple[str, PlannerSettings | CodeInterpreterSettings], ...] = (
        ("planner", config.planner),
        ("code_interpreter", config.code_interpreter),
    )
    for name, section in sections:
        path = section.example_base_path
        if path is None:
            if app_dir is not None:
                found = [app_dir / folder for folder in EXAMPLE_FOLDERS[name]]
                section.example_base_path = next((f for f in found if f.is_dir()), found[0])
            continue
        text = str(path)
        if app_dir is not None:
            text = text.replace("${AppBaseDir}", str(app_dir))
        path = Path(text)
        if not path.is_absolute():
            path = (app_dir if app_dir is not None else Path.cwd()) / path
        section.example_base_path = path
        if section.use_example and not path.is_dir():
            raise ConfigError(f"{name}.example_base_path: {path} is not a folder (set use_example false to read none)")


def _place_experience(config: AppConfig, app_dir: Path | None) -> None:
    """The experience folders as absolute paths (``${AppBaseDir}`` and relative paths are the app
    folder): ``session.experience_dir`` (default ``<app_dir>/experience``), and each role's
    ``experience_dir`` (default the session's). A folder that does not exist yet holds no tips."""
    base = app_dir if app_dir is not None else Path.cwd()

    def placed(path: Path | None, default: Path) -> Path:
        if path is None:
            return default
        found = Path(str(path).replace("${AppBaseDir}", str(base)))
        return found if found.is_absolute() else base / found

    config.session.experience_dir = shared = placed(config.session.experience_dir, base / "experience")
    for section in (config.planner, config.code_interpreter):
        section.experience_dir = placed(section.experience_dir, shared)


def _check_llm_aliases(config: AppConfig) -> None:
    """Every ``<role>.llm_alias`` must name an ``ext_llms.llm_configs`` entry that builds valid
    settings, and every entry must, so a typo stops the app at start with the key named."""
    for name in config.ext_llms.llm_configs:
        config.llm_for_alias(name)
    for section in (*ROLE_MODEL_SECTIONS, *OWN_MODEL_ROLES):
        alias = config.llm_alias_of(section)
        if alias is not None and alias not in config.ext_llms.llm_configs:
            known = ", ".join(sorted(config.ext_llms.llm_configs)) or "none are configured"
            raise ConfigError(f"{section}.llm_alias = {alias!r} names no model in ext_llms.llm_configs ({known})")


def _check_prompt_files(config: AppConfig, app_dir: Path | None) -> None:
    """Resolve relative prompt files against the app dir and load them, so a bad one stops the app now."""
    for name, section in (("planner", config.planner), ("code_interpreter", config.code_interpreter)):
        path = section.prompt_file_path
        if path is not None and not path.is_absolute() and app_dir is not None:
            section.prompt_file_path = path = app_dir / path
        if path is not None:
            load_templates(name, path)
