"""A scripted OpenAI-compatible chat server for tests.

Real HTTP on 127.0.0.1 (a free port) in a background thread, so backends are tested through the
real ``openai`` client, sockets and timeouts instead of mocks. A test queues replies, one per
request, in order::

    llm_server.push(Answer('{"a": 1}', chunks=4), Status(429, headers={"Retry-After": "1"}))
    backend = OpenAIBackend(llm_server.openai_settings(max_retries=2))
    ...
    [req] = llm_server.wait_for_requests(1)
    assert req.body["stream"] is True and req.headers["authorization"] == "Bearer test-key"

Serves ``POST /v1/chat/completions`` (use ``base_url``) and the Azure route
``POST /openai/deployments/{dep}/chat/completions`` (use ``endpoint``). Streams use chunked
transfer encoding, so a connection dropped mid-stream is seen by the client as an error, as with a
real server. Every wait on the server side watches both the client socket (to record an early
disconnect) and a wake-up pipe (so ``stop()`` ends all handlers at once and joins them).
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Union
from urllib.parse import parse_qsl, urlsplit

import pytest

from core.config import LLMSettings

_AZURE_PATH = re.compile(r"^/openai/deployments/(?P<dep>[^/]+)/chat/completions$")
_OPENAI_PATH = "/v1/chat/completions"


# --------------------------------------------------------------------------------------- replies


@dataclass
class Answer:
    """A 200 SSE stream of ``text`` split into ``chunks`` deltas.

    ``delay`` is slept before every chunk after the first, ``first_delay`` before the first one
    (after the headers), ``end_delay`` before the stream is finished. ``drop_after=k`` closes the
    connection after k content chunks (0: right after the headers) without finishing the stream.
    A usage chunk is sent when the request asked for it (``stream_options.include_usage``), as
    OpenAI does.
    """

    text: str
    chunks: int = 3
    delay: float = 0.0
    first_delay: float = 0.0
    end_delay: float = 0.0
    drop_after: int | None = None
    prompt_tokens: int = 11
    completion_tokens: int = 7
    model: str = "scripted-model"


@dataclass
class Status:
    """An HTTP error with an OpenAI-style JSON error body, e.g. ``Status(429, headers={"Retry-After": "1"})``."""

    code: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """Accept the request, then send nothing for ``seconds`` and close the connection."""

    seconds: float


@dataclass
class Drop:
    """Close the connection without sending any response."""


@dataclass
class Raw:
    """Send ``body`` verbatim, e.g. garbage text where an SSE stream belongs."""

    body: str | bytes
    status: int = 200
    content_type: str = "text/event-stream"


Reply = Union[Answer, Status, Stall, Drop, Raw]


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``disconnected`` is set if the client left mid-reply."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or the raw text if it was not JSON
    reply: Reply | None = None
    deployment: str | None = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


# --------------------------------------------------------------------------------------- handler


class _Disconnected(Exception):
    """The client closed its end, or the server is stopping."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # safety net: a client that connects and never sends a request
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep test output clean."""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.close_connection = True
        parts = urlsplit(self.path)
        azure = _AZURE_PATH.match(parts.path)
        if parts.path != _OPENAI_PATH and not azure:
            self._send_json(404, {"error": {"message": f"no route {parts.path}", "type": "not_found"}})
            return
        recorded = self._record(parts.path, parts.query, azure.group("dep") if azure else None)
        try:
            self._play(recorded.reply, recorded)
        except _Disconnected:
            recorded.disconnected.set()
        finally:
            recorded.finished.set()

    # -- request side

    def _record(self, path: str, query: str, deployment: str | None) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        recorded = RecordedRequest(
            method=self.command,
            path=path,
            query=dict(parse_qsl(query)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            deployment=deployment,
        )
        self.server.scripted.record(recorded)
        return recorded

    # -- reply side

    def _play(self, reply: Reply | None, recorded: RecordedRequest) -> None:
        if reply is None:
            self._send_json(500, {"error": {"message": "scripted server: no reply queued"}})
        elif isinstance(reply, Answer):
            self._stream_answer(reply, recorded.body if isinstance(recorded.body, dict) else {})
        elif isinstance(reply, Status):
            error = {"error": {"message": reply.message, "type": "scripted", "code": str(reply.code)}}
            self._send_json(reply.code, error, reply.headers)
        elif isinstance(reply, Stall):
            self._pause(reply.seconds)
            self._drop()
        elif isinstance(reply, Drop):
            self._drop()
        elif isinstance(reply, Raw):
            body = reply.body.encode() if isinstance(reply.body, str) else reply.body
            self._send_bytes(reply.status, body, reply.content_type)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(body)

    def _stream_answer(self, answer: Answer, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self._flush()
        for index, piece in enumerate(_split(answer.text, answer.chunks)):
            self._pause(answer.first_delay if index == 0 else answer.delay)
            if answer.drop_after == index:
                self._drop()
                return
            delta: dict[str, str] = {"content": piece}
            if index == 0:
                delta["role"] = "assistant"
            self._event(_chunk(answer.model, [{"index": 0, "delta": delta, "finish_reason": None}]))
        if answer.drop_after is not None:
            self._drop()
            return
        self._pause(answer.end_delay)
        self._event(_chunk(answer.model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            }
            self._event(_chunk(answer.model, [], usage))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write(b"0\r\n\r\n")

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self._flush()
        except OSError as exc:
            raise _Disconnected from exc

    def _flush(self) -> None:
        try:
            self.wfile.flush()
        except OSError as exc:
            raise _Disconnected from exc

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, but notice at once if the client hangs up or the server stops."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection, self.server.wake_r], [], [], left)
            if self.server.wake_r in readable:
                raise _Disconnected("server stopping")
            if readable and _peer_closed(self.connection):
                raise _Disconnected("client closed the connection")

    def _drop(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _split(text: str, chunks: int) -> list[str]:
    """``text`` in ``chunks`` near-equal consecutive pieces (at least one piece)."""
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _chunk(model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    scripted: "ScriptedLLMServer"
    wake_r: socket.socket


# --------------------------------------------------------------------------------------- server


class ScriptedLLMServer:
    """Owns the HTTP server thread, the reply queue and the request log."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._replies: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.scripted = self
        self._httpd.wake_r = self._wake_r
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="llm-server", daemon=True
        )

    # -- lifecycle

    def start(self) -> "ScriptedLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake every handler, stop serving, join all threads; a second call does nothing (a test may
        stop the server midway, as a model going away)."""
        if self._wake_w.fileno() == -1:
            return
        self._wake_w.send(b"x")
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()

    # -- addresses

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        """The server root, as Azure's ``api_base``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style ``api_base`` (ends in ``/v1``)."""
        return f"{self.endpoint}/v1"

    def openai_settings(self, **overrides: Any) -> LLMSettings:
        """Settings pointing an ``openai`` backend here, with test-friendly retry timing."""
        values: dict[str, Any] = dict(
            api_type="openai",
            api_base=self.base_url,
            api_key="test-key",
            model="test-model",
            timeout=5.0,
            connect_timeout=2.0,
            max_retries=2,
            retry_backoff=0.01,
        )
        values.update(overrides)
        return LLMSettings(**values)

    def azure_settings(self, **overrides: Any) -> LLMSettings:
        """Settings pointing an ``azure`` backend here."""
        values: dict[str, Any] = dict(
            api_type="azure",
            api_base=self.endpoint,
            api_key="azure-key",
            model="gpt-4o",
            azure_deployment="my-deployment",
            api_version="2024-06-01",
            timeout=5.0,
            connect_timeout=2.0,
            max_retries=2,
            retry_backoff=0.01,
        )
        values.update(overrides)
        return LLMSettings(**values)

    # -- scripting

    def push(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next one (an empty queue answers 500)."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """Replies not yet used."""
        with self._lock:
            return len(self._replies)

    def record(self, request: RecordedRequest) -> None:
        """Called by the handler: log the request and hand it the next reply."""
        with self._lock:
            request.reply = self._replies.popleft() if self._replies else None
            self._requests.append(request)
            self._lock.notify_all()

    # -- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests arrived; raise ``TimeoutError`` otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"expected {count} requests, got {len(self._requests)}")
            return list(self._requests)


@pytest.fixture
def llm_server() -> Iterator[ScriptedLLMServer]:
    """A started scripted server, stopped (threads joined) at teardown."""
    server = ScriptedLLMServer().start()
    try:
        yield server
    finally:
        server.stop()
