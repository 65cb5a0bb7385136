"""Google Gemini (TaskWeaver's ``google_genai``) through the Gemini API's
``models/{model}:streamGenerateContent?alt=sse``, over httpx.

Plain httpx rather than the ``google-genai`` SDK: the SDK and what it pulls in add ~10 MB of
source (~25 MB with bytecode: google-auth, websockets...) and it pins ``tenacity<9.2``, older than
the one installed; the shared pump (core/llm/http_stream.py) gives the cancel, timeouts and
retries every backend has.

The system messages go in ``systemInstruction``; roles are ``user`` and ``model``; a JSON answer
is asked with ``generationConfig.responseMimeType = "application/json"``; the sampling keys are
``generationConfig`` fields; the key is sent in the ``x-goog-api-key`` header. Usage comes from
``usageMetadata`` (``promptTokenCount``; ``candidatesTokenCount`` plus ``thoughtsTokenCount``, the
thinking a 2.5 model bills as output).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx

from core.cancel import CancelToken
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMError
from core.llm.http_stream import (
    Retry,
    StreamedCall,
    StreamingBackend,
    http_client,
    json_event,
    provider_key,
    retry_after,
    retryable,
    snippet,
    sse_events,
)
from core.llm.sampling import supported_options
from core.llm.turns import Turn, split_system

logger = logging.getLogger("weaver.llm")

DEFAULT_BASE = "https://generativelanguage.googleapis.com"
DEFAULT_VERSION = "v1beta"  # where every current model and field is served
KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")  # what the google-genai SDK reads
# Weaver's sampling keys as generationConfig fields: Gemini has them all.
_NAMES = {
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "stop_token": "stopSequences",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
}
_VERSION = re.compile(r"/v1(alpha|beta)?\d*\Z")
_KEY_REASONS = ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED")
_FINISHED_WELL = {"STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"}


def gemini_base(api_base: str | None) -> str:
    """The versioned API address: ``llm.api_base`` as given when it ends with a version such as
    ``/v1beta``, else with ``/v1beta`` added; Google's own by default."""
    base = (api_base or DEFAULT_BASE).rstrip("/")
    return base if _VERSION.search(base) else f"{base}/{DEFAULT_VERSION}"


def model_path(model: str) -> str:
    """``models/<name>``; TaskWeaver configs may already say ``models/gemini-...``."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def make_client(settings: LLMSettings) -> httpx.Client:
    """An httpx client with the key header and Weaver's timeouts (chat and check)."""
    headers = {"x-goog-api-key": provider_key(settings, "google_genai", KEY_ENV)}
    return http_client(settings, gemini_base(settings.api_base), headers)


def error_detail(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    """A Google error body's ``status``, message and ``details`` merged (reason, retryDelay)."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", snippet(response.text), {}
    details: dict[str, Any] = {}
    for item in error.get("details") or ():
        if isinstance(item, dict):
            details.update(item)
    return str(error.get("status") or ""), snippet(error.get("message") or response.text), details


def key_refused(code: int, message: str, details: dict[str, Any]) -> bool:
    """Google answers a bad key with HTTP 400 (``API_KEY_INVALID``), a forbidden one with 403."""
    return code in (401, 403) or details.get("reason") in _KEY_REASONS or "api key not valid" in message.lower()


class GeminiBackend(StreamingBackend):
    """``LLMBackend`` for ``api_type`` "google_genai"."""

    name = "google_genai"

    def __init__(self, settings: LLMSettings) -> None:
        super().__init__(settings, gemini_base(settings.api_base), make_client(settings))

    def call(self, request: ChatRequest, cancel: CancelToken) -> StreamedCall:
        return _Call(self, request, cancel)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The ``streamGenerateContent`` body: contents, ``systemInstruction``, ``generationConfig``."""
        s = self.settings
        system, turns = split_system(request.messages, "Gemini")
        config: dict[str, Any] = {"temperature": s.temperature}
        if s.max_tokens:
            config["maxOutputTokens"] = s.max_tokens
        for key, value in supported_options(s, self.name, _NAMES).items():
            config[_NAMES[key]] = value
        if request.json_mode and s.response_format == "json_object":
            config["responseMimeType"] = "application/json"
        body: dict[str, Any] = {
            "contents": [
                {"role": "model" if turn.role == "assistant" else "user", "parts": _parts(turn)} for turn in turns
            ],
            "generationConfig": config,
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        return body


def _parts(turn: Turn) -> list[dict[str, Any]]:
    """A turn's parts: each image as ``inlineData`` (base64), then its text."""
    parts: list[dict[str, Any]] = [{"inlineData": {"mimeType": i.mime, "data": i.data}} for i in turn.images]
    if turn.text.strip() or not parts:
        parts.append({"text": turn.text})
    return parts


class _Call(StreamedCall):
    """One streamed ``streamGenerateContent``."""

    provider = "Gemini"

    def __init__(self, backend: GeminiBackend, request: ChatRequest, cancel: CancelToken) -> None:
        super().__init__(backend.settings, backend.client, f"the Gemini API at {backend.base}", request, cancel)
        self.backend = backend

    def request_args(self) -> dict[str, Any]:
        return {
            "url": f"/{model_path(self.settings.model)}:streamGenerateContent",
            "params": {"alt": "sse"},
            "json": self.backend.body(self.request),
        }

    def read(self, response: httpx.Response) -> None:
        """Pass each chunk's text on (thoughts left out); the stream ends after a finish reason."""
        finished = ""
        for _, data in sse_events(response.iter_lines()):
            if self.stopped.is_set():
                return
            chunk = json_event(data, self.server)
            if chunk.get("error"):
                raise self._stream_error(chunk["error"])
            if chunk.get("modelVersion"):
                self.record.model = str(chunk["modelVersion"])
            self._usage(chunk.get("usageMetadata") or {})
            blocked = (chunk.get("promptFeedback") or {}).get("blockReason")
            if blocked:
                raise LLMError(f"Gemini refused the prompt ({blocked}); rephrase the request")
            for candidate in (chunk.get("candidates") or ())[:1]:
                for part in (candidate.get("content") or {}).get("parts") or ():
                    if part.get("text") and not part.get("thought"):
                        self.emit(str(part["text"]))
                finished = str(candidate.get("finishReason") or finished)
        if self.stopped.is_set():
            return
        if not finished:
            raise LLMError(f"{self.server} ended the stream {self.stage} without finishing it")
        if finished == "MAX_TOKENS":
            logger.warning("the Gemini answer was cut at %s tokens (llm.max_tokens)", self.settings.max_tokens)
        elif finished not in _FINISHED_WELL:
            raise LLMError(f"Gemini stopped the answer {self.stage} (finishReason {finished})")

    def _usage(self, usage: dict[str, Any]) -> None:
        if usage.get("promptTokenCount") is not None:
            self.record.prompt_tokens = int(usage["promptTokenCount"])
        if usage.get("candidatesTokenCount") is not None or usage.get("thoughtsTokenCount") is not None:
            self.record.completion_tokens = int(usage.get("candidatesTokenCount") or 0) + int(
                usage.get("thoughtsTokenCount") or 0
            )

    def _stream_error(self, error: Any) -> Exception:
        error = error if isinstance(error, dict) else {"message": error}
        code, message = int(error.get("code") or 0), snippet(error.get("message") or "")
        if retryable(code) and not self.sent_content:
            return Retry(f"the Gemini API failed with {error.get('status') or code}: {message}")
        return LLMError(f"the Gemini API reported an error {self.stage}: {message}")

    def status_failure(self, response: httpx.Response) -> Exception:
        code = response.status_code
        status, detail, details = error_detail(response)
        label = f"HTTP {code} {status}" if status else f"HTTP {code}"
        if retryable(code):
            wait = retry_after(response.headers)
            if wait is None and str(details.get("retryDelay", "")).endswith("s"):
                try:
                    wait = max(0.0, float(str(details["retryDelay"])[:-1]))
                except ValueError:
                    wait = None
            return Retry(f"the Gemini API failed with {label}: {detail}", wait)
        if key_refused(code, detail, details):
            return LLMError(
                f"the Gemini API refused the key ({label}: {detail}); change llm.api_key "
                "(or the GEMINI_API_KEY variable)"
            )
        if code == 404:
            if "model" in detail.lower():
                model = self.settings.model
                return LLMError(f"the Gemini API has no model {model!r} (HTTP 404: {detail}); change llm.model")
            return LLMError(
                f"no Gemini API at {self.backend.base} (HTTP 404: {detail}); "
                f"change llm.api_base (default {DEFAULT_BASE})"
            )
        return LLMError(f"the Gemini API rejected the request ({label}): {detail}")
