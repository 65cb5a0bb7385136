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

import json
import os
from typing import Any, Iterator

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.cancel import CancelToken
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMError
from core.llm.pump import PumpedCall, Retry, retry_after, snippet
from core.llm.sampling import supported_options

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


class _Call(PumpedCall):
    """One streamed completion through the OpenAI client (``core.llm.pump`` has the threading)."""

    provider = "the model client"

    def __init__(self, backend: OpenAIBackend, request: ChatRequest, cancel: CancelToken) -> None:
        super().__init__(backend.settings, request, cancel)
        self.backend = backend
        self.stream: openai.Stream[Any] | None = None

    def live_response(self) -> Any:
        return self.stream.response if self.stream is not None else None

    def _attempt(self) -> None:
        """One HTTP request; translate every failure into ``Retry`` or ``LLMError``."""
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
                raise Retry("option rejected", free=True) from None
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
            self.emit(text or "")

    def _failure(self, exc: Exception) -> Exception:
        """Classify an exception from the client: ``Retry`` if worth another try, else ``LLMError``."""
        if isinstance(exc, (LLMError, Retry)):
            return exc
        if self.stopped.is_set():
            return LLMError("the model call was stopped")  # the caller is gone and raises its own
        where = self.backend.where()
        if isinstance(exc, openai.APIStatusError):
            return self._status_failure(exc)
        if isinstance(exc, openai.APITimeoutError):
            if _caused_by(exc, "ConnectTimeout"):
                return Retry(
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
                return Retry(f"could not connect to the model server at {where}")
            if self.sent_content:
                return LLMError(f"the connection to the model server at {where} dropped mid-answer")
            return Retry(f"the model server at {where} closed the connection before answering")
        if isinstance(exc, openai.APIError):
            return LLMError(f"the model server reported an error: {snippet(exc.message)}")
        if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError, AttributeError, TypeError)):
            return LLMError(
                f"the model server at {where} sent a malformed stream (is llm.api_base an OpenAI-compatible endpoint?)"
            )
        return LLMError(f"model call failed: {_short(exc)}")

    def _status_failure(self, exc: openai.APIStatusError) -> Exception:
        code = exc.status_code
        detail = snippet(exc.message)
        if code == 429:
            return Retry(
                f"the model server is rate-limiting requests (HTTP 429): {detail}", retry_after(exc.response.headers)
            )
        if code >= 500 or code in _RETRY_STATUSES:
            return Retry(f"the model server failed with HTTP {code}: {detail}", retry_after(exc.response.headers))
        if code in (401, 403):
            key = "the llm.aad_* sign-in and the identity's role" if self.backend.name == "azure_ad" else "llm.api_key"
            return LLMError(f"the model server refused the credentials (HTTP {code}); check {key}: {detail}")
        if code == 404:
            return LLMError(
                f"model or endpoint not found (HTTP 404); check llm.model, llm.api_base"
                f"{' and llm.azure_deployment' if self.backend.name.startswith('azure') else ''}: {detail}"
            )
        return LLMError(f"the model server rejected the request (HTTP {code}): {detail}")


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


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {snippet(exc)}"
