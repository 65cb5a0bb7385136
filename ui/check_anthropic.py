"""``weaver check`` for ``llm.api_type = anthropic``: the same steps and verdicts as for other
providers (ui/check_report.py), over Anthropic's Messages API: one short answer says whether the
key is accepted and the model exists; streaming and JSON answers (the ``{`` prefill) are checked
through the backend a round uses."""

from __future__ import annotations

import httpx

from core.config import LLMSettings
from core.llm.anthropic_backend import AnthropicBackend, anthropic_root, make_client
from core.llm.base import LLMError
from ui.check_report import (
    FAIL,
    PASS,
    PROMPT,
    CheckReport,
    Reply,
    backend_steps,
    completion_step,
    reachable,
    skip_rest,
    snippet,
)


def check_anthropic(settings: LLMSettings) -> CheckReport:
    """Each step only when the one before passed; bounded by ``llm.connect_timeout`` and ``llm.timeout``."""
    where = anthropic_root(settings.api_base)
    report = CheckReport(f"anthropic model {settings.model!r} at {where}")
    settings = settings.model_copy(update={"max_retries": 0})  # a verdict now, not after backoffs
    try:
        client = make_client(settings)
    except LLMError as exc:  # no key at all
        report.add("config loads", FAIL, str(exc), "api_key")
        return report
    report.add("config loads", PASS)
    with client:
        if not reachable(report, settings, where):
            return skip_rest(report, "server reachable")
        body = {"model": settings.model, "max_tokens": 20, "messages": PROMPT}
        if not completion_step(
            report, settings, lambda: client.post("/v1/messages", json=body), _judge, " (or ANTHROPIC_API_KEY)"
        ):
            return skip_rest(report, "key accepted")
    return backend_steps(report, AnthropicBackend(settings), settings)


def _judge(response: httpx.Response) -> Reply:
    try:
        payload = response.json()
    except ValueError:
        return Reply(detail=snippet(response.text))
    payload = payload if isinstance(payload, dict) else {}
    error = payload.get("error")
    error = error if isinstance(error, dict) else {}
    detail = snippet(error.get("message") or response.text)
    code = response.status_code
    if code in (401, 403):
        return Reply(key_refused=True, detail=detail)
    if code == 404 and "model" in detail.lower():
        return Reply(model_missing=True, detail=detail)
    blocks = payload.get("content") or []
    text = "".join(str(b.get("text") or "") for b in blocks if isinstance(b, dict))
    return Reply(text=text, model=str(payload.get("model") or ""), detail=detail)
