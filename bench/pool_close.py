"""How long a server's stop takes to end a full warm pool, and what it leaves behind.

Fills a pool of ``--size`` kernels, then times ``TaskWeaverApp.stop()``, which closes the pool, and
counts the kernel cgroups (v1, ``weaver/`` under each controller of this process) still there
after it. Two variants alternate over ``--rounds`` in this one process: ``one by one``
(``pool.CLOSE_THREADS = 1``, how the pool closed before) and ``side by side`` (the default). The
server gives its engine ``ui.shutdown_steps.ENGINE_STOP_S`` to stop; a pool that takes longer is
left to die with the server, and its cgroups stay until the next start sweeps them.

    python bench/pool_close.py [--size 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import TaskWeaverApp  # noqa: E402
from core.execution import limits, pool  # noqa: E402
from ui.shutdown_steps import ENGINE_STOP_S  # noqa: E402

VARIANTS = {"one by one": 1, "side by side": pool.CLOSE_THREADS}


def kernel_cgroups() -> int:
    """Kernel cgroup folders under this process's ``weaver/`` of every controller that has one."""
    count = 0
    for controller in ("cpu", "pids", "memory"):
        mine = limits._own_cgroup(controller)
        base = mine / "weaver" if mine is not None else None
        if base is not None and base.is_dir():
            count += sum(1 for entry in base.iterdir() if entry.is_dir())
    return count


def one_run(size: int, threads: int) -> tuple[float, float, int]:
    """(fill seconds, stop seconds, kernel cgroups left) for one pool of ``size``."""
    pool.CLOSE_THREADS = threads
    with tempfile.TemporaryDirectory(prefix="weaver-pool-close-") as tmp:
        started = time.monotonic()
        app = TaskWeaverApp(app_dir=Path(tmp) / "app", config={"execution.pool_size": size})
        try:
            if not app.pool.wait_ready(size, 600):
                raise SystemExit(f"the pool did not reach {size} kernels within 600 s")
            filled = time.monotonic() - started
        finally:
            stopping = time.monotonic()
            app.stop()
            stopped = time.monotonic() - stopping
        return filled, stopped, kernel_cgroups()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200, help="warm kernels in the pool")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; pool of {args.size}; the server's engine stop deadline is {ENGINE_STOP_S:g} s")
    stops: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_no in range(args.rounds):
        for name, threads in VARIANTS.items():
            filled, stopped, left = one_run(args.size, threads)
            stops[name].append(stopped)
            print(
                f"  round {round_no + 1} {name:12s} filled in {filled:5.1f} s, stopped in {stopped:6.2f} s, "
                f"kernel cgroups left {left}",
                flush=True,
            )
    base = statistics.median(stops["one by one"])
    for name, values in stops.items():
        median = statistics.median(values)
        each_ms = median / args.size * 1000
        print(f"{name:12s} stop median {median:6.2f} s ({each_ms:.1f} ms a kernel, x{median / base:.3f} of one by one)")


if __name__ == "__main__":
    main()
