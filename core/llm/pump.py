"""One streamed model call as every backend runs it: a pump thread, its cancel, its retries.

A pump thread does the blocking HTTP work and feeds a queue that ``drain`` empties in the caller's
thread, so the caller stops at once on cancel even while the HTTP client is blocked; the cancel
callback shuts the socket down, which unblocks the pump and shows the server a disconnect. Retries
are our own cancellable loop with ``llm.max_retries`` and ``llm.retry_backoff`` (``Retry-After``
wins when the server sends one): the call record needs the attempt count, and a connection that
dropped before the first chunk is worth another try, which no client's built-in retries offer.

``PumpedCall`` is the shared part; a transport subclasses it with one attempt (``_attempt``) and
the response a cancel must cut (``live_response``): the OpenAI client's stream
(``openai_backend``) or a plain httpx stream (``http_stream``, for Ollama, Anthropic, Gemini).
"""

from __future__ import annotations

import abc
import email.utils
import queue
import socket
import threading
import time
from typing import Any, Iterator

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMCallRecord, LLMError

BACKOFF_CAP_S = 30.0  # longest wait between two attempts, whatever the server's Retry-After says
_SNIPPET = 200  # characters of a server's error message shown to users


class Retry(Exception):
    """An attempt failed in a way worth another try."""

    def __init__(self, message: str, retry_after: float | None = None, free: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.free = free  # retry at once without spending the retry budget (a request option dropped)


def retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (number or HTTP date), if present."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def snippet(text: object) -> str:
    """A server's text on one line, cut to a length a user can read in a message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _SNIPPET else flat[: _SNIPPET - 1] + "…"


class PumpedCall(abc.ABC):
    """One streamed chat: ``drain`` yields chunks in the caller's thread while a pump thread runs
    attempts (``_attempt``) until one succeeds, the failure is final, or the caller is gone."""

    provider = "model"  # "unexpected error talking to ..."; the pump thread's name

    def __init__(self, settings: LLMSettings, request: ChatRequest, cancel: CancelToken) -> None:
        self.settings = settings
        self.request = request
        self.record: LLMCallRecord = request.record  # type: ignore[assignment]  # set in __post_init__
        self.cancel = cancel
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stopped = threading.Event()  # the caller is gone: the pump should quit
        self.lock = threading.Lock()  # guards the live response between the pump and ``abort``
        self.sent_content = False

    @abc.abstractmethod
    def _attempt(self) -> None:
        """One request, its stream read to the end (``emit`` the text); every failure a ``Retry``
        or an ``LLMError``. Returns early once ``self.stopped`` is set."""

    @abc.abstractmethod
    def live_response(self) -> Any:
        """The response being read now, or None (called under ``self.lock``), for a cancel to cut:
        an ``httpx.Response``, or the OpenAI client's (its own httpx build, hence ``Any``)."""

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
            response = self.live_response()
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
