"""Stopping the processes a test started (servers, databases, proxies): by their own PID only."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
    """``sig`` first (each server's own clean stop), SIGKILL if the process outlives ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
