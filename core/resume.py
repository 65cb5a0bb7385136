"""Bringing a chat back: its earlier rounds from disk, and its kernel state from a snapshot and replay.

A session's folder keeps ``rounds.jsonl`` (every round, as ``Round.to_dict``) and its files, so a
chat opened again later - after a server restart too - gets a Session with those rounds in
memory (the Planner knows what was said and done) and the same files. Its variables come back
from the kernel's last snapshot (``core.snapshot``: saved when the chat went idle or stopped, and
loaded by the new kernel itself), then the code that succeeded in the rounds after that snapshot
is run again, in order; without a usable snapshot (none, damaged, or one that a variable that
cannot be pickled kept from being updated since an earlier round) all of it is. Statements that
only wait or show output are not run again (``ReplayChecker.trim``).

What is not replayed: code that could reach a plugin (a plugin may send mail, charge a card,
write to a database: its side effects must not happen twice) - by naming it, by looking names up
at run time (``eval``, ``globals()``, ``getattr`` with a computed name...), through a name an
earlier skipped step made, or through IPython magics (``core.replay_check`` decides) - and code
that failed or was cancelled the first time. A skipped step is named in the report; a step that
fails now stops the replay, which is reported without failing the chat. The whole replay has a
time bound, and the user may skip it (``RestoreOutcome.SKIPPED``): the chat goes on with what
was restored so far, and the report names the variables still missing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable, Protocol

from core.cancel import CancelToken
from core.execution.result import ExecutionResult
from core.memory import AttachmentType, ExecutionStatus, RoleName, Round
from core.replay_check import ReplayChecker, Skip, SkipKind, bound_names
from core.snapshot import LoadResult, LoadStatus, load_snapshot
from core.text import code_span

logger = logging.getLogger(__name__)


class _Executor(Protocol):
    def execute(
        self,
        code: str,
        session_vars: dict[str, str] | None = None,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult: ...


class _RestoreKernel(_Executor, Protocol):
    def call_helper(
        self, expression: str, *, start: bool = False, only_if: Callable[[], bool] | None = None
    ) -> str | None: ...

    def disk_room(self) -> int | None: ...


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
    trimmed: int = 0  # statements left out that only waited or showed output

    @property
    def binds(self) -> set[str]:
        """The names this step makes (for what is missing when it does not run)."""
        return bound_names(self.code)


def replay_plan(
    rounds: Iterable[Round], plugin_names: Iterable[str], missing: Iterable[str] = (), restored: int = 0
) -> list[ReplayStep]:
    """The code that succeeded in these rounds, in order; code that could reach a plugin is
    skipped (see ``core.replay_check``), and so is code that only waits or shows output.
    ``restored``: how many first rounds a snapshot brought back: their code is only read (for the
    aliases it made, ``import sys as s``), not planned. ``missing``: names the replay starts
    without although the chat had them (a snapshot's dropped ones), so code using them is skipped."""
    checker = ReplayChecker(frozenset(plugin_names))
    steps: list[ReplayStep] = []
    for number, rnd in enumerate(rounds):
        if number == restored:
            checker.missing = set(missing)  # the snapshot holds what earlier skipped steps made
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
            skip = checker.check(code)
            if number < restored:
                continue
            if skip is not None:
                steps.append(ReplayStep(code, skip))
                continue
            trimmed, dropped = checker.trim(code)
            if trimmed is None:
                steps.append(ReplayStep(code, Skip(SkipKind.TIME_ONLY), dropped))
            else:
                steps.append(ReplayStep(trimmed, None, dropped))
    return steps


class RestoreOutcome(Enum):
    """How a restore ended, for the UI to choose what to show."""

    COMPLETE = "complete"
    SKIPPED = "skipped"  # the user skipped it (or stopped it): later variables are missing
    TIMED_OUT = "timed_out"
    FAILED = "failed"  # a step failed now


@dataclass
class ReplayReport:
    """How a restore went, in words a user can read (``summary``) and as ``outcome``."""

    total: int
    ran: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: str | None = None
    timed_out: bool = False
    seconds: float = 0.0
    time_only: int = 0  # steps not run again because they only waited or showed output
    trimmed: int = 0  # statements left out of the steps run, for the same reason
    user_skipped: bool = False
    kernel_lost: bool = False  # stopping the restore took a new kernel: nothing restored is left
    missing: list[str] = field(default_factory=list)  # variables not back because the restore stopped
    snapshot: LoadResult | None = None
    rounds_after_snapshot: int = 0

    @property
    def complete(self) -> bool:
        return self.outcome is RestoreOutcome.COMPLETE

    @property
    def outcome(self) -> RestoreOutcome:
        if self.user_skipped:
            return RestoreOutcome.SKIPPED
        if self.timed_out:
            return RestoreOutcome.TIMED_OUT
        return RestoreOutcome.FAILED if self.failed else RestoreOutcome.COMPLETE

    @property
    def from_snapshot(self) -> bool:
        return self.snapshot is not None and self.snapshot.status is LoadStatus.LOADED

    def headline(self) -> str:
        """A few words for the step's title: what happened."""
        if self.outcome is RestoreOutcome.SKIPPED:
            return "restore skipped"
        if self.from_snapshot and self.ran == 0:
            return f"variables back in {self.seconds:.1f} s"
        if self.total == 0 and not self.from_snapshot:
            return "nothing to run again"
        done = "variables back" if self.from_snapshot else "earlier code run again"
        return f"{done} in {self.seconds:.1f} s" + ("" if self.complete else ", with gaps")

    def summary(self) -> str:
        parts: list[str] = []
        if self.from_snapshot and not self.kernel_lost:
            assert self.snapshot is not None
            count = self.snapshot.count
            parts.append(f"Loaded {count} saved variable{'s' if count != 1 else ''} in {self.snapshot.seconds:.1f} s.")
        elif self.snapshot is not None and self.snapshot.status is LoadStatus.CORRUPT:
            parts.append("The saved variables could not be read, so the earlier code runs again.")
        if self.from_snapshot and self.rounds_after_snapshot and self.snapshot is not None:
            parts.append(self.snapshot.why_older())
        if self.total == 0:
            if not self.from_snapshot:
                parts.append("There was no code to run again.")
        else:
            later = " of the later rounds" if self.from_snapshot else ""
            parts.append(f"Ran {self.ran} of {self.total} earlier code steps{later} again in {self.seconds:.1f} s.")
        if self.time_only or self.trimmed:
            what = [f"{self.time_only} step{'s' if self.time_only != 1 else ''}"] if self.time_only else []
            what += [f"{self.trimmed} statement{'s' if self.trimmed != 1 else ''}"] if self.trimmed else []
            parts.append(f"Left out {' and '.join(what)} that only waited or showed output.")
        if self.skipped:
            parts.append("Skipped: " + "; ".join(self.skipped) + ".")
        if self.user_skipped:
            missing = ", ".join(code_span(name) for name in self.missing[:20]) + (
                " …" if len(self.missing) > 20 else ""
            )
            parts.append(
                "You skipped the restore; your files are all here"
                + (f", but these variables are not back: {missing}." if missing else ".")
            )
        elif self.timed_out:
            parts.append("The restore took too long and was stopped; later variables may be missing.")
        elif self.failed:
            parts.append(f"It stopped at a step that now fails, so later variables may be missing: {self.failed}")
        return " ".join(part for part in parts if part)


Progress = Callable[[int, int], None]


def replay(
    executor: _Executor,
    steps: list[ReplayStep],
    session_vars: dict[str, str],
    timeout: float,
    cancel: CancelToken,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Run the steps in order within ``timeout`` seconds in all; stop at the first failure, or when
    ``cancel`` fires (the user skipped the restore: ``missing`` names what did not come back)."""
    report = ReplayReport(total=len(steps))
    started = time.monotonic()
    for index, step in enumerate(steps, 1):
        if on_progress is not None:
            on_progress(index, len(steps))
        if step.skip_reason is not None:
            if step.skip_reason.kind is SkipKind.TIME_ONLY:
                report.time_only += 1
            else:
                report.skipped.append(f"step {index} ({step.skip_reason})")
            continue
        left = timeout - (time.monotonic() - started)
        if cancel.cancelled:
            report.user_skipped = True
        elif left <= 0:
            report.timed_out = True
        else:
            result = executor.execute(step.code, session_vars=session_vars, cancel=cancel, timeout=left)
            if result.cancelled or (cancel.cancelled and not result.is_success):
                report.user_skipped = True
                report.kernel_lost = result.kernel_died  # the interrupt did not stop it: a new kernel
            elif result.timed_out:
                report.timed_out = True
            elif not result.is_success:
                first_error = (result.error or result.status_line()).strip().splitlines()
                report.failed = f"step {index}: {code_span(first_error[-1]) if first_error else 'it failed'}"
                break
            else:
                report.ran += 1
                report.trimmed += step.trimmed
                continue
        if report.user_skipped:
            unrun = steps if report.kernel_lost else steps[index - 1 :]
            report.missing = sorted(set().union(*(s.binds for s in unrun if s.skip_reason is None)))
        break
    report.seconds = time.monotonic() - started
    return report


def restore(
    executor: _RestoreKernel,
    rounds: list[Round],
    plugin_names: Iterable[str],
    session_vars: dict[str, str],
    timeout: float,
    cancel: CancelToken,
    on_progress: Progress | None = None,
    use_snapshot: bool = True,
    run_code: bool = True,
    folder: Path | None = None,
) -> ReplayReport:
    """Bring the chat's variables back: its snapshot (when ``use_snapshot``; it lies in ``folder``,
    the session's), then the code of the rounds after it (all rounds without one), within
    ``timeout`` seconds in all."""
    started = time.monotonic()
    loaded: LoadResult | None = None
    start = 0
    if use_snapshot and folder is not None and rounds and not cancel.cancelled:
        loaded = load_snapshot(executor, [r.id for r in rounds], folder)
        if loaded.status is LoadStatus.LOADED:  # the kernel's answer is not trusted: an unknown round, all code
            start = next((i + 1 for i, r in enumerate(rounds) if r.id == loaded.round_id), 0)
    later = rounds[start:]
    if run_code:
        missing = loaded.dropped if loaded is not None else ()
        steps = replay_plan(rounds, plugin_names, missing, restored=start)
        left = max(0.0, timeout - (time.monotonic() - started))
        report = replay(executor, steps, session_vars, left, cancel, on_progress)
    else:
        report = ReplayReport(total=0)
    if report.kernel_lost and loaded is not None:
        report.missing = sorted(set(report.missing) | set(loaded.names))
    report.snapshot = loaded
    report.rounds_after_snapshot = len(later) if start else 0
    report.seconds = time.monotonic() - started
    return report
