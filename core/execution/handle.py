"""What the executor, KernelRPC and user_run need of a kernel, wherever it runs.

Each kernel backend (``backend.KernelBackend.new_kernel``) returns one: ``kernel_process.KernelProcess``
(a local child process in its sandbox), ``gateway_kernel.GatewayKernel`` (a kernel on a Jupyter
kernel gateway). The executor calls the file hooks around every execution and reads what it needs
through this protocol only: it never asks which backend it has, nor looks for a backend's attributes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class SilentEval(Protocol):
    """What a backend's file hooks need of the kernel's RPC (``kernel_rpc.KernelRPC`` is one): an
    expression evaluated without history or output. Named here, not imported, so the RPC (which
    holds a handle) and the handle do not import each other."""

    def silent_value(self, expression: str) -> str: ...


class KernelHandle(Protocol):
    """One running kernel at a time: launched, signalled, torn down, and its channels (``client``)."""

    # ``KernelChannels`` (ZMQ) or the gateway's ``GatewayChannels``: a ``ShellRequests`` with get_*_msg.
    client: Any

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def kernel_pid(self) -> int | None:
        """Host pid for local limits (file size); None where the kernel is not a local process."""
        ...

    @property
    def sandboxed(self) -> bool: ...

    @property
    def kernel_id(self) -> str | None:
        """The backend's id of the running kernel, by which another server may adopt or delete it;
        None where kernels die with their server (local) or none runs."""
        ...

    @property
    def adopted(self) -> bool:
        """The running kernel is one another server started (``attach_to``), variables included."""
        ...

    def alive(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def oom_killed(self) -> bool: ...

    def send_interrupt(self) -> None: ...

    def launch(self) -> None: ...

    def teardown(self, graceful: bool, keep: bool = False) -> None:
        """Stop the kernel; ``keep``: where it outlives its server (``kernel_id`` not None), only let
        go of it (close the channels) and leave it running for another server to adopt."""
        ...

    def bootstrap_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """What the kernel's runtime needs to start, for this backend (e.g. plugin sources)."""
        ...

    def before_run(self, rpc: SilentEval) -> list[str]:
        """Bring the kernel's folder up to date with the session's; returns notes for the user."""
        ...

    def after_run(self, rpc: SilentEval) -> list[str]:
        """Bring files the run wrote back to the session's folder; returns notes for the user."""
        ...

    def local_path(self, path: str) -> Path:
        """Where a path the kernel reported (a plugin's artifact) is in the session's folder."""
        ...


class ShellRequests:
    """``execute`` and ``kernel_info`` as jupyter_client's blocking client names them, for both
    channel adapters; each sends a request on its shell channel and returns the request's msg_id."""

    allow_stdin = False

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
    ) -> str:
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions or {},
            "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
            "stop_on_error": stop_on_error,
        }
        return self._shell_request("execute_request", content)

    def kernel_info(self) -> str:
        return self._shell_request("kernel_info_request", {})

    def _shell_request(self, msg_type: str, content: dict[str, Any]) -> str:
        raise NotImplementedError
