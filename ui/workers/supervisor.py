"""``weaver ui --workers N``'s own process: starts the workers, routes connections, stops them all.

* **Start**: the public address is bound first (a port in use stops here, in a line), then each
  worker is started as ``weaver ui`` starts its one server, with its index and its end of a Unix
  socket pair in its environment (``ui/workers/__init__.py``). Connections are accepted once a
  worker says it is ready; until then they wait in the listen queue.
* **Route**: one ``selectors`` loop accepts, peeks and hands each connection over (``router.py``).
* **A worker that dies** (not asked to stop) is started again under the same index, at once the
  first time and after a growing pause if it keeps dying; meanwhile its browsers' requests go to a
  live worker, which resumes their chat as a replica does (history, then the code replayed with
  the next message). A worker that fails before it was ever ready stops ``weaver ui`` with its
  exit code: its settings would fail the others the same way.
* **Stop**: SIGINT or SIGTERM is passed to every worker, which drains (``ui/drain.py``); connections
  go on being handed to the workers still up until the last has exited. A worker still running
  ``drain_s + grace_s`` after the request is killed, by its PID. Each worker also gets SIGTERM from
  Linux if this process dies (``preexec``: ``_die_with_parent`` of ``ui/cli.py``), so no worker
  outlives ``weaver ui``.

Standard library only (``--help`` and the router stay light).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ui.workers import COUNT_ENV, FD_ENV, INDEX_ENV
from ui.workers.handoff import READY
from ui.workers.router import HEAD_WAIT_S, PEEK_BYTES, Choice, hand, head_complete, sticky_index

BACKLOG = 2048  # uvicorn's default
RETRY_S = 0.02  # how soon a connection whose header block is incomplete is peeked again
HELD_S = 30.0  # how long a connection waits for a live worker before it is closed
STEADY_S = 30.0  # a worker that ran this long before dying is restarted at once


def log(text: str) -> None:
    print(f"Weaver UI: {text}", file=sys.stderr, flush=True)


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (as uvicorn binds them)."""
    sockets: list[socket.socket] = []
    seen = set()
    for family, kind, proto, _name, addr in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        if (family, addr) in seen:
            continue
        seen.add((family, addr))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            for other in sockets:
                other.close()
            raise
        sockets.append(sock)
    return sockets


@dataclass
class Worker:
    """One worker process and the router's end of its socket pair."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    pair: socket.socket | None = None
    ready: bool = False
    ever_ready: bool = False
    ready_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    code: int | None = None  # its exit code once it stopped for good


@dataclass
class Waiting:
    conn: socket.socket
    since: float
    head: bytes = b""
    retry_at: float = 0.0


@dataclass
class Supervisor:
    command: list[str]
    env: dict[str, str]
    cwd: Path
    count: int
    drain_s: float
    grace_s: float
    preexec: Callable[[], None] | None = None
    workers: list[Worker] = field(default_factory=list)
    stop_asked_at: float | None = None
    fatal: int | None = None

    def __post_init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.choice = Choice()
        self.peeking: dict[int, Waiting] = {}  # fd -> a connection whose header block is being read
        self.retrying: list[Waiting] = []  # incomplete header blocks, peeked again shortly
        self.held: list[Waiting] = []  # read, waiting for a live worker
        self.listeners: list[socket.socket] = []
        self.accepting = False

    # ----- workers -----------------------------------------------------------------------------

    def start_worker(self, worker: Worker) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setblocking(False)
        env = {**self.env, INDEX_ENV: str(worker.index), COUNT_ENV: str(self.count), FD_ENV: str(theirs.fileno())}
        try:
            worker.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=env,
                pass_fds=(theirs.fileno(),),
                preexec_fn=self.preexec,
                start_new_session=True,
            )
        finally:
            theirs.close()
        worker.pair, worker.ready, worker.restart_at = mine, False, None
        self.sel.register(mine, selectors.EVENT_READ, ("worker", worker))

    def _worker_says(self, worker: Worker) -> None:
        assert worker.pair is not None
        try:
            data = worker.pair.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if READY in data:
            worker.ready = worker.ever_ready = True
            worker.ready_at = time.monotonic()
            if not self.accepting:
                self.accepting = True
                for sock in self.listeners:
                    self.sel.register(sock, selectors.EVENT_READ, ("listener", sock))
        if not data:  # the worker stopped receiving: it is stopping or gone
            self._drop_pair(worker)

    def _drop_pair(self, worker: Worker) -> None:
        worker.ready = False
        if worker.pair is not None:
            self.sel.unregister(worker.pair)
            worker.pair.close()
            worker.pair = None

    def _check_workers(self, now: float) -> None:
        for worker in self.workers:
            if worker.proc is None:
                if worker.restart_at is not None and now >= worker.restart_at and self.stop_asked_at is None:
                    self.start_worker(worker)
                continue
            code = worker.proc.poll()
            if code is None:
                if self.stop_asked_at is not None and now - self.stop_asked_at > self.drain_s + self.grace_s:
                    log(f"worker {worker.index} did not stop in time: killing it")
                    worker.proc.kill()
                continue
            self._drop_pair(worker)
            worker.proc = None
            if self.stop_asked_at is not None:
                worker.code = code
            elif not worker.ever_ready:
                log(f"worker {worker.index} exited with code {code} before it was ready: stopping")
                worker.code = code
                self.fatal = code if code != 0 else 1
                self.request_stop(signal.SIGTERM, quiet=True)
            else:
                steady = now - worker.ready_at >= STEADY_S
                worker.failures = 0 if steady else worker.failures + 1
                pause = 0.0 if steady else min(30.0, 2.0 ** (worker.failures - 1))
                log(f"worker {worker.index} exited with code {code}: starting it again in {pause:g}s")
                worker.restart_at = now + pause

    def request_stop(self, sig: int, quiet: bool = False) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(sig)
        if self.stop_asked_at is None:
            self.stop_asked_at = time.monotonic()
            if not quiet:
                log(f"stopping {self.count} workers: running rounds may finish first (up to {self.drain_s:g}s)")

    def _all_stopped(self) -> bool:
        return all(w.proc is None for w in self.workers)

    # ----- connections ---------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, now: float) -> None:
        for _ in range(64):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, for one: the connection waits in the queue
                log(f"accept failed: {exc}")
                return
            conn.setblocking(False)
            self._peek(Waiting(conn, now), now)

    def _peek(self, waiting: Waiting, now: float) -> None:
        """Route the connection once its header block is read; whatever one connection sends, a
        failure ends that connection only, never the loop every browser depends on."""
        try:
            self._peek_once(waiting, now)
        except Exception as exc:
            log(f"a connection could not be routed and is closed: {exc!r}")
            waiting.conn.close()

    def _peek_once(self, waiting: Waiting, now: float) -> None:
        try:
            head = waiting.conn.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._watch(waiting)
            return
        except OSError:
            waiting.conn.close()
            return
        if not head:  # closed before it said anything
            waiting.conn.close()
            return
        waiting.head = head
        if head_complete(head) or now - waiting.since > HEAD_WAIT_S:
            self._route(waiting, now)
        else:
            waiting.retry_at = now + RETRY_S
            self.retrying.append(waiting)

    def _watch(self, waiting: Waiting) -> None:
        self.peeking[waiting.conn.fileno()] = waiting
        self.sel.register(waiting.conn, selectors.EVENT_READ, ("client", waiting))

    def _route(self, waiting: Waiting, now: float) -> None:
        wanted = sticky_index(waiting.head)
        tried: set[int] = set()
        while True:
            live = [w.index for w in self.workers if w.ready and w.pair is not None and w.index not in tried]
            index = self.choice.pick(wanted, live)
            if index is None:
                if now - waiting.since > HELD_S:
                    waiting.conn.close()
                else:
                    self.held.append(waiting)
                return
            worker = self.workers[index]
            assert worker.pair is not None
            if hand(worker.pair, waiting.conn):
                waiting.conn.close()  # the worker holds its own copy now
                return
            tried.add(index)

    def _tick(self, now: float) -> None:
        retrying, self.retrying = self.retrying, []
        for waiting in retrying:
            if now >= waiting.retry_at:
                self._peek(waiting, now)
            else:
                self.retrying.append(waiting)
        held, self.held = self.held, []
        for waiting in held:
            self._route(waiting, now)

    # ----- the loop ------------------------------------------------------------------------------

    def run(self, listeners: list[socket.socket]) -> int:
        self.listeners = listeners
        self.workers = [Worker(i) for i in range(self.count)]
        previous = {
            sig: signal.signal(sig, lambda s, _f: self.request_stop(s)) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for worker in self.workers:
                self.start_worker(worker)
            while not self._all_stopped() or any(w.restart_at is not None for w in self.workers):
                if self.stop_asked_at is not None and self._all_stopped():
                    break
                timeout = RETRY_S if (self.retrying or self.held) else 0.5
                for key, _events in self.sel.select(timeout):
                    kind, item = key.data
                    now = time.monotonic()
                    if kind == "listener":
                        self._accept(item, now)
                    elif kind == "worker":
                        self._worker_says(item)
                    elif kind == "client":
                        self.sel.unregister(item.conn)
                        self.peeking.pop(item.conn.fileno(), None)
                        self._peek(item, now)
                now = time.monotonic()
                self._tick(now)
                self._check_workers(now)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:  # only if this loop failed: the workers still running
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
            for waiting in [*self.peeking.values(), *self.retrying, *self.held]:
                waiting.conn.close()
            for sock in listeners:
                sock.close()
            self.sel.close()
        if self.fatal is not None:
            return self.fatal
        codes = [w.code or 0 for w in self.workers]
        code = next((c for c in codes if c != 0), 0)
        return 128 - code if code < 0 else code


def supervise(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    host: str,
    port: int,
    count: int,
    drain_s: float,
    grace_s: float,
    preexec: Callable[[], None] | None = None,
) -> int:
    """Serve ``host:port`` with ``count`` workers until stopped; the exit code as ``weaver ui`` returns it."""
    try:
        listeners = listen(host, port)
    except OSError as exc:
        log(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 1
    log(f"{count} workers share {host}:{port} (pid {os.getpid()} routes each browser to its worker)")
    return Supervisor(command, env, cwd, count, drain_s, grace_s, preexec).run(listeners)
