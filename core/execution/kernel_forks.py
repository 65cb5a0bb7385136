"""The server's side of the kernel fork server (``zygote.py``): started once, asked for each sandboxed kernel.

One fork server per server process, started on the first sandboxed kernel and again if it dies,
and stopped when the last kernel backend using it is closed (at the last app's stop), so no child
process outlives the last app of a process.
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
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.execution.launcher import KERNEL_ARGS, kernel_env, spawn

logger = logging.getLogger(__name__)

ZYGOTE_MODULE = "core.execution.zygote"


class ForkServerError(RuntimeError):
    """The fork server could not start or could not fork this kernel; the caller starts one itself."""


@dataclass
class _Run:
    """One fork server process, its readiness and the requests it has yet to answer."""

    proc: subprocess.Popen[bytes]
    ready: Future[None] = field(default_factory=Future)
    pending: dict[int, Future[dict[str, Any]]] = field(default_factory=dict)


class KernelForkServer:
    """A running ``zygote.py`` and the requests waiting for its answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._ids = itertools.count(1)
        self.problem: str | None = None  # set when it cannot start here: kernels then start on their own
        self._holders: weakref.WeakSet[object] = weakref.WeakSet()  # who may still ask for kernels
        self.helper_cpu = 0.0  # CPU-seconds of the helpers that forked kernels (they leave no other trace)

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
        cpu_group: Path | None = None,
        uid: int | None = None,
        seccomp: bool = False,
    ) -> tuple[int, list[tuple[str, float]]]:
        """Fork a kernel into the sandbox of ``outer_pid`` (bubblewrap around a placeholder reading
        ``fifo``); returns the kernel's host pid. A fork server started for it joins ``cpu_group``
        (where kernels start): it works only for kernels. The kernel runs as host ``uid``
        (None: the fork server's) under the seccomp filter if ``seccomp``. Also returns when each of
        the helper's steps ended (monotonic clock). Raises ``ForkServerError``."""
        request = {
            "outer": outer_pid,
            "fifo": str(fifo),
            "argv": [arg.format(connection_file=connection_file) for arg in KERNEL_ARGS],
            "env": env,
            "cwd": str(cwd),
            "log": str(log),
            "cgroups": cgroups,
            "timeout": timeout,
            "uid": uid,
            "seccomp": seccomp,
        }
        order_file = fifo.with_name("fork.json")
        with os.fdopen(os.open(order_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            json.dump(request, file)
        with self._lock:
            run = self._running(timeout, cpu_group)
            ident = next(self._ids)
            answer: Future[dict[str, Any]] = Future()
            run.pending[ident] = answer
            try:
                assert run.proc.stdin is not None
                run.proc.stdin.write(json.dumps({"id": ident, "request": str(order_file)}).encode() + b"\n")
                run.proc.stdin.flush()
            except OSError as exc:
                run.pending.pop(ident, None)
                raise ForkServerError(f"the fork server stopped reading ({exc})") from exc
        try:
            reply = answer.result(timeout + 5)
        except FutureTimeout:
            raise ForkServerError(f"no answer from the fork server in {timeout + 5:g} s") from None
        finally:
            run.pending.pop(ident, None)
        if "pid" not in reply:
            raise ForkServerError(str(reply.get("error", reply)))
        steps = [(str(name), float(at)) for name, at in reply.get("steps", [])]
        self.helper_cpu += float(reply.get("cpu", 0.0))
        return int(reply["pid"]), steps

    def _running(self, timeout: float, cpu_group: Path | None) -> _Run:
        """The running fork server, started first if there is none (the caller holds the lock)."""
        run = self._run
        if run is None or run.proc.poll() is not None:
            env = kernel_env("fork-server", None)
            argv = [sys.executable, "-m", ZYGOTE_MODULE]
            # Started from the spawner thread: its parent-death signal fires when that thread ends.
            proc = spawn(argv, env=env, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            if cpu_group is not None:
                _join_cpu_group(proc.pid, cpu_group)
            run = self._run = _Run(proc)
            threading.Thread(target=self._read, args=(run,), name="weaver-fork-server", daemon=True).start()
        try:
            run.ready.result(timeout)
        except (FutureTimeout, ForkServerError) as exc:
            self.problem = str(exc) or f"it did not start in {timeout:g} s"
            logger.warning("kernels start without the fork server: %s", self.problem)
            run.proc.kill()
            raise ForkServerError(self.problem) from None
        return run

    def _read(self, run: _Run) -> None:
        """Hand each answer to its request; when this fork server ends, fail what still waits on it
        (and only that: a fork server started after it has requests of its own)."""
        assert run.proc.stdout is not None
        for line in run.proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                logger.warning("fork server wrote %r", line[:200])
                continue
            if reply.get("ready"):
                run.ready.set_result(None)
                continue
            waiting = run.pending.get(reply.get("id"))
            if waiting is not None and not waiting.done():
                waiting.set_result(reply)
        failure = ForkServerError(f"the fork server exited with code {run.proc.wait()}")
        if not run.ready.done():
            run.ready.set_exception(failure)
        for waiting in list(run.pending.values()):
            if not waiting.done():
                waiting.set_exception(failure)

    def hold(self, holder: object) -> None:
        """``holder`` (an app's kernel backend) starts kernels through the fork server: it stays up
        until every holder has released it."""
        with self._lock:
            self._holders.add(holder)

    def release(self, holder: object) -> None:
        """``holder`` starts no more kernels; after the last one the fork server stops (a later
        kernel starts it again)."""
        with self._lock:
            self._holders.discard(holder)
            run = self._run if not self._holders else None
            if run is not None:
                self._run = None
        _stop(run)

    def close(self) -> None:
        """Stop the fork server (kernels it forked live on in their sandboxes)."""
        with self._lock:
            run, self._run = self._run, None
        _stop(run)


def _stop(run: _Run | None) -> None:
    if run is not None and run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait(timeout=10)


FORK_SERVER = KernelForkServer()
atexit.register(FORK_SERVER.close)


def _join_cpu_group(pid: int, folder: Path) -> None:
    try:
        (folder / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        logger.debug("the fork server stays out of the kernels' cpu group: %s", exc)
