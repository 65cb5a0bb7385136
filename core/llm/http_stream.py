"""The plumbing every httpx-streamed provider shares (Ollama, Anthropic, Gemini): a call over a
plain httpx stream (its pump thread, cancel and retries are ``core.llm.pump``'s), and the failures
every HTTP server can have.

A provider subclasses ``StreamedCall`` with its request, its stream reader and its HTTP statuses;
every failure reaches the caller as an ``LLMError`` that says what to change.
"""

from __future__ import annotations

import abc
import json
import os
from typing import Any, Iterator

import httpx

from core.cancel import CancelToken
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMError
from core.llm.pump import PumpedCall, Retry, retry_after, snippet

__all__ = ["Retry", "retry_after", "snippet"]  # the providers' names, from one place

_RETRY_STATUSES = {408, 409, 429}


def http_client(settings: LLMSettings, base: str, headers: dict[str, str]) -> httpx.Client:
    """An httpx client for ``base`` with Weaver's timeouts (``llm.timeout`` between bytes)."""
    timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


def provider_key(settings: LLMSettings, api_type: str, env_vars: tuple[str, ...]) -> str:
    """``llm.api_key``, else the first of ``env_vars`` set (as the vendor's SDK reads them); none is
    an error at start, naming both."""
    if settings.api_key is not None and settings.api_key.get_secret_value():
        return settings.api_key.get_secret_value()
    for name in env_vars:
        if os.environ.get(name):
            return os.environ[name]
    raise LLMError(f"llm.api_type {api_type} needs llm.api_key (or the {' or '.join(env_vars)} variable)")


def retryable(code: int) -> bool:
    """429, 408, 409 and every 5xx (Anthropic's "overloaded" is 529) are worth another try."""
    return code >= 500 or code in _RETRY_STATUSES


def server_root(api_base: str | None, default: str, suffixes: tuple[str, ...] = ("/v1",)) -> str:
    """``llm.api_base`` (or ``default``) without a trailing ``/`` or version suffix such as ``/v1``."""
    base = (api_base or default).rstrip("/")
    for suffix in suffixes:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)``: ``event`` is "" when the server names none; the
    lines of one event's ``data`` are joined with newlines, as the SSE standard says."""
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


def json_event(data: str, server: str) -> dict[str, Any]:
    """One event's JSON object, or an ``LLMError`` saying the stream is not the provider's."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise LLMError(f"{server} sent a malformed stream (is llm.api_base right?)")
    return value


class StreamedCall(PumpedCall):
    """One streamed chat over a plain httpx client (``core.llm.pump`` has the threading).

    A provider says what to send (``request_args``), how to read a 200 stream (``read``, passing
    text on with ``emit``) and what a non-200 status means (``status_failure``)."""

    connect_hint = ""  # added to "could not connect to ..."
    timeout_hint = ""  # added to the "(timeout, llm.timeout" note

    def __init__(
        self, settings: LLMSettings, client: httpx.Client, server: str, request: ChatRequest, cancel: CancelToken
    ) -> None:
        super().__init__(settings, request, cancel)
        self.client = client
        self.server = server  # "the Ollama server at http://..." in messages
        self.response: httpx.Response | None = None

    # -- what a provider fills in

    @abc.abstractmethod
    def request_args(self) -> dict[str, Any]:
        """``client.stream("POST", **args)`` for one attempt: ``url``, ``json``, maybe ``params``."""

    @abc.abstractmethod
    def read(self, response: httpx.Response) -> None:
        """Read a 200 stream to its end, ``emit`` its text, fill usage in ``self.record``; return
        early once ``self.stopped`` is set."""

    @abc.abstractmethod
    def status_failure(self, response: httpx.Response) -> Exception:
        """A ``Retry`` or an ``LLMError`` for a non-200 answer (its body already read)."""

    def live_response(self) -> httpx.Response | None:
        return self.response

    def _attempt(self) -> None:
        """One HTTP request; every failure becomes a ``Retry`` or an ``LLMError``."""
        try:
            with self.client.stream("POST", **self.request_args()) as response:
                with self.lock:
                    self.response = response
                try:
                    if self.stopped.is_set():
                        return
                    if response.status_code != 200:
                        response.read()
                        raise self.status_failure(response)
                    self.read(response)
                finally:
                    with self.lock:
                        self.response = None
        except (LLMError, Retry):
            raise
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> Exception:
        """Classify a transport failure: ``Retry`` if worth another try, else ``LLMError``."""
        if self.stopped.is_set():
            return LLMError("the model call was stopped")  # the caller is gone and raises its own
        if isinstance(exc, httpx.ConnectTimeout):
            return Retry(
                f"could not connect to {self.server} within {self.settings.connect_timeout:g} s (llm.connect_timeout)"
            )
        if isinstance(exc, httpx.ConnectError):
            return Retry(f"could not connect to {self.server}{self.connect_hint}")
        if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
            return LLMError(
                f"{self.server} sent nothing for {self.settings.timeout:g} s {self.stage} "
                f"(timeout, llm.timeout{self.timeout_hint})"
            )
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            if self.sent_content:
                return LLMError(f"the connection to {self.server} dropped mid-answer")
            return Retry(f"{self.server} closed the connection before answering")
        return LLMError(f"the call to {self.server} failed: {type(exc).__name__}: {snippet(exc)}")


class StreamingBackend(LLMBackend):
    """A backend whose calls are ``StreamedCall``s over one httpx client, made once."""

    def __init__(self, settings: LLMSettings, base: str, client: httpx.Client) -> None:
        self.settings = settings
        self.base = base  # the server's address, in messages
        self._client = client

    @abc.abstractmethod
    def call(self, request: ChatRequest, cancel: CancelToken) -> StreamedCall:
        """The provider's ``StreamedCall`` for one request."""

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        """Yield the answer's text chunks; see ``StreamedCall`` for the threading."""
        cancel.raise_if_cancelled()
        yield from self.call(request, cancel).drain()

    def close(self) -> None:
        self._client.close()

    @property
    def client(self) -> httpx.Client:
        return self._client
