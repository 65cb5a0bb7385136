"""A kernel's process: launched in its sandbox box, interrupted, and torn down with everything it started.

Holds no execution logic: the executor asks it to launch, to signal and to tear down, and reads
its pids. Not thread-safe on its own; the executor's locks serialise calls.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from jupyter_client import KernelManager

from core.config import ExecutionSettings
from core.errors import SandboxUnavailableError
from core.execution import messages
from core.execution.kernel_forks import FORK_SERVER, ForkServerError
from core.execution.launcher import KERNEL_ARGV, kernel_env, new_kernel_manager, start_kernel
from core.execution.sandbox import KernelBox
from core.execution.zmq_channels import KernelChannels

if TYPE_CHECKING:
    from core.execution.handle import SilentEval

logger = logging.getLogger(__name__)


class KernelStartError(RuntimeError):
    """The kernel process could not be started or did not answer in time."""


class KernelProcess:
    """One running kernel at a time: its manager, client, process and sandbox box."""

    def __init__(
        self,
        session_id: str,
        cwd: Path,
        settings: ExecutionSettings,
        extra_env: dict[str, str],
        start_timeout: float,
        read_only: list[Path],
    ) -> None:
        self.session_id = session_id
        self.cwd = cwd
        self.settings = settings
        self.extra_env = extra_env
        self.start_timeout = start_timeout
        self.read_only = read_only  # plugin folders, visible read-only inside the sandbox
        self.manager: KernelManager | None = None
        self.client: KernelChannels | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.box: KernelBox | None = None
        # When each step of the latest launch ended (monotonic clock, the fork server's steps
        # included): where a start's time goes, for ``bench/kernel_starts.py``.
        self.steps: list[tuple[str, float]] = []

    def _mark(self, step: str) -> None:
        self.steps.append((step, time.monotonic()))

    @property
    def running(self) -> bool:
        """A kernel was launched and not torn down (it may have died since)."""
        return self.manager is not None

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def kernel_pid(self) -> int | None:
        """Host pid of the Python kernel itself (inside the sandbox it is not ``pid``)."""
        box, pid = self.box, self.pid
        return box.kernel_pid(pid) if box is not None and pid is not None else None

    @property
    def sandboxed(self) -> bool:
        return self.box is not None and self.box.sandboxed

    @property
    def kernel_id(self) -> str | None:
        return None  # a local kernel dies with this server: nobody else can adopt it

    @property
    def adopted(self) -> bool:
        return False

    def alive(self) -> bool:
        box = self.box
        return self.proc is not None and self.proc.poll() is None and not (box is not None and box.kernel_exited())

    def exit_code(self) -> int | None:
        """The kernel's exit code; None for a forked kernel (its sandbox's code is its placeholder's)."""
        if self.proc is None or (self.box is not None and self.box.forked):
            return None
        return self.proc.poll()

    def oom_killed(self) -> bool:
        return self.box is not None and self.box.oom_killed()

    def send_interrupt(self) -> None:
        """SIGINT to the kernel's process group, never to the sandbox around it (that would kill it)."""
        try:
            pid = self.kernel_pid
            if pid is not None:
                os.killpg(os.getpgid(pid), signal.SIGINT)
            elif self.manager is not None and not self.sandboxed:
                self.manager.interrupt_kernel()
        except Exception:  # noqa: BLE001 - the process may be exiting right now
            logger.debug("interrupt of session %s failed", self.session_id, exc_info=True)

    def launch(self) -> None:
        """Start a kernel in a new box and wait until it answers; raises ``KernelStartError``."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        forked = self.settings.fork_kernels and FORK_SERVER.usable
        try:
            self._launch(forked)
        except ForkServerError as exc:
            logger.warning("kernel of session %s not forked (%s); starting it on its own", self.session_id, exc)
            self._launch(forked=False)

    def _launch(self, forked: bool) -> None:
        self.steps = []
        self._mark("begin")
        try:
            box = KernelBox(self.session_id, self.cwd, self.settings, self.read_only)
        except (SandboxUnavailableError, OSError) as exc:
            raise KernelStartError(messages.start_failed(exc)) from exc
        forked = forked and box.sandboxed
        self._mark("box")
        argv = box.placeholder_argv() if forked else KERNEL_ARGV
        km = new_kernel_manager(box.argv_prefix, box.connection_file, box.ipc_prefix, argv)
        env = box.env(kernel_env(self.session_id, self.extra_env, home=self.cwd))
        self._mark("manager")
        # The kernel's own chatter (e.g. ipykernel's transport warning) goes to the session's
        # folder, not the server's terminal.
        log = self.cwd.parent / "kernel.log"
        try:
            with log.open("ab") as kernel_log:
                start_kernel(
                    km,
                    cwd=str(self.cwd),
                    env=env,
                    stdout=kernel_log,
                    stderr=kernel_log,
                    independent=box.sandboxed,  # no JPY_PARENT_PID: inside, the parent is pid 1
                    pass_fds=box.pass_fds,  # the seccomp filter, as BPF for bubblewrap to read
                )
            box.launched()
            self._mark("launched")
            proc = getattr(km.provisioner, "process", None)
            if forked:
                if proc is None:
                    raise ForkServerError("the sandbox's process is not known")
                pid, helper_steps = FORK_SERVER.fork(
                    outer_pid=proc.pid,
                    fifo=box.fifo,
                    connection_file=box.connection_file,
                    env=env,
                    cwd=self.cwd,
                    log=log,
                    cgroups=box.cgroups.procs_files,
                    timeout=self.start_timeout,
                    cpu_group=box.cgroups.shared_cpu_group,
                    uid=box.uid,
                    seccomp=box.seccomp,
                )
                self.steps += helper_steps
                self._mark("forked")
                try:
                    box.adopt_kernel(pid)
                except OSError as exc:  # no pidfd on this system (Linux < 5.3): the sandbox goes, unforked next
                    raise ForkServerError(f"cannot follow the forked kernel ({exc})") from exc
        except Exception as exc:
            try:
                km.shutdown_kernel(now=True)  # the placeholder of a kernel that was not forked
            except Exception:  # noqa: BLE001
                logger.debug("cleanup after a failed launch failed", exc_info=True)
            try:
                km.cleanup_resources()  # the connection file written before the launch failed
            except Exception:  # noqa: BLE001
                logger.debug("cleanup after a failed launch failed", exc_info=True)
            box.close()
            if isinstance(exc, ForkServerError):
                raise
            raise KernelStartError(messages.start_failed(exc)) from exc
        self.box = box
        self.manager = km
        self.proc = proc
        # Shell and IOPub only. No heartbeat channel: a thread per kernel pinging every few
        # seconds, for what ``alive()`` already knows from the process itself.
        kc = KernelChannels(km.get_connection_info())
        self.client = kc
        try:
            wait_for_ready(kc, self.start_timeout, self.alive)
        except RuntimeError as exc:
            self.teardown(graceful=False)
            raise KernelStartError(messages.not_ready(self.start_timeout, exc)) from exc
        self._mark("ready")

    # The kernel shares the session's folder and reads plugins where they are: nothing to move.
    def bootstrap_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def before_run(self, rpc: SilentEval) -> list[str]:
        if self.box is not None:
            self.box.claim_new_files()  # uploads the server wrote since: the kernel's to change
        return []

    def after_run(self, rpc: SilentEval) -> list[str]:
        return []

    def local_path(self, path: str) -> Path:
        return Path(path)

    def teardown(self, graceful: bool, keep: bool = False) -> None:
        """Close channels, shut the kernel down and make sure every process it started is gone
        (``keep`` does not apply: a local kernel dies with its server anyway)."""
        kc, km, proc, box = self.client, self.manager, self.proc, self.box
        self.client = self.manager = self.proc = self.box = None
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


IOPUB_CHECK_S = 0.2


def wait_for_ready(kc: Any, timeout: float, alive: Callable[[], bool]) -> None:
    """``kc.wait_for_ready`` without its idle tail: jupyter_client ends every wait by listening to
    IOPub until it has been silent for 0.2 s, a third of a kernel's start time here; messages still
    queued are drained without waiting instead (every later call matches replies by message id).
    As there, the kernel is ready once it answers ``kernel_info`` and IOPub is seen connected."""
    deadline = time.monotonic() + timeout
    while True:
        kc.kernel_info()
        try:
            msg = kc.get_shell_msg(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
        except queue.Empty:
            msg = None
        if msg is not None and msg["msg_type"] == "kernel_info_reply":
            try:
                kc.get_iopub_msg(timeout=IOPUB_CHECK_S)
            except queue.Empty:
                pass  # IOPub not connected yet: ask again
            else:
                handle = getattr(kc, "_handle_kernel_info_reply", None)
                if handle is not None:
                    handle(msg)  # adapts to the kernel's protocol version
                break
        if not alive():
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
    while True:
        try:
            kc.get_iopub_msg(timeout=0)
        except queue.Empty:
            return
