"""``weaver check`` for ``llm.api_type = anthropic``: the same steps and verdicts as for other
providers (ui/check_report.py), over Anthropic's Messages API: one short answer says whether the
key is accepted and the model exists; streaming and JSON answers (the ``{`` prefill) are checked
through the backend a round uses."""

from __future__ import annotations

import httpx

from core.config import LLMSettings
from core.llm.anthropic_backend import AnthropicBackend, anthropic_root, make_client
from ui.check_report import PROMPT, ApiProbe, CheckReport, Reply, check_api, snippet


def check_anthropic(settings: LLMSettings) -> CheckReport:
    return check_api(settings, PROBE)


def _ask(client: httpx.Client, settings: LLMSettings) -> httpx.Response:
    return client.post("/v1/messages", json={"model": settings.model, "max_tokens": 20, "messages": PROMPT})


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


PROBE = ApiProbe("anthropic", anthropic_root, make_client, _ask, _judge, AnthropicBackend, " (or ANTHROPIC_API_KEY)")
