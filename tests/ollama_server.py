"""A scripted Ollama server (native API) for tests, plus OpenAI's embedding routes.

Real HTTP on 127.0.0.1 in a background thread, speaking Ollama's wire format: ``POST /api/chat``
streams newline-delimited JSON objects (``{"message": {"content": ...}, "done": false}`` ... and a
last ``done: true`` object with ``prompt_eval_count`` / ``eval_count``), or answers with one object
when the request says ``"stream": false``; errors are ``{"error": "..."}`` bodies. Chat replies are
queued, one per request, as in tests/llm_server.py::

    ollama.push(Chat('{"a": 1}', chunks=4), Error(404, 'model "x" not found, try pulling it first'))

Embeddings need no script: ``POST /api/embed`` (Ollama), ``POST /v1/embeddings`` (OpenAI) and
``POST /openai/deployments/{dep}/embeddings`` (Azure) answer ``fake_vector(text)`` for every input,
so a test can check that each text got its own vector; a model named ``missing`` is a 404.
``POST /api/show`` knows the models in ``models`` (what ``weaver check`` asks).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import pytest

from core.config import LLMSettings
from tests.fake_http import FakeHandler, FakeServer, Seen, Stall, split

FAKE_DIMENSIONS = 8
_AZURE_EMBEDDINGS = re.compile(r"^/openai/deployments/(?P<dep>[^/]+)/embeddings$")


@dataclass
class Chat:
    """A 200 NDJSON stream of ``text`` in ``chunks`` pieces; ``delay`` before each piece after the
    first, ``first_delay`` before the first; ``drop_after=k`` closes the connection after k pieces;
    ``error_after=k`` sends an ``{"error": ...}`` line after k pieces (Ollama's mid-stream failure)."""

    text: str
    chunks: int = 3
    delay: float = 0.0
    first_delay: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    prompt_eval_count: int = 13
    eval_count: int = 5
    model: str = "llama3.2:latest"


@dataclass
class Error:
    """An HTTP error with Ollama's body, ``{"error": message}``."""

    code: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


Reply = Union[Chat, Error, Stall]


def fake_vector(text: str) -> list[float]:
    """The deterministic vector every fake embedding route answers for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255 - 0.5, 4) for b in digest[:FAKE_DIMENSIONS]]


class _Handler(FakeHandler):
    server: Any

    def route(self, seen: Seen) -> None:
        fake, body = self.server.fake, seen.body
        if seen.path == "/api/chat":
            self._chat(fake.record(seen, takes_reply=True), body if isinstance(body, dict) else {})
        elif seen.path == "/api/show":
            fake.record(seen)
            if body.get("model") in fake.models:
                self.send_json(200, {"details": {"family": "llama"}, "model_info": {}})
            else:
                self.send_json(404, {"error": f"model '{body.get('model')}' not found"})
        elif seen.path == "/api/embed":
            fake.record(seen)
            self._embed(body, openai=False)
        elif seen.path == "/v1/embeddings" or _AZURE_EMBEDDINGS.match(seen.path):
            fake.record(seen)
            self._embed(body, openai=True)
        else:
            self.send_json(404, {"error": f"no route {seen.path}"})

    # -- routes

    def _chat(self, reply: Reply | None, body: dict[str, Any]) -> None:
        if reply is None:
            self.send_json(500, {"error": "fake ollama: no reply queued"})
        elif isinstance(reply, Error):
            self.send_json(reply.code, {"error": reply.message}, reply.headers)
        elif isinstance(reply, Stall):
            self.pause(reply.seconds)
            self.drop()
        elif body.get("stream") is False:
            self.send_json(200, self._done(reply, {"role": "assistant", "content": reply.text}))
        else:
            self._stream(reply)

    def _stream(self, chat: Chat) -> None:
        self.start_chunked("application/x-ndjson")
        for index, piece in enumerate(split(chat.text, chat.chunks)):
            self.pause(chat.first_delay if index == 0 else chat.delay)
            if chat.drop_after == index:
                self.drop()
                return
            if chat.error_after == index:
                self._line({"error": "scripted failure mid-stream"})
                self.end_chunks()
                return
            self._line(
                {
                    "model": chat.model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
            )
        self._line(self._done(chat, {"role": "assistant", "content": ""}))
        self.end_chunks()

    def _done(self, chat: Chat, message: dict[str, str]) -> dict[str, Any]:
        return {
            "model": chat.model,
            "created_at": _now(),
            "message": message,
            "done": True,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "prompt_eval_count": chat.prompt_eval_count,
            "eval_count": chat.eval_count,
        }

    def _embed(self, body: Any, openai: bool) -> None:
        model = body.get("model") if isinstance(body, dict) else None
        if model == "missing":
            message = f'model "{model}" not found, try pulling it first'
            self.send_json(404, {"error": {"message": message}} if openai else {"error": message})
            return
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        vectors = [fake_vector(str(t)) for t in texts]
        if not openai:
            self.send_json(200, {"model": model, "embeddings": vectors, "prompt_eval_count": len(texts)})
            return
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if as_base64 else v,
            }
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        self.send_json(200, {"object": "list", "data": data, "model": model, "usage": usage})

    def _line(self, payload: dict[str, Any]) -> None:
        self.chunk(json.dumps(payload).encode() + b"\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeOllama(FakeServer[Reply]):
    """The fake Ollama: chat replies queued, embeddings computed, ``models`` known to ``/api/show``."""

    handler = _Handler
    thread_name = "fake-ollama"

    def __init__(self) -> None:
        super().__init__()
        self.models = {"llama3.2", "nomic-embed-text"}

    def settings(self, **overrides: Any) -> LLMSettings:
        values: dict[str, Any] = dict(
            api_type="ollama",
            api_base=self.base,
            model="llama3.2",
            timeout=5.0,
            connect_timeout=2.0,
            max_retries=2,
            retry_backoff=0.01,
        )
        values.update(overrides)
        return LLMSettings(**values)


@pytest.fixture(scope="module", name="ollama")
def ollama_fixture() -> Iterator[FakeOllama]:
    """One started fake per test module, stopped (threads joined) at teardown."""
    fake = FakeOllama().start()
    yield fake
    fake.stop()
