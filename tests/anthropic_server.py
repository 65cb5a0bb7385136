"""A scripted Anthropic Messages API for tests: real HTTP on 127.0.0.1 (tests/fake_http.py).

``POST /v1/messages`` with ``"stream": true`` answers with Anthropic's server-sent events
(``message_start`` with ``usage.input_tokens``, ``content_block_start``, ``ping``, one
``content_block_delta`` per piece, ``content_block_stop``, ``message_delta`` with
``usage.output_tokens``, ``message_stop``); without it, one ``message`` object. As the real API
does, a wrong ``x-api-key`` is a 401 and an unknown model a 404 (no reply taken), a model in
``refuses_prefill`` answers a prefilled assistant turn with a 400, and one in
``one_of_temperature_top_p`` a request with both. Like a model continuing a
prefill, a scripted text that starts with the prefilled turn is streamed without it::

    anthropic.push(Chat('{"a": 1}', chunks=4), Error(529, "overloaded_error", "Overloaded"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import pytest

from core.config import LLMSettings
from tests.fake_http import FakeHandler, FakeServer, Seen, Stall, split

KEY = "sk-ant-test"


@dataclass
class Chat:
    """A streamed answer of ``text`` in ``chunks`` deltas; ``delay`` before each delta after the
    first, ``first_delay`` before the first; ``drop_after=k`` closes the connection after k deltas;
    ``error_after=k`` sends an ``error`` event (``overloaded_error``) after k deltas."""

    text: str
    chunks: int = 3
    delay: float = 0.0
    first_delay: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    input_tokens: int = 21
    output_tokens: int = 8
    stop_reason: str = "end_turn"


@dataclass
class Error:
    """An HTTP error with Anthropic's body, ``{"type": "error", "error": {"type": ..., "message": ...}}``."""

    code: int
    kind: str = "api_error"
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


Reply = Union[Chat, Error, Stall]


class _Handler(FakeHandler):
    server: Any

    def route(self, seen: Seen) -> None:
        fake: FakeAnthropic = self.server.fake
        body = seen.body if isinstance(seen.body, dict) else {}
        if seen.path != "/v1/messages":
            fake.record(seen)
            self._error(404, "not_found_error", f"no route {seen.path}")
        elif seen.headers.get("x-api-key") != fake.key:
            fake.record(seen)
            self._error(401, "authentication_error", "invalid x-api-key")
        elif body.get("model") not in fake.models:
            fake.record(seen)
            self._error(404, "not_found_error", f"model: {body.get('model')}")
        elif _prefill(body) and body.get("model") in fake.refuses_prefill:
            fake.record(seen)
            self._error(400, "invalid_request_error", "Prefilling assistant messages is not supported for this model.")
        elif {"temperature", "top_p"} <= body.keys() and body.get("model") in fake.one_of_temperature_top_p:
            fake.record(seen)
            message = "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
            self._error(400, "invalid_request_error", message)
        else:
            self._reply(fake.record(seen, takes_reply=True), body)

    def _reply(self, reply: Reply | None, body: dict[str, Any]) -> None:
        if reply is None:
            self._error(500, "api_error", "fake anthropic: no reply queued")
        elif isinstance(reply, Error):
            self._error(reply.code, reply.kind, reply.message, reply.headers)
        elif isinstance(reply, Stall):
            self.pause(reply.seconds)
            self.drop()
        else:
            text = reply.text.removeprefix(_prefill(body))
            if body.get("stream"):
                self._stream(reply, text, body)
            else:
                self.send_json(200, self._message(reply, body, [{"type": "text", "text": text}], reply.output_tokens))

    def _stream(self, chat: Chat, text: str, body: dict[str, Any]) -> None:
        self.start_chunked("text/event-stream")
        self._event("message_start", {"message": self._message(chat, body, [], 1)})
        self._event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        self._event("ping", {})
        for index, piece in enumerate(split(text, chat.chunks)):
            self.pause(chat.first_delay if index == 0 else chat.delay)
            if chat.drop_after == index:
                self.drop()
                return
            if chat.error_after == index:
                self._event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                self.end_chunks()
                return
            self._event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
        self._event("content_block_stop", {"index": 0})
        self._event(
            "message_delta",
            {
                "delta": {"stop_reason": chat.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": chat.output_tokens},
            },
        )
        self._event("message_stop", {})
        self.end_chunks()

    def _message(self, chat: Chat, body: dict[str, Any], content: list[Any], output_tokens: int) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": chat.stop_reason if content else None,
            "usage": {"input_tokens": chat.input_tokens, "output_tokens": output_tokens},
        }

    def _event(self, name: str, payload: dict[str, Any]) -> None:
        data = json.dumps({"type": name, **payload})
        self.chunk(f"event: {name}\ndata: {data}\n\n".encode())

    def _error(self, code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.send_json(code, {"type": "error", "error": {"type": kind, "message": message}}, headers)


def _prefill(body: dict[str, Any]) -> str:
    """The text of a last assistant turn (what the model is to continue), else ""."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    return str(last.get("content") or "") if last.get("role") == "assistant" else ""


class FakeAnthropic(FakeServer[Reply]):
    """The fake Messages API: replies queued; ``key``, ``models`` and ``refuses_prefill`` checked first."""

    handler = _Handler
    thread_name = "fake-anthropic"

    def __init__(self) -> None:
        super().__init__()
        self.key = KEY
        self.models = {"claude-test", "claude-no-prefill", "claude-one-sampler"}
        self.refuses_prefill = {"claude-no-prefill", "claude-one-sampler"}
        self.one_of_temperature_top_p = {"claude-one-sampler"}

    def settings(self, **overrides: Any) -> LLMSettings:
        values: dict[str, Any] = dict(
            api_type="anthropic",
            api_base=self.base,
            api_key=self.key,
            model="claude-test",
            timeout=5.0,
            connect_timeout=2.0,
            max_retries=2,
            retry_backoff=0.01,
        )
        values.update(overrides)
        return LLMSettings(**values)


@pytest.fixture(scope="module", name="anthropic")
def anthropic_fixture() -> Iterator[FakeAnthropic]:
    """One started fake per test module, stopped (threads joined) at teardown."""
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()
