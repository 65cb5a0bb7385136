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
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Union
from urllib.parse import parse_qsl, urlsplit

import pytest

from core.config import LLMSettings

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


@dataclass
class Stall:
    """Accept the request, then send nothing for ``seconds`` and close."""

    seconds: float


Reply = Union[Chat, Error, Stall]


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    disconnected: threading.Event = field(default_factory=threading.Event)


def fake_vector(text: str) -> list[float]:
    """The deterministic vector every fake embedding route answers for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255 - 0.5, 4) for b in digest[:FAKE_DIMENSIONS]]


class _Gone(Exception):
    """The client left, or the server is stopping."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet."""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.close_connection = True
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        seen = Seen(parts.path, dict(parse_qsl(parts.query)), {k.lower(): v for k, v in self.headers.items()}, body)
        fake = self.server.fake
        try:
            if parts.path == "/api/chat":
                self._chat(fake.record(seen, takes_reply=True), body if isinstance(body, dict) else {})
            elif parts.path == "/api/show":
                fake.record(seen)
                if body.get("model") in fake.models:
                    self._json(200, {"details": {"family": "llama"}, "model_info": {}})
                else:
                    self._json(404, {"error": f"model '{body.get('model')}' not found"})
            elif parts.path == "/api/embed":
                fake.record(seen)
                self._embed(body, openai=False)
            elif parts.path == "/v1/embeddings" or _AZURE_EMBEDDINGS.match(parts.path):
                fake.record(seen)
                self._embed(body, openai=True)
            else:
                self._json(404, {"error": f"no route {parts.path}"})
        except _Gone:
            seen.disconnected.set()

    # -- routes

    def _chat(self, reply: Reply | None, body: dict[str, Any]) -> None:
        if reply is None:
            self._json(500, {"error": "fake ollama: no reply queued"})
        elif isinstance(reply, Error):
            self._json(reply.code, {"error": reply.message}, reply.headers)
        elif isinstance(reply, Stall):
            self._pause(reply.seconds)
            self._drop()
        elif body.get("stream") is False:
            self._json(200, self._done(reply, {"role": "assistant", "content": reply.text}))
        else:
            self._stream(reply)

    def _stream(self, chat: Chat) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for index, piece in enumerate(_split(chat.text, chat.chunks)):
            self._pause(chat.first_delay if index == 0 else chat.delay)
            if chat.drop_after == index:
                self._drop()
                return
            if chat.error_after == index:
                self._line({"error": "scripted failure mid-stream"})
                self._write(b"0\r\n\r\n")
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
        self._write(b"0\r\n\r\n")

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
            self._json(404, {"error": {"message": message}} if openai else {"error": message})
            return
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        vectors = [fake_vector(str(t)) for t in texts]
        if not openai:
            self._json(200, {"model": model, "embeddings": vectors, "prompt_eval_count": len(texts)})
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
        self._json(200, {"object": "list", "data": data, "model": model, "usage": usage})

    # -- plumbing

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(data)

    def _line(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise _Gone from exc

    def _pause(self, seconds: float) -> None:
        """Wait, but notice at once if the client hangs up or the server stops."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection, self.server.wake_r], [], [], left)
            if self.server.wake_r in readable:
                raise _Gone("server stopping")
            if readable:
                try:
                    closed = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    closed = True
                if closed:
                    raise _Gone("client closed the connection")

    def _drop(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _split(text: str, chunks: int) -> list[str]:
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    fake: "FakeOllama"
    wake_r: socket.socket


class FakeOllama:
    """Owns the server thread, the chat reply queue and the request log."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._replies: deque[Reply] = deque()
        self._seen: list[Seen] = []
        self.models = {"llama3.2", "nomic-embed-text"}
        self._wake_r, self._wake_w = socket.socketpair()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._httpd.wake_r = self._wake_r
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-ollama", daemon=True
        )

    def start(self) -> "FakeOllama":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._wake_w.send(b"x")
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

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

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def record(self, seen: Seen, takes_reply: bool = False) -> Reply | None:
        with self._lock:
            reply = self._replies.popleft() if takes_reply and self._replies else None
            self._seen.append(seen)
            self._lock.notify_all()
            return reply

    def requests(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path is None or s.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 5.0) -> list[Seen]:
        with self._lock:
            if not self._lock.wait_for(lambda: len([s for s in self._seen if s.path == path]) >= count, timeout):
                raise TimeoutError(f"expected {count} requests to {path}")
            return [s for s in self._seen if s.path == path]


@pytest.fixture(scope="module", name="ollama")
def ollama_fixture() -> Iterator[FakeOllama]:
    """One started fake per test module, stopped (threads joined) at teardown."""
    fake = FakeOllama().start()
    yield fake
    fake.stop()
