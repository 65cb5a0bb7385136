"""Starting a kernel with our own interpreter and environment, independent of installed kernelspecs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from core.execution.zmq_channels import channel_context

REPO_ROOT = Path(__file__).resolve().parents[2]
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The session folder must not shadow modules the kernel or Weaver import: no cwd on sys.path at
# start (PYTHONSAFEPATH, ignore_cwd); the kernel appends it last once Weaver's runtime is loaded.
# No history database: no SQLite file to grow or to fail when the folder is full, and ~25 ms less
# CPU per kernel start (IPython builds the database even in memory); In, Out and _ still work.
# ``core.execution.kernel_main`` is ipykernel's launcher without the debugger and completion engine.
KERNEL_MODULE = "core.execution.kernel_main"
KERNEL_ARGS = ["-f", "{connection_file}", "--IPKernelApp.ignore_cwd=True", "--HistoryManager.enabled=False"]
KERNEL_ARGV = [sys.executable, "-m", KERNEL_MODULE, *KERNEL_ARGS]


class _OwnPythonSpecs(KernelSpecManager):
    """Always answers with our own command (``KERNEL_ARGV``): a user's kernelspec can't swap it."""

    argv_prefix: list[str] = []
    argv: list[str] = KERNEL_ARGV

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[*self.argv_prefix, *self.argv],
            display_name="Weaver Python",
            language="python",
            interrupt_mode="signal",
        )


# From the server's environment only these pass (an allowlist: whatever else the server holds,
# credentials included, stays out); plugins get their PLUGIN_* settings.
_PASSED = re.compile(r"^(LANG|LANGUAGE|TZ|LC_[A-Z]+|PLUGIN_\w+)$")


def kernel_env(session_id: str, extra_env: dict[str, str] | None, home: Path | None = None) -> dict[str, str]:
    """Allowlisted host variables + extras + session id; ``core`` importable, figures inline."""
    env = {k: v for k, v in os.environ.items() if _PASSED.match(k)}
    paths = [os.path.dirname(sys.executable), *os.environ.get("PATH", os.defpath).split(os.pathsep)]
    env["PATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra_env or {})
    env["WEAVER_SESSION_ID"] = session_id
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    env["MPLBACKEND"] = INLINE_BACKEND
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def new_kernel_manager(
    argv_prefix: Sequence[str] = (),
    connection_file: Path | None = None,
    ipc_prefix: Path | None = None,
    argv: Sequence[str] = KERNEL_ARGV,
) -> KernelManager:
    """A manager whose kernel runs behind ``argv_prefix`` (the sandbox) and, given ``ipc_prefix``,
    talks over ZMQ ``ipc`` sockets in that private folder instead of TCP ports any process could reach.
    ``argv`` replaces the kernel's command (a placeholder when the kernel is forked into the sandbox)."""
    specs = _OwnPythonSpecs()
    specs.argv_prefix = list(argv_prefix)
    specs.argv = list(argv)
    # The control socket jupyter_client opens to each kernel comes from the context of every kernel's
    # channels: a manager's own context is two threads per kernel in the server (4,000 at a thousand).
    km = KernelManager(
        kernel_name="weaver-python",
        kernel_spec_manager=specs,
        transport="ipc" if ipc_prefix else "tcp",
        context=channel_context(),
    )
    if ipc_prefix is not None:
        km.ip = str(ipc_prefix)
    if connection_file is not None:
        km.connection_file = str(connection_file)
    km.shutdown_wait_time = 3.0  # a graceful shutdown that takes longer is forced
    return km


# bwrap --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that started it ends, e.g. a
# session's pre-start thread; so every kernel is started from these threads, which live as long
# as the server process (a pool's workers never end before it is shut down). Several: a launch
# through jupyter_client takes ~5 ms of this thread, and with one thread a crowd's starts queued
# here one after the other.
SPAWNER_THREADS = 4
_SPAWNER = ThreadPoolExecutor(max_workers=SPAWNER_THREADS, thread_name_prefix="weaver-kernel-spawner")


def start_kernel(km: KernelManager, **kwargs: Any) -> None:
    """``km.start_kernel(**kwargs)`` from the long-lived spawner thread."""
    _SPAWNER.submit(km.start_kernel, **kwargs).result()


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)`` from the long-lived spawner thread."""

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), **kwargs)

    return _SPAWNER.submit(popen).result()
