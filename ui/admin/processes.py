"""What one kernel process costs right now, read from ``/proc``: resident memory and CPU time.

Only the kernel's own process (its host pid, ``KernelExecutor.kernel_pid``), not what it started;
``None`` for a kernel that is not a local process (a gateway's) or has just gone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessUsage:
    pid: int
    rss_bytes: int
    cpu_s: float  # user + system time since it started
    age_s: float  # wall time since it started

    @property
    def cpu_share(self) -> float:
        """Its average share of one core over its life (0.25: a quarter of a core)."""
        return self.cpu_s / self.age_s if self.age_s > 0 else 0.0


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def process_usage(pid: int | None) -> ProcessUsage | None:
    """Memory and CPU of ``pid`` now, or None when there is no such process (or no pid)."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    try:
        utime, stime, start_ticks = int(fields[11]), int(fields[12]), int(fields[19])
        rss_pages = int(statm[1])
    except (IndexError, ValueError):
        return None
    started = _boot_time() + start_ticks / _TICKS
    return ProcessUsage(pid, rss_pages * _PAGE, (utime + stime) / _TICKS, max(0.0, time.time() - started))
