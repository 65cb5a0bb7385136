"""A session's kernel on a Jupyter kernel gateway, with the shape of a local ``KernelProcess``.

Started with ``POST /api/kernels``, interrupted and stopped through the REST API, driven over its
websocket channels (``gateway_client``). What is local-only degrades on purpose: no sandbox,
cgroup, file-size limit or OOM verdict here (the gateway isolates its kernels, typically one
container per kernel), no exit code (the gateway does not report one), and ``pid`` is the kernel's
pid on its own host. The session's files follow the kernel (``file_sync``); plugins travel as
source with the bootstrap, since the kernel cannot read the web tier's plugin folder.
"""

from __future__ import annotations

import ast
import logging
import os
import posixpath
import queue
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import ExecutionSettings
from core.errors import GatewayError
from core.execution import messages
from core.execution.file_sync import FileSync
from core.execution.gateway_client import GatewayChannels, GatewayREST
from core.execution.kernel_process import KernelStartError, wait_for_ready
from core.execution.limits import MB, disk_room

if TYPE_CHECKING:
    from core.execution.handle import SilentEval

logger = logging.getLogger(__name__)

# Variables the kernel gateway passes to a kernel: KERNEL_* always, others only when its
# operator allowlists them (``--JupyterWebsocketPersonality.env_whitelist``). The server's own
# KERNEL_* variables are the operator's words to the gateway (Enterprise Gateway reads e.g.
# KERNEL_IMAGE, the container image of a kernel), so they go with every start.
_PASSED = re.compile(r"^(PLUGIN|KERNEL)_\w+$")
PID_TIMEOUT_S = 10.0
EXISTS_CHECK_S = 2.0  # how often ``alive`` asks the gateway whether the kernel still exists
_WHERE = {"pid": "__import__('os').getpid()", "cwd": "__import__('os').getcwd()"}


class GatewayKernel:
    """One remote kernel at a time for one session; not thread-safe on its own (the executor's locks are)."""

    def __init__(
        self,
        session_id: str,
        cwd: Path,
        settings: ExecutionSettings,
        extra_env: dict[str, str],
        start_timeout: float,
        attach_to: str | None = None,
    ) -> None:
        """``attach_to``: the id of this session's kernel that another server started on the gateway
        (it died); the first ``launch`` connects to that kernel, with its variables, if it still exists."""
        self.session_id = session_id
        self.attach_to = attach_to
        self.adopted = False  # the running kernel is the one ``attach_to`` named
        self.cwd = cwd
        self.settings = settings
        self.extra_env = extra_env
        self.start_timeout = start_timeout
        self.rest = GatewayREST.shared(settings)
        self.kernel_id: str | None = None
        self.client: GatewayChannels | None = None
        self.remote_pid: int | None = None
        self.remote_cwd: str | None = None  # the kernel's working folder, from the bootstrap
        self._exists_checked = 0.0
        per_file = settings.max_file_mb * MB if settings.max_file_mb > 0 else 0
        self.files = FileSync(cwd, per_file, settings.gateway_sync_mb * MB)

    # ----- KernelHandle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.kernel_id is not None

    @property
    def pid(self) -> int | None:
        """The kernel's pid on the gateway's host (not a process of this machine to signal)."""
        return self.remote_pid if self.alive() else None

    @property
    def kernel_pid(self) -> int | None:
        return None  # no local process: file-size limits and signals go through the gateway

    @property
    def sandboxed(self) -> bool:
        return False  # the gateway's isolation, not Weaver's bubblewrap

    def alive(self) -> bool:
        """The channels say nothing is wrong and, asked at most every ``EXISTS_CHECK_S``, the gateway
        still has the kernel (a kernel it deleted, e.g. culled as idle, may leave the socket open)."""
        kc, kernel_id = self.client, self.kernel_id
        if kc is None or kernel_id is None or kc.died.is_set() or kc.closed.is_set():
            return False
        now = time.monotonic()
        if now - self._exists_checked >= EXISTS_CHECK_S:
            self._exists_checked = now
            try:
                exists = self.rest.kernel_exists(kernel_id)
            except GatewayError:
                exists = True  # an unreachable gateway is not a dead kernel; the socket will tell
            if not exists:
                kc.died.set()
                return False
        return True

    def exit_code(self) -> int | None:
        return None

    def oom_killed(self) -> bool:
        return False

    def send_interrupt(self) -> None:
        kernel_id = self.kernel_id
        if kernel_id is None:
            return
        try:
            self.rest.interrupt_kernel(kernel_id)
        except GatewayError as exc:
            logger.debug("interrupting remote kernel %s failed: %s", kernel_id, exc)

    def launch(self) -> None:
        """Start a kernel on the gateway (or attach to ``attach_to``) and wait until it answers;
        raises ``KernelStartError``."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        attach, self.attach_to = self.attach_to, None  # only the first launch; a restart starts afresh
        if attach is not None and self._attach(attach):
            return
        try:
            self.kernel_id = self.rest.start_kernel(self.settings.gateway_kernel_name, self._env())
        except GatewayError as exc:
            raise KernelStartError(messages.start_failed(exc)) from exc
        try:
            self._connect()
        except Exception as exc:
            self.teardown(graceful=False)
            raise KernelStartError(messages.not_ready(self.start_timeout, exc)) from exc
        logger.info("session %s: kernel %s started on the gateway", self.session_id, self.kernel_id)

    def _attach(self, kernel_id: str) -> bool:
        """Connect to an existing kernel of this session; False (nothing running) when it is gone
        or does not answer, so the caller starts a new one. A kernel that does not answer is
        deleted: nobody else may adopt it any more."""
        try:
            if not self.rest.kernel_exists(kernel_id):
                logger.info("session %s: kernel %s is gone from the gateway", self.session_id, kernel_id)
                return False
        except GatewayError as exc:
            logger.warning("session %s: cannot ask for kernel %s: %s", self.session_id, kernel_id, exc)
            return False
        self.kernel_id = kernel_id
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001 - any failure means: start a new kernel instead
            logger.warning(
                "session %s: kernel %s did not answer (%s); starting a new one", self.session_id, kernel_id, exc
            )
            self.teardown(graceful=False)
            return False
        self.adopted = True
        logger.info("session %s: attached to its kernel %s on the gateway", self.session_id, kernel_id)
        return True

    def _connect(self) -> None:
        """Open the channels of ``kernel_id``, wait until it answers, and learn its pid and folder."""
        assert self.kernel_id is not None
        self.adopted = False
        self.client = GatewayChannels(self.settings, self.kernel_id, self.start_timeout)
        wait_for_ready(self.client, self.start_timeout, self.alive)
        self.remote_pid, now_cwd = self._ask_pid()
        # A kernel bootstrapped before (an adopted one) already works in the session's folder.
        here = posixpath.basename(now_cwd.rstrip("/")) == self._workdir
        self.remote_cwd = now_cwd if here else posixpath.join(now_cwd, self._workdir)
        self.files.reset()

    def teardown(self, graceful: bool, keep: bool = False) -> None:
        """Close the channels and ``DELETE`` the kernel on the gateway (it stops its process); with
        ``keep`` (this server drains), leave the kernel running for the replica its chat moves to."""
        kc, kernel_id = self.client, self.kernel_id
        self.client = self.kernel_id = self.remote_pid = None
        if kc is not None:
            kc.stop_channels()
        if kernel_id is not None and keep:
            logger.info("session %s: kernel %s left running on the gateway", self.session_id, kernel_id)
        elif kernel_id is not None:
            try:
                self.rest.delete_kernel(kernel_id)
            except GatewayError as exc:
                logger.error("remote kernel %s of session %s was not stopped: %s", kernel_id, self.session_id, exc)

    def bootstrap_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Plugins as source, and a working folder of the session's own on the kernel's host."""
        plugins = []
        for entry in payload.get("plugins", []):
            source = Path(entry["path"]).read_text(encoding="utf-8")
            plugins.append({**entry, "source": source})
        return {**payload, "plugins": plugins, "workdir": self._workdir}

    def before_run(self, rpc: SilentEval) -> list[str]:
        return self.files.push(rpc)

    def after_run(self, rpc: SilentEval) -> list[str]:
        return self.files.pull(rpc, disk_room(self.cwd, self.settings.disk_mb))

    def local_path(self, path: str) -> Path:
        """A path in the kernel's folder → the same file in the session's folder (pulled already)."""
        remote = self.remote_cwd
        if remote is not None and (path == remote or path.startswith(remote.rstrip("/") + "/")):
            return self.cwd / path[len(remote) :].lstrip("/")
        return Path(path)  # elsewhere: the executor keeps only paths inside the session's folder

    # ----- inside ------------------------------------------------------------------------------

    @property
    def _workdir(self) -> str:
        """The session's folder on the kernel's host, inside the folder the gateway started it in."""
        return f"weaver-{self.session_id}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if _PASSED.match(k)}
        env.update(self.extra_env)
        env["KERNEL_WEAVER_SESSION_ID"] = self.session_id
        return env

    def _ask_pid(self) -> tuple[int, str]:
        """The kernel's own pid and starting folder, asked once (a remote process is not ours to signal)."""
        kc = self.client
        assert kc is not None
        msg_id = kc.execute("", silent=True, store_history=False, user_expressions=_WHERE)
        deadline = time.monotonic() + PID_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                reply = kc.get_shell_msg(timeout=0.2)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                found = reply["content"]["user_expressions"]
                pid, cwd = (found[k]["data"]["text/plain"] for k in ("pid", "cwd"))
                return int(pid), str(ast.literal_eval(cwd))
        raise RuntimeError("the kernel did not tell its pid")
