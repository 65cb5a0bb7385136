"""What metrics and tracing cost per round: the same rounds with both on and with both off.

In one process, two engines on the offline model: one with ``metrics.enabled`` and
``tracing.enabled`` (spans exported over OTLP/HTTP to a receiver on 127.0.0.1 in a process of its
own, as a collector would be; the exporter's thread is in this one), one with both off. Their rounds alternate, one
on, one off, so both see the same machine. ``metrics.enabled`` is process-wide: it is switched with
each round, as the app sets it.

1. Text rounds (Planner → User, no kernel): the engine's own work only, where the cost shows.
2. Code rounds (a fenced ``print(1)``: Planner → CodeInterpreter → kernel → Planner → User):
   every span and counter a round can have, with a kernel's noise around it.
3. The instrumentation alone: one code round's spans (8) and metric updates (~10), its CPU time.

Prints the medians (and p90) per mode, in wall time and in CPU time of the round's thread, the cost
per round (median of the paired differences) and the ratio of the medians; exits 1 when a text
round's wall-clock cost reaches ``--budget-ms`` (1 ms).

    python bench/observability.py [--rounds 300] [--code-rounds 60] [--budget-ms 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Receiver:
    """``tests/otlp_receiver.py`` in a process of its own, as a collector would be: decoding the spans
    must not take this process's CPU (or its GIL) from the rounds being timed."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp_receiver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.endpoint = self.proc.stdout.readline().strip()

    def count(self) -> int:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait_for(self, count: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while (got := self.count()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got {got} spans of {count} in {timeout:g} s")
            time.sleep(0.05)
        return got

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


RECEIVER = Receiver()
os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = RECEIVER.endpoint  # read when the provider is made
os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "1000")  # ms (the default is 5000); 512 spans leave at once

from core import TaskWeaverApp, metrics  # noqa: E402
from core.llm.base import LLMCallRecord  # noqa: E402
from core.memory import Round  # noqa: E402
from core.roles.base import _observe_call  # noqa: E402
from core.roles.context import RoundContext  # noqa: E402
from core.session import Session  # noqa: E402
from core.tracing import Tracing  # noqa: E402

TEXT = "hello"
CODE = "```python\nprint(1)\n```"


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


Times = dict[bool, list[float]]


def _paired(session_on: Session, session_off: Session, message: str, rounds: int) -> tuple[Times, Times]:
    """Alternating rounds (on first in even pairs, off first in odd ones): their wall times and the
    CPU time of the thread that ran them (the round's own work; not the kernel, not the exporter), in ms."""
    wall: Times = {True: [], False: []}
    cpu: Times = {True: [], False: []}
    for i in range(rounds):
        order = [(True, session_on), (False, session_off)]
        if i % 2:
            order.reverse()
        for mode, session in order:
            metrics.configure(mode)
            started, started_cpu = time.perf_counter(), time.thread_time()
            state = session.send_message(message).state
            cpu[mode].append((time.thread_time() - started_cpu) * 1000)
            wall[mode].append((time.perf_counter() - started) * 1000)
            assert state == "finished", state
    return wall, cpu


def _report(title: str, wall: Times, cpu: Times) -> float:
    """Print the figures; returns the wall-clock cost per round (ms)."""
    print(f"{title} ({len(wall[True])} rounds each)")
    cost = 0.0
    for what, times in (("wall", wall), ("CPU of the round's thread", cpu)):
        on, off = times[True], times[False]
        paired = statistics.median(a - b for a, b in zip(on, off, strict=True))
        cost = paired if what == "wall" else cost
        print(f"  {what}:")
        print(f"    on : median {statistics.median(on):8.3f} ms   p90 {_p90(on):8.3f} ms")
        print(f"    off: median {statistics.median(off):8.3f} ms   p90 {_p90(off):8.3f} ms")
        ratio = statistics.median(on) / statistics.median(off)
        print(f"    cost per round (median of paired differences) {paired:+.3f} ms; ratio of medians {ratio:.3f}")
    return cost


def _instrumentation_alone(bursts: int = 7, per_burst: int = 50) -> float:
    """µs for what one code round adds on its own thread: 8 spans with their attributes, ~10 metric
    updates. In bursts smaller than an export batch (512 spans), each waited out until the receiver
    has it all, so the export thread's work (the same work, done later) is not timed with the caller's."""
    tracing = Tracing(True)
    ctx = RoundContext("bench", Round(user_query="x"), [], None, None, Path("."), {"user_name": "u"}, tracing=tracing)  # type: ignore[arg-type]
    record = LLMCallRecord(role="Planner", model="m", prompt_tokens=11, completion_tokens=7, first_token_s=0.01)
    metrics.configure(True)

    def one_round() -> None:
        with tracing.span("weaver.round", {**ctx.trace_attributes(), "weaver.model": "m"}):
            for role in ("Planner", "CodeInterpreter", "Planner"):
                with tracing.span("weaver.role", {"weaver.role": role}):
                    with tracing.span("weaver.llm", {"gen_ai.system": "offline"}) as span:
                        _observe_call(span, "offline", record, False)
                    if role == "CodeInterpreter":
                        with tracing.span("weaver.execution", {"weaver.kernel.cold": False}) as span:
                            span.set_attributes(
                                {"weaver.execution.outcome": "success", "weaver.execution.kernel_died": False}
                            )
                        metrics.code_executed("success")
        metrics.round_ended("finished", 0.01)

    times = []
    for _ in range(bursts):
        expected = RECEIVER.count() + 8 * per_burst
        started = time.thread_time()  # CPU: a busy machine's scheduling is not the code's cost
        for _ in range(per_burst):
            one_round()
        times.append((time.thread_time() - started) / per_burst * 1e6)
        RECEIVER.wait_for(expected)
    return statistics.median(times[1:])  # the first burst warms up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="text rounds per mode")
    parser.add_argument("--code-rounds", type=int, default=60, help="code rounds per mode")
    parser.add_argument("--budget-ms", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weaver-bench-obs-") as folder:
        common = {"llm.api_type": "offline", "execution.pool_size": 0}
        app_off = TaskWeaverApp(Path(folder, "off"), config={**common, "metrics.enabled": False})
        app_on = TaskWeaverApp(Path(folder, "on"), config={**common, "tracing.enabled": True})
        try:
            session_on, session_off = app_on.get_session(), app_off.get_session()
            for session in (session_on, session_off):
                session.update_session_var({"user_name": "bench"})
                session.send_message(CODE)  # the kernel starts here, not in a timed round
            _paired(session_on, session_off, TEXT, 20)  # warm-up
            text_cost = _report("Text rounds (no kernel)", *_paired(session_on, session_off, TEXT, args.rounds))
            _report("Code rounds (print(1) in the kernel)", *_paired(session_on, session_off, CODE, args.code_rounds))
        finally:
            app_on.stop()
            app_off.stop()
    expected = (20 + args.rounds) * 3 + (1 + args.code_rounds) * 8  # spans of the traced rounds
    spans = RECEIVER.wait_for(expected)
    print(f"Spans received by the local OTLP receiver: {spans} (the traced rounds made {expected})")
    alone = _instrumentation_alone()
    print(f"Instrumentation alone, one code round's 8 spans and metric updates: {alone:.1f} µs CPU")
    RECEIVER.stop()
    if text_cost >= args.budget_ms:
        print(f"FAIL: {text_cost:.3f} ms per round is over the {args.budget_ms} ms budget")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
