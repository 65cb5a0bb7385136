"""Streaming chat completions over the official ``openai`` client.

Covers OpenAI itself, any OpenAI-compatible ``api_base`` (Ollama, vLLM, LM Studio, llama.cpp) and
Azure OpenAI. Each call runs its blocking HTTP work on a small "pump" thread that feeds a queue;
the caller's generator drains the queue. That way the caller can stop at once on cancel even while
the HTTP client is blocked (waiting for headers or for the next bytes), and the cancel token's
callback unblocks the pump by shutting the socket down, which the server sees as a disconnect.

Retries are our own loop (the client's ``max_retries`` is 0): we need the attempt count for the
call record, ``llm.retry_backoff`` timing, a cancellable backoff wait, and retrying a connection
that dropped before the first chunk, none of which the client's built-in retries offer.
"""

from __future__ import annotations

import email.utils
import json
import os
import queue
import socket
import threading
import time
from typing import Any, Iterator

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMCallRecord, LLMError
from core.llm.sampling import supported_options

_BACKOFF_CAP_S = 30.0  # longest wait between two attempts, whatever the server's Retry-After says
_SNIPPET = 200  # characters of a server's error message shown to users
_RETRY_STATUSES = {408, 409, 429}
# The chat completions API has every sampling key but top_k.
_OPENAI_SAMPLING = frozenset({"top_p", "seed", "stop_token", "frequency_penalty", "presence_penalty"})


class OpenAIBackend(LLMBackend):
    """``LLMBackend`` for ``api_type`` "openai" (incl. compatible servers), "azure" and "azure_ad"."""

    sampling_keys: frozenset[str] = _OPENAI_SAMPLING  # a compatible provider may accept more or fewer

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        api_type = settings.resolved_api_type
        self.name = api_type if api_type in ("azure", "azure_ad") else "openai"
        self._client = _make_client(settings, self.name)
        # Some compatible servers reject these with a 400; learned once per backend.
        self.send_stream_options = True
        self.send_response_format = True

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        """Yield the answer's text chunks; see ``_Call`` for the threading."""
        cancel.raise_if_cancelled()
        yield from _Call(self, request, cancel).drain()

    def close(self) -> None:
        self._client.close()

    # -- used by _Call

    @property
    def client(self) -> openai.OpenAI:
        return self._client

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for one attempt."""
        s = self.settings
        params: dict[str, Any] = {
            "model": s.model,
            "messages": request.messages,
            "stream": True,
            "temperature": s.temperature,
        }
        if s.max_tokens:
            params["max_tokens"] = s.max_tokens
        for key, value in supported_options(s, self.name, self.sampling_keys).items():
            params["stop" if key == "stop_token" else key] = value
        if self.send_stream_options:
            params["stream_options"] = {"include_usage": True}
        if request.json_mode and s.response_format == "json_object" and self.send_response_format:
            params["response_format"] = {"type": "json_object"}
        return params

    def drop_rejected_option(self, error: openai.APIStatusError, params: dict[str, Any]) -> bool:
        """After a 400 naming an optional parameter we sent, stop sending it; True if one was dropped."""
        text = f"{error.message} {error.body}".lower()
        dropped = False
        if "stream_options" in params and "stream_options" in text:
            self.send_stream_options = False
            dropped = True
        if "response_format" in params and "response_format" in text:
            self.send_response_format = False
            dropped = True
        return dropped

    def where(self) -> str:
        """The server, for error messages."""
        return self.settings.api_base or "api.openai.com"


def _make_client(settings: LLMSettings, api_type: str) -> openai.OpenAI:
    """Build the client with our timeouts and no built-in retries."""
    timeout = openai.Timeout(settings.timeout, connect=settings.connect_timeout)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    try:
        if api_type in ("azure", "azure_ad"):
            if not settings.api_base:
                raise LLMError("llm.api_base must be set to the Azure OpenAI endpoint")
            if api_type == "azure_ad":  # a bearer token from azure-identity instead of a key
                from core.llm.azure_ad import token_provider

                auth: dict[str, Any] = {"azure_ad_token_provider": token_provider(settings)}
            else:
                auth = {"api_key": key or os.environ.get("AZURE_OPENAI_API_KEY")}
            return openai.AzureOpenAI(
                azure_endpoint=settings.api_base,
                azure_deployment=settings.azure_deployment or settings.model,
                api_version=settings.api_version,
                **auth,
                timeout=timeout,
                max_retries=0,
            )
        # Local compatible servers need no key, but the client insists on one.
        return openai.OpenAI(
            base_url=settings.api_base or None,
            api_key=key or os.environ.get("OPENAI_API_KEY") or "no-key",
            timeout=timeout,
            max_retries=0,
        )
    except openai.OpenAIError as exc:
        raise LLMError(f"cannot set up the {api_type} client: {exc}") from None


class _Retry(Exception):
    """An attempt failed in a way worth another try."""

    def __init__(self, message: str, retry_after: float | None = None, free: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.free = free  # retry at once without spending the retry budget (a dropped option)


class _Call:
    """One streamed completion: a pump thread does the HTTP work, ``drain`` yields in the caller's thread."""

    def __init__(self, backend: OpenAIBackend, request: ChatRequest, cancel: CancelToken) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.request = request
        self.record: LLMCallRecord = request.record  # type: ignore[assignment]  # set in __post_init__
        self.cancel = cancel
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stopped = threading.Event()  # the caller is gone: the pump should quit
        self.lock = threading.Lock()  # guards ``stream`` between the pump and ``abort``
        self.stream: openai.Stream[Any] | None = None
        self.sent_content = False

    # -- caller side

    def drain(self) -> Iterator[str]:
        """Yield chunks from the pump; raise its error, or ``RoundCancelled`` on cancel."""
        started = time.monotonic()
        self.record.model = self.settings.model
        threading.Thread(target=self._pump, name="llm-pump", daemon=True).start()
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
        """Tell the pump to quit and unblock its read: shut the socket down (safe across threads)."""
        self.stopped.set()
        with self.lock:
            stream = self.stream
            if stream is None or stream.response.is_closed:
                return  # finished: the connection may be back in the pool, leave it alone
            network = stream.response.extensions.get("network_stream")
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
            outcome = ("error", LLMError(f"unexpected error from the model client: {_short(exc)}"))
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
            except _Retry as retry:
                if retry.free:
                    continue
                if retries_left == 0:
                    raise LLMError(_gave_up(retry.message, attempt)) from None
                retries_left -= 1
                delay = retry.retry_after if retry.retry_after is not None else backoff
                backoff *= 2
                if self.cancel.wait(min(delay, _BACKOFF_CAP_S)):
                    return

    def _attempt(self) -> None:
        """One HTTP request; translate every failure into ``_Retry`` or ``LLMError``."""
        params = self.backend.params(self.request)
        try:
            # ``client.post`` is what ``chat.completions.create`` calls, minus its walk over the
            # request's type hints (~5 ms per call for a prompt of twenty messages): our params are
            # plain JSON already. Azure's client still maps the path to the deployment.
            stream = self.backend.client.post(
                "/chat/completions",
                body=params,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=openai.Stream[ChatCompletionChunk],
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if self.backend.drop_rejected_option(exc, params):
                raise _Retry("option rejected", free=True) from None
            raise self._failure(exc) from None
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc) from None
        try:
            self._read(stream)
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc) from None

    def _read(self, stream: openai.Stream[Any]) -> None:
        with self.lock:
            self.stream = stream
        try:
            if self.stopped.is_set():
                return
            chunks = 0
            for chunk in stream:
                chunks += 1
                self._take(chunk)
                if self.stopped.is_set():
                    return
            if chunks == 0:
                raise LLMError(
                    f"the model server at {self.backend.where()} sent no completion data "
                    "(is llm.api_base an OpenAI-compatible endpoint?)"
                )
        finally:
            with self.lock:
                self.stream = None
            stream.close()

    def _take(self, chunk: Any) -> None:
        """Record usage and model; pass content to the caller."""
        if getattr(chunk, "model", None):
            self.record.model = chunk.model
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.record.prompt_tokens = usage.prompt_tokens
            self.record.completion_tokens = usage.completion_tokens
        for choice in chunk.choices or ():
            text = choice.delta.content if choice.delta is not None else None
            if text:
                self.sent_content = True
                self.events.put(("chunk", text))

    def _failure(self, exc: Exception) -> Exception:
        """Classify an exception from the client: ``_Retry`` if worth another try, else ``LLMError``."""
        if isinstance(exc, (LLMError, _Retry)):
            return exc
        if self.stopped.is_set():
            return LLMError("the model call was stopped")  # the caller is gone and raises its own
        where = self.backend.where()
        if isinstance(exc, openai.APIStatusError):
            return self._status_failure(exc)
        if isinstance(exc, openai.APITimeoutError):
            if _caused_by(exc, "ConnectTimeout"):
                return _Retry(
                    f"could not connect to the model server at {where} "
                    f"within {self.settings.connect_timeout:g} s (llm.connect_timeout)"
                )
            stage = "mid-answer" if self.sent_content else "before answering"
            return LLMError(
                f"the model server at {where} sent nothing for {self.settings.timeout:g} s "
                f"{stage} (timeout, llm.timeout)"
            )
        if isinstance(exc, openai.APIConnectionError):
            if _caused_by(exc, "ConnectError"):
                return _Retry(f"could not connect to the model server at {where}")
            if self.sent_content:
                return LLMError(f"the connection to the model server at {where} dropped mid-answer")
            return _Retry(f"the model server at {where} closed the connection before answering")
        if isinstance(exc, openai.APIError):
            return LLMError(f"the model server reported an error: {_snippet(exc.message)}")
        if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError, AttributeError, TypeError)):
            return LLMError(
                f"the model server at {where} sent a malformed stream (is llm.api_base an OpenAI-compatible endpoint?)"
            )
        return LLMError(f"model call failed: {_short(exc)}")

    def _status_failure(self, exc: openai.APIStatusError) -> Exception:
        code = exc.status_code
        detail = _snippet(exc.message)
        if code == 429:
            return _Retry(
                f"the model server is rate-limiting requests (HTTP 429): {detail}", _retry_after(exc.response.headers)
            )
        if code >= 500 or code in _RETRY_STATUSES:
            return _Retry(f"the model server failed with HTTP {code}: {detail}", _retry_after(exc.response.headers))
        if code in (401, 403):
            key = "the llm.aad_* sign-in and the identity's role" if self.backend.name == "azure_ad" else "llm.api_key"
            return LLMError(f"the model server refused the credentials (HTTP {code}); check {key}: {detail}")
        if code == 404:
            return LLMError(
                f"model or endpoint not found (HTTP 404); check llm.model, llm.api_base"
                f"{' and llm.azure_deployment' if self.backend.name.startswith('azure') else ''}: {detail}"
            )
        return LLMError(f"the model server rejected the request (HTTP {code}): {detail}")


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (number or HTTP date), if present."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _caused_by(exc: BaseException, name: str) -> bool:
    """Whether the chain of causes holds an exception class named ``name`` (httpx or httpx2)."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(10):  # chains are short; the bound guards against a cycle
        if seen is None:
            return False
        if any(cls.__name__ == name for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _gave_up(message: str, attempts: int) -> str:
    return message if attempts == 1 else f"{message} (gave up after {attempts} attempts)"


def _snippet(text: object) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _SNIPPET else flat[: _SNIPPET - 1] + "…"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_snippet(exc)}"
