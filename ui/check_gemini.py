"""``weaver check`` for ``llm.api_type = google_genai`` (Gemini): the same steps and verdicts as
for other providers (ui/check_report.py), over the Gemini API: one ``generateContent`` says
whether the key is accepted (Google answers a bad one with HTTP 400) and the model exists;
streaming and JSON answers (``responseMimeType``) are checked through the backend a round uses."""

from __future__ import annotations

import httpx

from core.config import LLMSettings
from core.llm.base import LLMError
from core.llm.gemini_backend import GeminiBackend, error_detail, gemini_base, key_refused, make_client, model_path
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
)


def check_gemini(settings: LLMSettings) -> CheckReport:
    """Each step only when the one before passed; bounded by ``llm.connect_timeout`` and ``llm.timeout``."""
    where = gemini_base(settings.api_base)
    report = CheckReport(f"google_genai model {settings.model!r} at {where}")
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
        url = f"/{model_path(settings.model)}:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": PROMPT[0]["content"]}]}]}
        if not completion_step(
            report, settings, lambda: client.post(url, json=body), _judge, " (or GEMINI_API_KEY / GOOGLE_API_KEY)"
        ):
            return skip_rest(report, "key accepted")
    return backend_steps(report, GeminiBackend(settings), settings)


def _judge(response: httpx.Response) -> Reply:
    code = response.status_code
    if code != 200:
        _, detail, details = error_detail(response)
        if key_refused(code, detail, details):
            return Reply(key_refused=True, detail=detail)
        return Reply(model_missing=code == 404 and "model" in detail.lower(), detail=detail)
    try:
        payload = response.json()
        parts = payload["candidates"][0]["content"]["parts"]
        text = "".join(str(p.get("text") or "") for p in parts if not p.get("thought"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Reply(detail=response.text[:160])
    return Reply(text=text, model=str(payload.get("modelVersion") or ""))
