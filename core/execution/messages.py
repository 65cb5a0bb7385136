"""Every sentence the executor shows a user about their code's run, in one place.

The executor decides what happened; these functions only word it, so wording can change (or be
translated) without touching process or protocol code.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import ExecutionSettings
from core.safe_files import MAX_PARTS

LOST_STATE = "all variables, imports and loaded data from earlier executions were lost"

EXECUTOR_STOPPED = "The session's kernel was stopped, so no code can run."
CANCELLED_BEFORE_START = "The execution was cancelled before it started."
SESSION_CLOSING = "The session is closing, so no new kernel was started."


@dataclass
class LostState:
    """Why a kernel's state was lost: the facts the sentence is built from."""

    died: bool = False
    oom_killed: bool = False
    exit_code: int | None = None
    before_run: bool = False
    threads_left: int = 0
    stop_reason: str | None = None  # "timeout" | "cancel" | "disk"


def start_failed(problem: object) -> str:
    return f"The Python kernel could not be started: {problem}"


def not_ready(start_timeout: float, problem: object) -> str:
    return f"The Python kernel did not become ready within {start_timeout:g} s: {problem}"


def files_not_moved(problem: object) -> str:
    return f"The session's files could not be synchronised with the kernel: {problem}"


def plugin_runtime_failed(problem: object) -> str:
    return f"The kernel's plugin runtime could not be set up, so no plugin is available: {problem}"


def lost_state(facts: LostState, timeout: float, memory_mb: int, restart_problem: str | None) -> str:
    """What happened, that the session's state is gone, and whether a fresh kernel is running."""
    if facts.died and facts.oom_killed:
        what = (
            f"The code needed more memory than this session's limit of {memory_mb} MB "
            "(execution.memory_mb), so the kernel was stopped"
        )
    elif facts.died:
        when = "before this code could run" if facts.before_run else "while running this code"
        code = "" if facts.exit_code is None else f" (exit code {facts.exit_code})"
        what = f"The Python kernel died {when}{code}"
    elif facts.threads_left:
        what = (
            (
                f"Execution exceeded {timeout:g} s and was interrupted, but {facts.threads_left} thread(s) it started "
                "kept running, so the kernel was restarted with everything it ran"
            )
            if facts.stop_reason == "timeout"
            else (
                f"The execution was stopped, but {facts.threads_left} thread(s) it started kept running, "
                "so the kernel was restarted with everything it ran"
            )
        )
    elif facts.stop_reason == "timeout":
        what = f"Execution exceeded {timeout:g} s and did not stop when interrupted, so the kernel was restarted"
    elif facts.stop_reason == "disk":
        what = (
            "The session's folder went over its disk limit and the code did not stop when interrupted, "
            "so the kernel was restarted"
        )
    else:
        what = "The execution was cancelled but did not stop when interrupted, so the kernel was restarted"
    if restart_problem:
        return f"{what}; {LOST_STATE}. A new kernel could not be started: {restart_problem}"
    return f"{what}; {LOST_STATE}. A fresh kernel has been started, so re-run any setup code."


def interrupted(reason: str, timeout: float, trace: str | None, disk_note: str) -> str:
    """An interrupt that worked: the kernel and its variables are still there."""
    if reason == "timeout":
        text = f"Execution exceeded {timeout:g} s and was interrupted."
    elif reason == "disk":
        text = f"The code filled the session's folder past its limit, so it was interrupted. {disk_note}"
    else:
        text = "The execution was cancelled and interrupted."
    text += " Variables from earlier executions are kept."
    return f"{text}\n{trace}" if trace else text


def wrote_past_disk_limit(disk_note: str) -> str:
    return f"The code wrote past the session folder's limit. {disk_note}"


def open_files_note(limit: int) -> str:
    return (
        f"A kernel may hold at most {limit} files open at once (execution.max_open_files). "
        "Close files you are done with (a `with open(...)` block closes its file)."
    )


def disk_note(settings: ExecutionSettings, used_mb: float, too_deep: bool = False) -> str:
    """Why a write failed: the session folder's and each file's limit, and what is left."""
    parts = []
    if too_deep:
        parts.append(
            f"The session's folder has folders nested more than {MAX_PARTS} deep, which cannot be measured, "
            "so it counts as full"
        )
    if settings.disk_mb:
        parts.append(
            f"The session's folder holds {used_mb:.1f} MB of its {settings.disk_mb} MB limit (execution.disk_mb)"
        )
    if settings.max_file_mb:
        parts.append(f"a single file may be at most {settings.max_file_mb} MB (execution.max_file_mb)")
    return "; ".join(parts) + ". Delete files you no longer need to make room." if parts else ""
