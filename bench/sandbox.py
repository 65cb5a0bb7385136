"""What the kernel sandbox costs: kernel start and execution latency, sandbox on vs off, same run.

Starts alternate between ``execution.sandbox = "bwrap"`` with the default limits and
``"none"`` with every limit off (the unconfined kernel of before), so both see the same machine
state; each start is ``KernelExecutor.start()`` (launch →
kernel ready → Weaver's runtime bootstrapped). Executions run on one warm kernel of each kind, also
alternating: a ``print(1)``, and a small pandas job that writes and reads a file in the session
folder (so the per-execution disk bookkeeping is in the measurement).

    python bench/sandbox.py [--starts 10] [--executions 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.config import ExecutionSettings  # noqa: E402
from core.execution.kernel import KernelExecutor  # noqa: E402
from core.execution.sandbox import bwrap_problem  # noqa: E402

MODES = ("bwrap", "none")
JOBS = {
    "print(1)": ("print(1)", "1\n"),
    "pandas csv": (
        "import pandas as pd\n"
        "pd.DataFrame({'a': range(1000), 'b': range(1000)}).to_csv('t.csv', index=False)\n"
        "print(int(pd.read_csv('t.csv').b.sum()))",
        "499500\n",
    ),
}


OFF = {"memory_mb": 0, "max_processes": 0, "disk_mb": 0, "max_file_mb": 0, "nice": 0}


def new_executor(mode: str, folder: Path, name: str) -> KernelExecutor:
    """``bwrap``: the default sandbox and limits; ``none``: no sandbox and every limit off."""
    settings = ExecutionSettings(sandbox="bwrap") if mode == "bwrap" else ExecutionSettings(sandbox="none", **OFF)
    return KernelExecutor(name, folder / name, settings=settings)


def time_starts(folder: Path, count: int) -> dict[str, list[float]]:
    """Seconds per kernel start (ready and bootstrapped), alternating the modes."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(count):
        for mode in MODES if i % 2 == 0 else reversed(MODES):
            ex = new_executor(mode, folder, f"start-{mode}-{i}")
            started = time.monotonic()
            ex.start()
            times[mode].append(time.monotonic() - started)
            if ex.sandboxed != (mode == "bwrap"):
                raise SystemExit(f"the {mode} kernel was not started as asked")
            ex.stop()
    return times


def time_executions(folder: Path, count: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per ``execute`` of each job, on one warm kernel per mode, alternating."""
    executors = {m: new_executor(m, folder, f"exec-{m}") for m in MODES}
    times: dict[str, dict[str, list[float]]] = {job: {m: [] for m in MODES} for job in JOBS}
    try:
        for job, (source, expect) in JOBS.items():
            for ex in executors.values():  # warm-up: imports, first-run caches
                check(ex.execute, source, expect)
            for i in range(count):
                for mode in MODES if i % 2 == 0 else reversed(MODES):
                    times[job][mode].append(check(executors[mode].execute, source, expect))
    finally:
        for ex in executors.values():
            ex.stop()
    return times


def check(execute: Callable[[str], object], source: str, expect: str) -> float:
    started = time.monotonic()
    res = execute(source)
    elapsed = time.monotonic() - started
    if not res.is_success or res.stdout != expect:
        raise SystemExit(f"unexpected result: {res.error!r} {res.stdout!r}")
    return elapsed


def report(title: str, times: dict[str, list[float]]) -> float:
    on, off = statistics.median(times["bwrap"]), statistics.median(times["none"])
    ratio = on / off
    print(
        f"{title:<22} sandbox {on * 1000:8.1f} ms   none {off * 1000:8.1f} ms   "
        f"ratio {ratio:5.2f}   (n={len(times['none'])})"
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--executions", type=int, default=50)
    args = parser.parse_args()
    problem = bwrap_problem()
    if problem:
        print(f"cannot compare: {problem}")
        return 2
    with tempfile.TemporaryDirectory(prefix="weaver-bench-") as tmp:
        folder = Path(tmp)
        print("medians, sandbox (bwrap + default limits) vs none (no sandbox, no limits)")
        ratios = [report("kernel start", time_starts(folder, args.starts))]
        for job, times in time_executions(folder, args.executions).items():
            ratios.append(report(f"execute {job}", times))
    worst = max(ratios)
    print(f"worst ratio {worst:.2f} ({'within' if worst <= 1.2 else 'OVER'} the 1.20 budget)")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
