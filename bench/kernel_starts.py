"""How fast kernels start under a crowd, and where each start's CPU and wall time go.

K threads ask at once for a kernel, as K new sessions would: each calls ``KernelExecutor.start()``
(the path a session's first code takes: the app's start gate, ``execution.max_concurrent_starts``
at a time, the backend's launch, the kernel ready, Weaver's runtime bootstrapped). One start before
them is not counted (it starts the fork server). Reported per variant:

* starts/s: K over the wall time from the first ask to the last kernel bootstrapped, with the
  machine's load average (``/proc/loadavg``) before and after: the machine is shared;
* CPU-seconds per start, split by process, from ``/proc/<pid>/stat`` (utime + stime, waited-for
  children included): the server process (every thread of this one, from ``getrusage``), bubblewrap
  outside (with the ``sh``/``chrt``/``nice`` wrapper it was exec'd from), bubblewrap's init inside,
  the placeholder, the fork server, the forked helpers (they report their own ``getrusage``) and
  the kernels; and the total of all of them from a cpuacct cgroup of the variant's own (root, cgroup
  v1), whose difference to the sum is processes that came and went (e.g. ``chown``);
* the median wall time of each step of one start, from the timestamps the executor, the kernel
  process and the fork server's helper take (absent steps are not in that code).

Each variant runs in a process of its own (a fresh fork server), one after the other, alternating
over ``--rounds``; ratios are against the first variant. ``--baseline-code DIR`` adds the same
measurement run against another checkout (e.g. ``git archive <commit> | tar -x -C DIR``), the
unchanged path, in the same run.

``--busy N`` runs N processes that spin at nice 0 during each run, as a busy web server would.

    python bench/kernel_starts.py [--kernels 100] [--rounds 1] [--concurrent N] [--busy N]
        [--baseline-code DIR] [--variant NAME=key=value,key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
TICK = os.sysconf("SC_CLK_TCK")
STEP_ORDER = (
    "asked",  # a session asks for its kernel
    "turn",  # its start got a slot of execution.max_concurrent_starts
    "begin",
    "box",  # sandbox prepared: private folder, cgroups, uid, command line
    "manager",  # the kernel manager and environment
    "launched",  # bubblewrap started (Popen, on the spawner thread)
    "helper",  # the fork server forked the helper for it
    "sandbox_up",  # the placeholder opened its FIFO: bubblewrap's namespaces and mounts are up
    "entered",  # the helper took on the sandbox: cgroups, namespaces, uid, seccomp
    "kernel_forked",  # the kernel forked inside and its host pid found
    "forked",  # the server has the helper's answer
    "ready",  # the kernel answered kernel_info on its channels
    "bootstrapped",  # Weaver's runtime loaded in the kernel (first silent execute)
)


# ----- one variant, in a process of its own ------------------------------------------------------


def _cpu_of(pid: int) -> float:
    """CPU-seconds of ``pid``: every thread's run time (``schedstat``, in ns: utime and stime count
    whole clock ticks, and a process that ran 3 ms shows 0) plus its waited-for children's
    (cutime + cstime). 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ran = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            ran += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        return 0.0
    return ran / 1e9 + (int(fields[13]) + int(fields[14])) / TICK


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class _OwnCpuacct:
    """A cpuacct cgroup this process (and everything it starts) runs in, for the variant's total CPU."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        if os.geteuid() != 0 or not (CPUACCT / "cgroup.procs").exists():
            return
        folder = CPUACCT / f"weaver-bench-{os.getpid()}"
        try:
            folder.mkdir()
            (folder / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            return
        self.folder = folder

    def usage(self) -> float | None:
        if self.folder is None:
            return None
        return int((self.folder / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.folder is None:
            return
        (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(100):
            try:
                self.folder.rmdir()
                return
            except OSError:
                time.sleep(0.05)


def _processes(ex: Any) -> dict[str, list[int]]:
    """The host pids of one started kernel's processes, by kind."""
    proc = ex.process
    outer = proc.pid
    kernel = ex.kernel_pid
    kinds: dict[str, list[int]] = {"bwrap outside": [], "bwrap init": [], "placeholder": [], "kernel": []}
    if kernel is not None:
        kinds["kernel"].append(kernel)
    if outer is None or outer == kernel:
        return kinds
    kinds["bwrap outside"].append(outer)
    for init in _children(outer):
        kinds["bwrap init"].append(init)
        kinds["placeholder"] += [p for p in _children(init) if p != kernel]
    return kinds


def run_variant(kernels: int, overrides: dict[str, Any], concurrent: int | None) -> dict[str, Any]:
    """Start ``kernels`` kernels from as many threads at once; returns the figures as JSON-able data."""
    cgroup = _OwnCpuacct()
    sys.path.insert(0, os.environ.get("WEAVER_BENCH_CODE", str(ROOT)))
    from core.config import ExecutionSettings
    from core.execution import kernel_forks
    from core.execution.kernel import KernelExecutor
    from core.execution.pool import StartGate

    settings = ExecutionSettings(**overrides)
    if concurrent is not None:
        settings = settings.model_copy(update={"max_concurrent_starts": concurrent})
    gate = StartGate(settings.max_concurrent_starts)
    folder = Path(tempfile.mkdtemp(prefix="weaver-kstart-"))
    try:
        warm = KernelExecutor("warm-up", folder / "warm-up", settings=settings, start_gate=gate)
        warm.start()
        run = kernel_forks.FORK_SERVER._run
        fork_server = run.proc.pid if run is not None else None
        executors = [
            KernelExecutor(f"k{i}", folder / f"k{i}", settings=settings, start_gate=gate) for i in range(kernels)
        ]
        errors: list[str] = []
        barrier = threading.Barrier(kernels + 1)

        def start(ex: Any) -> None:
            barrier.wait()
            try:
                ex.start()
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=start, args=(ex,)) for ex in executors]
        for thread in threads:
            thread.start()
        load_before = os.getloadavg()
        fork_cpu0 = _cpu_of(fork_server) if fork_server else 0.0
        helper0 = getattr(kernel_forks.FORK_SERVER, "helper_cpu", None)
        total0 = cgroup.usage()
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        barrier.wait()
        began = time.monotonic()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - began
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        total1 = cgroup.usage()
        load_after = os.getloadavg()
        cpu: dict[str, float] = {"server process": own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime}
        for ex in executors:
            if ex.process.pid is None:
                continue
            for kind, pids in _processes(ex).items():
                cpu[kind] = cpu.get(kind, 0.0) + sum(_cpu_of(p) for p in pids)
        cpu["fork server"] = (_cpu_of(fork_server) - fork_cpu0) if fork_server else 0.0
        helper1 = getattr(kernel_forks.FORK_SERVER, "helper_cpu", None)
        if helper0 is not None and helper1 is not None:
            cpu["helpers"] = helper1 - helper0
        if total0 is not None and total1 is not None:
            cpu["(cgroup total)"] = total1 - total0
        steps: dict[str, list[float]] = {}
        for ex in executors:
            timeline = sorted([*getattr(ex, "start_steps", []), *getattr(ex.process, "steps", [])], key=lambda s: s[1])
            for (_, before), (name, at) in zip(timeline, timeline[1:], strict=False):
                steps.setdefault(name, []).append(at - before)
            if timeline:
                steps.setdefault("(whole start)", []).append(timeline[-1][1] - timeline[0][1])
        result = {
            "kernels": kernels,
            "started": sum(1 for ex in executors if ex.process.pid is not None),
            "errors": errors[:5],
            "wall": wall,
            "load": [load_before[0], load_after[0]],
            "limit": gate.limit,
            "cpu": cpu,
            "steps": {name: statistics.median(values) for name, values in steps.items()},
        }
        for ex in [warm, *executors]:
            ex.stop()
        return result
    finally:
        kernel_forks.FORK_SERVER.close()  # it runs in the cpuacct group, which must be empty to go
        cgroup.close()


# ----- the runs, side by side ---------------------------------------------------------------------


def _parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition("=")
    overrides: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value) if value[:1] in '0123456789-[{tfn"' else value
    return name, overrides


def _run_child(
    code: Path, kernels: int, overrides: dict[str, Any], concurrent: int | None, busy: int
) -> dict[str, Any]:
    env = dict(os.environ, WEAVER_BENCH_CODE=str(code), PYTHONPATH=str(code))
    argv = [sys.executable, __file__, "--child", json.dumps([kernels, overrides, concurrent])]
    # A busy web server: processes at nice 0 that spin, outside the variant's cpuacct group.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        done = subprocess.run(argv, env=env, cwd=code, capture_output=True, text=True, timeout=900)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise RuntimeError(f"variant failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(results: list[dict[str, Any]], pick: Any) -> float:
    values = [v for v in (pick(r) for r in results) if v is not None]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=100, help="kernels asked for at once per run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each variant, alternating")
    parser.add_argument(
        "--concurrent", type=int, default=None, help="execution.max_concurrent_starts (default: the config's)"
    )
    parser.add_argument("--busy", type=int, default=0, help="spinning nice-0 processes meanwhile (a busy server)")
    parser.add_argument("--baseline-code", type=Path, default=None, help="another checkout, measured the same way")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=key=value,... of execution settings (default: 'default=' and 'no uid/seccomp')",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kernels, overrides, concurrent = json.loads(args.child)
        print(json.dumps(run_variant(kernels, overrides, concurrent)))
        return 0
    variants: list[tuple[str, Path, dict[str, Any]]] = []
    if args.baseline_code is not None:
        variants.append(("baseline code", args.baseline_code.resolve(), {}))
    for text in args.variant or ["default="]:
        name, overrides = _parse_variant(text)
        variants.append((name, ROOT, overrides))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for i in range(args.rounds):
        order = variants if i % 2 == 0 else list(reversed(variants))
        for name, code, overrides in order:
            result = _run_child(code, args.kernels, overrides, args.concurrent, args.busy)
            results[name].append(result)
            errors = f", errors {result['errors']}" if result["errors"] else ""
            print(
                f"  round {i + 1} {name}: {result['started']}/{result['kernels']} started in {result['wall']:.2f} s"
                f" ({result['kernels'] / result['wall']:.1f}/s), limit {result['limit']}, load "
                f"{result['load'][0]:.1f}->{result['load'][1]:.1f}{errors}",
                flush=True,
            )
    print(f"\n{args.kernels} kernels asked for at once, {args.rounds} round(s); medians over rounds")
    first = variants[0][0]
    rate = {name: _median(rs, lambda r: r["kernels"] / r["wall"]) for name, rs in results.items()}
    print("\nstarts/s (wall)")
    for name in results:
        print(f"  {name:24} {rate[name]:7.1f}   x{rate[name] / rate[first]:.2f} vs {first}")
    kinds = list(dict.fromkeys(k for rs in results.values() for r in rs for k in r["cpu"]))
    print("\nCPU-seconds per start, by process")
    print("  " + f"{'':24}" + "".join(f"{name[:16]:>18}" for name in results))
    for kind in kinds:
        row = [_median(rs, lambda r, k=kind: r["cpu"].get(k)) / args.kernels for rs in results.values()]
        print("  " + f"{kind:24}" + "".join(f"{v:18.4f}" for v in row))
    sums = [
        _median(rs, lambda r: sum(v for k, v in r["cpu"].items() if not k.startswith("("))) for rs in results.values()
    ]
    print("  " + f"{'sum of the above':24}" + "".join(f"{v / args.kernels:18.4f}" for v in sums))
    print("\nWall time of each step of one start (median, seconds)")
    print("  " + f"{'':24}" + "".join(f"{name[:16]:>18}" for name in results))
    names = [s for s in STEP_ORDER if any(s in r["steps"] for rs in results.values() for r in rs)] + ["(whole start)"]
    for step in names:
        row = [_median(rs, lambda r, s=step: r["steps"].get(s)) for rs in results.values()]
        print("  " + f"{step:24}" + "".join(f"{v:18.4f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
