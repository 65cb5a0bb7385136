"""``weaver ui --workers 1`` against ``--workers 2`` under the same crowd, in one run.

For each worker count (alternating, ``--repeat`` times each) it starts ``weaver ui --workers N`` on
a free 127.0.0.1 port in a fresh temporary app folder (offline model, caps raised to fit the crowd,
as ``bench/load.py`` starts its own server), waits until every worker answers, drives it with
``bench/load.py --url`` (its simulated browsers: page, login, socket, ``--rounds`` code rounds each;
they keep the cookies the server sets, so each stays on its worker) once the server's process tree
is idle (warm pools filled), and reads from /proc the CPU
time of the server processes (``weaver ui`` and its workers, not the kernels) over the crowd.
Printed: ``load.py``'s own figures per run, then the medians per worker count and the ratio of
2 workers to 1.

    python bench/workers.py [--users 100] [--rounds 3] [--arrival 1.0] [--repeat 2] [--counts 1,2]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from procs import cpu_ticks, descendants, free_port

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("page + login", "chat ready", "first step", "first answer", "warm rounds")


@dataclass
class Run:
    workers: int
    p95: dict[str, float] = field(default_factory=dict)
    p50: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    router_cpu_s: float = 0.0  # ``weaver ui`` itself: the router with workers, an idle wrapper with one
    per_connection_us: float = 0.0  # ``weaver ui``'s CPU per new connection (accept, peek, hand over)
    per_request_us: float = 0.0  # the servers' CPU per ``GET /health`` on its own connection


def server_processes(root: int) -> list[int]:
    """``weaver ui`` and its workers (or its one server): the Chainlit processes, not their kernels."""
    found = [root]
    for pid in descendants(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ui.chainlit_main" in argv:
            found.append(pid)
    return found


def start(folder: Path, workers: int, users: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    app_dir = folder / "app"
    (app_dir / "plugins").mkdir(parents=True)
    port = free_port()
    env = {
        **os.environ,
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_CHECK_MODEL_AT_START": "false",
        "WEAVER_UI_DISCONNECT_GRACE_S": "10",
        "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": str(max(1000, users)),
        "WEAVER_SESSION__MAX_LIVE_SESSIONS": str(max(1000, users)),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("OPENAI_API_KEY", "WEAVER_LLM__API_KEY", "WEAVER_LLM__API_BASE", "WEAVER_DATABASE_URL"):
        env.pop(key, None)
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "ui.cli", "ui", "--port", str(port), "--app-dir", str(app_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--workers", str(workers)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    seen: set[str] = set()
    while len(seen) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"weaver ui --workers {workers} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        for index in range(workers):
            try:
                got = httpx.get(f"{base}/health", headers={"Cookie": f"weaver_worker={index}"}, timeout=2)
                seen.add(got.headers.get("x-weaver-worker", "0"))
            except httpx.HTTPError:
                time.sleep(0.2)
    return proc, base, log


def settle(root: int, timeout: float) -> None:
    """Wait until the server's whole tree (workers, fork servers, warm kernels) is idle: each worker's
    warm pool filled and its start-up done, so both counts meet the crowd in the same state."""
    deadline = time.monotonic() + timeout
    tick = os.sysconf("SC_CLK_TCK")
    while time.monotonic() < deadline:
        tree = [root, *descendants(root)]
        before = sum(cpu_ticks(p) for p in tree)
        time.sleep(1.0)
        if sum(cpu_ticks(p) for p in tree) - before < 0.05 * tick:  # under 5% of a core over a second
            return
    print("(the server did not settle; measuring anyway)", flush=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def parse(output: str, run: Run) -> None:
    for name in FIGURES:
        found = re.search(rf"{re.escape(name)}\s+p50\s+([\d.]+) s\s+p95\s+([\d.]+) s", output)
        if found:
            run.p50[name], run.p95[name] = float(found.group(1)), float(found.group(2))
    errors = re.search(r"errors\s+(\d+) of", output)
    run.errors = int(errors.group(1)) if errors else -1


def connection_cost(proc: subprocess.Popen[bytes], base: str, n: int, run: Run) -> None:
    """``n`` requests, each on a new connection: what ``weaver ui`` itself spends per connection
    (with workers: the router's accept, peek and hand-over) against what the servers spend to answer."""
    servers = server_processes(proc.pid)
    tick = os.sysconf("SC_CLK_TCK")
    router_before, servers_before = cpu_ticks(proc.pid), sum(cpu_ticks(p) for p in servers)
    for _ in range(n):
        httpx.get(f"{base}/health", headers={"Connection": "close"}, timeout=10)
    run.per_connection_us = (cpu_ticks(proc.pid) - router_before) / tick / n * 1e6
    run.per_request_us = (sum(cpu_ticks(p) for p in servers) - servers_before) / tick / n * 1e6


def one(workers: int, args: argparse.Namespace) -> Run:
    run = Run(workers)
    with tempfile.TemporaryDirectory(prefix="weaver-workers-") as tmp:
        proc, base, _log = start(Path(tmp), workers, args.users)
        try:
            settle(proc.pid, 90.0)
            servers = server_processes(proc.pid)
            before = sum(cpu_ticks(p) for p in servers)
            router_before = cpu_ticks(proc.pid)
            started = time.monotonic()
            load = [sys.executable, str(ROOT / "bench" / "load.py"), "--url", base, "--users", str(args.users)]
            load += ["--rounds", str(args.rounds), "--arrival", str(args.arrival)]
            done = subprocess.run(load, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            run.wall_s = time.monotonic() - started
            run.server_cpu_s = (sum(cpu_ticks(p) for p in servers) - before) / os.sysconf("SC_CLK_TCK")
            run.router_cpu_s = (cpu_ticks(proc.pid) - router_before) / os.sysconf("SC_CLK_TCK")
            print(f"\n--- --workers {workers} ---\n{done.stdout.strip()}\n{done.stderr.strip()[-2000:]}", flush=True)
            parse(done.stdout, run)
            if args.connections:
                connection_cost(proc, base, args.connections, run)
                print(
                    f"  weaver ui CPU per new connection {run.per_connection_us:.0f} us; "
                    f"all its processes per request on it {run.per_request_us:.0f} us",
                    flush=True,
                )
        finally:
            stop(proc)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arrival", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per worker count, alternating (2)")
    parser.add_argument("--counts", default="1,2", help="worker counts to compare; the first is the baseline")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on one crowd (600 s)")
    parser.add_argument("--connections", type=int, default=1000, help="new connections for the router's cost")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"{os.cpu_count()} CPUs; {args.users} users over {args.arrival:g} s, {args.rounds} rounds; counts {counts}")
    runs: list[Run] = []
    for _ in range(args.repeat):
        for count in counts:
            runs.append(one(count, args))
    print("\n== medians over runs (p95 of each run; server CPU = weaver ui + workers, kernels apart) ==")
    base: dict[str, float] = {}
    for count in counts:
        mine = [r for r in runs if r.workers == count]
        row = {name: statistics.median(r.p95.get(name, float("nan")) for r in mine) for name in FIGURES}
        row["server CPU s"] = statistics.median(r.server_cpu_s for r in mine)
        row["of it weaver ui s"] = statistics.median(r.router_cpu_s for r in mine)
        row["weaver ui us/conn"] = statistics.median(r.per_connection_us for r in mine)
        row["servers us/request"] = statistics.median(r.per_request_us for r in mine)
        row["wall s"] = statistics.median(r.wall_s for r in mine)
        errors = sum(max(0, r.errors) for r in mine)
        base = base or row
        cells = "  ".join(f"{k} {v:.2f} (x{v / base[k]:.2f})" if base[k] else f"{k} {v:.2f}" for k, v in row.items())
        print(f"  --workers {count}: {cells}  errors {errors}")


if __name__ == "__main__":
    main()
