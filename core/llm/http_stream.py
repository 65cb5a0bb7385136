"""The plumbing every httpx-streamed provider shares (Ollama, Anthropic, Gemini): one call's pump
thread, its cancel, its retries, and the failures every HTTP server can have.

A pump thread does the blocking HTTP work and feeds a queue that ``drain`` empties in the caller's
thread, so the caller stops at once on cancel; the cancel callback shuts the socket down, which
unblocks the pump and shows the server a disconnect. Retries are our own cancellable loop with
``llm.max_retries`` and ``llm.retry_backoff`` (``Retry-After`` wins when the server sends one).
A provider subclasses ``StreamedCall`` with its request, its stream reader and its HTTP statuses;
every failure reaches the caller as an ``LLMError`` that says what to change.
"""

from __future__ import annotations

import abc
import email.utils
import json
import os
import queue
import socket
import threading
import time
from typing import Any, Iterator

import httpx

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMCallRecord, LLMError

BACKOFF_CAP_S = 30.0  # longest wait between two attempts, whatever the server's Retry-After says
_SNIPPET = 200  # characters of a server's error message shown to users
_RETRY_STATUSES = {408, 409, 429}


class Retry(Exception):
    """An attempt failed in a way worth another try."""

    def __init__(self, message: str, retry_after: float | None = None, free: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.free = free  # retry at once without spending the retry budget (a request option dropped)


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


def retry_after(headers: httpx.Headers) -> float | None:
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


def snippet(text: object) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _SNIPPET else flat[: _SNIPPET - 1] + "…"


class StreamedCall(abc.ABC):
    """One streamed chat: a pump thread does the HTTP work, ``drain`` yields in the caller's thread.

    A provider says what to send (``request_args``), how to read a 200 stream (``read``, passing
    text on with ``emit``) and what a non-200 status means (``status_failure``)."""

    provider = "model"  # for "unexpected error talking to ..."
    connect_hint = ""  # added to "could not connect to ..."
    timeout_hint = ""  # added to the "(timeout, llm.timeout" note

    def __init__(
        self, settings: LLMSettings, client: httpx.Client, server: str, request: ChatRequest, cancel: CancelToken
    ) -> None:
        self.settings = settings
        self.client = client
        self.server = server  # "the Ollama server at http://..." in messages
        self.request = request
        self.record: LLMCallRecord = request.record  # type: ignore[assignment]  # set in __post_init__
        self.cancel = cancel
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stopped = threading.Event()  # the caller is gone: the pump should quit
        self.lock = threading.Lock()  # guards ``response`` between the pump and ``abort``
        self.response: httpx.Response | None = None
        self.sent_content = False

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

    def emit(self, text: str) -> None:
        if text:
            self.sent_content = True
            self.events.put(("chunk", text))

    @property
    def stage(self) -> str:
        return "mid-answer" if self.sent_content else "before answering"

    # -- caller side

    def drain(self) -> Iterator[str]:
        """Yield chunks from the pump; raise its error, or ``RoundCancelled`` on cancel."""
        started = time.monotonic()
        self.record.model = self.settings.model
        threading.Thread(target=self._pump, name=f"{self.provider.lower()}-pump", daemon=True).start()
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
        """Tell the pump to quit and unblock its read by shutting the socket down (safe across threads)."""
        self.stopped.set()
        with self.lock:
            response = self.response
            if response is None or response.is_closed:
                return  # finished: the connection may be back in the pool, leave it alone
            network = response.extensions.get("network_stream")
            sock = network.get_extra_info("socket") if network is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _on_cancel(self) -> None:
        """Runs in the cancelling thread: wake the caller and unblock the pump's read."""
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
            what = f"{type(exc).__name__}: {snippet(exc)}"
            outcome = ("error", LLMError(f"unexpected error talking to {self.provider}: {what}"))
        finally:
            self.events.put(outcome)

    def _attempts(self) -> None:
        """Run attempts until one succeeds, the failure is final, or the caller is gone."""
        retries_left = self.settings.max_retries
        backoff = self.settings.retry_backoff
        attempt = 0
        while not self.stopped.is_set():
            attempt += 1
            self.record.attempts = attempt
            try:
                self._attempt()
                return
            except Retry as retry:
                if retry.free:
                    continue
                if retries_left == 0:
                    message = retry.message if attempt == 1 else f"{retry.message} (gave up after {attempt} attempts)"
                    raise LLMError(message) from None
                retries_left -= 1
                delay = retry.retry_after if retry.retry_after is not None else backoff
                backoff *= 2
                if self.cancel.wait(min(delay, BACKOFF_CAP_S)):
                    return

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
