"""Weaver beside Microsoft TaskWeaver, measured in one run on the same machine and the same model.

Both frameworks run as driver processes of this script, one after the other and alternating,
against one scripted OpenAI-compatible server on 127.0.0.1 (``tests/llm_server.py``, run in this
process) that answers each side in its own reply format: a Planner reply sending a small code
request to the CodeInterpreter, the CodeInterpreter's code (the sum of squares of 1..10, which
prints 385), and a Planner reply to the User. Measured, per side:

(a) new session → first code result: from ``get_session()`` to the CodeInterpreter's execution
    result (and to the reply), one session at a time, each stopped afterwards, after an untimed
    warm-up session so one-time imports of the process are not counted. Weaver with its warm
    kernel pool and without it (``execution.pool_size = 0``), with the scripted model and offline
    (a fenced ```python block runs as written, no model call);
(b) an idle kernel's memory: ``--crowd`` sessions each run one round, then every session kernel's
    proportional set size (PSS, ``/proc/<pid>/smaps_rollup``) is read, with RSS and USS, and the
    growth of the PSS of all the driver's child processes per kernel (fork server and the like
    included). Each side's crowd is measured alone: the other side has no kernels then;
(c) the framework's own cost per warm LLM round, the method of ``bench/llm_overhead.py``: round
    wall time − the same three answers fetched right after it with the framework's own bare
    client call (Weaver: ``OpenAIBackend.stream_chat``; TaskWeaver: its completion service's
    ``chat_completion``) − the kernel's execution time ("executing code" status → execution
    status). The driver's CPU time (all its threads, not the kernel's) is paired the same way.
    TaskWeaver paces every streamed answer through its "stream smoother" (its Planner and
    CodeInterpreter ask for it unconditionally), which waits on purpose; its cost is shown twice:
    as shipped, and with the smoother bypassed in the driver process (no file of TaskWeaver is
    changed), which is the framework's own work.

TaskWeaver runs in its ``local`` kernel mode (its default ``container`` mode needs Docker): its
kernels are plain, unsandboxed processes of the user, while Weaver's default kernels are sandboxed
and run at a lower CPU priority (``execution.nice``; ``--weaver-kernel-nice 0`` levels it).

The script never installs TaskWeaver. Give it the path of a Python interpreter that can
``import taskweaver``: for instance make a virtual environment outside this repository, clone
TaskWeaver's public repository next to it, install its ``requirements.txt`` and then the clone
itself in editable mode with that environment's pip. Without such an interpreter it stops with
exit code 2.

    python bench/taskweaver_side_by_side.py --taskweaver-python /path/to/venv/bin/python \\
        [--repeats 5] [--rounds 10] [--round-blocks 3] [--crowd 20] [--weaver-kernel-nice N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# Only the standard library up here: the driver part of this file also runs under TaskWeaver's Python.

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@bench "
CODE = "values = list(range(1, 11))\nprint(sum(v * v for v in values))"
EXPECT = "385"
QUESTION = "What is the sum of squares of 1..10?"
OFFLINE_MESSAGE = f"```python\n{CODE}\n```"
BARE_MESSAGES = [{"role": "system", "content": "bench"}, {"role": "user", "content": "sum of squares?"}]
CHUNKS = 8
STEP_TIMEOUT_S = 300.0

# The same content in each framework's reply format (TaskWeaver's schema wraps it in "response").
_PLANNER_ASK = {
    "thought": "Needs code.",
    "plan": ["compute", "report"],
    "current_plan_step": "compute",
    "send_to": "CodeInterpreter",
    "message": "Print the sum of squares of 1..10.",
}
_PLANNER_DONE = {**_PLANNER_ASK, "current_plan_step": "report", "send_to": "User"}
_PLANNER_DONE["message"] = "The sum of squares of 1..10 is 385."
WEAVER_ANSWERS = (
    json.dumps(_PLANNER_ASK),
    json.dumps({"thought": "Simple loop.", "reply_type": "python", "reply_content": CODE}),
    json.dumps(_PLANNER_DONE),
)


def _tw_planner(answer: dict[str, Any], stop: str) -> str:
    return json.dumps(
        {
            "response": {
                "plan_reasoning": answer["thought"],
                "init_plan": "1. compute\n2. report <interactively depends on 1>",
                "plan": "1. compute\n2. report",
                "current_plan_step": answer["current_plan_step"],
                "stop": stop,
                "send_to": answer["send_to"],
                "message": answer["message"],
            }
        }
    )


TASKWEAVER_ANSWERS = (
    _tw_planner(_PLANNER_ASK, "InProcess"),
    json.dumps({"response": {"thought": "Simple loop.", "reply_type": "python", "reply_content": CODE}}),
    _tw_planner(_PLANNER_DONE, "Completed"),
)
MODELS = {"weaver": "weaver-scripted", "taskweaver": "taskweaver-scripted"}
ANSWERS = {"weaver-scripted": WEAVER_ANSWERS, "taskweaver-scripted": TASKWEAVER_ANSWERS}


# ============================================================ driver side (runs in a subprocess)


def _emit(payload: dict[str, Any]) -> None:
    """One result line for the parent (the frameworks print their own lines on stdout too)."""
    sys.stdout.write(MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _children_of(root: int) -> list[int]:
    """Every descendant of ``root`` (one pass over /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far (0 for one that is gone)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Clock:
    """Times read from a framework's session events (both emit the same event model)."""

    started: float = 0.0
    exec_started: float = 0.0
    kernel_s: float = 0.0
    result_at: float = 0.0
    result_text: str = ""
    errors: list[str] = field(default_factory=list)

    def on_status(self, msg: str) -> None:
        if msg == "executing code":
            self.exec_started = time.monotonic()

    def on_attachment(self, kind: str, msg: str) -> None:
        now = time.monotonic()
        if kind == "execution_status" and self.exec_started:
            self.kernel_s += now - self.exec_started
            self.exec_started = 0.0
        elif kind == "execution_result":
            self.result_text += msg
            if not self.result_at:
                self.result_at = now


class Driver:
    """What each side's driver answers; one subclass per framework."""

    side = ""

    def first(self, variant: str) -> dict[str, Any]:
        raise NotImplementedError

    def rounds(self, n: int, variant: str) -> dict[str, Any]:
        raise NotImplementedError

    def crowd(self, n: int) -> dict[str, Any]:
        raise NotImplementedError

    def release(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def serve(self) -> None:
        """Answer the parent's commands, one JSON line each, until ``quit``."""
        _emit({"ready": self.side})
        for line in sys.stdin:
            command = json.loads(line)
            name = command.pop("cmd")
            if name == "quit":
                break
            try:
                _emit({"ok": getattr(self, name)(**command)})
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
                _emit({"error": f"{type(exc).__name__}: {exc}"})
        self.close()
        _emit({"closed": self.side})

    def paired_rounds(
        self, n: int, one_round: Callable[[Clock], None], bare_round: Callable[[], None]
    ) -> dict[str, Any]:
        """One warm-up round, then ``n`` rounds, each followed at once by its bare calls."""
        walls, kernels, bare_walls, cpus, bare_cpus = [], [], [], [], []
        for index in range(n + 1):
            clock = Clock()
            cpu, started = time.process_time(), time.monotonic()
            one_round(clock)
            wall, cpu = time.monotonic() - started, time.process_time() - cpu
            if EXPECT not in clock.result_text:
                raise RuntimeError(f"round {index} gave no {EXPECT}: {clock.result_text[:300]!r}")
            bare_cpu, bare_started = time.process_time(), time.monotonic()
            bare_round()
            bare_wall, bare_cpu = time.monotonic() - bare_started, time.process_time() - bare_cpu
            if index:
                walls.append(wall)
                kernels.append(clock.kernel_s)
                bare_walls.append(bare_wall)
                cpus.append(cpu)
                bare_cpus.append(bare_cpu)
        return {"wall": walls, "kernel": kernels, "bare_wall": bare_walls, "cpu": cpus, "bare_cpu": bare_cpus}


class TaskWeaverDriver(Driver):
    """TaskWeaver's own ``TaskWeaverApp`` in local kernel mode, pointed at the scripted server."""

    side = "taskweaver"

    def __init__(self, base_url: str, app_dir: Path) -> None:
        from taskweaver.app.app import TaskWeaverApp
        from taskweaver.llm import LLMApi
        from taskweaver.memory.attachment import AttachmentType
        from taskweaver.module.event_emitter import PostEventType, SessionEventHandler

        for sub in ("plugins", "examples/planner_examples", "examples/code_generator_examples"):
            (app_dir / sub).mkdir(parents=True, exist_ok=True)
        config = {
            "llm.api_type": "openai",
            "llm.api_base": base_url,
            "llm.api_key": "bench",
            "llm.model": MODELS["taskweaver"],
            "execution_service.kernel_mode": "local",
        }
        (app_dir / "taskweaver_config.json").write_text(json.dumps(config))
        self.app = TaskWeaverApp(app_dir=str(app_dir), config=config)
        self.llm = self.app.app_injector.get(LLMApi)
        self.smoother = True
        shipped = LLMApi.chat_completion_stream
        driver = self

        def chat_completion_stream(api: Any, *args: Any, **kwargs: Any) -> Any:
            if not driver.smoother:
                kwargs["use_smoother"] = False
            return shipped(api, *args, **kwargs)

        LLMApi.chat_completion_stream = chat_completion_stream  # type: ignore[method-assign]

        class Handler(SessionEventHandler):
            def __init__(self, clock: Clock) -> None:
                self.clock = clock

            def handle(self, event: Any) -> None:
                if event.t == PostEventType.post_status_update:
                    self.clock.on_status(event.msg)
                elif event.t == PostEventType.post_attachment_update:
                    kind = event.extra.get("type")
                    if kind in (AttachmentType.execution_status, AttachmentType.execution_result):
                        self.clock.on_attachment(kind.value, event.msg)
                elif event.t.value.endswith("_error"):
                    self.clock.errors.append(event.msg)

        self.handler = Handler
        self.crowd_sessions: list[Any] = []
        self.known_kernels: set[int] = set()
        self.first("warm-up")  # imports and the code execution service, once per process

    def _kernels(self) -> list[int]:
        found = []
        for pid in _children_of(os.getpid()):
            try:
                if b"taskweaver.ces.kernel.launcher" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    def _round(self, session: Any, clock: Clock) -> Any:
        rnd = session.send_message(QUESTION, event_handler=self.handler(clock))
        if rnd.state != "finished":
            posts = [f"{p.send_from}->{p.send_to}: {p.message[:300]}" for p in rnd.post_list]
            raise RuntimeError(f"TaskWeaver round {rnd.state}: {posts} {clock.errors[-1:]}")
        return rnd

    def _stop(self, session: Any) -> None:
        self.app.session_manager.stop_session(session.session_id)

    def first(self, variant: str) -> dict[str, Any]:
        self.smoother = variant != "no-smoother"
        before = set(self._kernels())
        clock = Clock()
        cpu, clock.started = time.process_time(), time.monotonic()
        session = self.app.get_session()
        self._round(session, clock)
        reply_at, cpu = time.monotonic(), time.process_time() - cpu
        if EXPECT not in clock.result_text:
            raise RuntimeError(f"no {EXPECT} in {clock.result_text[:300]!r}")
        new = [p for p in self._kernels() if p not in before]
        kernel_cpu = _cpu_s(new)
        self.smoother = True
        self._stop(session)
        return {
            "result_s": clock.result_at - clock.started,
            "reply_s": reply_at - clock.started,
            "cpu_s": cpu,
            "kernel_cpu_s": kernel_cpu,
            "kernel_pids": new,
        }

    def rounds(self, n: int, variant: str) -> dict[str, Any]:
        self.smoother = variant != "no-smoother"
        session = self.app.get_session()
        service = self.llm.completion_service

        def bare_round() -> None:
            for _ in range(3):
                text = "".join(c["content"] for c in service.chat_completion(list(BARE_MESSAGES), stream=True))
                if text not in TASKWEAVER_ANSWERS:
                    raise RuntimeError(f"bare call answered {text[:80]!r}")

        try:
            return self.paired_rounds(n, lambda clock: self._round(session, clock), bare_round)
        finally:
            self.smoother = True
            self._stop(session)

    def crowd(self, n: int) -> dict[str, Any]:
        before = set(self._kernels())
        for _ in range(n):
            session = self.app.get_session()
            clock = Clock()
            self._round(session, clock)
            if EXPECT not in clock.result_text:
                raise RuntimeError("a crowd round failed")
            self.crowd_sessions.append(session)
        return {"kernel_pids": [p for p in self._kernels() if p not in before], "driver": os.getpid()}

    def release(self) -> dict[str, Any]:
        while self.crowd_sessions:
            self._stop(self.crowd_sessions.pop())
        return {"left": len(self._kernels())}

    def close(self) -> None:
        self.release()
        self.app.stop()


class WeaverDriver(Driver):
    """This repository's ``TaskWeaverApp``: four apps (scripted model / offline, pool / none)."""

    side = "weaver"

    def __init__(self, base_url: str, app_dir: Path) -> None:
        from core import AttachmentType, PostEventType, SessionEventHandler, TaskWeaverApp
        from core.config import LLMSettings
        from core.llm.openai_backend import OpenAIBackend

        llm = {
            "llm.api_type": "openai",
            "llm.api_base": base_url,
            "llm.api_key": "bench",
            "llm.model": MODELS["weaver"],
            "llm.timeout": 10,
        }
        common = {"execution.timeout": 60, "logging.level": "WARNING"}
        self.apps: dict[str, Any] = {}
        for name, extra in (
            ("llm-pool", {**llm}),
            ("llm-nopool", {**llm, "execution.pool_size": 0}),
            ("offline-pool", {"llm.api_type": "offline"}),
            ("offline-nopool", {"llm.api_type": "offline", "execution.pool_size": 0}),
        ):
            self.apps[name] = TaskWeaverApp(app_dir=app_dir / name, config={**common, **extra})
        self.backend = OpenAIBackend(
            LLMSettings(api_type="openai", api_base=base_url, api_key="bench", model=MODELS["weaver"], timeout=10)
        )

        class Handler(SessionEventHandler):
            def __init__(self, clock: Clock) -> None:
                self.clock = clock

            def handle(self, event: Any) -> None:
                if event.t == PostEventType.post_status_update:
                    self.clock.on_status(event.msg)
                elif event.t == PostEventType.post_attachment_update:
                    kind = event.extra.get("type")
                    if kind in (AttachmentType.execution_status, AttachmentType.execution_result):
                        self.clock.on_attachment(kind.value, event.msg)

        self.handler = Handler
        self.crowd_sessions: list[Any] = []
        for variant in self.apps:
            self.first(variant)  # warm-up: the process's one-time imports

    def _round(self, session: Any, clock: Clock, offline: bool = False) -> Any:
        rnd = session.send_message(OFFLINE_MESSAGE if offline else QUESTION, event_handler=self.handler(clock))
        if rnd.state != "finished":
            raise RuntimeError(f"Weaver round {rnd.state}: {rnd.error}")
        return rnd

    def first(self, variant: str) -> dict[str, Any]:
        app = self.apps[variant]
        if app.pool.size and not app.pool.wait_ready(app.pool.size, STEP_TIMEOUT_S):
            raise RuntimeError("the warm pool did not fill")
        clock = Clock()
        cpu, clock.started = time.process_time(), time.monotonic()
        session = app.get_session()
        self._round(session, clock, offline=variant.startswith("offline"))
        reply_at, cpu = time.monotonic(), time.process_time() - cpu
        if EXPECT not in clock.result_text:
            raise RuntimeError(f"no {EXPECT} in {clock.result_text[:300]!r}")
        pid = session.executor.kernel_pid
        kernel_cpu = _cpu_s([pid] if pid else [])
        session.stop()
        return {
            "result_s": clock.result_at - clock.started,
            "reply_s": reply_at - clock.started,
            "cpu_s": cpu,
            "kernel_cpu_s": kernel_cpu,
            "kernel_pids": [pid] if pid else [],
        }

    def rounds(self, n: int, variant: str) -> dict[str, Any]:
        from core.cancel import CancelToken
        from core.llm.base import ChatRequest

        session = self.apps["llm-nopool"].get_session()

        def bare_round() -> None:
            for role in ("Planner", "CodeInterpreter", "Planner"):
                request = ChatRequest(role=role, messages=list(BARE_MESSAGES))
                text = "".join(self.backend.stream_chat(request, CancelToken()))
                if text not in WEAVER_ANSWERS:
                    raise RuntimeError(f"bare call answered {text[:80]!r}")

        try:
            return self.paired_rounds(n, lambda clock: self._round(session, clock), bare_round)
        finally:
            session.stop()

    def crowd(self, n: int) -> dict[str, Any]:
        pids = []
        for _ in range(n):
            session = self.apps["llm-nopool"].get_session()
            clock = Clock()
            self._round(session, clock)
            if EXPECT not in clock.result_text:
                raise RuntimeError("a crowd round failed")
            self.crowd_sessions.append(session)
            pids.append(session.executor.kernel_pid)
        return {"kernel_pids": pids, "driver": os.getpid()}

    def release(self) -> dict[str, Any]:
        while self.crowd_sessions:
            self.crowd_sessions.pop().stop()
        return {}

    def close(self) -> None:
        self.release()
        self.backend.close()
        for app in self.apps.values():
            app.stop()


def driver_main(side: str, base_url: str, app_dir: str) -> None:
    if side == "weaver":
        sys.path.insert(0, str(ROOT))
        driver: Driver = WeaverDriver(base_url, Path(app_dir))
    else:
        driver = TaskWeaverDriver(base_url, Path(app_dir))
    driver.serve()


# ============================================================ parent side


def kb_fields(pid: int) -> dict[str, int]:
    """Rss, Pss and the private (USS) kB of a process from smaps_rollup (empty if it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return {
        "rss": values.get("Rss", 0),
        "pss": values.get("Pss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    }


def tree_pss_kb(root: int) -> int:
    return sum(kb_fields(pid).get("pss", 0) for pid in _children_of(root))


class Side:
    """One driver subprocess and the JSON-lines channel to it."""

    def __init__(self, name: str, python: str, base_url: str, app_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = app_dir / "driver.log"
        self.proc = subprocess.Popen(
            [
                python,
                str(Path(__file__).resolve()),
                "--driver",
                name,
                "--base-url",
                base_url,
                "--app-dir",
                str(app_dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            env=env,
            cwd=str(app_dir),
        )
        self.lines: Iterator[str] = iter(self.proc.stdout or [])
        ready = self._read()
        if ready.get("ready") != name:
            raise SystemExit(f"{name} driver did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        for line in self.lines:
            if line.startswith(MARK):
                return dict(json.loads(line[len(MARK) :]))
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"the {self.name} driver ended early (exit {self.proc.wait()}):\n{tail}")

    def ask(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise SystemExit(f"{self.name} {cmd}: {answer['error']}")
        return dict(answer["ok"])

    def close(self) -> None:
        """Ask the driver to stop its sessions and apps, then make sure it is gone (by its PID)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self._read()
                self.proc.wait(timeout=120)
            except (OSError, SystemExit, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def check_taskweaver(python: str) -> str:
    """TaskWeaver's version, or exit 2 with what to do."""
    try:
        out = subprocess.run(
            [python, "-c", _VERSION_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env=_clean_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = None
        error = str(exc)
    if out is None or out.returncode != 0:
        detail = error if out is None else (out.stderr.strip().splitlines() or ["?"])[-1]
        print(
            f"{python} cannot import taskweaver ({detail}).\n"
            "Give --taskweaver-python a Python with TaskWeaver installed: see this script's docstring.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return out.stdout.strip()


# TaskWeaver's own app class, not just any ``taskweaver`` name (a folder of that name imports too).
_VERSION_PROBE = (
    "import importlib.metadata as m, sys\n"
    "from taskweaver.app.app import TaskWeaverApp\n"
    "try:\n    v = m.version('taskweaver')\nexcept m.PackageNotFoundError:\n    v = '(no version)'\n"
    "print(v, 'on Python', sys.version.split()[0])"
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ----- figures


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:7.3f} s"


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b > 0 else "   n/a"


@dataclass
class Figures:
    first: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    crowd: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    crowd_tree_kb: dict[str, list[float]] = field(default_factory=dict)
    crowd_pids: list[int] = field(default_factory=list)
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])


def measure_first(sides: dict[str, Side], repeats: int, figures: Figures) -> None:
    variants = {
        "taskweaver": ["shipped", "no-smoother"],
        "weaver": ["llm-pool", "llm-nopool", "offline-pool", "offline-nopool"],
    }
    for rep in range(repeats):
        order = ["taskweaver", "weaver"] if rep % 2 == 0 else ["weaver", "taskweaver"]
        for name in order:
            for variant in variants[name] if rep % 2 == 0 else reversed(variants[name]):
                figures.first.setdefault(f"{name}:{variant}", []).append(sides[name].ask("first", variant=variant))


def measure_rounds(sides: dict[str, Side], blocks: int, n: int, figures: Figures) -> None:
    plan = [("taskweaver", "no-smoother"), ("weaver", "llm"), ("taskweaver", "shipped")]
    for block in range(blocks):
        for name, variant in plan if block % 2 == 0 else reversed(plan):
            got = sides[name].ask("rounds", n=n, variant=variant)
            into = figures.rounds.setdefault(f"{name}:{variant}", {})
            for key, values in got.items():
                into.setdefault(key, []).extend(values)


def measure_crowd(sides: dict[str, Side], n: int, repeats: int, figures: Figures) -> None:
    for rep in range(repeats):
        for name in ("taskweaver", "weaver") if rep % 2 == 0 else ("weaver", "taskweaver"):
            driver = sides[name].proc.pid
            before = tree_pss_kb(driver)
            got = sides[name].ask("crowd", n=n)
            pids = [int(p) for p in got["kernel_pids"] if p]
            if len(pids) != n:
                raise SystemExit(f"{name}: expected {n} kernels, found {len(pids)}")
            figures.crowd.setdefault(name, []).extend(kb_fields(p) for p in pids)
            figures.crowd_pids += pids
            figures.crowd_tree_kb.setdefault(name, []).append((tree_pss_kb(driver) - before) / n)
            sides[name].ask("release")


def leftovers(figures: Figures) -> list[int]:
    """The kernels seen in the run that still exist (not zombies) now that the drivers are gone."""
    seen = {int(p) for rows in figures.first.values() for row in rows for p in row["kernel_pids"]}
    seen |= set(figures.crowd_pids)
    left = []
    for pid in sorted(seen):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
    return left


def report(figures: Figures, tw_version: str, args: argparse.Namespace) -> None:
    print(f"TaskWeaver {tw_version} (local kernel mode: its kernels run UNSANDBOXED as plain processes)")
    nice = args.weaver_kernel_nice
    print(
        "Weaver: default settings (sandboxed kernels), scripted model on 127.0.0.1 unless 'offline'; "
        + (
            "kernels at its default execution.nice (below normal priority: on a machine busy with other work "
            "they wait longer than TaskWeaver's, which run at normal priority)"
            if nice is None
            else f"kernels at execution.nice = {nice} (TaskWeaver's run at 0)"
        )
    )
    print(
        f"load average at the start {figures.load_start:.2f}, at the end {os.getloadavg()[0]:.2f} "
        f"(on {os.cpu_count()} cores; under load wall times are noisy, CPU times less so)"
    )
    tw_first = figures.first["taskweaver:shipped"]
    tw_result = med([f["result_s"] for f in tw_first])
    print(f"\n(a) new session -> first code result (median of {args.repeats}; reply = round finished;")
    print("    CPU: the driver process over that time, and the session's kernel over its life)")
    print(f"  {'':<36} {'code result':>10} {'reply':>10} {'driver CPU':>10} {'kernel CPU':>10}  TaskWeaver / this")
    for key, label in (
        ("taskweaver:shipped", "TaskWeaver as shipped (scripted)"),
        ("taskweaver:no-smoother", "TaskWeaver, smoother bypassed"),
        ("weaver:llm-pool", "Weaver, warm pool (scripted model)"),
        ("weaver:llm-nopool", "Weaver, no pool (scripted model)"),
        ("weaver:offline-pool", "Weaver, warm pool (offline)"),
        ("weaver:offline-nopool", "Weaver, no pool (offline)"),
    ):
        rows = figures.first[key]
        result = med([f["result_s"] for f in rows])
        reply = med([f["reply_s"] for f in rows])
        cpu = med([f["cpu_s"] for f in rows])
        kernel_cpu = med([f["kernel_cpu_s"] for f in rows])
        tail = "" if key == "taskweaver:shipped" else ratio(tw_result, result)
        print(f"  {label:<36} {secs(result)} {secs(reply)} {secs(cpu):>10} {secs(kernel_cpu):>10}  {tail}")

    print(f"\n(b) idle kernel memory, {args.crowd} kernels per side each after one round, each side alone")
    pss = {}
    for name, label in (("taskweaver", "TaskWeaver"), ("weaver", "Weaver")):
        rows = figures.crowd[name]
        pss[name] = med([r["pss"] for r in rows]) / 1024
        print(
            f"  {label:<11} PSS median {pss[name]:6.1f} MB  (RSS {med([r['rss'] for r in rows]) / 1024:6.1f} MB, "
            f"USS {med([r['uss'] for r in rows]) / 1024:6.1f} MB); all child processes' PSS growth per kernel "
            f"{med(figures.crowd_tree_kb[name]) / 1024:6.1f} MB"
        )
    print(f"  ratio of PSS medians, TaskWeaver / Weaver: {ratio(pss['taskweaver'], pss['weaver'])}")

    print("\n(c) own cost per warm LLM round = round - its paired bare calls - kernel (n per line below)")
    own: dict[str, float] = {}
    own_cpu: dict[str, float] = {}
    for key, label in (
        ("weaver:llm", "Weaver"),
        ("taskweaver:no-smoother", "TaskWeaver, smoother bypassed"),
        ("taskweaver:shipped", "TaskWeaver as shipped (paced)"),
    ):
        r = figures.rounds[key]
        costs = [w - b - k for w, b, k in zip(r["wall"], r["bare_wall"], r["kernel"], strict=True)]
        cpu_costs = [c - b for c, b in zip(r["cpu"], r["bare_cpu"], strict=True)]
        own[key], own_cpu[key] = med(costs), med(cpu_costs)
        print(
            f"  {label:<30} n={len(costs):<3} round {ms(med(r['wall']))}  bare {ms(med(r['bare_wall']))}  "
            f"kernel {ms(med(r['kernel']))}  own {ms(own[key])}  own CPU {ms(own_cpu[key])}"
        )
    for key, label in (("taskweaver:no-smoother", "smoother bypassed"), ("taskweaver:shipped", "as shipped")):
        print(
            f"  ratio TaskWeaver ({label}) / Weaver: wall {ratio(own[key], own['weaver:llm'])}, "
            f"CPU {ratio(own_cpu[key], own_cpu['weaver:llm'])}"
        )


def parent_main(args: argparse.Namespace) -> None:
    from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer

    tw_version = check_taskweaver(args.taskweaver_python)

    class SideServer(ScriptedLLMServer):
        """Answers each side by the model it names, cycling Planner → CodeInterpreter → Planner."""

        def __init__(self) -> None:
            super().__init__()
            self.counts: dict[str, int] = {}
            self.count_lock = threading.Lock()

        def record(self, request: RecordedRequest) -> None:
            model = request.body.get("model", "") if isinstance(request.body, dict) else ""
            answers = ANSWERS.get(model)
            if answers is not None:
                with self.count_lock:
                    index = self.counts.get(model, 0)
                    self.counts[model] = index + 1
                self.push(Answer(answers[index % 3], chunks=CHUNKS))
            super().record(request)

    server = SideServer().start()
    sides: dict[str, Side] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="weaver-twbench-") as tmp:
            weaver_env = {**_clean_env(), "PYTHONPATH": str(ROOT)}
            if args.weaver_kernel_nice is not None:
                weaver_env["WEAVER_EXECUTION__NICE"] = str(args.weaver_kernel_nice)
            (Path(tmp) / "tw").mkdir()
            (Path(tmp) / "weaver").mkdir()
            sides["taskweaver"] = Side(
                "taskweaver", args.taskweaver_python, server.base_url, Path(tmp) / "tw", _clean_env()
            )
            sides["weaver"] = Side("weaver", sys.executable, server.base_url, Path(tmp) / "weaver", weaver_env)
            figures = Figures()
            print("measuring (a) first code result ...", file=sys.stderr)
            measure_first(sides, args.repeats, figures)
            print("measuring (c) warm rounds ...", file=sys.stderr)
            measure_rounds(sides, args.round_blocks, args.rounds, figures)
            print("measuring (b) idle kernels ...", file=sys.stderr)
            measure_crowd(sides, args.crowd, args.crowd_repeats, figures)
            for side in sides.values():
                side.close()
            report(figures, tw_version, args)
            left = leftovers(figures)
            print(f"\nkernel processes left after both drivers stopped: {len(left)}")
            if left:
                raise SystemExit(1)
    finally:
        for side in sides.values():
            side.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taskweaver-python", help="a Python that can import taskweaver (see the docstring)")
    parser.add_argument("--repeats", type=int, default=5, help="new sessions timed per variant (default 5)")
    parser.add_argument("--rounds", type=int, default=10, help="warm rounds per block (default 10)")
    parser.add_argument("--round-blocks", type=int, default=3, help="alternating blocks of warm rounds (default 3)")
    parser.add_argument("--crowd", type=int, default=20, help="idle kernels per side (default 20)")
    parser.add_argument("--crowd-repeats", type=int, default=1, help="crowds per side (default 1)")
    parser.add_argument(
        "--weaver-kernel-nice",
        type=int,
        help="execution.nice for Weaver's kernels (default: Weaver's own; 0 = TaskWeaver's priority)",
    )
    parser.add_argument("--driver", choices=("weaver", "taskweaver"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--app-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver_main(args.driver, args.base_url, args.app_dir)
        return
    if not args.taskweaver_python:
        parser.error("--taskweaver-python is required")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    parent_main(args)


if __name__ == "__main__":
    main()
