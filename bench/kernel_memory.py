"""Memory of an idle kernel: N idle kernels started the way sessions start them, measured from /proc.

Each kernel is ``KernelExecutor.start()`` with the default execution settings (sandboxed where
bubblewrap works, forked from the fork server ``core/execution/zygote.py``): launched, ready, and
Weaver's runtime bootstrapped, then left idle. For every kernel process the script reads
``/proc/<pid>/smaps_rollup``: PSS (shared pages counted in part: what a crowd of kernels costs each),
RSS, and USS (pages only this kernel holds: the floor PSS reaches in a large crowd). The baseline in
the same run is ``execution.fork_kernels = false`` (every kernel a Python of its own).

Then, for one forked kernel, what it holds that the fork server could have shared:

* modules imported after the fork (the kernel's ``sys.modules`` against the fork server's, which
  ``zygote.preload`` builds: the same function run in a Python of its own);
* objects made after the fork against objects frozen in the fork server (``gc.freeze``), and the
  allocator's blocks in use in both: few new objects but many private pages means the pages were
  copied because they were *written* (reference counts of shared objects), not because of new data;
* its private memory by kind of mapping ([heap], anonymous, files);
* private memory at launch and after the runtime's bootstrap.

    python bench/kernel_memory.py [--kernels 50] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.config import ExecutionSettings  # noqa: E402
from core.execution.kernel import KernelExecutor  # noqa: E402
from core.execution.kernel_forks import FORK_SERVER  # noqa: E402
from core.execution.launcher import kernel_env  # noqa: E402
from core.execution.sandbox import bwrap_problem  # noqa: E402

SETTLE_S = 1.0  # after the last start, before reading /proc: the kernels' own start-up tails end
_IN_KERNEL = (
    "__import__('json').dumps({'modules': sorted(__import__('sys').modules),"
    " 'frozen': __import__('gc').get_freeze_count(), 'objects': len(__import__('gc').get_objects()),"
    " 'blocks': __import__('sys').getallocatedblocks()})"
)
_FORK_SERVER_VIEW = (
    "import gc, json, sys\n"
    "from core.execution import kernel_main, zygote\n"
    "zygote.preload()\n"
    "modules = sorted({*sys.modules, *kernel_main._RUNTIME_MODULES})\n"
    "print(json.dumps({'modules': modules, 'frozen': gc.get_freeze_count(), 'blocks': sys.getallocatedblocks()}))\n"
)


def rollup(pid: int) -> dict[str, int]:
    """kB figures of ``/proc/<pid>/smaps_rollup`` (empty if the process is gone)."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            found[parts[0][:-1]] = int(parts[1])
    return found


def uss_kb(figures: dict[str, int]) -> int:
    return figures.get("Private_Clean", 0) + figures.get("Private_Dirty", 0)


def private_by_kind(pid: int) -> dict[str, int]:
    """Private kB of ``pid`` by mapping: [heap], [stack], anonymous, or file-backed (libraries)."""
    kinds: dict[str, int] = {}
    kind = "anonymous"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            name = parts[5] if len(parts) > 5 else ""
            kind = name if name.startswith("[") else ("files" if name else "anonymous")
        elif parts and parts[0] in ("Private_Clean:", "Private_Dirty:"):
            kinds[kind] = kinds.get(kind, 0) + int(parts[1])
    return kinds


def start_idle(count: int, forked: bool, folder: Path) -> list[KernelExecutor]:
    """``count`` kernels started one after another, as sessions start them, then left idle."""
    settings = ExecutionSettings(fork_kernels=forked)
    kernels: list[KernelExecutor] = []
    try:
        for i in range(count):
            name = f"{'forked' if forked else 'own'}-{i}"
            kernel = KernelExecutor(name, folder / name / "work", settings=settings)
            kernel.start()
            kernels.append(kernel)
    except BaseException:
        stop_all(kernels)
        raise
    return kernels


def stop_all(kernels: list[KernelExecutor]) -> None:
    for kernel in kernels:
        kernel.stop()


def measure(kernels: list[KernelExecutor]) -> dict[str, float]:
    """Medians in MB over the kernels' own Python processes."""
    time.sleep(SETTLE_S)
    rows = [rollup(pid) for k in kernels if (pid := k.kernel_pid) is not None]
    rows = [r for r in rows if r]
    return {
        "kernels": float(len(rows)),
        "pss": statistics.median(r["Pss"] for r in rows) / 1024,
        "rss": statistics.median(r["Rss"] for r in rows) / 1024,
        "uss": statistics.median(uss_kb(r) for r in rows) / 1024,
    }


def fork_server_view() -> dict[str, object]:
    """The fork server's modules, frozen objects and allocated blocks: ``zygote.preload`` in a
    Python started like the fork server (same interpreter, environment and folder)."""
    out = subprocess.run(
        [sys.executable, "-c", _FORK_SERVER_VIEW],
        env=kernel_env("fork-server", None),
        cwd="/",
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    view: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return view


def inspect_one(folder: Path) -> None:
    """Where one forked kernel's private memory comes from."""
    kernel = KernelExecutor("inspect", folder / "inspect" / "work", settings=ExecutionSettings())
    try:
        kernel.process.launch()
        pid = kernel.kernel_pid
        assert pid is not None
        at_launch = uss_kb(rollup(pid))
        kernel._bootstrap()  # what ``start`` does next: Weaver's runtime, the shell's settings
        time.sleep(SETTLE_S)
        bootstrapped = uss_kb(rollup(pid))
        inside = json.loads(kernel._rpc.silent_value(_IN_KERNEL))
        kinds = private_by_kind(pid)
        forked = kernel.process.box is not None and kernel.process.box.forked
    finally:
        kernel.stop()
    print(f"\none kernel, {'forked' if forked else 'NOT forked (no fork server here)'}:")
    print(f"  private memory at launch {at_launch / 1024:.1f} MB, bootstrapped {bootstrapped / 1024:.1f} MB")
    shown = [f"{kind} {kb / 1024:.1f} MB" for kind, kb in sorted(kinds.items()) if kb >= 100]
    print("  private memory by mapping: " + ", ".join(shown))
    server = fork_server_view()
    new = sorted(set(inside["modules"]) - set(server["modules"]))  # type: ignore[call-overload]
    ours = [m for m in new if m.split(".")[0] in ("core", "taskweaver") or m.startswith("_weaver")]
    others = [m for m in new if m not in ours]
    print(f"  modules imported after the fork: {len(new)} ({len(ours)} of Weaver's runtime, from inside the sandbox)")
    if others:
        print("    not pre-imported: " + ", ".join(others))
    print(
        f"  objects: {inside['frozen']} frozen in the fork server (shared; the fork server froze {server['frozen']}),"
        f" {inside['objects']} made after the fork"
    )
    blocks = int(inside["blocks"]) - int(server["blocks"])  # type: ignore[call-overload]
    print(
        f"  allocator blocks in use: {inside['blocks']} in the kernel, {server['blocks']} in the fork server"
        f" ({blocks:+d}, at most ~{max(0, blocks) * 64 / 1024 / 1024:.1f} MB of new small objects):"
        " the rest of the private memory is shared pages copied because they were written to"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, default=50, help="idle kernels alive at once in each mode")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unforked kernels")
    args = parser.parse_args()
    problem = bwrap_problem()
    print(f"{args.kernels} idle kernels per mode; sandbox: {'bubblewrap' if problem is None else problem}")
    results: dict[str, dict[str, float]] = {}
    modes = [True] if args.no_baseline else [True, False]
    with tempfile.TemporaryDirectory(prefix="weaver-kmem-") as tmp:
        folder = Path(tmp)
        try:
            for forked in modes:
                label = "forked (default)" if forked else "own Python (fork_kernels = false)"
                started = time.monotonic()
                kernels = start_idle(args.kernels, forked, folder)
                try:
                    results[label] = measure(kernels)
                finally:
                    stop_all(kernels)
                print(f"  {label}: started in {time.monotonic() - started:.0f} s")
            inspect_one(folder)
        finally:
            FORK_SERVER.close()
    print("\nper idle kernel (median):")
    print(f"  {'':36} {'PSS':>8} {'USS':>8} {'RSS':>8}")
    for label, row in results.items():
        figures = f"{row['pss']:6.1f}MB {row['uss']:6.1f}MB {row['rss']:6.1f}MB"
        print(f"  {label:36} {figures}   ({row['kernels']:.0f} kernels)")
    if len(results) == 2:
        forked_row, own_row = results.values()
        print(
            f"  ratio forked / own: PSS {forked_row['pss'] / own_row['pss']:.2f}, "
            f"RSS {forked_row['rss'] / own_row['rss']:.2f}"
        )


if __name__ == "__main__":
    main()
