"""Anthropic's Messages API (``POST /v1/messages``), streamed as server-sent events over httpx.

Plain httpx rather than the ``anthropic`` SDK: the SDK adds ~10 MB of source (~39 MB with its
bytecode) for a wire format of six event types, and the shared pump (core/llm/http_stream.py)
already gives the cancel, timeouts and retries the other backends have.

The system messages go in the ``system`` field. Anthropic has no ``response_format``; for a JSON
answer the assistant turn is prefilled with ``{`` (the model continues the object) and the ``{``
is put back in front of the streamed text. A model that refuses prefills (HTTP 400 naming them,
as the newest do) is asked in the system prompt instead, learned once per backend. ``max_tokens``
is required by the API: ``llm.max_tokens``, else 4096. Usage comes from ``message_start``
(``input_tokens``) and ``message_delta`` (``output_tokens``).
"""

from __future__ import annotations

import logging
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
    server_root,
    snippet,
    sse_events,
)
from core.llm.sampling import supported_options
from core.llm.turns import Turn, split_system

logger = logging.getLogger("weaver.llm")

DEFAULT_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"  # the ``anthropic-version`` header: the Messages API's only version
DEFAULT_MAX_TOKENS = 4096  # sent when llm.max_tokens is unset; every current Claude model allows it
KEY_ENV = ("ANTHROPIC_API_KEY",)
JSON_ONLY = "Answer with the JSON object only: no text or code fence around it."
# Weaver's sampling keys the Messages API has; seed and the penalties it lacks are warned once.
_NAMES = {"top_p": "top_p", "top_k": "top_k", "stop_token": "stop_sequences"}
_MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1, Weaver's 0..2


def anthropic_root(api_base: str | None) -> str:
    """The API root: ``llm.api_base`` without a trailing ``/v1``, or Anthropic's own."""
    return server_root(api_base, DEFAULT_BASE)


def make_client(settings: LLMSettings) -> httpx.Client:
    """An httpx client with the key and version headers and Weaver's timeouts (chat and check)."""
    headers = {"x-api-key": provider_key(settings, "anthropic", KEY_ENV), "anthropic-version": API_VERSION}
    return http_client(settings, anthropic_root(settings.api_base), headers)


class AnthropicBackend(StreamingBackend):
    """``LLMBackend`` for ``api_type`` "anthropic"."""

    name = "anthropic"

    def __init__(self, settings: LLMSettings) -> None:
        super().__init__(settings, anthropic_root(settings.api_base), make_client(settings))
        # Learned once from a 400 naming them: newer models refuse prefills, and both
        # temperature and top_p in one request.
        self.prefill = True
        self.temperature_with_top_p = True
        if settings.temperature > _MAX_TEMPERATURE:
            logger.warning(
                "llm.temperature %g is sent as %g: Anthropic's range is 0 to 1", settings.temperature, _MAX_TEMPERATURE
            )

    def call(self, request: ChatRequest, cancel: CancelToken) -> StreamedCall:
        return _Call(self, request, cancel)

    def body(self, request: ChatRequest) -> tuple[dict[str, Any], bool]:
        """The ``/v1/messages`` body, and whether its last turn is the ``{`` prefill."""
        s = self.settings
        system, turns = split_system(request.messages, "Anthropic")
        wants_json = request.json_mode and s.response_format == "json_object"
        prefill = wants_json and self.prefill and bool(turns) and turns[-1].role == "user"
        if wants_json and not self.prefill:
            system = f"{system}\n\n{JSON_ONLY}" if system else JSON_ONLY
        messages: list[dict[str, Any]] = [{"role": turn.role, "content": _content(turn)} for turn in turns]
        if prefill:
            messages.append({"role": "assistant", "content": "{"})
        body: dict[str, Any] = {
            "model": s.model,
            "max_tokens": s.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        sampling = supported_options(s, self.name, _NAMES)
        if "top_p" not in sampling or self.temperature_with_top_p:
            body["temperature"] = min(s.temperature, _MAX_TEMPERATURE)
        for key, value in sampling.items():
            body[_NAMES[key]] = value
        return body, prefill


def _content(turn: Turn) -> str | list[dict[str, Any]]:
    """A turn's text, or with images: Anthropic's base64 image blocks, then the text block."""
    if not turn.images:
        return turn.text
    blocks: list[dict[str, Any]] = [
        {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.data}}
        for image in turn.images
    ]
    if turn.text.strip():
        blocks.append({"type": "text", "text": turn.text})
    return blocks


class _Call(StreamedCall):
    """One streamed ``/v1/messages``."""

    provider = "Anthropic"

    def __init__(self, backend: AnthropicBackend, request: ChatRequest, cancel: CancelToken) -> None:
        super().__init__(backend.settings, backend.client, f"the Anthropic API at {backend.base}", request, cancel)
        self.backend = backend
        self.sent: dict[str, Any] = {}
        self.prefilled = False

    def request_args(self) -> dict[str, Any]:
        self.sent, self.prefilled = self.backend.body(self.request)
        return {"url": "/v1/messages", "json": self.sent}

    def read(self, response: httpx.Response) -> None:
        """Pass each text delta on (the prefilled ``{`` first); note the usage; stop at ``message_stop``."""
        opening = "{" if self.prefilled else ""
        for event, data in sse_events(response.iter_lines()):
            if self.stopped.is_set():
                return
            payload = json_event(data, self.server)
            kind = payload.get("type") or event
            if kind == "message_start":
                self._usage(payload.get("message") or {})
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    self.emit(opening + str(delta["text"]))
                    opening = ""
            elif kind == "message_delta":
                self._usage(payload)
                if (payload.get("delta") or {}).get("stop_reason") == "max_tokens":
                    logger.warning(
                        "the Anthropic answer was cut at %s tokens (llm.max_tokens)", self.sent.get("max_tokens")
                    )
            elif kind == "message_stop":
                return
            elif kind == "error":
                raise self._stream_error(payload.get("error") or {})
        if self.stopped.is_set():
            return
        raise LLMError(f"{self.server} ended the stream {self.stage} without finishing it")

    def _usage(self, holder: dict[str, Any]) -> None:
        if holder.get("model"):
            self.record.model = str(holder["model"])
        usage = holder.get("usage") or {}
        prompt = [usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
        if usage.get("input_tokens") is not None:  # cached prompt tokens are prompt tokens too
            self.record.prompt_tokens = sum(int(n) for n in prompt if n)
        if usage.get("output_tokens") is not None:  # message_delta's count is the running total
            self.record.completion_tokens = int(usage["output_tokens"])

    def _stream_error(self, error: dict[str, Any]) -> Exception:
        """An ``error`` event: overloaded or a server error before any text is worth another try."""
        kind, message = str(error.get("type") or "error"), snippet(error.get("message") or "")
        if kind in ("overloaded_error", "api_error", "rate_limit_error") and not self.sent_content:
            return Retry(f"the Anthropic API reported {kind}: {message}")
        return LLMError(f"the Anthropic API reported {kind} {self.stage}: {message}")

    def status_failure(self, response: httpx.Response) -> Exception:
        code = response.status_code
        try:
            error = response.json().get("error") or {}
            kind, detail = str(error.get("type") or ""), snippet(error.get("message") or response.text)
        except (ValueError, AttributeError):
            kind, detail = "", snippet(response.text)
        lowered = detail.lower()
        if code == 400 and self.prefilled and "prefill" in lowered:
            self.backend.prefill = False  # ask in the system prompt from now on
            return Retry("prefill refused", free=True)
        if code == 400 and "top_p" in self.sent and "temperature" in self.sent and "top_p" in lowered:
            self.backend.temperature_with_top_p = False  # llm.top_p was set on purpose: it wins
            return Retry("temperature with top_p refused", free=True)
        if retryable(code):
            what = "is overloaded" if code == 529 or kind == "overloaded_error" else f"failed with HTTP {code}"
            return Retry(f"the Anthropic API {what}: {detail}", retry_after(response.headers))
        if code in (401, 403):
            return LLMError(
                f"the Anthropic API refused the key (HTTP {code}: {detail}); change llm.api_key "
                "(or the ANTHROPIC_API_KEY variable)"
            )
        if code == 404:
            if "model" in lowered:
                model = self.settings.model
                return LLMError(f"the Anthropic API has no model {model!r} (HTTP 404: {detail}); change llm.model")
            return LLMError(
                f"no Messages API at {self.backend.base}/v1/messages (HTTP 404: {detail}); change llm.api_base "
                f"(default {DEFAULT_BASE})"
            )
        return LLMError(f"the Anthropic API rejected the request (HTTP {code}): {detail}")
