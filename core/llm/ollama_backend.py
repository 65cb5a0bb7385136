"""Ollama's native chat API (``POST /api/chat``), streamed as newline-delimited JSON over httpx.

Native rather than Ollama's OpenAI-compatible ``/v1``: it takes ``format: "json"`` for JSON
answers and the sampling keys OpenAI's API lacks (``top_k``), reports usage as
``prompt_eval_count`` / ``eval_count`` and names a missing model plainly. The design is the
OpenAI backend's (core/llm/openai_backend.py): a pump thread does the blocking HTTP work and feeds
a queue, so the caller stops at once on cancel; the cancel callback shuts the socket down to
unblock the pump; retries are our own cancellable loop with ``llm.max_retries`` and
``llm.retry_backoff``; every failure reaches the caller as an ``LLMError`` that says what to change.
"""

from __future__ import annotations

import email.utils
import json
import queue
import socket
import threading
import time
from typing import Any, Iterator

import httpx

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMCallRecord, LLMError
from core.llm.sampling import supported_options

DEFAULT_BASE = "http://127.0.0.1:11434"  # where `ollama serve` listens
_BACKOFF_CAP_S = 30.0
_SNIPPET = 200
_RETRY_STATUSES = {408, 409, 429}
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
    base = (api_base or DEFAULT_BASE).rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def make_client(settings: LLMSettings) -> httpx.Client:
    """An httpx client for the Ollama server with Weaver's timeouts (shared by chat, check and embeddings)."""
    headers = {}
    if settings.api_key:  # Ollama itself needs none; a proxy in front of it may
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
    return httpx.Client(base_url=ollama_base(settings.api_base), headers=headers, timeout=timeout)


class OllamaBackend(LLMBackend):
    """``LLMBackend`` for ``api_type`` "ollama"."""

    name = "ollama"

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.base = ollama_base(settings.api_base)
        self._client = make_client(settings)

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        """Yield the answer's text chunks; see ``_Call`` for the threading."""
        cancel.raise_if_cancelled()
        yield from _Call(self, request, cancel).drain()

    def close(self) -> None:
        self._client.close()

    @property
    def client(self) -> httpx.Client:
        return self._client

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The ``/api/chat`` request body: messages, ``format``, and ``options`` for sampling."""
        s = self.settings
        options: dict[str, Any] = {"temperature": s.temperature}
        if s.max_tokens:
            options["num_predict"] = s.max_tokens
        for key, value in supported_options(s, self.name, _OPTION_NAMES).items():
            options[_OPTION_NAMES[key]] = value
        body: dict[str, Any] = {"model": s.model, "messages": request.messages, "stream": True, "options": options}
        if request.json_mode and s.response_format == "json_object":
            body["format"] = "json"
        return body


class _Retry(Exception):
    """An attempt failed in a way worth another try."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class _Call:
    """One streamed chat: a pump thread does the HTTP work, ``drain`` yields in the caller's thread."""

    def __init__(self, backend: OllamaBackend, request: ChatRequest, cancel: CancelToken) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.request = request
        self.record: LLMCallRecord = request.record  # type: ignore[assignment]  # set in __post_init__
        self.cancel = cancel
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stopped = threading.Event()
        self.lock = threading.Lock()  # guards ``response`` between the pump and ``abort``
        self.response: httpx.Response | None = None
        self.sent_content = False

    # -- caller side

    def drain(self) -> Iterator[str]:
        """Yield chunks from the pump; raise its error, or ``RoundCancelled`` on cancel."""
        started = time.monotonic()
        self.record.model = self.settings.model
        threading.Thread(target=self._pump, name="ollama-pump", daemon=True).start()
        forget_cancel = self.cancel.on_cancel(self._on_cancel)
        try:
            while True:
                kind, value = self.events.get()
                if kind == "cancel" or self.cancel.cancelled:
                    raise RoundCancelled("the round was cancelled")
                if kind == "error":
                    raise value
                if kind == "end":
                    return
                if self.record.first_token_s is None:
                    self.record.first_token_s = time.monotonic() - started
                yield value
                self.cancel.raise_if_cancelled()
        finally:
            forget_cancel()
            self.abort()
            self.record.latency_s = time.monotonic() - started

    def abort(self) -> None:
        """Tell the pump to quit and unblock its read by shutting the socket down."""
        self.stopped.set()
        with self.lock:
            response = self.response
            if response is None or response.is_closed:
                return
            network = response.extensions.get("network_stream")
            sock = network.get_extra_info("socket") if network is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _on_cancel(self) -> None:
        self.events.put(("cancel", None))
        self.abort()

    # -- pump side

    def _pump(self) -> None:
        """Thread body: always ends with exactly one terminal event, so ``drain`` never hangs."""
        outcome: tuple[str, Any] = ("end", None)
        try:
            self._attempts()
        except LLMError as exc:
            outcome = ("error", exc)
        except BaseException as exc:  # noqa: BLE001 - must reach the caller as an LLMError
            outcome = ("error", LLMError(f"unexpected error talking to Ollama: {type(exc).__name__}: {_snippet(exc)}"))
        finally:
            self.events.put(outcome)

    def _attempts(self) -> None:
        retries_left = self.settings.max_retries
        backoff = self.settings.retry_backoff
        attempt = 0
        while not self.stopped.is_set():
            attempt += 1
            self.record.attempts = attempt
            try:
                self._attempt()
                return
            except _Retry as retry:
                if retries_left == 0:
                    message = retry.message if attempt == 1 else f"{retry.message} (gave up after {attempt} attempts)"
                    raise LLMError(message) from None
                retries_left -= 1
                delay = retry.retry_after if retry.retry_after is not None else backoff
                backoff *= 2
                if self.cancel.wait(min(delay, _BACKOFF_CAP_S)):
                    return

    def _attempt(self) -> None:
        body = self.backend.body(self.request)
        try:
            with self.backend.client.stream("POST", "/api/chat", json=body) as response:
                with self.lock:
                    self.response = response
                try:
                    if self.stopped.is_set():
                        return
                    if response.status_code != 200:
                        response.read()
                        raise self._status_failure(response)
                    self._read(response)
                finally:
                    with self.lock:
                        self.response = None
        except (LLMError, _Retry):
            raise
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._failure(exc) from None

    def _read(self, response: httpx.Response) -> None:
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
                    f"the Ollama server at {self.backend.base} sent a malformed stream "
                    "(is llm.api_base the Ollama server's address?)"
                ) from None
            if not isinstance(chunk, dict):
                raise LLMError(f"the Ollama server at {self.backend.base} sent a malformed stream")
            if chunk.get("error"):
                raise LLMError(f"the Ollama server reported an error: {_snippet(chunk['error'])}")
            if chunk.get("model"):
                self.record.model = str(chunk["model"])
            text = (chunk.get("message") or {}).get("content")
            if text:
                self.sent_content = True
                self.events.put(("chunk", text))
            if chunk.get("done"):
                self.record.prompt_tokens = chunk.get("prompt_eval_count")
                self.record.completion_tokens = chunk.get("eval_count")
                return
        if self.stopped.is_set():
            return
        stage = "mid-answer" if self.sent_content else "before answering"
        raise LLMError(f"the Ollama server at {self.backend.base} ended the stream {stage} without finishing it")

    def _status_failure(self, response: httpx.Response) -> Exception:
        code = response.status_code
        try:
            detail = _snippet(response.json().get("error") or response.text)
        except (ValueError, AttributeError):
            detail = _snippet(response.text)
        if code == 404:
            model = self.settings.model
            if "not found" in detail.lower() and "model" in detail.lower():
                return LLMError(
                    f"the Ollama server at {self.backend.base} has no model {model!r} (HTTP 404: {detail}); "
                    f"run `ollama pull {model}` or change llm.model"
                )
            return LLMError(
                f"no Ollama chat API at {self.backend.base} (HTTP 404: {detail}); "
                "llm.api_base should be the server's address, e.g. http://127.0.0.1:11434"
            )
        if code == 429 or code >= 500 or code in _RETRY_STATUSES:
            return _Retry(f"the Ollama server failed with HTTP {code}: {detail}", _retry_after(response.headers))
        if code in (401, 403):
            return LLMError(f"the Ollama server refused the request (HTTP {code}); check llm.api_key: {detail}")
        return LLMError(f"the Ollama server rejected the request (HTTP {code}): {detail}")

    def _failure(self, exc: Exception) -> Exception:
        if self.stopped.is_set():
            return LLMError("the model call was stopped")  # the caller is gone and raises its own
        where = self.backend.base
        if isinstance(exc, httpx.ConnectTimeout):
            return _Retry(
                f"could not connect to the Ollama server at {where} within "
                f"{self.settings.connect_timeout:g} s (llm.connect_timeout)"
            )
        if isinstance(exc, httpx.ConnectError):
            return _Retry(f"could not connect to the Ollama server at {where} (is `ollama serve` running?)")
        if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
            stage = "mid-answer" if self.sent_content else "before answering"
            return LLMError(
                f"the Ollama server at {where} sent nothing for {self.settings.timeout:g} s {stage} "
                "(timeout, llm.timeout; a large model may still be loading)"
            )
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            if self.sent_content:
                return LLMError(f"the connection to the Ollama server at {where} dropped mid-answer")
            return _Retry(f"the Ollama server at {where} closed the connection before answering")
        return LLMError(f"the call to the Ollama server at {where} failed: {type(exc).__name__}: {_snippet(exc)}")


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``Retry-After`` (number or HTTP date), if present."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return None


def _snippet(text: object) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _SNIPPET else flat[: _SNIPPET - 1] + "…"
