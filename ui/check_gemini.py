"""``weaver check`` for ``llm.api_type = google_genai`` (Gemini): the same steps and verdicts as
for other providers (ui/check_report.py), over the Gemini API: one ``generateContent`` says
whether the key is accepted (Google answers a bad one with HTTP 400) and the model exists;
streaming and JSON answers (``responseMimeType``) are checked through the backend a round uses."""

from __future__ import annotations

import httpx

from core.config import LLMSettings
from core.llm.gemini_backend import GeminiBackend, error_detail, gemini_base, key_refused, make_client, model_path
from ui.check_report import PROMPT, ApiProbe, CheckReport, Reply, check_api, snippet


def check_gemini(settings: LLMSettings) -> CheckReport:
    return check_api(settings, PROBE)


def _ask(client: httpx.Client, settings: LLMSettings) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT[0]["content"]}]}]}
    return client.post(f"/{model_path(settings.model)}:generateContent", json=body)


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
        return Reply(detail=snippet(response.text))
    return Reply(text=text, model=str(payload.get("modelVersion") or ""))


PROBE = ApiProbe(
    "google_genai", gemini_base, make_client, _ask, _judge, GeminiBackend, " (or GEMINI_API_KEY / GOOGLE_API_KEY)"
)
