"""What a kernel's own uid and its seccomp filter cost: kernel start and a pandas job, on vs off, same run.

"on" is the default (``execution.kernel_uid_range`` and ``execution.seccomp``); "off" is
``kernel_uid_range = ""`` and ``seccomp = false``: the kernel of before, as root with no filter.
Both are sandboxed and forked the same way. Starts alternate between the two so both see the
same machine state; each start is ``KernelExecutor.start()`` (launch → kernel ready → Weaver's
runtime bootstrapped). The job, a groupby over 1e6 rows, runs on one warm kernel of each kind,
alternating too.

    python bench/sandbox_cost.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.config import ExecutionSettings  # noqa: E402
from core.execution.kernel import KernelExecutor  # noqa: E402
from core.execution.kernel_users import uid_switch_problem  # noqa: E402
from core.execution.sandbox import bwrap_problem  # noqa: E402

MODES = {"on": {}, "off": {"kernel_uid_range": "", "seccomp": False}}
SETUP = "import numpy as np, pandas as pd\ndf = pd.DataFrame({'k': np.arange(10**6) % 1000, 'v': np.ones(10**6)})"
JOB = "print(int(df.groupby('k').v.sum().sum()))"


def new_executor(mode: str, folder: Path, name: str) -> KernelExecutor:
    return KernelExecutor(name, folder / name, settings=ExecutionSettings(**MODES[mode]))


def check_mode(ex: KernelExecutor, mode: str) -> None:
    """Make sure each kind is what it claims: a uid of its own and the filter, or neither."""
    pid = ex.kernel_pid
    assert pid is not None
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    own_uid, filtered = status["Uid"].split()[0] != "0", status["Seccomp"].strip() == "2"
    assert (own_uid, filtered) == ((True, True) if mode == "on" else (False, False)), (mode, own_uid, filtered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="kernel starts and jobs per mode")
    args = parser.parse_args()
    if bwrap_problem() or uid_switch_problem(200000):
        print(f"cannot compare here: {bwrap_problem() or uid_switch_problem(200000)}", file=sys.stderr)
        return 1
    starts: dict[str, list[float]] = {m: [] for m in MODES}
    jobs: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="weaver-bench-") as tmp:
        folder = Path(tmp)
        for i in range(args.repeats):
            for mode in list(MODES) if i % 2 == 0 else list(reversed(MODES)):
                ex = new_executor(mode, folder, f"start-{mode}-{i}")
                began = time.monotonic()
                ex.start()
                starts[mode].append(time.monotonic() - began)
                check_mode(ex, mode)
                ex.stop()
        warm = {mode: new_executor(mode, folder, f"job-{mode}") for mode in MODES}
        try:
            for mode, ex in warm.items():
                assert ex.execute(SETUP).is_success
                check_mode(ex, mode)
            for i in range(args.repeats):
                for mode in list(MODES) if i % 2 == 0 else list(reversed(MODES)):
                    began = time.monotonic()
                    res = warm[mode].execute(JOB)
                    jobs[mode].append(time.monotonic() - began)
                    assert res.stdout.strip() == "1000000", res
        finally:
            for ex in warm.values():
                ex.stop()
    print(f"{args.repeats} repeats per mode; medians (min-max), seconds")
    for name, times in (("kernel start", starts), ("groupby 1e6 rows", jobs)):
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        spans = {m: f"{min(t):.3f}-{max(t):.3f}" for m, t in times.items()}
        print(f"{name:18} on {on:.3f} ({spans['on']})  off {off:.3f} ({spans['off']})  on/off {on / off:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
