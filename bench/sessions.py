"""What many users at once cost: one kernel per session, on the offline backend.

Runs only code rounds (a message with a fenced ```python block runs as is, no model server) and
reports: a one-session baseline (get_session() → first answer, kernel start included, and warm
rounds), N sessions arriving together from N threads (time to first answer, warm round latency,
throughput, ratios against the baseline), memory (each kernel's RSS after importing pandas, the
server's RSS growth per session) and that no kernel process outlives ``app.stop()``.

    python bench/sessions.py [--sessions 8] [--rounds 50]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import TaskWeaverApp  # noqa: E402
from core.session import Session  # noqa: E402

WARM_CODE = "print(1)"
WARM_EXPECT = "Stdout:\n1\n"
PANDAS_CODE = "import pandas as pd\nprint('pandas', pd.__version__)"
PANDAS_EXPECT = "pandas "
BASELINE_ROUNDS = 20
POOLED_SESSIONS = 5
BARRIER_TIMEOUT_S = 300.0


class RoundError(RuntimeError):
    """A benchmark round did not finish with the expected output."""


# ----- measuring helpers ---------------------------------------------------------------------


def rss_kb(pid: int | str = "self") -> int | None:
    """VmRSS of a process in kB from /proc, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def server_rss_kb() -> int:
    """This process's RSS after a garbage collection, so freed objects don't count."""
    gc.collect()
    return rss_kb() or 0


def process_exists(pid: int) -> bool:
    """True while /proc/<pid> exists (a zombie still counts: it was not reaped)."""
    return Path(f"/proc/{pid}").exists()


def timed_round(session: Session, code: str, expect: str) -> float:
    """Send ``code`` as a fenced block and return the seconds until the reply; check the output."""
    started = time.monotonic()
    rnd = session.send_message(f"```python\n{code}\n```")
    elapsed = time.monotonic() - started
    if rnd.state != "finished" or expect not in rnd.reply_text:
        raise RoundError(f"session {session.session_id}: {rnd.state} {rnd.error!r} {rnd.reply_text[:200]!r}")
    return elapsed


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def mb(kb: float) -> str:
    return f"{kb / 1024:7.1f} MB"


# ----- phase 1: one session ------------------------------------------------------------------


@dataclass
class Baseline:
    first_answer_s: float
    warm_s: list[float]
    pooled_first_s: list[float] = field(default_factory=list)

    @property
    def warm_median_s(self) -> float:
        return statistics.median(self.warm_s)


def run_pooled(app: TaskWeaverApp, times: int, pids: list[int]) -> list[float]:
    """New sessions one at a time, each once the pool is full again: get_session() → first answer."""
    firsts = []
    for _ in range(times):
        if not app.pool.wait_ready(app.pool.size, BARRIER_TIMEOUT_S):
            raise RoundError("the kernel pool did not fill")
        started = time.monotonic()
        session = app.get_session()
        timed_round(session, WARM_CODE, WARM_EXPECT)
        firsts.append(time.monotonic() - started)
        pids.append(session.executor.pid or 0)
        session.stop()
    return firsts


def run_baseline(app: TaskWeaverApp, rounds: int, pids: list[int]) -> Baseline:
    """One session alone: get_session() → first answer, then ``rounds`` warm rounds; then stopped.

    With a pool, first the pooled case (a warm kernel handed over), then the pool is closed so the
    measured session starts its own kernel at its first code.
    """
    pooled = run_pooled(app, POOLED_SESSIONS, pids) if app.pool.size > 0 else []
    app.pool.close()
    started = time.monotonic()
    session = app.get_session()
    timed_round(session, WARM_CODE, WARM_EXPECT)
    first = time.monotonic() - started
    pid = session.executor.pid
    if pid:
        pids.append(pid)
    warm = [timed_round(session, WARM_CODE, WARM_EXPECT) for _ in range(rounds)]
    session.stop()  # its kernel must not compete with the concurrent phase
    return Baseline(first, warm, pooled)


# ----- phase 2: N sessions at once -----------------------------------------------------------


@dataclass
class User:
    """What one simulated browser user measured in its own thread."""

    session: Session | None = None
    pid: int | None = None
    first_answer_s: float = 0.0
    warm_s: list[float] = field(default_factory=list)
    pandas_s: float = 0.0
    kernel_rss_idle_kb: int | None = None
    kernel_rss_pandas_kb: int | None = None
    error: BaseException | None = None


@dataclass
class Mark:
    at: float
    server_rss_kb: int


class Phases:
    """A barrier whose action stamps the time and the server's RSS when all threads arrive."""

    def __init__(self, parties: int) -> None:
        self.marks: list[Mark] = []
        self._barrier = threading.Barrier(parties, action=self._mark, timeout=BARRIER_TIMEOUT_S)

    def _mark(self) -> None:
        self.marks.append(Mark(time.monotonic(), server_rss_kb()))

    def wait(self) -> None:
        self._barrier.wait()

    def abort(self) -> None:
        self._barrier.abort()


def user_thread(app: TaskWeaverApp, phases: Phases, user: User, rounds: int) -> None:
    """Arrive together, get a first answer, run warm rounds, then import pandas."""
    try:
        phases.wait()  # mark 0: before any session exists
        started = time.monotonic()
        user.session = app.get_session()
        timed_round(user.session, WARM_CODE, WARM_EXPECT)
        user.first_answer_s = time.monotonic() - started
        user.pid = user.session.executor.pid
        phases.wait()  # mark 1: every user got a first answer
        user.warm_s = [timed_round(user.session, WARM_CODE, WARM_EXPECT) for _ in range(rounds)]
        phases.wait()  # mark 2: all warm rounds done
        user.kernel_rss_idle_kb = rss_kb(user.pid) if user.pid else None
        user.pandas_s = timed_round(user.session, PANDAS_CODE, PANDAS_EXPECT)
        user.kernel_rss_pandas_kb = rss_kb(user.pid) if user.pid else None
        phases.wait()  # mark 3: pandas imported everywhere
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        user.error = exc
        phases.abort()


def run_concurrent(app: TaskWeaverApp, sessions: int, rounds: int, pids: list[int]) -> tuple[list[User], list[Mark]]:
    """``sessions`` users in as many threads; returns what they measured and the phase marks."""
    phases = Phases(sessions)
    users = [User() for _ in range(sessions)]
    threads = [
        threading.Thread(target=user_thread, args=(app, phases, user, rounds), name=f"user-{i}")
        for i, user in enumerate(users)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pids.extend(u.pid for u in users if u.pid)
    errors = [u.error for u in users if u.error is not None]
    if errors:  # the first real failure, not the BrokenBarrierError it caused in the others
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
        raise RoundError(f"a user thread failed: {real[0]!r}") from real[0]
    return users, phases.marks


# ----- report --------------------------------------------------------------------------------


def line(label: str, text: str) -> None:
    print(f"  {label:<44} {text}")


def report_baseline(base: Baseline) -> None:
    print(f"baseline: one session, offline backend, `{WARM_CODE}` rounds")
    if base.pooled_first_s:
        median = statistics.median(base.pooled_first_s)
        line(f"get_session() -> first answer, pooled kernel, n={len(base.pooled_first_s)}", f"median {ms(median)}")
    line("get_session() -> first answer (kernel start)", ms(base.first_answer_s))
    line(f"warm round, n={len(base.warm_s)}", f"median {ms(base.warm_median_s)}   p90 {ms(p90(base.warm_s))}")


def report_concurrent(base: Baseline, users: list[User], marks: list[Mark], rounds: int) -> None:
    n = len(users)
    first = [u.first_answer_s for u in users]
    warm = [s for u in users for s in u.warm_s]
    warm_wall = marks[2].at - marks[1].at
    print(f"{n} sessions at once, {n} threads, {rounds} warm rounds each")
    line("get_session() -> first answer", f"median {ms(statistics.median(first))}   max {ms(max(first))}")
    line(f"warm round, n={len(warm)}", f"median {ms(statistics.median(warm))}   p90 {ms(p90(warm))}")
    line(
        "throughput",
        f"{len(warm) / warm_wall:8.1f} rounds/s over {warm_wall:.2f} s "
        f"(one session alone: {1 / base.warm_median_s:.1f} rounds/s)",
    )
    line("ratio warm round median, concurrent / alone", f"{statistics.median(warm) / base.warm_median_s:6.2f}x")
    line(
        "ratio first answer median, concurrent / alone",
        f"{statistics.median(first) / base.first_answer_s:6.2f}x   (max: {max(first) / base.first_answer_s:.2f}x)",
    )


def report_memory(users: list[User], marks: list[Mark]) -> None:
    n = len(users)
    idle = [u.kernel_rss_idle_kb for u in users if u.kernel_rss_idle_kb]
    pandas = [u.kernel_rss_pandas_kb for u in users if u.kernel_rss_pandas_kb]
    pandas_s = [u.pandas_s for u in users]
    print("memory (VmRSS)")
    line(f"round importing pandas, {n} at once", f"median {ms(statistics.median(pandas_s))}   max {ms(max(pandas_s))}")
    line("kernel after warm rounds, median per kernel", mb(statistics.median(idle)) if idle else "n/a")
    line("kernel after importing pandas, median", mb(statistics.median(pandas)) if pandas else "n/a")
    line(f"all {len(pandas)} kernels after pandas, total", mb(sum(pandas)))
    before = marks[0].server_rss_kb
    line("server before creating sessions", mb(before))
    line("server growth per session, after 1st answer", mb((marks[1].server_rss_kb - before) / n))
    line("server growth per session, at the end", mb((marks[3].server_rss_kb - before) / n))


def report_leftovers(pids: list[int]) -> bool:
    """Print whether any kernel process still exists; True if none is left."""
    left = [pid for pid in pids if process_exists(pid)]
    print("after app.stop()")
    line("kernel processes still existing", f"{len(left)} of {len(pids)}" + (f": {left}" if left else ""))
    return not left


# ----- main ----------------------------------------------------------------------------------


def with_app(body: Callable[[TaskWeaverApp, list[int]], None]) -> bool:
    """Run ``body`` on a fresh offline app in a temporary folder; stop it and check its kernels.

    ``body`` appends each kernel pid it sees to the list it is given, so they are checked even
    when it fails half-way.
    """
    pids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="weaver-bench-") as tmp:
        app = TaskWeaverApp(app_dir=tmp, config={"llm.api_type": "offline"})
        try:
            body(app, pids)
        finally:
            pids += [s.executor.pid for s in app.sessions if s.executor.pid]  # even after a failure
            app.stop()
    return report_leftovers(sorted(set(pids)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (default 8)")
    parser.add_argument("--rounds", type=int, default=50, help="warm rounds per concurrent session (default 50)")
    args = parser.parse_args()
    if args.sessions < 1 or args.rounds < 1:
        parser.error("--sessions and --rounds must be at least 1")
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    started = time.monotonic()

    def body(app: TaskWeaverApp, pids: list[int]) -> None:
        base = run_baseline(app, BASELINE_ROUNDS, pids)
        report_baseline(base)
        users, marks = run_concurrent(app, args.sessions, args.rounds, pids)
        report_concurrent(base, users, marks, args.rounds)
        report_memory(users, marks)

    clean = with_app(body)
    print(f"total run time {time.monotonic() - started:.1f} s")
    if not clean:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
