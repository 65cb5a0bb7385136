"""The server's side of the kernel fork server (``zygote.py``): started once, asked for each sandboxed kernel.

One fork server per server process, started on the first sandboxed kernel and again if it dies.
A request names a sandbox bubblewrap has just built; the answer is the host pid of the kernel
forked into it. Requests from several threads are answered as they complete, matched by id.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import IO, Any

from core.execution.launcher import KERNEL_ARGS, kernel_env, spawn

logger = logging.getLogger(__name__)

ZYGOTE_MODULE = "core.execution.zygote"


class ForkServerError(RuntimeError):
    """The fork server could not start or could not fork this kernel; the caller starts one itself."""


class KernelForkServer:
    """A running ``zygote.py`` and the requests waiting for its answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready: Future[None] = Future()
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.problem: str | None = None  # set when it cannot start here: kernels then start on their own

    @property
    def usable(self) -> bool:
        return self.problem is None

    def fork(
        self,
        *,
        outer_pid: int,
        fifo: Path,
        connection_file: Path,
        env: dict[str, str],
        cwd: Path,
        log: Path,
        cgroups: list[str],
        timeout: float,
    ) -> int:
        """Fork a kernel into the sandbox of ``outer_pid`` (bubblewrap around a placeholder reading
        ``fifo``); returns the kernel's host pid. Raises ``ForkServerError``."""
        request = {
            "outer": outer_pid,
            "fifo": str(fifo),
            "argv": [arg.format(connection_file=connection_file) for arg in KERNEL_ARGS],
            "env": env,
            "cwd": str(cwd),
            "log": str(log),
            "cgroups": cgroups,
            "timeout": timeout,
        }
        order_file = fifo.with_name("fork.json")
        with os.fdopen(os.open(order_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            json.dump(request, file)
        with self._lock:
            stdin = self._running(timeout)
            ident = next(self._ids)
            answer: Future[dict[str, Any]] = Future()
            self._pending[ident] = answer
            try:
                stdin.write(json.dumps({"id": ident, "request": str(order_file)}).encode() + b"\n")
                stdin.flush()
            except OSError as exc:
                self._pending.pop(ident, None)
                raise ForkServerError(f"the fork server stopped reading ({exc})") from exc
        try:
            reply = answer.result(timeout + 5)
        except FutureTimeout:
            raise ForkServerError(f"no answer from the fork server in {timeout + 5:g} s") from None
        finally:
            self._pending.pop(ident, None)
        if "pid" not in reply:
            raise ForkServerError(str(reply.get("error", reply)))
        return int(reply["pid"])

    def _running(self, timeout: float) -> IO[bytes]:
        """The fork server's stdin, starting it first if it is not running (caller holds the lock)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._ready = Future()
            env = kernel_env("fork-server", None)
            argv = [sys.executable, "-m", ZYGOTE_MODULE]
            # Started from the spawner thread: its parent-death signal fires when that thread ends.
            proc = spawn(argv, env=env, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self._proc = proc
            threading.Thread(target=self._read, args=(proc,), name="weaver-fork-server", daemon=True).start()
        try:
            self._ready.result(timeout)
        except (FutureTimeout, ForkServerError) as exc:
            self.problem = str(exc) or f"it did not start in {timeout:g} s"
            logger.warning("kernels start without the fork server: %s", self.problem)
            proc.kill()
            raise ForkServerError(self.problem) from None
        assert proc.stdin is not None
        return proc.stdin

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """Hand each answer to its request; when the fork server ends, fail whatever still waits."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                logger.warning("fork server wrote %r", line[:200])
                continue
            if reply.get("ready"):
                self._ready.set_result(None)
                continue
            waiting = self._pending.get(reply.get("id"))
            if waiting is not None and not waiting.done():
                waiting.set_result(reply)
        code = proc.wait()
        failure = ForkServerError(f"the fork server exited with code {code}")
        with self._lock:
            if not self._ready.done():
                self._ready.set_exception(failure)
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(failure)

    def close(self) -> None:
        """Stop the fork server (kernels it forked live on in their sandboxes)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


FORK_SERVER = KernelForkServer()
atexit.register(FORK_SERVER.close)
