"""What every fake model server of the tests shares (Ollama, Anthropic, Gemini): real HTTP on
127.0.0.1 in a background thread, a queue of scripted replies taken one per chat request, a log of
the requests as the server saw them, and the plumbing of a handler that streams, pauses without
missing a client that hangs up, and drops connections on purpose.

A provider's fake subclasses ``FakeHandler`` (``route``: one request's answer) and ``FakeServer``
(its reply types and ``settings``); see tests/ollama_server.py.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

R = TypeVar("R")


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    disconnected: threading.Event = field(default_factory=threading.Event)


@dataclass
class Stall:
    """Accept the request, then send nothing for ``seconds`` and close."""

    seconds: float


class Gone(Exception):
    """The client left, or the server is stopping."""


class FakeHandler(BaseHTTPRequestHandler):
    """One connection; ``route`` answers each POST."""

    protocol_version = "HTTP/1.1"
    timeout = 10
    server: "FakeHTTPServer"

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
        try:
            self.route(seen)
        except Gone:
            seen.disconnected.set()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.close_connection = True
        parts = urlsplit(self.path)
        seen = Seen(parts.path, dict(parse_qsl(parts.query)), {k.lower(): v for k, v in self.headers.items()}, None)
        try:
            self.route_get(seen)
        except Gone:
            seen.disconnected.set()

    def route_get(self, seen: Seen) -> None:
        """Answer one GET (a fake search engine or web site); none by default."""
        self.send_json(404, {"error": f"no route {seen.path}"})

    def send_body(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.write(body)

    def route(self, seen: Seen) -> None:
        """Answer one request (``self.server.fake.record`` logs it and hands out the next reply)."""
        self.send_json(404, {"error": f"no route {seen.path}"})

    # -- answers

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.write(data)

    def start_chunked(self, content_type: str) -> None:
        """A 200 whose body follows in ``chunk`` calls and ends with ``end_chunks``."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_chunks(self) -> None:
        self.write(b"0\r\n\r\n")

    def write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise Gone from exc

    def pause(self, seconds: float) -> None:
        """Wait, but notice at once if the client hangs up or the server stops."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection, self.server.wake_r], [], [], left)
            if self.server.wake_r in readable:
                raise Gone("server stopping")
            if readable:
                try:
                    closed = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    closed = True
                if closed:
                    raise Gone("client closed the connection")

    def drop(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    fake: "FakeServer[Any]"
    wake_r: socket.socket


class FakeServer(Generic[R]):
    """Owns the server thread, the reply queue and the request log."""

    handler: type[FakeHandler] = FakeHandler
    thread_name = "fake-llm"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._replies: deque[R] = deque()
        self._seen: list[Seen] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._httpd = FakeHTTPServer(("127.0.0.1", 0), self.handler)
        self._httpd.fake = self
        self._httpd.wake_r = self._wake_r
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )

    def start(self) -> Any:
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

    def push(self, *replies: R) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def record(self, seen: Seen, takes_reply: bool = False) -> R | None:
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


def split(text: str, chunks: int) -> list[str]:
    """``text`` in ``chunks`` pieces of near-equal length (at least one)."""
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces
