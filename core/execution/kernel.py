"""One stateful Jupyter kernel per session, with timeouts, cancel, crash recovery and plugins.

The facade over three seams: the kernel handle (``handle.KernelHandle``, made by the app's
``backend.KernelBackend``: a local sandboxed ``kernel_process``, a ``gateway_kernel`` on a Jupyter
kernel gateway, or any registered backend's; launch,
teardown, signals, and the files of a remote kernel), ``kernel_rpc`` (calls into the kernel) and
``user_run`` (waiting for user code); the user-facing sentences are in ``messages``.

Threading: ``execute`` runs on one worker thread at a time (a lock enforces it); ``interrupt``,
``stop`` and the cancel token may come from other threads. Sockets are only touched by the thread
holding the execute lock or, while no execute runs, the lifecycle lock.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

from core import metrics
from core.cancel import CancelToken
from core.config import ExecutionSettings
from core.execution import messages
from core.execution.backend import KernelBackend, backend_for
from core.execution.kernel_process import KernelStartError
from core.execution.kernel_rpc import NO_REPLY_GRACE_SECONDS, SILENT_TIMEOUT_SECONDS, KernelDiedError, KernelRPC
from core.execution.limits import MB, disk_room, folder_usage, set_file_size_limit
from core.execution.live_output import LiveOutput
from core.execution.outputs import OutputCollector
from core.execution.pool import StartCancelled, StartGate
from core.execution.result import Artifact, ExecutionResult
from core.execution.user_run import INTERRUPT_GRACE_SECONDS, Run, run_user_code
from core.ids import create_id
from core.plugins.spec import PluginSpec

__all__ = ["ExecutorClosedError", "KernelDiedError", "KernelExecutor", "KernelStartError"]

logger = logging.getLogger(__name__)


class ExecutorClosedError(RuntimeError):
    """``stop()`` was called; this executor will not start another kernel."""


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
        start_gate: StartGate | None = None,
        session_var_limits: tuple[int, int] | None = None,
        attach_to: str | None = None,
        backend: KernelBackend | None = None,
    ) -> None:
        """``attach_to``: a kernel of this session that another server started (see ``adopted``);
        ``backend``: the app's kernel backend (None: the one ``settings`` choose)."""
        self.session_id = session_id
        # Called with ``remote_kernel_id`` after each kernel start (on the starting thread), so a web
        # tier can note which kernel a session holds (where kernels outlive it); None: nobody listens.
        self.on_kernel_started: Callable[[str | None], object] | None = None
        # Plugins' ``set_session_var``: (count, value chars) bounds, and who merges what they set.
        self.session_var_limits = session_var_limits
        self.on_session_vars: Callable[[dict[str, str]], object] | None = None
        self.start_gate = start_gate  # bounds concurrent kernel starts across sessions; None: unbounded
        self.cwd = Path(cwd).resolve()
        self.settings = settings or ExecutionSettings()
        self.backend = backend or backend_for(self.settings)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})
        self._plugins = list(plugins)
        self._loaded: list[str] = []
        self._plugin_errors: list[str] = []
        # Plugin folders are visible, read-only, inside the sandbox.
        plugin_dirs = sorted({p.code_path.resolve().parent for p in self._plugins if p.code_path is not None})
        self.process = self.backend.new_kernel(
            session_id, self.cwd, self.extra_env, start_timeout, plugin_dirs, attach_to
        )
        self._rpc = KernelRPC(self.process)
        self._lifecycle = threading.RLock()
        self._exec_lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False
        self._ready = False
        # When the latest start was asked for, got its turn and was bootstrapped (monotonic clock):
        # with the handle's own ``steps``, where a start's time goes (``bench/kernel_starts.py``).
        self.start_steps: list[tuple[str, float]] = []
        _LIVE.add(self)

    # ----- what callers read -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def kernel_pid(self) -> int | None:
        """Host pid of the Python kernel itself (inside the sandbox it is not ``pid``)."""
        return self.process.kernel_pid

    @property
    def sandboxed(self) -> bool:
        return self.process.sandboxed

    @property
    def remote_kernel_id(self) -> str | None:
        """The backend's id of the running kernel, where kernels outlive their server; else None."""
        return self.process.kernel_id

    @property
    def adopted(self) -> bool:
        """The running kernel is the ``attach_to`` one, with the variables it had: nothing to replay."""
        return self.process.adopted

    @property
    def ready(self) -> bool:
        """A kernel is running and bootstrapped: code would run without waiting for a start."""
        return self._ready and self.process.alive()

    def disk_room(self) -> int | None:
        """Bytes the session folder may still grow by (``execution.disk_mb``); None means unlimited."""
        return disk_room(self.cwd, self.settings.disk_mb)

    @property
    def plugin_errors(self) -> list[str]:
        return list(self._plugin_errors)

    @property
    def plugin_specs(self) -> list[PluginSpec]:
        return [p for p in self._plugins if p.name in self._loaded]

    # ----- lifecycle -------------------------------------------------------------------------

    def start(
        self,
        *,
        background: bool = False,
        cancel: CancelToken | None = None,
        on_queue: Callable[[int], object] | None = None,
    ) -> None:
        """Start the kernel and load plugins unless already running; raises ``KernelStartError``.

        With a start gate, the launch waits in line for a free slot (first come, first served;
        ``on_queue`` is told its place: ``StartGate.slot``); ``background`` starts (pool refills)
        let every start a user waits for go first, and a ``cancel`` while waiting abandons it.
        """
        with self._lifecycle:
            if self._closed:
                raise ExecutorClosedError(f"the executor of session {self.session_id} was stopped")
            if self.process.running:
                return
            self._launch(urgent=not background, cancel=cancel, on_queue=on_queue)

    def stop(self, keep_kernel: bool = False) -> None:
        """Shut the kernel down and wait for its process to exit; the executor cannot be reused.
        ``keep_kernel``: a kernel that outlives its server (a gateway's) is left running, to be adopted."""
        self._stopping.set()  # a running execute interrupts its code and returns promptly
        got_exec = self._exec_lock.acquire(timeout=INTERRUPT_GRACE_SECONDS + SILENT_TIMEOUT_SECONDS)
        try:
            with self._lifecycle:
                self._closed = True
                self._ready = False
                self.process.teardown(graceful=True, keep=keep_kernel)
        finally:
            if got_exec:
                self._exec_lock.release()
            _LIVE.discard(self)

    def interrupt(self) -> None:
        """Send SIGINT to the running code (KeyboardInterrupt in the cell); state is kept."""
        with self._lifecycle:
            if self.process.running and self.process.alive():
                self.process.send_interrupt()

    def _launch(
        self, urgent: bool = True, cancel: CancelToken | None = None, on_queue: Callable[[int], object] | None = None
    ) -> None:
        def cancelled() -> bool:
            return self._stopping.is_set() or (cancel is not None and cancel.cancelled)

        self.start_steps = [("asked", time.monotonic())]
        if self.start_gate is None:
            self._timed_launch(urgent)
        else:
            try:
                with self.start_gate.slot(urgent=urgent, cancelled=cancelled, on_place=on_queue):
                    if cancelled():
                        raise StartCancelled("the kernel start was cancelled")
                    self._timed_launch(urgent)
            except StartCancelled as exc:
                raise KernelStartError(str(exc)) from exc
        self._ready = True
        if self.on_kernel_started is not None:
            try:
                self.on_kernel_started(self.remote_kernel_id)
            except Exception:  # noqa: BLE001 - a listener's failure is not the kernel's
                logger.exception("on_kernel_started failed in session %s", self.session_id)

    def _timed_launch(self, urgent: bool) -> None:
        """Launch and bootstrap, counted in ``weaver_kernel_starts`` (a wait for a start slot is not)."""
        started = time.monotonic()
        self.start_steps.append(("turn", started))
        ok = False
        try:
            self.process.launch()
            self._bootstrap()
            self.start_steps.append(("bootstrapped", time.monotonic()))
            ok = True
        finally:
            metrics.kernel_started("session" if urgent else "pool", ok, time.monotonic() - started)

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
            "session_var_limits": list(self.session_var_limits) if self.session_var_limits else None,
        }
        try:
            report = self._rpc.bootstrap(self.process.bootstrap_payload(payload))
        except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
            self._loaded = []
            self._plugin_errors = [messages.plugin_runtime_failed(exc)]
            logger.warning("bootstrap failed in session %s: %s", self.session_id, exc)
            return
        self._loaded = list(report.get("loaded", []))
        self._plugin_errors = list(report.get("errors", []))

    def new_kernel(self) -> None:
        """Throw the kernel away with its variables; the next execution (or ``call_helper(start=True)``)
        starts a fresh one in the same folder. A re-run of a round starts from there."""
        with self._exec_lock, self._lifecycle:
            if self._closed:
                raise ExecutorClosedError(f"the executor of session {self.session_id} was stopped")
            self._ready = False
            self.process.teardown(graceful=False)

    def _restart(self) -> str | None:
        """Replace a dead or stuck kernel with a fresh one; returns an error sentence on failure."""
        with self._lifecycle:
            self._ready = False
            self.process.teardown(graceful=False)
            if self._closed or self._stopping.is_set():
                return messages.SESSION_CLOSING
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
        on_running: Callable[[], object] | None = None,
        live: LiveOutput | None = None,
        on_queue: Callable[[int], object] | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in the session's kernel and report everything it produced.

        ``on_running`` is called once the kernel is up (started if need be), just before the code is sent;
        ``live`` gets what the code prints while it runs (on this thread, throttled by itself);
        ``on_queue`` the place in line of a kernel start that waits for its turn (0: its turn came).
        """
        execution_id = create_id("exec")
        with self._exec_lock:
            if self._closed:
                return _failure(execution_id, code, messages.EXECUTOR_STOPPED)
            if (cancel is not None and cancel.cancelled) or self._stopping.is_set():
                return _failure(execution_id, code, messages.CANCELLED_BEFORE_START, cancelled=True)
            try:
                self.start(cancel=cancel, on_queue=on_queue)
            except (KernelStartError, ExecutorClosedError) as exc:
                if (cancel is not None and cancel.cancelled) or self._stopping.is_set():
                    return _failure(execution_id, code, messages.CANCELLED_BEFORE_START, cancelled=True)
                return _failure(execution_id, code, str(exc))
            if not self.process.alive():
                return self._died_before_run(execution_id, code, KernelDiedError("the kernel exited"))
            notes = self._move_files(self.process.before_run)
            begin_id = self._rpc.send_begin_execution(_execution_payload(execution_id, session_vars))
            disk_start = self._prepare_disk()
            if on_running is not None:
                on_running()

            def should_stop() -> bool:
                return (cancel is not None and cancel.cancelled) or self._stopping.is_set()

            disk_over = None if disk_start is None else (lambda: self._disk_overrun(disk_start))
            limit = timeout or self.timeout
            run = run_user_code(self.process, self._rpc, self.cwd, code, limit, should_stop, disk_over, live)
            if disk_start is not None and run.stop_reason is None and not run.died:
                run.disk_full = self._disk_overrun(disk_start)  # a burst of writes between two checks
            return self._finish(execution_id, code, run, limit, begin_id, notes)

    def call_helper(
        self, expression: str, *, start: bool = False, only_if: Callable[[], bool] | None = None
    ) -> str | None:
        """Evaluate Weaver's own ``expression`` (it returns a str) in the kernel between executions,
        out of the user's history and output (a session's snapshot). None, having done nothing,
        when no kernel runs (unless ``start``) or ``only_if``, checked once no execution runs,
        is False. Raises what a bookkeeping call raises (``RuntimeError``, ``TimeoutError``...)."""
        with self._exec_lock:
            if self._closed or self._stopping.is_set() or (only_if is not None and not only_if()):
                return None
            if not (self.process.running and self.process.alive()):
                if not start:
                    return None
                self.start()
            return self._rpc.silent_value(expression)

    def _move_files(self, move: Callable[[KernelRPC], list[str]]) -> list[str]:
        """The backend's file hook (a remote kernel's files follow it); a failure is a note, not a crash."""
        try:
            return move(self._rpc)
        except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
            logger.warning("moving files of session %s failed: %s", self.session_id, exc)
            return [messages.files_not_moved(exc)]

    def _prepare_disk(self) -> int | None:
        """Cap each file the run may write at the room the session folder has left; its size now."""
        limit_mb = self.settings.disk_mb
        pid = self.kernel_pid
        if limit_mb <= 0:
            return None
        found = folder_usage(self.cwd)
        used = found.bytes
        if pid is not None:
            room = 0 if found.too_deep else max(0, limit_mb * MB - used)
            per_file = self.settings.max_file_mb * MB if self.settings.max_file_mb > 0 else room
            set_file_size_limit(pid, min(room, per_file))
        return used

    def _disk_overrun(self, disk_start: int) -> bool:
        """The run grew the session folder past ``execution.disk_mb`` (a folder already full may shrink)."""
        found = folder_usage(self.cwd)
        return found.too_deep or (found.bytes > self.settings.disk_mb * MB and found.bytes > disk_start)

    def _finish(
        self, execution_id: str, code: str, run: Run, timeout: float, begin_id: str, notes: list[str]
    ) -> ExecutionResult:
        c = run.collector
        res = ExecutionResult(
            execution_id=execution_id,
            code=code,
            is_success=False,
            result=c.result,
            result_html=c.result_html,
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
        notes = notes + self._move_files(self.process.after_run)
        if notes:
            res.stderr += "".join(f"[weaver] {note}\n" for note in notes)
        self._collect_plugin_outputs(res, begin_id, run.msg_id)
        if run.stop_reason is not None:
            note = self._disk_note() if run.stop_reason == "disk" else ""
            res.error = messages.interrupted(run.stop_reason, timeout, c.error, note)
        if run.disk_full and run.stop_reason is None:
            over = messages.wrote_past_disk_limit(self._disk_note())
            res.error = f"{over}\n{res.error}" if res.error else over
        elif res.error is not None and ("File too large" in res.error or "No space left" in res.error):
            res.error += "\n" + self._disk_note()
        elif res.error is not None and "Too many open files" in res.error and self.settings.max_open_files:
            res.error += "\n" + messages.open_files_note(self.settings.max_open_files)
        res.is_success = res.error is None
        return res

    def _threads_started(self) -> int:
        """Threads the interrupted code started that still run (an interrupt stops only the main one)."""
        try:
            return self._rpc.threads_started()
        except (RuntimeError, TimeoutError, ValueError):
            return 0

    def _disk_note(self) -> str:
        found = folder_usage(self.cwd)
        return messages.disk_note(self.settings, found.bytes / MB, found.too_deep)

    def _lost_state_message(self, run: Run, timeout: float, before_run: bool = False) -> str:
        """Restart the kernel and explain what happened and that the session's state is gone."""
        facts = messages.LostState(
            died=run.died,
            oom_killed=run.died and self.process.oom_killed(),
            exit_code=self.process.exit_code(),
            before_run=before_run,
            threads_left=run.threads_left,
            stop_reason=run.stop_reason,
        )
        return messages.lost_state(facts, timeout, self.settings.memory_mb, self._restart())

    def _collect_plugin_outputs(self, res: ExecutionResult, begin_id: str, run_id: str) -> None:
        """Artifacts and logs recorded by plugins during this execution (kept only inside cwd).

        They usually came back with the code's own reply; after a failed cell they are asked for.
        """
        replies = self._rpc.replies({begin_id, run_id}, NO_REPLY_GRACE_SECONDS)
        begun = replies.get(begin_id)
        if begun is not None and begun.get("status") != "ok":  # plugins may have seen stale variables
            logger.warning("begin_execution failed in session %s: %s", self.session_id, begun.get("evalue"))
        try:
            report = self._rpc.collected(replies.get(run_id, {}))
            if report is None:
                report = self._rpc.collect()
        except (RuntimeError, TimeoutError, ValueError, SyntaxError) as exc:
            logger.warning("collecting plugin outputs failed in session %s: %s", self.session_id, exc)
            return
        res.logs.extend(str(line) for line in report.get("logs", []))
        changed = report.get("session_vars")
        if isinstance(changed, dict) and changed and self.on_session_vars is not None:
            self.on_session_vars({str(k): str(v) for k, v in changed.items()})
        for item in report.get("artifacts", []):
            path = self.process.local_path(str(item.get("path", ""))).resolve()
            if path.is_relative_to(self.cwd) and path.is_file():
                name = str(item.get("name") or path.name)
                kind = str(item.get("type") or "file")
                res.artifacts.append(Artifact(name, path, kind, str(item.get("description") or "")))

    def _died_before_run(self, execution_id: str, code: str, exc: Exception) -> ExecutionResult:
        res = _failure(execution_id, code, "")
        res.kernel_died = True
        res.error = self._lost_state_message(Run(OutputCollector(self.cwd), died=True), self.timeout, before_run=True)
        logger.warning("kernel of session %s failed before running code: %s", self.session_id, exc)
        return res


def _failure(execution_id: str, code: str, error: str, cancelled: bool = False) -> ExecutionResult:
    return ExecutionResult(execution_id=execution_id, code=code, is_success=False, error=error, cancelled=cancelled)


def _execution_payload(execution_id: str, session_vars: dict[str, str] | None) -> dict[str, Any]:
    return {"execution_id": execution_id, "session_vars": {str(k): str(v) for k, v in (session_vars or {}).items()}}


_LIVE: "weakref.WeakSet[KernelExecutor]" = weakref.WeakSet()


def live_kernels() -> int:
    """Kernels of this process started and not stopped (for ``weaver_kernels_live``)."""
    return sum(1 for executor in list(_LIVE) if executor.process.running)


@atexit.register
def _stop_all() -> None:
    """Don't leave kernels behind when the server exits without closing its sessions."""
    for executor in list(_LIVE):
        try:
            executor.stop()
        except Exception:  # noqa: BLE001
            logger.debug("stopping an executor at exit failed", exc_info=True)
