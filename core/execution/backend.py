"""The one place that decides where a session's kernel runs: a local process or a kernel gateway."""

from __future__ import annotations

from pathlib import Path

from core.config import ExecutionSettings
from core.execution.handle import KernelHandle
from core.execution.kernel_process import KernelProcess


def new_kernel_handle(
    session_id: str,
    cwd: Path,
    settings: ExecutionSettings,
    extra_env: dict[str, str],
    start_timeout: float,
    read_only: list[Path],
) -> KernelHandle:
    """``execution.gateway_url`` set: a kernel on that gateway; unset: a local sandboxed process."""
    if settings.gateway_url:
        from core.execution.gateway_kernel import GatewayKernel  # httpx/websocket only in gateway mode

        return GatewayKernel(session_id, cwd, settings, extra_env, start_timeout)
    return KernelProcess(session_id, cwd, settings, extra_env, start_timeout, read_only)
