"""Every TaskWeaver config key, accounted for: kept, mapped onto Weaver's, or ignored with a reason.

``translate`` takes the flat dotted keys of ``taskweaver_config.json`` (or of the ``config``
argument) and returns Weaver's keys plus one sentence per key Weaver does not use, which the app
logs once at start. docs/taskweaver-config.md is the table for people.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError

# TaskWeaver's llm.api_type values; each may have its own section, llm.<type>.<key>.
LLM_TYPES = frozenset(
    {
        "openai",
        "azure",
        "azure_ad",
        "ollama",
        "google_genai",
        "qwen",
        "zhipuai",
        "groq",
        "anthropic",
        "azure_ml",
        "mock",
        "sentence_transformers",
    }
)
ROLES = frozenset({"planner", "code_interpreter"})
_NOT_SENT = (
    "Weaver sends the model temperature, max_tokens, response_format and the sampling keys "
    "(top_p, top_k, seed, stop_token, frequency_penalty, presence_penalty) only"
)
_NO_EXAMPLES = (
    "only the Planner (planner.*) and the CodeInterpreter (code_generator.* or code_interpreter.*) read example "
    "conversations in Weaver"
)
# TaskWeaver's CodeInterpreter reads its examples with these keys; Weaver's with code_interpreter.*.
_CODE_GENERATOR_EXAMPLE_KEYS = frozenset(
    {"code_generator.use_example", "code_generator.example_base_path", "code_generator.dynamic_example_sub_path"}
)
_COMPRESSION_ROLES = (
    "only the Planner (planner.prompt_compression) and the CodeInterpreter (code_generator.prompt_compression) "
    "summarise older rounds in Weaver"
)
_COMPRESSION_PROMPT = (
    "Weaver's summary prompt is core/roles/prompts/round_compressor.yaml (its own format); it is not replaceable"
)
_NO_ROLE = (
    "this role is not available in Weaver (it has the Planner, the CodeInterpreter, the roles shipped in "
    "core/roles/ and the app's own in <app_dir>/roles/)"
)
# The roles Weaver ships besides the built-in two (core/roles/<name>/): their config sections are theirs.
EXT_ROLES = frozenset(
    {
        "echo",
        "code_interpreter_cli_only",
        "code_interpreter_plugin_only",
        "document_retriever",
        "web_search",
        "web_explorer",
        "image_reader",
    }
)
# Shipped roles that call a model of their own when <name>.llm_alias is set (ImageReader needs a
# vision model); the others call the chat's model, and their llm_alias is warned.
OWN_MODEL_ROLES = ("image_reader",)
_NO_EXPERIENCE = (
    "only the Planner (planner.*) and the CodeInterpreter (code_generator.* or code_interpreter.*) read experience "
    "tips in Weaver"
)
# TaskWeaver's CodeInterpreter reads its tips with these keys; Weaver's with code_interpreter.*.
_CODE_GENERATOR_EXPERIENCE_KEYS = frozenset(
    {"code_generator.use_experience", "code_generator.experience_dir", "code_generator.dynamic_experience_sub_path"}
)

# (pattern, reason), first match wins. Patterns match the whole key.
IGNORED: tuple[tuple[str, str], ...] = (
    (r"llm\.mock\.fixed_(chat|embedding)_responses", "llm.mock.mode 'fixed' is not supported: record answers instead"),
    (
        r"llm\.(.+\.)?(require_alternative_roles|support_system_role|support_constrained_generation|"
        r"json_schema_enforcer|chat_mode)",
        _NOT_SENT,
    ),
    (
        r"llm\.(.+\.)?aad_(use_token_cache|token_cache_path)",
        "azure-identity keeps the Azure AD token in memory for the life of the process (no token file)",
    ),
    (r"ext_llms\..*", "Weaver reads ext_llms.llm_configs only"),
    (r".*\.prompt_compression", _COMPRESSION_ROLES),
    (r".*\.compression_prompt_path", _COMPRESSION_PROMPT),
    (r"round_compressor\..*", "Weaver reads round_compressor.rounds_to_compress, rounds_to_retain and llm_alias"),
    (r".*\.(use_experience|experience_dir|dynamic_experience_sub_path)", _NO_EXPERIENCE),
    (
        r"experience\..*",
        "Weaver's experience summariser uses its own prompt; it reads experience.llm_alias, retrieve_threshold, "
        "max_tips, max_chat_chars and max_tip_chars",
    ),
    (r".*\.(use_example|example_base_path|dynamic_example_sub_path)", _NO_EXAMPLES),
    (
        r"code_generator\..*",
        "Weaver's CodeInterpreter has no separate code generator; replace its prompts with "
        "code_interpreter.prompt_file_path (Weaver's YAML format)",
    ),
    (r"code_interpreter\.code_prefix", "not supported; a plugin can provide shared set-up instead"),
    (
        r"execution_service\.(env_dir|custom_image)",
        "kernels run in Weaver's bubblewrap sandbox (execution.sandbox), not in a container image",
    ),
    (r"session_manager\..*", "live sessions are kept by the app; the web UI keeps chat history in its database"),
    (r"workspace\..*", "Weaver's workspace is always <app_dir>/workspace"),
    (
        r"tracing\.(exporter|endpoint)",
        "Weaver exports spans over OTLP/HTTP to where the standard OTEL_EXPORTER_OTLP_* variables say",
    ),
    (r"tracing\.tokenizer_target_model", "token counts on spans are the ones the model server reports"),
    (r"role\..*", "Weaver's roles are built in"),
    (
        r"logging\.(remote|app_insights_connection_string|injector|log_format_prompt)",
        "Weaver logs to the console and, with logging.log_folder / logging.log_file, to a file only",
    ),
    (
        r"document_retriever\.index_folder",
        "Weaver's DocumentRetriever indexes the chat's files and the app's data/ folder itself, in memory; "
        "a prebuilt FAISS index folder is not read (put the documents in data/ instead)",
    ),
    (
        r"recepta\..*",
        _NO_ROLE,
    ),
)
_IGNORED = tuple((re.compile(pattern + r"\Z"), reason) for pattern, reason in IGNORED)
# Keys of an active type's section that do not mean the llm.* key of the same name.
_SECTION_IGNORED = {
    ("google_genai", "backup_model"): "Weaver has no backup model (llm.max_retries retries the same one)",
    ("google_genai", "embedding_model"): "Weaver has no Gemini embeddings (llm.embedding_api_type picks them)",
}
# TaskWeaver's embedding service of another type reads that type's section: llm.ollama.api_base...
_EMBEDDING_KEYS = frozenset({"api_base", "api_key", "embedding_model"})
# TaskWeaver's record/replay keys, Weaver's too (core/llm/mock.py); "mock" is also an llm.api_type.
MOCK_KEYS = frozenset({"mode", "cache_path", "playback_delay"})
# TaskWeaver's keys (its older docs put them under plugin.*): Weaver's CodeInterpreter has them.
_PLUGIN_SELECTION = re.compile(
    r"(code_generator|plugin)\.(?P<key>enable_auto_plugin_selection|auto_plugin_selection_topk)\Z"
)
_LLM_SECTION = re.compile(r"llm\.(?P<type>[a-z_]+)\.(?P<key>.+)\Z")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"llm": {"model": m}}`` → ``{"llm.model": m}``; flat keys pass through."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and name != "ext_llms.llm_configs":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def as_list(value: Any) -> Any:
    """TaskWeaver accepts a list as a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def translate(
    data: Mapping[str, Any], known: frozenset[str], app_dir: Path | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Weaver's flat keys for ``data`` (TaskWeaver's or Weaver's), and a warning per unused key."""
    flat = flatten(data)
    out: dict[str, Any] = {}
    mapped: dict[str, Any] = {}  # filled in only where the same source did not set Weaver's key
    notes: list[str] = []
    active = str(flat.get("llm.api_type") or "openai")
    embedding = str(flat.get("llm.embedding_api_type") or "")
    listed = as_list(flat.get("session.roles", []))
    role_sections = EXT_ROLES | {str(r) for r in (listed if isinstance(listed, list) else [])} - ROLES
    role_settings: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key in known:
            out[key] = value
            continue
        if key.startswith("llm.mock."):
            if key.removeprefix("llm.mock.") in MOCK_KEYS:
                out[key] = _app_path(value, app_dir) if key == "llm.mock.cache_path" else value
            else:
                notes.append(_ignored_note(key, key) or f"{key} is ignored: Weaver has no such llm.mock key")
            continue
        section = _LLM_SECTION.match(key)
        if section and section["type"] in LLM_TYPES:
            target = f"llm.{section['key']}"
            if target == "llm.max_output_tokens":
                target = "llm.max_tokens"
            if section["type"] != active and section["type"] == embedding and section["key"] in _EMBEDDING_KEYS:
                mapped[f"llm.embedding_{section['key'].removeprefix('embedding_')}"] = value
            elif section["type"] != active:
                notes.append(f"{key} is ignored: llm.api_type is {active!r}, not {section['type']!r}")
            elif (section["type"], section["key"]) in _SECTION_IGNORED:
                notes.append(f"{key} is ignored: {_SECTION_IGNORED[section['type'], section['key']]}")
            elif target in known:
                out[target] = value  # TaskWeaver: the type's own key wins over llm.<key>
                continue
            else:
                notes.append(_ignored_note(key, target) or f"{key} is ignored: Weaver has no llm.{section['key']}")
            continue
        if key == "execution_service.kernel_mode":
            mapped["execution.sandbox"] = _sandbox_for(value)
        elif key == "plugin.base_path":
            mapped["plugin_dir"] = _app_path(value, app_dir)
        elif key == "llm.max_output_tokens":
            mapped["llm.max_tokens"] = value
        elif key in _CODE_GENERATOR_EXAMPLE_KEYS:
            name = key.removeprefix("code_generator.")
            mapped[f"code_interpreter.{name}"] = _app_path(value, app_dir) if name == "example_base_path" else value
        elif key in ("code_generator.llm_alias", "code_generator.prompt_compression"):
            mapped[f"code_interpreter.{key.removeprefix('code_generator.')}"] = value
        elif key in _CODE_GENERATOR_EXPERIENCE_KEYS:
            name = key.removeprefix("code_generator.")
            mapped[f"code_interpreter.{name}"] = _app_path(value, app_dir) if name == "experience_dir" else value
        elif key == "experience.experience_dir":  # TaskWeaver's older name of the folder chats are saved to
            mapped["session.experience_dir"] = _app_path(value, app_dir)
        elif (match := _PLUGIN_SELECTION.match(key)) is not None:
            mapped[f"code_interpreter.{match['key']}"] = value
        elif key == "use_local_uri":
            mapped["code_interpreter.use_local_uri"] = value
        elif key.split(".", 1)[0] in role_sections and key.endswith(".llm_alias") and key[:-10] not in OWN_MODEL_ROLES:
            notes.append(
                f"{key} is ignored: only the Planner, the CodeInterpreter and image_reader call a model of their own"
            )
        elif key.split(".", 1)[0] in role_sections and "." in key and _ignored_note(key, key) is None:
            section_name, name = key.split(".", 1)
            role_settings.setdefault(section_name, {})[name] = value  # the role reads it (core/roles/ext.py)
        else:
            notes.append(_ignored_note(key, key) or f"{key} is ignored: it is not a Weaver or TaskWeaver config key")
    for key, value in mapped.items():
        out.setdefault(key, value)
    if role_settings:
        out["role_settings"] = {**role_settings, **out.get("role_settings", {})}
    return out, notes


def _ignored_note(key: str, lookup: str) -> str | None:
    for pattern, reason in _IGNORED:
        if pattern.match(lookup) or pattern.match(key):
            return f"{key} is ignored: {reason}"
    return None


def _sandbox_for(mode: Any) -> str:
    """TaskWeaver's container mode isolates code: here that is bubblewrap, required. Its local mode
    runs code on the host; here it keeps the default (the sandbox when it works)."""
    if mode == "container":
        return "bwrap"
    if mode == "local":
        return "auto"
    raise ConfigError(f"execution_service.kernel_mode: expected 'local' or 'container', got {mode!r}")


def _app_path(value: Any, app_dir: Path | None) -> str:
    """TaskWeaver's ``${AppBaseDir}``, and relative paths, are the app folder."""
    text = str(value)
    if app_dir is not None:
        text = text.replace("${AppBaseDir}", str(app_dir))
        if not Path(text).is_absolute():
            text = str(app_dir / text)
    return text
