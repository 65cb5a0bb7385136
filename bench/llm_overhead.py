"""Framework overhead of a full round against a local OpenAI-compatible server.

Runs N rounds of Planner → CodeInterpreter → kernel → Planner → User against the scripted server
of the tests (real HTTP on 127.0.0.1, fixed small answers) and reports, per round, the wall time,
the server's own time (request received → last byte sent, summed over the round's requests) and
the kernel's execution time. Overhead = round time − server time. As a baseline, right after each
round, it times the same answers fetched with bare ``OpenAIBackend.stream_chat`` calls in the same
process. Weaver's own cost per round = round time − its bare calls' time − the kernel's time, shown per block of ten
rounds so its growth with the conversation is visible (prompts carry the history).

    python bench/llm_overhead.py [--rounds 50] [--delay 0.0] [--chunks 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import AttachmentType, PostEventType, SessionEventHandler, TaskWeaverApp, TaskWeaverEvent  # noqa: E402
from core.cancel import CancelToken  # noqa: E402
from core.llm.base import ChatRequest  # noqa: E402
from core.llm.openai_backend import OpenAIBackend  # noqa: E402
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer  # noqa: E402

CODE = "values = list(range(1, 11))\nprint(sum(v * v for v in values))"
ANSWERS = (
    json.dumps(
        {
            "thought": "Needs code.",
            "plan": ["compute", "report"],
            "current_plan_step": "compute",
            "send_to": "CodeInterpreter",
            "message": "Print the sum of squares of 1..10.",
        }
    ),
    json.dumps({"thought": "Simple loop.", "reply_type": "python", "reply_content": CODE}),
    json.dumps(
        {
            "thought": "Done.",
            "plan": ["compute", "report"],
            "current_plan_step": "report",
            "send_to": "User",
            "message": "The sum of squares of 1..10 is 385.",
        }
    ),
)


class _Stamped(threading.Event):
    """An Event that remembers when it was set (the server sets ``finished`` after its last byte)."""

    at: float = 0.0

    def set(self) -> None:
        self.at = time.monotonic()
        super().set()


@dataclass
class _Timing:
    arrived: float
    request: RecordedRequest = field(repr=False)

    @property
    def serving_s(self) -> float:
        self.request.finished.wait(10)
        return self.request.finished.at - self.arrived  # type: ignore[attr-defined]


class TimedServer(ScriptedLLMServer):
    """The scripted server, also recording how long it spent on each request."""

    def __init__(self) -> None:
        super().__init__()
        self.timings: list[_Timing] = []

    def record(self, request: RecordedRequest) -> None:
        request.finished = _Stamped()
        self.timings.append(_Timing(time.monotonic(), request))
        super().record(request)

    def server_time_since(self, index: int) -> float:
        return sum(t.serving_s for t in self.timings[index:])


class KernelClock(SessionEventHandler):
    """Time from the CodeInterpreter's "executing code" status to its execution_status attachment."""

    def __init__(self) -> None:
        self.started = 0.0
        self.total = 0.0
        self.cpu_started = 0.0
        self.cpu = 0.0  # this process's CPU time meanwhile (waiting for the kernel's messages)

    def handle(self, event: TaskWeaverEvent) -> None:
        if event.t == PostEventType.post_status_update and event.msg == "executing code":
            self.cpu_started, self.started = time.process_time(), time.monotonic()
        elif (
            event.t == PostEventType.post_attachment_update
            and event.extra["type"] == AttachmentType.execution_status
            and self.started
        ):
            self.total += time.monotonic() - self.started
            self.cpu += time.process_time() - self.cpu_started
            self.started = 0.0


@dataclass
class RoundSample:
    wall_s: float
    server_s: float
    kernel_s: float
    # CPU time of this process (every thread: Weaver's, the server's; not the kernel's), a round's
    # without its kernel execution, as for the wall time
    cpu_s: float = 0.0

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.server_s


def push_round(server: ScriptedLLMServer, chunks: int, delay: float) -> None:
    server.push(*(Answer(text, chunks=chunks, delay=delay) for text in ANSWERS))


def run_rounds(
    server: TimedServer, app_dir: Path, rounds: int, chunks: int, delay: float
) -> tuple[list[RoundSample], list[RoundSample]]:
    """One warm-up round (kernel start), then ``rounds`` measured rounds in one session, each
    followed at once by its baseline: the same three answers fetched with bare backend calls.
    Pairing them cancels the drift of other load on the machine, which a baseline measured
    apart (before or after all the rounds) does not."""
    app = TaskWeaverApp(
        app_dir=app_dir,
        config={
            "llm.api_type": "openai",
            "llm.api_base": server.base_url,
            "llm.api_key": "bench",
            "llm.model": "scripted",
            "llm.timeout": 10,
            "execution.timeout": 30,
            "logging.level": "WARNING",
        },
    )
    backend = OpenAIBackend(server.openai_settings(model="scripted", timeout=10))
    samples: list[RoundSample] = []
    raw: list[RoundSample] = []
    try:
        session = app.get_session()
        for index in range(rounds + 1):
            push_round(server, chunks, delay)
            first, clock = len(server.timings), KernelClock()
            cpu_started, started = time.process_time(), time.monotonic()
            rnd = session.send_message("What is the sum of squares of 1..10?", event_handler=clock)
            wall, cpu = time.monotonic() - started, time.process_time() - cpu_started
            if rnd.state != "finished" or "385" not in rnd.post_list[2].first(AttachmentType.execution_result, ""):
                raise SystemExit(f"round {index} did not work: {rnd.state} {rnd.error}")
            bare = bare_round(server, backend, chunks, delay)
            if index:
                samples.append(RoundSample(wall, server.server_time_since(first), clock.total, cpu - clock.cpu))
                raw.append(bare)
    finally:
        backend.close()
        app.stop()
    return samples, raw


def bare_round(server: TimedServer, backend: OpenAIBackend, chunks: int, delay: float) -> RoundSample:
    """A round's three answers fetched with bare ``stream_chat`` calls: the baseline."""
    messages = [{"role": "system", "content": "bench"}, {"role": "user", "content": "sum of squares?"}]
    push_round(server, chunks, delay)
    first = len(server.timings)
    cpu_started, started = time.process_time(), time.monotonic()
    for role in ("Planner", "CodeInterpreter", "Planner"):
        text = "".join(backend.stream_chat(ChatRequest(role=role, messages=messages), CancelToken()))
        assert text in ANSWERS
    wall, cpu = time.monotonic() - started, time.process_time() - cpu_started
    return RoundSample(wall, server.server_time_since(first), 0.0, cpu)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def ms(value: float) -> str:
    return f"{value * 1000:8.1f} ms"


def report(rounds: list[RoundSample], raw: list[RoundSample]) -> None:
    def line(label: str, values: list[float]) -> None:
        print(f"  {label:<34} median {ms(statistics.median(values))}   p90 {ms(p90(values))}")

    print(f"full rounds (Planner -> CodeInterpreter -> kernel -> Planner -> User), n={len(rounds)}")
    line("round wall time", [r.wall_s for r in rounds])
    line("server time (3 requests)", [r.server_s for r in rounds])
    line("kernel execution", [r.kernel_s for r in rounds])
    line("framework overhead (wall - server)", [r.overhead_s for r in rounds])
    line("overhead without the kernel", [r.overhead_s - r.kernel_s for r in rounds])
    print(f"baseline: 3 bare OpenAIBackend.stream_chat calls per round, same answers, n={len(raw)}")
    line("wall time", [r.wall_s for r in raw])
    line("server time", [r.server_s for r in raw])
    line("client overhead (wall - server)", [r.overhead_s for r in raw])
    ratio = statistics.median(r.wall_s for r in rounds) / statistics.median(r.wall_s for r in raw)
    print(f"ratio of medians, round / bare calls: {ratio:.2f}x")
    own = [r.wall_s - b.wall_s - r.kernel_s for r, b in zip(rounds, raw, strict=True)]
    print("Weaver's own cost per round (round - its paired bare calls - kernel)")
    line("all rounds", own)
    for start in range(0, len(own), 10):
        block = own[start : start + 10]
        line(f"rounds {start + 1}-{start + len(block)}", block)
    # CPU time does not grow when other processes take the cores, so this part holds on a busy machine.
    print("Weaver's own CPU per round (this process's CPU in the round - in its bare calls - during the kernel run)")
    line("all rounds", [r.cpu_s - b.cpu_s for r, b in zip(rounds, raw, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="measured rounds, one conversation (default 50)")
    parser.add_argument("--chunks", type=int, default=8, help="streamed chunks per answer (default 8)")
    parser.add_argument("--delay", type=float, default=0.0, help="server delay between chunks, s (default 0)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    server = TimedServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="weaver-bench-") as tmp:
            rounds, raw = run_rounds(server, Path(tmp), args.rounds, args.chunks, args.delay)
    finally:
        server.stop()
    print(f"chunks per answer {args.chunks}, server delay between chunks {args.delay * 1000:.0f} ms")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after:.2f}, on {os.cpu_count()} cores")
    report(rounds, raw)


if __name__ == "__main__":
    main()
