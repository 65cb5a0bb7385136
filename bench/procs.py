"""What the benchmarks read of processes: trees, memory and CPU, from /proc (Linux only)."""

from __future__ import annotations

import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children() -> dict[int, list[int]]:
    """Every process's children, by parent pid (one pass over /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = ppid(int(entry.name))
            if parent is not None:
                tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, todo = children(), [], [root]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kb(path: str, field: str) -> int:
    """The kB figure on the line of ``path`` that starts with ``field`` (0 if the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _kb(f"/proc/{pid}/status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size: pages shared with other processes (a fork server's) counted in part."""
    return _kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the pid, names one process even
    after its pid is reused. None when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


def mem_available_kb() -> int:
    """What the machine could still give without swapping (``MemAvailable`` of /proc/meminfo)."""
    return _kb("/proc/meminfo", "MemAvailable:")


def cpu_ticks(pid: int) -> int:
    """User + system CPU of the process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def machine_idle_share(window_s: float) -> float:
    """The share of the machine's CPU time (all cores, /proc/stat) that was idle over ``window_s``."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks[:8])  # idle + iowait; user .. steal

    idle_before, total_before = read()
    time.sleep(window_s)
    idle_after, total_after = read()
    return (idle_after - idle_before) / max(1, total_after - total_before)


def wait_until_calm(
    min_idle: float, timeout_s: float, window_s: float = 1.0, windows: int = 2
) -> tuple[bool, float, float]:
    """Wait until ``windows`` windows in a row were at least ``min_idle`` idle, or ``timeout_s``.

    A crowd measured while the previous run's thousand sandboxes are still being torn down by Linux
    (or anything else takes the cores) measures that work, not the server. Returns (calm, seconds
    waited, the last window's idle share)."""
    start = time.monotonic()
    calm_windows, idle = 0, 0.0
    while calm_windows < windows:
        if time.monotonic() - start >= timeout_s:
            return False, time.monotonic() - start, idle
        idle = machine_idle_share(window_s)
        calm_windows = calm_windows + 1 if idle >= min_idle else 0
    return True, time.monotonic() - start, idle
