"""Bringing a chat back: its earlier rounds from disk, and its kernel state by replaying its code.

A session's folder keeps ``rounds.jsonl`` (every round, as ``Round.to_dict``) and its files, so a
chat opened again later - after a server restart too - gets a Session with those rounds in
memory (the Planner knows what was said and done) and the same files. Kernel variables cannot be
saved, so they are rebuilt by running again, in order, the code that succeeded in that chat.

What is not replayed: code that could reach a plugin (a plugin may send mail, charge a card,
write to a database: its side effects must not happen twice) - by naming it, by looking names up
at run time (``eval``, ``globals()``, ``getattr`` with a computed name...), through a name an
earlier skipped step made, or through IPython magics (``core.replay_check`` decides) - and code
that failed or was cancelled the first time. A skipped step is named in the report; a step that
fails now stops the replay, which is reported without failing the chat. The whole replay has a
time bound.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from core.cancel import CancelToken
from core.execution.result import ExecutionResult
from core.memory import AttachmentType, ExecutionStatus, RoleName, Round
from core.replay_check import ReplayChecker, Skip

logger = logging.getLogger(__name__)


class _Executor(Protocol):
    def execute(
        self,
        code: str,
        session_vars: dict[str, str] | None = None,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult: ...


def load_rounds(path: Path) -> list[Round]:
    """The rounds in a ``rounds.jsonl``; a line that cannot be read is skipped (and logged)."""
    rounds: list[Round] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return rounds
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON; that round is not restored", path, number)
            continue
        if isinstance(data, dict):
            rounds.append(Round.from_dict(data))
    return rounds


@dataclass(frozen=True)
class ReplayStep:
    """One piece of code from the chat, and why it is skipped (None: it is run)."""

    code: str
    skip_reason: Skip | None = None


def replay_plan(rounds: Iterable[Round], plugin_names: Iterable[str]) -> list[ReplayStep]:
    """The code that succeeded in these rounds, in order; code that could reach a plugin is
    skipped (see ``core.replay_check``)."""
    checker = ReplayChecker(frozenset(plugin_names))
    steps: list[ReplayStep] = []
    for rnd in rounds:
        for post in rnd.post_list:
            if post.send_from != RoleName.CodeInterpreter:
                continue
            status = post.first(AttachmentType.execution_status)
            code = str(post.first(AttachmentType.reply_content, "") or "")
            if status is None or not code.strip():
                continue
            if status != ExecutionStatus.success:
                checker.not_run(code)  # what it made is missing from the replay
                continue
            steps.append(ReplayStep(code, checker.check(code)))
    return steps


@dataclass
class ReplayReport:
    """How a replay went, in words a user can read (``summary``)."""

    total: int
    ran: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: str | None = None
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.failed is None and not self.timed_out

    def summary(self) -> str:
        if self.total == 0:
            return "There was no code to run again."
        parts = [f"Ran {self.ran} of {self.total} earlier code steps again in {self.seconds:.1f} s."]
        if self.skipped:
            parts.append("Skipped: " + "; ".join(self.skipped) + ".")
        if self.timed_out:
            parts.append("The restore took too long and was stopped; later variables may be missing.")
        elif self.failed:
            parts.append(f"It stopped at a step that now fails, so later variables may be missing: {self.failed}")
        return " ".join(parts)


Progress = Callable[[int, int], None]


def replay(
    executor: _Executor,
    steps: list[ReplayStep],
    session_vars: dict[str, str],
    timeout: float,
    cancel: CancelToken,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Run the steps in order within ``timeout`` seconds in all; stop at the first failure."""
    report = ReplayReport(total=len(steps))
    started = time.monotonic()
    for index, step in enumerate(steps, 1):
        if on_progress is not None:
            on_progress(index, len(steps))
        if step.skip_reason is not None:
            report.skipped.append(f"step {index} ({step.skip_reason})")
            continue
        left = timeout - (time.monotonic() - started)
        if left <= 0 or cancel.cancelled:
            report.timed_out = left <= 0
            break
        result = executor.execute(step.code, session_vars=session_vars, cancel=cancel, timeout=left)
        if result.timed_out:
            report.timed_out = True
            break
        if not result.is_success:
            first_error = (result.error or result.status_line()).strip().splitlines()
            report.failed = f"step {index}: {first_error[-1] if first_error else 'it failed'}"
            break
        report.ran += 1
    report.seconds = time.monotonic() - started
    return report
