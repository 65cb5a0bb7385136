"""Finding kernel processes on the host, and sweeping what an earlier server's kernels left.

Read from ``/proc`` alone: a kernel is known by its command line (started as one, or forked into
its sandbox by the fork server), its pid by the connection file it was given. Tests, benchmarks
and operators ask here; the server asks only for ``children`` (``sandbox.KernelBox``) and, at
start, for ``sweep_stale``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from core.execution.limits import sweep_stale_cgroups

logger = logging.getLogger(__name__)

# Every kernel's private folder (``sandbox.KernelBox.runtime_dir``) is a temporary folder named so:
# the sweep knows an earlier server's by it.
RUNTIME_PREFIX = "weaver-kernel-"
_KERNEL_MODULES = ([b"core.execution.kernel_main"], [b"ipykernel_launcher"])
_FORKED_KERNEL = [b"core.execution.zygote"]


def children(pid: int) -> list[int]:
    """Child pids, from /proc/<pid>/task/<pid>/children or, where the kernel lacks it, every stat."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(found)


def kernel_host_pid(connection_file: str) -> int | None:
    """Host pid of the kernel started with ``connection_file`` (for tests and operators).

    Inside its PID namespace a kernel's ``os.getpid()`` is 2 or 3; the connection file path it
    reports (``ipykernel.connect.get_connection_file()``) is the same on both sides. A kernel
    forked into its sandbox carries the fork server's command line: it is the Python process
    below the bubblewrap whose command line binds the connection file's folder.
    """
    folder = str(Path(connection_file).parent).encode()
    sandboxes: list[int] = []
    for pid, argv in _processes():
        if argv[1:2] == [b"-m"] and argv[2:3] in _KERNEL_MODULES and connection_file.encode() in argv:
            return pid
        if Path(argv[0].decode(errors="replace")).name == "bwrap" and folder in argv:
            sandboxes.append(pid)
    for outer in sandboxes:
        for init in children(outer):
            for pid in children(init):
                argv = _cmdline(pid)
                if argv[1:2] == [b"-m"] and argv[2:3] == _FORKED_KERNEL:
                    return pid
    return None


def is_kernel_process(pid: int) -> bool:
    """Whether ``pid`` is a kernel: started as one, or forked into a sandbox by the fork server
    (which shares that command line, but not the sandbox's PID namespace)."""
    argv = _cmdline(pid)
    if argv[1:2] != [b"-m"]:
        return False
    if argv[2:3] in _KERNEL_MODULES:
        return True
    try:
        return argv[2:3] == _FORKED_KERNEL and os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _processes() -> Iterator[tuple[int, list[bytes]]]:
    """Every process's pid and argv."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if argv:
                yield int(entry.name), argv


def sweep_stale(min_age_s: float = 60.0) -> None:
    """Drop the cgroups and private folders of kernels whose server died without cleaning up.

    The kernels themselves died with it (``--die-with-parent``); a folder still named on a live
    process's command line, or younger than ``min_age_s``, is kept.
    """
    removed = sweep_stale_cgroups(min_age_s)
    folders = [d for d in Path(tempfile.gettempdir()).glob(f"{RUNTIME_PREFIX}*") if d.is_dir()]
    old = [d for d in folders if time.time() - d.stat().st_mtime > min_age_s]
    if old:
        in_use = _command_lines()
        for folder in old:
            if str(folder) not in in_use:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    if removed:
        logger.info("removed %d cgroups and folders of kernels of an earlier server", removed)


def _command_lines() -> str:
    """Every process's command line, joined: to tell which private folders are still used."""
    return "\n".join(b"\0".join(argv).decode(errors="replace") for _, argv in _processes())
