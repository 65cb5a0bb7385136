"""One stateful Jupyter kernel per session, with timeouts, cancel, crash recovery and plugins.

Threading: ``execute`` runs on one worker thread at a time (a lock enforces it); ``interrupt``,
``stop`` and the cancel token may come from other threads. Sockets are only touched by the thread
holding the execute lock or, while no execute runs, the lifecycle lock.
"""

from __future__ import annotations

import ast
import atexit
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jupyter_client import BlockingKernelClient, KernelManager

from core.cancel import CancelToken
from core.config import ExecutionSettings
from core.execution.launcher import kernel_env, new_kernel_manager, start_kernel
from core.execution.limits import MB, disk_room, folder_bytes, set_file_size_limit
from core.execution.sandbox import KernelBox, SandboxUnavailableError
from core.execution.outputs import OutputCollector
from core.execution.result import Artifact, ExecutionResult
from core.ids import create_id
from core.plugins.spec import PluginSpec

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
ALIVE_CHECK_SECONDS = 0.5
INTERRUPT_GRACE_SECONDS = 5.0  # after this, an interrupt that did not stop the code forces a restart
INTERRUPT_REPEAT_SECONDS = 2.0
SILENT_TIMEOUT_SECONDS = 30.0
NO_REPLY_GRACE_SECONDS = 1.0  # after the idle status, how long a missing reply is waited for
DISK_CHECK_SECONDS = 0.1
_RUNTIME = "__import__('core.plugins.runtime', fromlist=['bootstrap'])"
# The session folder goes on sys.path last, only after Weaver's runtime is imported: an uploaded
# pandas.py or core.py never shadows the real module, an uploaded mymodule.py still imports.
_CWD_LAST = "(__import__('sys').path.remove('') if '' in __import__('sys').path else None, __import__('sys').path.append(''))"
# Threads alive before an execution, so the ones it started can be found when it times out.
_MARK_THREADS = "__import__('sys').__dict__.__setitem__('_weaver_threads', {t.ident for t in __import__('threading').enumerate()})"
_NEW_THREADS = (
    "str(sum(t.is_alive() and t.ident not in __import__('sys').__dict__.get('_weaver_threads', ())"
    " for t in __import__('threading').enumerate()))"
)


class KernelStartError(RuntimeError):
    """The kernel process could not be started or did not answer in time."""


class KernelDiedError(RuntimeError):
    """The kernel process exited while we were waiting for it."""


class ExecutorClosedError(RuntimeError):
    """``stop()`` was called; this executor will not start another kernel."""


@dataclass
class _Run:
    """How the wait for one user execution ended."""

    collector: OutputCollector
    stop_reason: str | None = None  # "timeout" | "cancel" when we interrupted it
    died: bool = False
    stuck: bool = False  # interrupted but never went idle
    threads_left: int = 0  # threads the timed-out code started that still run
    disk_full: bool = False  # interrupted because the session folder passed its disk limit


class KernelExecutor:
    """Runs a session's code in its own kernel; ``execute`` reports problems, never raises them."""

    def __init__(
        self,
        session_id: str,
        cwd: Path,
        plugins: Sequence[PluginSpec] = (),
        timeout: float = 120.0,
        start_timeout: float = 60.0,
        extra_env: dict[str, str] | None = None,
        settings: ExecutionSettings | None = None,
    ) -> None:
        self.session_id = session_id
        self.cwd = Path(cwd).resolve()
        self.settings = settings or ExecutionSettings()
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})
        self._plugins = list(plugins)
        self._loaded: list[str] = []
        self._plugin_errors: list[str] = []
        self._km: KernelManager | None = None
        self._kc: BlockingKernelClient | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._box: KernelBox | None = None
        self._lifecycle = threading.RLock()
        self._exec_lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False
        _LIVE.add(self)

    # ----- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def kernel_pid(self) -> int | None:
        """Host pid of the Python kernel itself (inside the sandbox it is not ``pid``)."""
        box, pid = self._box, self.pid
        return box.kernel_pid(pid) if box is not None and pid is not None else None

    @property
    def sandboxed(self) -> bool:
        return self._box is not None and self._box.sandboxed

    def disk_room(self) -> int | None:
        """Bytes the session folder may still grow by (``execution.disk_mb``); None means unlimited."""
        return disk_room(self.cwd, self.settings.disk_mb)

    @property
    def plugin_errors(self) -> list[str]:
        return list(self._plugin_errors)

    @property
    def plugin_specs(self) -> list[PluginSpec]:
        return [p for p in self._plugins if p.name in self._loaded]

    def start(self) -> None:
        """Start the kernel and load plugins unless already running; raises ``KernelStartError``."""
        with self._lifecycle:
            if self._closed:
                raise ExecutorClosedError(f"the executor of session {self.session_id} was stopped")
            if self._km is not None:
                return
            self._launch()

    def stop(self) -> None:
        """Shut the kernel down and wait for its process to exit; the executor cannot be reused."""
        self._stopping.set()  # a running execute interrupts its code and returns promptly
        got_exec = self._exec_lock.acquire(timeout=INTERRUPT_GRACE_SECONDS + SILENT_TIMEOUT_SECONDS)
        try:
            with self._lifecycle:
                self._closed = True
                self._teardown(graceful=True)
        finally:
            if got_exec:
                self._exec_lock.release()
            _LIVE.discard(self)

    def interrupt(self) -> None:
        """Send SIGINT to the running code (KeyboardInterrupt in the cell); state is kept."""
        with self._lifecycle:
            if self._km is not None and self._proc is not None and self._proc.poll() is None:
                self._send_interrupt()

    def _send_interrupt(self) -> None:
        """SIGINT to the kernel's process group, never to the sandbox around it (that would kill it)."""
        try:
            pid = self.kernel_pid
            if pid is not None:
                os.killpg(os.getpgid(pid), signal.SIGINT)
            elif self._km is not None and not self.sandboxed:
                self._km.interrupt_kernel()
        except Exception:  # noqa: BLE001 - the process may be exiting right now
            logger.debug("interrupt of session %s failed", self.session_id, exc_info=True)

    def _launch(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        try:
            box = KernelBox(self.session_id, self.cwd, self.settings, self._plugin_dirs())
        except (SandboxUnavailableError, OSError) as exc:
            raise KernelStartError(f"The Python kernel could not be started: {exc}") from exc
        km = new_kernel_manager(box.argv_prefix, box.connection_file, box.ipc_prefix)
        try:
            # The kernel's own chatter (e.g. ipykernel's transport warning) goes to the session's
            # folder, not the server's terminal.
            with (self.cwd.parent / "kernel.log").open("ab") as kernel_log:
                start_kernel(
                    km,
                    cwd=str(self.cwd),
                    env=box.env(kernel_env(self.session_id, self.extra_env, home=self.cwd)),
                    stdout=kernel_log,
                    stderr=kernel_log,
                    independent=box.sandboxed,  # no JPY_PARENT_PID: inside, the parent is pid 1
                )
        except Exception as exc:
            try:
                km.cleanup_resources()  # the connection file written before the launch failed
            except Exception:  # noqa: BLE001
                logger.debug("cleanup after a failed launch failed", exc_info=True)
            box.close()
            raise KernelStartError(f"The Python kernel could not be started: {exc}") from exc
        self._box = box
        self._km = km
        self._proc = getattr(km.provisioner, "process", None)
        kc = km.client()
        kc.allow_stdin = False
        kc.start_channels()
        self._kc = kc
        try:
            kc.wait_for_ready(timeout=self.start_timeout)
        except RuntimeError as exc:
            self._teardown(graceful=False)
            raise KernelStartError(
                f"The Python kernel did not become ready within {self.start_timeout:g} s: {exc}"
            ) from exc
        self._bootstrap()

    def _bootstrap(self) -> None:
        """Shell settings and plugins; a failure is reported as a plugin error, not raised."""
        payload = {
            "session_id": self.session_id,
            "env_id": self.extra_env.get("WEAVER_ENV_ID", "local"),
            "plugins": [
                {"name": p.name, "path": str(p.code_path), "configurations": p.configurations}
                for p in self._plugins
                if p.code_path is not None
            ],
        }
        arg = json.dumps(payload, default=str)
        try:
            answer = self._silent_value(f"({_RUNTIME}, {_CWD_LAST}, {_RUNTIME}.bootstrap({arg!r}))[2]")
            report = json.loads(answer)
        except (RuntimeError, TimeoutError, ValueError) as exc:
            self._loaded = []
            self._plugin_errors = [f"The kernel's plugin runtime could not be set up, so no plugin is available: {exc}"]
            logger.warning("bootstrap failed in session %s: %s", self.session_id, exc)
            return
        self._loaded = list(report.get("loaded", []))
        self._plugin_errors = list(report.get("errors", []))

    def _plugin_dirs(self) -> list[Path]:
        """Folders the plugins load from: visible, read-only, inside the sandbox."""
        return sorted({p.code_path.resolve().parent for p in self._plugins if p.code_path is not None})

    def _teardown(self, graceful: bool) -> None:
        """Close channels, shut the kernel down and make sure every process it started is gone."""
        kc, km, proc, box = self._kc, self._km, self._proc, self._box
        self._kc = self._km = self._proc = self._box = None
        if kc is not None:
            try:
                kc.stop_channels()
            except Exception:  # noqa: BLE001
                logger.debug("stop_channels failed", exc_info=True)
        if km is not None:
            try:
                km.shutdown_kernel(now=not graceful or (proc is not None and proc.poll() is not None))
            except Exception:  # noqa: BLE001 - fall through to killing the process ourselves
                logger.debug("shutdown_kernel failed", exc_info=True)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.error("kernel process %s of session %s did not exit", proc.pid, self.session_id)
        if box is not None:
            box.close()

    def _restart(self) -> str | None:
        """Replace a dead or stuck kernel with a fresh one; returns an error sentence on failure."""
        with self._lifecycle:
            self._teardown(graceful=False)
            if self._closed or self._stopping.is_set():
                return "The session is closing, so no new kernel was started."
            try:
                self._launch()
            except KernelStartError as exc:
                return str(exc)
        return None

    # ----- execution -------------------------------------------------------------------------

    def execute(
        self,
        code: str,
        session_vars: dict[str, str] | None = None,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in the session's kernel and report everything it produced."""
        execution_id = create_id("exec")
        with self._exec_lock:
            if self._closed:
                return self._failure(execution_id, code, "The session's kernel was stopped, so no code can run.")
            if (cancel is not None and cancel.cancelled) or self._stopping.is_set():
                message = "The execution was cancelled before it started."
                return self._failure(execution_id, code, message, cancelled=True)
            try:
                self.start()
            except (KernelStartError, ExecutorClosedError) as exc:
                return self._failure(execution_id, code, str(exc))
            try:
                self._begin_execution(execution_id, session_vars)
            except KernelDiedError as exc:
                return self._died_before_run(execution_id, code, exc)
            disk_start = self._prepare_disk()
            run = self._run_user_code(code, cancel, timeout or self.timeout, disk_start)
            if disk_start is not None and run.stop_reason is None and not run.died:
                run.disk_full = self._disk_overrun(disk_start)  # a burst of writes between two checks
            return self._finish(execution_id, code, run, timeout or self.timeout)

    def _prepare_disk(self) -> int | None:
        """Cap each file the run may write at the room the session folder has left; its size now."""
        limit_mb = self.settings.disk_mb
        pid = self.kernel_pid
        if limit_mb <= 0:
            return None
        used = folder_bytes(self.cwd)
        if pid is not None:
            room = max(0, limit_mb * MB - used)
            per_file = self.settings.max_file_mb * MB if self.settings.max_file_mb > 0 else room
            set_file_size_limit(pid, min(room, per_file))
        return used

    def _begin_execution(self, execution_id: str, session_vars: dict[str, str] | None) -> None:
        """Push the execution id and session vars; plugins read them while the code runs."""
        payload = json.dumps(_execution_payload(execution_id, session_vars))
        try:
            self._silent(f"{_RUNTIME}.begin_execution({payload!r})\n{_MARK_THREADS}")
        except (TimeoutError, RuntimeError) as exc:
            if isinstance(exc, KernelDiedError) or not self._alive():
                raise KernelDiedError(str(exc)) from exc
            # Plugins may see stale vars, but the user's code can still run.
            logger.warning("begin_execution failed in session %s: %s", self.session_id, exc)

    def _run_user_code(self, code: str, cancel: CancelToken | None, timeout: float, disk_start: int | None) -> _Run:
        """Send the code and collect its iopub messages until idle, a deadline, a cancel, a crash or a full disk."""
        assert self._kc is not None and self._km is not None
        run = _Run(OutputCollector(self.cwd))
        msg_id = self._kc.execute(code, silent=False, store_history=True, allow_stdin=False)
        deadline = time.monotonic() + timeout
        grace_end = next_interrupt = next_alive = next_disk = 0.0
        while True:
            msg = self._next_iopub()
            if msg is not None and msg.get("parent_header", {}).get("msg_id") == msg_id:
                if run.collector.handle(msg):
                    return run
            now = time.monotonic()
            if msg is None or now >= next_alive:
                next_alive = now + ALIVE_CHECK_SECONDS
                if not self._alive():
                    run.died = True
                    return run
            if run.stop_reason is None and disk_start is not None and now >= next_disk:
                over = self._disk_overrun(disk_start)
                # A folder of many files takes a while to walk: keep that under ~10% of a core.
                next_disk = time.monotonic() + max(DISK_CHECK_SECONDS, 10 * (time.monotonic() - now))
                if over:
                    run.disk_full = True
                    run.stop_reason = "disk"
                    grace_end, next_interrupt = now + INTERRUPT_GRACE_SECONDS, now
            if run.stop_reason is None:
                run.stop_reason = self._stop_reason(cancel, now >= deadline)
                if run.stop_reason is not None:
                    grace_end, next_interrupt = now + INTERRUPT_GRACE_SECONDS, now
            if run.stop_reason is not None:
                if now >= grace_end:
                    run.stuck = True
                    return run
                if now >= next_interrupt:  # repeated: code may swallow one KeyboardInterrupt
                    next_interrupt = now + INTERRUPT_REPEAT_SECONDS
                    self._send_interrupt()

    def _disk_overrun(self, disk_start: int) -> bool:
        """The run grew the session folder past ``execution.disk_mb`` (a folder already full may shrink)."""
        used = folder_bytes(self.cwd)
        return used > self.settings.disk_mb * MB and used > disk_start

    def _stop_reason(self, cancel: CancelToken | None, past_deadline: bool) -> str | None:
        if (cancel is not None and cancel.cancelled) or self._stopping.is_set():
            return "cancel"
        return "timeout" if past_deadline else None

    def _next_iopub(self) -> dict[str, Any] | None:
        assert self._kc is not None
        try:
            return self._kc.get_iopub_msg(timeout=POLL_SECONDS)
        except queue.Empty:
            return None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _finish(self, execution_id: str, code: str, run: _Run, timeout: float) -> ExecutionResult:
        c = run.collector
        res = ExecutionResult(
            execution_id=execution_id,
            code=code,
            is_success=False,
            result=c.result,
            stdout=c.stdout_text,
            stderr=c.stderr_text,
            error=c.error,
            artifacts=list(c.artifacts),
            tables=list(c.tables),
            logs=[],
            timed_out=run.stop_reason == "timeout",
            cancelled=run.stop_reason == "cancel",
        )
        if not (run.died or run.stuck) and run.stop_reason is not None:
            run.threads_left = self._threads_started()
        if run.died or run.stuck or run.threads_left:
            res.kernel_died = True
            res.error = self._lost_state_message(run, timeout)
            return res
        self._collect_plugin_outputs(res)
        if run.stop_reason is not None:
            res.error = self._interrupted_message(run.stop_reason, timeout, c.error)
        if run.disk_full and run.stop_reason is None:
            over = f"The code wrote past the session folder's limit. {self._disk_note()}"
            res.error = f"{over}\n{res.error}" if res.error else over
        elif res.error is not None and ("File too large" in res.error or "No space left" in res.error):
            res.error += "\n" + self._disk_note()
        res.is_success = res.error is None
        return res

    def _threads_started(self) -> int:
        """Threads the interrupted code started that still run (an interrupt stops only the main one)."""
        try:
            return int(self._silent_value(_NEW_THREADS))
        except (RuntimeError, TimeoutError, ValueError):
            return 0

    def _disk_note(self) -> str:
        """Why a write failed: the session folder's and each file's limit, and what is left."""
        s = self.settings
        used = folder_bytes(self.cwd) / MB
        parts = [f"The session's folder holds {used:.1f} MB of its {s.disk_mb} MB limit (execution.disk_mb)"] if s.disk_mb else []
        if s.max_file_mb:
            parts.append(f"a single file may be at most {s.max_file_mb} MB (execution.max_file_mb)")
        return "; ".join(parts) + ". Delete files you no longer need to make room." if parts else ""

    def _lost_state_message(self, run: _Run, timeout: float, before_run: bool = False) -> str:
        """Restart the kernel and explain what happened and that the session's state is gone."""
        exit_code = self._proc.poll() if self._proc is not None else None
        if run.died and self._box is not None and self._box.oom_killed():
            what = (
                f"The code needed more memory than this session's limit of {self.settings.memory_mb} MB "
                "(execution.memory_mb), so the kernel was stopped"
            )
        elif run.died:
            when = "before this code could run" if before_run else "while running this code"
            what = f"The Python kernel died {when} (exit code {exit_code})"
        elif run.threads_left:
            what = (
                f"Execution exceeded {timeout:g} s and was interrupted, but {run.threads_left} thread(s) it started "
                "kept running, so the kernel was restarted with everything it ran"
            ) if run.stop_reason == "timeout" else (
                f"The execution was stopped, but {run.threads_left} thread(s) it started kept running, "
                "so the kernel was restarted with everything it ran"
            )
        elif run.stop_reason == "timeout":
            what = f"Execution exceeded {timeout:g} s and did not stop when interrupted, so the kernel was restarted"
        elif run.stop_reason == "disk":
            what = "The session's folder went over its disk limit and the code did not stop when interrupted, so the kernel was restarted"
        else:
            what = "The execution was cancelled but did not stop when interrupted, so the kernel was restarted"
        problem = self._restart()
        lost = "all variables, imports and loaded data from earlier executions were lost"
        if problem:
            return f"{what}; {lost}. A new kernel could not be started: {problem}"
        return f"{what}; {lost}. A fresh kernel has been started, so re-run any setup code."

    def _interrupted_message(self, reason: str, timeout: float, trace: str | None) -> str:
        if reason == "timeout":
            text = f"Execution exceeded {timeout:g} s and was interrupted."
        elif reason == "disk":
            text = f"The code filled the session's folder past its limit, so it was interrupted. {self._disk_note()}"
        else:
            text = "The execution was cancelled and interrupted."
        text += " Variables from earlier executions are kept."
        return f"{text}\n{trace}" if trace else text

    def _collect_plugin_outputs(self, res: ExecutionResult) -> None:
        """Artifacts and logs recorded by plugins during this execution (kept only inside cwd)."""
        try:
            report = json.loads(self._silent_value(f"{_RUNTIME}.collect()"))
        except (RuntimeError, TimeoutError, ValueError) as exc:
            logger.warning("collecting plugin outputs failed in session %s: %s", self.session_id, exc)
            return
        res.logs.extend(str(line) for line in report.get("logs", []))
        for item in report.get("artifacts", []):
            path = Path(item.get("path", "")).resolve()
            if path.is_relative_to(self.cwd) and path.is_file():
                name = str(item.get("name") or path.name)
                kind = str(item.get("type") or "file")
                res.artifacts.append(Artifact(name, path, kind, str(item.get("description") or "")))

    def _died_before_run(self, execution_id: str, code: str, exc: Exception) -> ExecutionResult:
        res = self._failure(execution_id, code, "")
        res.kernel_died = True
        res.error = self._lost_state_message(_Run(OutputCollector(self.cwd), died=True), self.timeout, before_run=True)
        logger.warning("kernel of session %s failed before running code: %s", self.session_id, exc)
        return res

    @staticmethod
    def _failure(execution_id: str, code: str, error: str, cancelled: bool = False) -> ExecutionResult:
        return ExecutionResult(execution_id=execution_id, code=code, is_success=False, error=error, cancelled=cancelled)

    # ----- silent helper calls ---------------------------------------------------------------

    def _silent(self, code: str, user_expressions: dict[str, str] | None = None) -> dict[str, Any]:
        """Run bookkeeping code without history or output; returns the execute_reply content.

        A stray SIGINT can abort the kernel's handler so no reply ever comes; the idle status
        for our request still does, so it bounds the wait too.
        """
        kc = self._kc
        if kc is None:
            raise KernelDiedError("no kernel is running")
        msg_id = kc.execute(
            code, silent=True, store_history=False, user_expressions=user_expressions or {}, allow_stdin=False
        )
        deadline = time.monotonic() + SILENT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                reply = kc.get_shell_msg(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self._alive():
                    raise KernelDiedError("the kernel exited") from None
                if self._went_idle(msg_id):
                    deadline = min(deadline, time.monotonic() + NO_REPLY_GRACE_SECONDS)
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                content = reply["content"]
                if content.get("status") != "ok":
                    raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
                return content
        raise TimeoutError("the kernel did not answer a bookkeeping request")

    def _went_idle(self, msg_id: str) -> bool:
        """Drain pending iopub messages; True if one says the kernel finished ``msg_id``."""
        while (msg := self._iopub_nowait()) is not None:
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["header"]["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return True
        return False

    def _iopub_nowait(self) -> dict[str, Any] | None:
        assert self._kc is not None
        try:
            return self._kc.get_iopub_msg(timeout=0)
        except queue.Empty:
            return None

    def _silent_value(self, expression: str) -> str:
        """Evaluate an expression returning a str in the kernel, via user_expressions."""
        content = self._silent("pass", {"value": expression})
        value = content.get("user_expressions", {}).get("value", {})
        if value.get("status") != "ok":
            raise RuntimeError(f"{value.get('ename')}: {value.get('evalue')}")
        return ast.literal_eval(value["data"]["text/plain"])


def _execution_payload(execution_id: str, session_vars: dict[str, str] | None) -> dict[str, Any]:
    return {"execution_id": execution_id, "session_vars": {str(k): str(v) for k, v in (session_vars or {}).items()}}


_LIVE: "weakref.WeakSet[KernelExecutor]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Don't leave kernels behind when the server exits without closing its sessions."""
    for executor in list(_LIVE):
        try:
            executor.stop()
        except Exception:  # noqa: BLE001
            logger.debug("stopping an executor at exit failed", exc_info=True)
