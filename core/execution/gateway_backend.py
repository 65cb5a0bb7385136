"""Kernels on a Jupyter kernel gateway (``execution.gateway_url``): ``gateway_kernel.GatewayKernel``.

Isolation is the gateway's (one container or pod per kernel), so there is no sandbox to warn about
or require here. A kernel outlives the server that started it: another replica may attach to it by
its id, or delete it (``delete_kernel``) when nobody comes back for it. The session's files follow
the kernel (``file_sync``); the datasets folder is not mounted there.
"""

from __future__ import annotations

from pathlib import Path

from core.config import ExecutionSettings
from core.errors import ConfigError, GatewayError
from core.execution.backend import BackendStatus, KernelBackend
from core.execution.handle import KernelHandle


class GatewayBackend(KernelBackend):
    """``execution.backend = "gateway"`` (implied by ``execution.gateway_url``)."""

    kernels_outlive_server = True

    def __init__(self, settings: ExecutionSettings) -> None:
        if not settings.gateway_url:
            raise ConfigError("execution.backend is 'gateway' but execution.gateway_url is not set")
        super().__init__(settings)
        self.url = settings.gateway_url

    def new_kernel(
        self,
        session_id: str,
        cwd: Path,
        extra_env: dict[str, str],
        start_timeout: float,
        read_only: list[Path],
        attach_to: str | None = None,
    ) -> KernelHandle:
        """``read_only`` is not needed: plugins travel to the kernel as source with its bootstrap."""
        from core.execution.gateway_kernel import GatewayKernel  # httpx/websocket only in gateway mode

        return GatewayKernel(session_id, cwd, self.settings, extra_env, start_timeout, attach_to)

    def check_startup(self) -> None:
        """Unreachable (``GatewayUnavailable``), a refused token (``GatewayAuthError``) or no
        ``execution.gateway_kernel_name`` there stops the app."""
        from core.execution.gateway_client import check_gateway

        check_gateway(self.settings)

    def status(self) -> BackendStatus:
        try:
            self.check_startup()
        except GatewayError as exc:
            return BackendStatus(self.name, False, f"kernel gateway {self.url}: {exc}")
        offered = self.settings.gateway_kernel_name
        return BackendStatus(self.name, True, f"kernel gateway {self.url}: token accepted, offers {offered!r}")

    def readiness(self, timeout: float) -> BackendStatus:
        """The gateway answers (``GET /api/kernelspecs`` with Weaver's token) within ``timeout``."""
        from core.execution.gateway_client import GatewayREST

        try:
            GatewayREST.shared(self.settings).answers(timeout)
        except GatewayError as exc:
            return BackendStatus(self.name, False, str(exc), "execution.gateway_url")
        return BackendStatus(self.name, True, "")

    def delete_kernel(self, kernel_id: str) -> None:
        """``DELETE`` a kernel a dead replica left (404 included); ``GatewayError`` when not asked."""
        from core.execution.gateway_client import GatewayREST

        GatewayREST.shared(self.settings).delete_kernel(kernel_id)
