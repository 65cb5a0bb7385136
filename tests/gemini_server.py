"""A scripted Gemini API for tests: real HTTP on 127.0.0.1 (tests/fake_http.py).

``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` answers with server-sent events,
``data: {...}`` blocks separated by CRLF as Google's are, each a ``GenerateContentResponse``
(``candidates[0].content.parts[].text``; the last with ``finishReason`` and the whole
``usageMetadata``); ``:generateContent`` answers with one such object. As the real API does, a
wrong ``x-goog-api-key`` is an HTTP 400 with reason ``API_KEY_INVALID`` and an unknown model a
404 (no reply taken)::

    gemini.push(Chat('{"a": 1}', chunks=4), Error(429, "RESOURCE_EXHAUSTED", retry_delay="0s"))
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import pytest

from core.config import LLMSettings
from tests.fake_http import FakeHandler, FakeServer, Seen, Stall, split

KEY = "AIza-test"
_ROUTE = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<method>streamGenerateContent|generateContent)$")


@dataclass
class Chat:
    """A streamed answer of ``text`` in ``chunks`` events; ``delay`` before each event after the
    first, ``first_delay`` before the first; ``drop_after=k`` closes the connection after k events;
    ``error_after=k`` sends an error object (503 UNAVAILABLE) after k events."""

    text: str
    chunks: int = 3
    delay: float = 0.0
    first_delay: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    prompt_tokens: int = 31
    candidates_tokens: int = 9
    thoughts_tokens: int | None = None
    finish_reason: str = "STOP"


@dataclass
class Error:
    """An HTTP error with Google's body, ``{"error": {"code", "message", "status", "details"}}``;
    ``retry_delay`` adds a ``RetryInfo`` detail, as Google's 429s carry."""

    code: int
    status: str = "INTERNAL"
    message: str = "scripted error"
    retry_delay: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


Reply = Union[Chat, Error, Stall]


class _Handler(FakeHandler):
    server: Any

    def route(self, seen: Seen) -> None:
        fake: FakeGemini = self.server.fake
        found = _ROUTE.match(seen.path)
        if found is None:
            fake.record(seen)
            self._error(404, "NOT_FOUND", f"no route {seen.path}")
        elif seen.headers.get("x-goog-api-key") != fake.key:
            fake.record(seen)
            reason = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            self._error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [reason])
        elif found["model"] not in fake.models:
            fake.record(seen)
            model = found["model"]
            self._error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta")
        else:
            streamed = found["method"] == "streamGenerateContent" and seen.query.get("alt") == "sse"
            self._reply(fake.record(seen, takes_reply=True), found["model"], streamed)

    def _reply(self, reply: Reply | None, model: str, streamed: bool) -> None:
        if reply is None:
            self._error(500, "INTERNAL", "fake gemini: no reply queued")
        elif isinstance(reply, Error):
            details = []
            if reply.retry_delay is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": reply.retry_delay})
            self._error(reply.code, reply.status, reply.message, details, reply.headers)
        elif isinstance(reply, Stall):
            self.pause(reply.seconds)
            self.drop()
        elif streamed:
            self._stream(reply, model)
        else:
            self.send_json(200, _response(reply, model, reply.text, last=True))

    def _stream(self, chat: Chat, model: str) -> None:
        self.start_chunked("text/event-stream")
        pieces = split(chat.text, chat.chunks)
        for index, piece in enumerate(pieces):
            self.pause(chat.first_delay if index == 0 else chat.delay)
            if chat.drop_after == index:
                self.drop()
                return
            if chat.error_after == index:
                self._data({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
                self.end_chunks()
                return
            self._data(_response(chat, model, piece, last=index == len(pieces) - 1))
        self.end_chunks()

    def _data(self, payload: dict[str, Any]) -> None:
        self.chunk(f"data: {json.dumps(payload)}\r\n\r\n".encode())

    def _error(
        self,
        code: int,
        status: str,
        message: str,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error = {"code": code, "message": message, "status": status, "details": details or []}
        self.send_json(code, {"error": error}, headers)


def _response(chat: Chat, model: str, text: str, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    usage: dict[str, Any] = {"promptTokenCount": chat.prompt_tokens}
    if last:
        candidate["finishReason"] = chat.finish_reason
        usage["candidatesTokenCount"] = chat.candidates_tokens
        if chat.thoughts_tokens is not None:
            usage["thoughtsTokenCount"] = chat.thoughts_tokens
        usage["totalTokenCount"] = chat.prompt_tokens + chat.candidates_tokens + (chat.thoughts_tokens or 0)
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": f"{model}-001"}


class FakeGemini(FakeServer[Reply]):
    """The fake Gemini API: replies queued; ``key`` and ``models`` checked first."""

    handler = _Handler
    thread_name = "fake-gemini"

    def __init__(self) -> None:
        super().__init__()
        self.key = KEY
        self.models = {"gemini-test"}

    def stream_path(self, model: str = "gemini-test") -> str:
        return f"/v1beta/models/{model}:streamGenerateContent"

    def settings(self, **overrides: Any) -> LLMSettings:
        values: dict[str, Any] = dict(
            api_type="google_genai",
            api_base=self.base,
            api_key=self.key,
            model="gemini-test",
            timeout=5.0,
            connect_timeout=2.0,
            max_retries=2,
            retry_backoff=0.01,
        )
        values.update(overrides)
        return LLMSettings(**values)


@pytest.fixture(scope="module", name="gemini")
def gemini_fixture() -> Iterator[FakeGemini]:
    """One started fake per test module, stopped (threads joined) at teardown."""
    fake = FakeGemini().start()
    yield fake
    fake.stop()
