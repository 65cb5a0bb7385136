"""Ollama's native chat API (``POST /api/chat``), streamed as newline-delimited JSON over httpx.

Native rather than Ollama's OpenAI-compatible ``/v1``: it takes ``format: "json"`` for JSON
answers and the sampling keys OpenAI's API lacks (``top_k``), reports usage as
``prompt_eval_count`` / ``eval_count`` and names a missing model plainly. The pump thread, cancel
and retries are core/llm/http_stream.py's, shared with the Anthropic and Gemini backends.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from core.cancel import CancelToken
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMError
from core.llm.content import ChatMessage, images_of, text_of
from core.llm.http_stream import (
    Retry,
    StreamedCall,
    StreamingBackend,
    http_client,
    retry_after,
    retryable,
    server_root,
    snippet,
)
from core.llm.sampling import supported_options

DEFAULT_BASE = "http://127.0.0.1:11434"  # where `ollama serve` listens
# Ollama's option names for Weaver's sampling keys; max tokens is its num_predict.
_OPTION_NAMES = {
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop_token": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


def ollama_base(api_base: str | None) -> str:
    """The server root: ``llm.api_base`` without a trailing ``/`` or ``/v1`` (the address configs
    written for Ollama's OpenAI-compatible API use), or Ollama's default address."""
    return server_root(api_base, DEFAULT_BASE)


def make_client(settings: LLMSettings) -> httpx.Client:
    """An httpx client for the Ollama server with Weaver's timeouts (shared by chat, check and embeddings)."""
    headers = {}
    if settings.api_key:  # Ollama itself needs none; a proxy in front of it may
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    return http_client(settings, ollama_base(settings.api_base), headers)


class OllamaBackend(StreamingBackend):
    """``LLMBackend`` for ``api_type`` "ollama"."""

    name = "ollama"

    def __init__(self, settings: LLMSettings) -> None:
        super().__init__(settings, ollama_base(settings.api_base), make_client(settings))

    def call(self, request: ChatRequest, cancel: CancelToken) -> StreamedCall:
        return _Call(self, request, cancel)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The ``/api/chat`` request body: messages, ``format``, and ``options`` for sampling."""
        s = self.settings
        options: dict[str, Any] = {"temperature": s.temperature}
        if s.max_tokens:
            options["num_predict"] = s.max_tokens
        for key, value in supported_options(s, self.name, _OPTION_NAMES).items():
            options[_OPTION_NAMES[key]] = value
        messages = [_message(m) for m in request.messages]
        body: dict[str, Any] = {"model": s.model, "messages": messages, "stream": True, "options": options}
        if request.json_mode and s.response_format == "json_object":
            body["format"] = "json"
        return body


def _message(message: ChatMessage) -> dict[str, Any]:
    """Ollama's chat message: content parts become its text plus ``images`` (base64, no data URL)."""
    content = message.get("content")
    if isinstance(content, str):
        return dict(message)
    out: dict[str, Any] = {**message, "content": text_of(content)}
    images = images_of(content, "Ollama")
    if images:
        out["images"] = [image.data for image in images]
    return out


class _Call(StreamedCall):
    """One streamed ``/api/chat``."""

    provider = "Ollama"
    connect_hint = " (is `ollama serve` running?)"
    timeout_hint = "; a large model may still be loading"

    def __init__(self, backend: OllamaBackend, request: ChatRequest, cancel: CancelToken) -> None:
        super().__init__(backend.settings, backend.client, f"the Ollama server at {backend.base}", request, cancel)
        self.backend = backend

    def request_args(self) -> dict[str, Any]:
        return {"url": "/api/chat", "json": self.backend.body(self.request)}

    def read(self, response: httpx.Response) -> None:
        """Pass each line's content on; the last line (``done``) carries the usage."""
        for line in response.iter_lines():
            if self.stopped.is_set():
                return
            if not line.strip():
                continue
            try:
                chunk = json.loads(line)
            except ValueError:
                raise LLMError(
                    f"{self.server} sent a malformed stream (is llm.api_base the Ollama server's address?)"
                ) from None
            if not isinstance(chunk, dict):
                raise LLMError(f"{self.server} sent a malformed stream")
            if chunk.get("error"):
                raise LLMError(f"the Ollama server reported an error: {snippet(chunk['error'])}")
            if chunk.get("model"):
                self.record.model = str(chunk["model"])
            self.emit((chunk.get("message") or {}).get("content") or "")
            if chunk.get("done"):
                self.record.prompt_tokens = chunk.get("prompt_eval_count")
                self.record.completion_tokens = chunk.get("eval_count")
                return
        if self.stopped.is_set():
            return
        raise LLMError(f"{self.server} ended the stream {self.stage} without finishing it")

    def status_failure(self, response: httpx.Response) -> Exception:
        code = response.status_code
        try:
            detail = snippet(response.json().get("error") or response.text)
        except (ValueError, AttributeError):
            detail = snippet(response.text)
        if code == 404:
            model = self.settings.model
            if "not found" in detail.lower() and "model" in detail.lower():
                return LLMError(
                    f"{self.server} has no model {model!r} (HTTP 404: {detail}); "
                    f"run `ollama pull {model}` or change llm.model"
                )
            return LLMError(
                f"no Ollama chat API at {self.backend.base} (HTTP 404: {detail}); "
                "llm.api_base should be the server's address, e.g. http://127.0.0.1:11434"
            )
        if retryable(code):
            return Retry(f"the Ollama server failed with HTTP {code}: {detail}", retry_after(response.headers))
        if code in (401, 403):
            return LLMError(f"the Ollama server refused the request (HTTP {code}); check llm.api_key: {detail}")
        return LLMError(f"the Ollama server rejected the request (HTTP {code}): {detail}")
