"""``weaver check``: a plain verdict on the configured model connection, each failure naming the
config key to change. ``run_check`` (or ``run_check_async``) is what the web UI calls at start for
its banner. No Chainlit here.

The steps, in order, each only when the one before passed: the config loads; the server's address
is reachable; a small chat completion is answered (the key is accepted, the model exists; its time
is the latency); a streamed completion arrives in chunks (Weaver streams every answer); JSON mode
works (``llm.response_format = json_object``, the default).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from core.compat.config_keys import OWN_MODEL_ROLES
from core.config import ROLE_MODEL_SECTIONS, AppConfig, LLMSettings
from core.errors import ConfigError
from ui.check_report import FAIL, PASS, SKIP, CheckReport, reachable, skip_rest, snippet

_PROMPT = [{"role": "user", "content": 'Reply with the JSON object {"ok": true} and nothing else.'}]


def run_check(config: AppConfig | LLMSettings, model: str | None = None) -> CheckReport:
    """Check the model connection of ``config`` (its ``llm`` settings; ``model``: a named choice of
    ``llm.models``). Blocking, bounded by ``llm.connect_timeout`` and ``llm.timeout`` per request."""
    llm = config.llm if isinstance(config, AppConfig) else config
    settings = llm.for_model(model)
    api_type = settings.resolved_api_type
    if api_type == "offline":
        report = CheckReport("offline backend", offline=True)
        report.add("config loads", PASS)
        report.add("model", PASS, "offline mode (no model configured: set llm.api_key, llm.api_base, llm.model)")
        return report
    if settings.use_mock and settings.mock.mode == "playback_only":  # core/llm/mock.py: no model is called
        report = CheckReport("recorded model calls (playback only)")
        report.add("config loads", PASS)
        report.add(
            "model", PASS, f"playback only (llm.use_mock): recorded calls from {settings.mock.cache_path}, no model"
        )
        return report
    if api_type == "ollama":  # its native API (core/llm/ollama_backend.py)
        from ui.check_ollama import check_ollama

        return check_ollama(settings)
    if api_type == "anthropic":  # the Messages API (core/llm/anthropic_backend.py)
        from ui.check_anthropic import check_anthropic

        return check_anthropic(settings)
    if api_type == "google_genai":  # the Gemini API (core/llm/gemini_backend.py)
        from ui.check_gemini import check_gemini

        return check_gemini(settings)
    if api_type in ("groq", "qwen", "zhipuai"):  # OpenAI-compatible, at the vendor's address
        from core.llm.base import LLMError
        from core.llm.compatible import resolved_settings

        try:
            settings = resolved_settings(settings)
        except LLMError as exc:
            report = CheckReport(f"{api_type} model {settings.model!r}")
            report.add("config loads", FAIL, str(exc), "api_key")
            return report
    where = settings.api_base or "https://api.openai.com/v1"
    report = CheckReport(f"{api_type} model {settings.model!r} at {where}")
    report.add("config loads", PASS)
    if not reachable(report, settings, where):
        return skip_rest(report, "server reachable")
    client = _client(settings, api_type)
    try:
        if not _completion(report, client, settings):
            return skip_rest(report, "key accepted")
        if not _streaming(report, client, settings):
            return skip_rest(report, "streaming works")
        _json_mode(report, client, settings)
    finally:
        client.close()
    return report


async def run_check_async(config: AppConfig | LLMSettings, model: str | None = None) -> CheckReport:
    """``run_check`` off the event loop, for the web UI's start."""
    return await asyncio.to_thread(run_check, config, model)


# --------------------------------------------------------------------------------------- steps


def _client(settings: LLMSettings, api_type: str) -> Any:
    import openai

    from core.llm.openai_backend import _make_client  # one place builds the client, with our timeouts

    client = _make_client(settings, api_type)
    return client.with_options(max_retries=0) if isinstance(client, openai.OpenAI) else client


def _params(settings: LLMSettings, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": settings.model, "messages": _PROMPT, "temperature": settings.temperature}
    params["max_tokens"] = 20
    params.update(extra)
    return params


def _completion(report: CheckReport, client: Any, settings: LLMSettings) -> bool:
    """One short answer: the key, the model and the latency."""
    started = time.monotonic()
    try:
        answer = client.chat.completions.create(**_params(settings))
    except Exception as exc:  # noqa: BLE001 - classified below
        return _api_failure(report, exc, settings, "chat completion")
    report.latency_s = time.monotonic() - started
    report.add("key accepted", PASS)
    report.add("model exists", PASS, str(getattr(answer, "model", "") or settings.model))
    text = answer.choices[0].message.content if answer.choices else None
    if not text:
        return report.add(
            "chat completion",
            FAIL,
            "the server answered without any text (is llm.api_base an OpenAI-compatible endpoint?)",
            "api_base",
        )
    return report.add("chat completion", PASS, f"answered in {report.latency_s:.2f} s")


def _streaming(report: CheckReport, client: Any, settings: LLMSettings) -> bool:
    started = time.monotonic()
    try:
        chunks = [c for c in client.chat.completions.create(**_params(settings, stream=True))]
    except Exception as exc:  # noqa: BLE001
        return _api_failure(report, exc, settings, "streaming works")
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    if not texts:
        return report.add(
            "streaming works",
            FAIL,
            "the streamed answer had no text (Weaver needs streaming; is llm.api_base OpenAI-compatible?)",
            "api_base",
        )
    return report.add("streaming works", PASS, f"{len(texts)} chunks in {time.monotonic() - started:.2f} s")


def _json_mode(report: CheckReport, client: Any, settings: LLMSettings) -> bool:
    if settings.response_format != "json_object":
        return report.add("JSON mode works", SKIP, "not used (llm.response_format is text)")
    advice = 'set llm.response_format to "text" (Weaver then asks for JSON in the prompt only)'
    try:
        chunks = list(
            client.chat.completions.create(**_params(settings, stream=True, response_format={"type": "json_object"}))
        )
    except Exception as exc:  # noqa: BLE001
        status = getattr(exc, "status_code", None)
        if status in (400, 415, 422):
            detail = snippet(getattr(exc, "message", str(exc)))
            return report.add(
                "JSON mode works",
                FAIL,
                f"the server refused JSON mode (HTTP {status}: {detail}); {advice}",
                "response_format",
            )
        return _api_failure(report, exc, settings, "JSON mode works")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    try:
        json.loads(text)
    except ValueError:
        return report.add(
            "JSON mode works",
            FAIL,
            f"asked for JSON, the model answered {snippet(text)!r}; {advice}",
            "response_format",
        )
    return report.add("JSON mode works", PASS)


def _api_failure(report: CheckReport, exc: Exception, settings: LLMSettings, step: str) -> bool:
    """Name the config key behind a failed request."""
    import openai

    from core.llm.base import LLMError

    status = getattr(exc, "status_code", None)
    detail = snippet(getattr(exc, "message", None) or str(exc))
    if isinstance(exc, LLMError):  # the Azure AD sign-in, before any request
        return report.add("key accepted", FAIL, str(exc), "aad_auth_mode")
    if status in (401, 403):
        return report.add(
            "key accepted", FAIL, f"the server refused the key (HTTP {status}: {detail}); change llm.api_key", "api_key"
        )
    lowered = detail.lower()
    model_missing = status == 404 or (
        status == 400 and "model" in lowered and any(w in lowered for w in ("not found", "does not exist", "unknown"))
    )
    if model_missing:
        report.add("key accepted", PASS)
        key = "azure_deployment" if settings.resolved_api_type in ("azure", "azure_ad") else "model"
        return report.add(
            "model exists",
            FAIL,
            f"model {settings.model!r} not found (HTTP {status}: {detail}); change llm.{key}"
            + ("" if status != 404 else " (or llm.api_base, if it is not the /v1 address)"),
            key,
        )
    if isinstance(exc, openai.APITimeoutError):
        return report.add(
            step, FAIL, f"no answer within {settings.timeout:g} s; raise llm.timeout or check the server", "timeout"
        )
    if isinstance(exc, openai.APIConnectionError):
        return report.add(step, FAIL, f"the connection failed ({detail}); check llm.api_base", "api_base")
    if status is not None:
        return report.add(step, FAIL, f"the server answered HTTP {status}: {detail}", None)
    return report.add(
        step,
        FAIL,
        f"unexpected answer ({type(exc).__name__}: {detail}); is llm.api_base OpenAI-compatible?",
        "api_base",
    )


# --------------------------------------------------------------------------------------- command


def main(app_dir: str | None, model: str | None = None) -> int:
    """``weaver check``: print each step and the verdict; 0 when all passed, 1 otherwise."""
    import os

    from core.startup_check import check_app_files

    folder = Path(app_dir or os.environ.get("WEAVER_APP_DIR") or ".weaver").resolve()
    try:
        config = check_app_files(folder)  # what `weaver ui` reads before it serves: config, prompts, datasets, plugins
        report = run_check(config, model)
    except (ConfigError, KeyError) as exc:
        print(f"weaver check: {folder}\n  {FAIL:<4}  config loads: {exc}\nFAILED: the app folder's files do not load.")
        return 1
    lines = report.lines()
    kernels_ok, line = kernels_verdict(config)
    print("\n".join([*lines[:-1], line, lines[-1]]))
    models_ok = True
    if model is None:  # each other model a role calls (ext_llms.llm_configs), once per distinct one
        for name, settings in role_models_to_check(config):
            print(f"\n{name}:")
            other = run_check(settings)
            print("\n".join(other.lines()))
            models_ok = models_ok and other.ok
    return 0 if report.ok and kernels_ok and models_ok else 1


def role_models_to_check(config: AppConfig) -> list[tuple[str, LLMSettings]]:
    """The ``ext_llms.llm_configs`` entries whose model differs from the primary's and from each
    other's (type, address, key, model), each named with the roles that call it."""

    def identity(s: LLMSettings) -> tuple[str, str, str, str]:
        key = s.api_key.get_secret_value() if s.api_key else ""
        return (s.resolved_api_type, s.api_base or "", key, s.model)

    seen = {identity(config.llm)}
    found = []
    for alias in config.ext_llms.llm_configs:
        settings = config.llm_for_alias(alias)
        if identity(settings) in seen:
            continue
        seen.add(identity(settings))
        sections = (*ROLE_MODEL_SECTIONS, *OWN_MODEL_ROLES)
        roles = [section for section in sections if config.llm_alias_of(section) == alias]
        used = f" (used by {', '.join(roles)})" if roles else " (no role uses it)"
        found.append((f"ext_llms.llm_configs.{alias}{used}", settings))
    return found


def kernels_verdict(config: AppConfig) -> tuple[bool, str]:
    """The kernel backend's own verdict (``KernelBackend.status``): sandboxed or not for local
    kernels; for a gateway, reachable, the token accepted and the kernel name offered (one request)."""
    from core.execution.backend import backend_for

    try:
        status = backend_for(config.execution).status()
    except ConfigError as exc:
        return False, f"  {FAIL:<4}  kernels: {exc}"
    return status.ok, f"  {PASS if status.ok else FAIL:<4}  kernels ({status.backend}): {status.detail}"
