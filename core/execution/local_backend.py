"""Kernels as child processes of this server, each in its own bubblewrap sandbox (``sandbox.py``).

The policy of local kernels lives here: whether they will be sandboxed, the warning when they are
not, the refusal to serve other people unsandboxed, where they read the datasets, and the clean-up
after an earlier server. A kernel dies with its server (``--die-with-parent``), so nothing is adopted.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import SandboxUnavailableError
from core.execution.backend import BackendStatus, KernelBackend
from core.execution.handle import KernelHandle
from core.execution.kernel_forks import FORK_SERVER
from core.execution.kernel_process import KernelProcess
from core.execution.kernel_procs import sweep_stale
from core.execution.sandbox import INSTALL_HINT, bwrap_problem, check_confinement, data_mount, uses_bwrap


class LocalBackend(KernelBackend):
    """``execution.backend = "local"`` (the default): sandboxed local processes."""

    def new_kernel(
        self,
        session_id: str,
        cwd: Path,
        extra_env: dict[str, str],
        start_timeout: float,
        read_only: list[Path],
        attach_to: str | None = None,
    ) -> KernelHandle:
        """``attach_to`` is ignored: a local kernel died with the server that started it."""
        if self.settings.fork_kernels:
            FORK_SERVER.hold(self)  # released at close: the fork server ends with the last app
        return KernelProcess(session_id, cwd, self.settings, extra_env, start_timeout, read_only)

    def check_startup(self) -> None:
        """``execution.sandbox = "bwrap"`` without a working bubblewrap, or without the seccomp
        filter asked for, refuses to start; in ``auto`` what is missing of the confinement is logged."""
        if uses_bwrap(self.settings):
            check_confinement(self.settings)

    def sweep_stale(self) -> None:
        sweep_stale()

    def close(self) -> None:
        """Kernels are stopped by their sessions; the fork server stops if no other app uses it."""
        FORK_SERVER.release(self)

    def data_mount(self, data_dir: Path) -> Path:
        """``/data`` inside the sandbox; the folder's own path unsandboxed."""
        return data_mount(data_dir, uses_bwrap(self.settings))

    def sandbox_warning(self) -> str | None:
        if self.settings.sandbox == "none":
            why = "execution.sandbox is 'none'"
        else:
            problem = bwrap_problem()
            if problem is None:
                return None
            why = problem
        return (
            f"Users' code runs WITHOUT a sandbox because {why}: any user can read other sessions' files, "
            f"the app's config and the server's secrets. To isolate users, {INSTALL_HINT}."
        )

    def require_sandbox(self, reason: str) -> None:
        """Refuse unsandboxed kernels in ``auto`` mode unless the operator chose ``execution.sandbox =
        "none"`` by name or set ``execution.allow_unsandboxed``."""
        settings = self.settings
        if uses_bwrap(settings) or settings.sandbox == "none" or settings.allow_unsandboxed:
            return
        raise SandboxUnavailableError(
            f"Weaver will not run users' code without a sandbox {reason}: {bwrap_problem()}. "
            f"To fix it, {INSTALL_HINT}; to accept the risk, set execution.allow_unsandboxed = true "
            "(WEAVER_EXECUTION__ALLOW_UNSANDBOXED=true)."
        )

    def readiness(self, timeout: float) -> BackendStatus:
        """Ready; when kernels should fork from the fork server but it could not start, they start
        on their own (~5x the CPU each): said in the detail, still ready (nothing would clear it)."""
        if self.settings.fork_kernels and not FORK_SERVER.usable:
            return BackendStatus(self.name, True, f"kernels start without the fork server: {FORK_SERVER.problem}")
        return BackendStatus(self.name, True, "")

    def status(self) -> BackendStatus:
        try:
            sandboxed = uses_bwrap(self.settings)
            if sandboxed:
                check_confinement(self.settings)  # what `weaver ui` would refuse, this says too
        except SandboxUnavailableError as exc:
            return BackendStatus(self.name, False, str(exc), "execution.sandbox")
        if sandboxed:
            return BackendStatus(self.name, True, "each in a bubblewrap sandbox")
        why = "execution.sandbox is 'none'" if self.settings.sandbox == "none" else bwrap_problem()
        return BackendStatus(self.name, True, f"WITHOUT a sandbox ({why})")
