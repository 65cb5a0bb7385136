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
    attach_to: str | None = None,
) -> KernelHandle:
    """``execution.gateway_url`` set: a kernel on that gateway (``attach_to``: an existing one of this
    session to connect to first); unset: a local sandboxed process (``attach_to`` is ignored: a local
    kernel dies with the server that started it)."""
    if settings.gateway_url:
        from core.execution.gateway_kernel import GatewayKernel  # httpx/websocket only in gateway mode

        return GatewayKernel(session_id, cwd, settings, extra_env, start_timeout, attach_to)
    return KernelProcess(session_id, cwd, settings, extra_env, start_timeout, read_only)
