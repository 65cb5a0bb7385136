"""A session's variables kept across kernels: saved when the chat goes idle or stops, loaded at resume.

The kernel does the work (``core.snapshot_kernel``): it pickles its own variables into its own
folder (``.weaver/snapshot.pkl``, by its absolute path: user code may ``os.chdir``) and, in a
later kernel of the same chat, loads them back. The server only sends those calls and reads their
JSON answers (bounded: the kernel is not trusted): it never opens the file, because unpickling
runs code, and that may only happen inside the user's own sandbox.

When: after a round that ran code (the namespace can only change when code runs), in the
background once the chat has been idle for ``IDLE_S``, so neither the answer nor a next message
sent at once is held up; and when the session stops
(idle timeout, server drain or stop). A round that starts meanwhile goes first: the snapshot is
then skipped, and taken after that round instead. After a restore that did not complete (a step
failed, or it timed out) none is taken for the rest of the session: the older snapshot stays, so
the next resume runs the later rounds on top of it again rather than trusting a namespace with
gaps. Its size is bounded by ``session.snapshot_max_mb`` (0 turns snapshots off) and the
folder's room (``execution.disk_mb``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Protocol

from core.execution.limits import MB
from core.later import Later, call_later
from core.memory import AttachmentType, RoleName, Round
from core.text import code_span

SNAPSHOT_DIR = ".weaver"  # in the kernel's working folder; not among the chat's listed files
SNAPSHOT_PATH = f"{SNAPSHOT_DIR}/snapshot.pkl"
_KERNEL = "__import__('core.snapshot_kernel', fromlist=['save'])"
IDLE_S = 1.0  # a chat idle this long after a round is saved (rounds sent back to back are not held up)
MAX_ANSWER_CHARS = 200_000  # the kernel's answer is not trusted: a longer one is not read
MAX_NAMES = 500  # names kept from an answer (a count says how many there were)
MAX_NAME_CHARS = 100

logger = logging.getLogger(__name__)


class _Kernel(Protocol):
    def call_helper(
        self, expression: str, *, start: bool = False, only_if: Callable[[], bool] | None = None
    ) -> str | None: ...

    def disk_room(self) -> int | None: ...


class SaveStatus(Enum):
    SAVED = "saved"
    UNPICKLABLE = "unpicklable"  # some variable cannot be pickled: the previous snapshot stays
    TOO_BIG = "too_big"  # past session.snapshot_max_mb or the folder's room: the previous one stays
    NOT_TAKEN = "not_taken"  # no kernel, or a round started first
    FAILED = "failed"  # the kernel could not be asked


@dataclass(frozen=True)
class SaveResult:
    """How a snapshot went; ``not_saved``: the variables that cannot be pickled (name -> type)."""

    status: SaveStatus
    names: tuple[str, ...] = ()  # at most MAX_NAMES
    not_saved: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    limit_bytes: int = 0
    error: str = ""


class LoadStatus(Enum):
    LOADED = "loaded"
    NONE = "none"  # no snapshot in the folder
    STALE = "stale"  # taken after a round this chat's history does not have
    CORRUPT = "corrupt"  # unreadable: the namespace is as it was, the code is run again
    FAILED = "failed"  # the kernel could not be asked (did not start, died...)


@dataclass(frozen=True)
class LoadResult:
    """What a load brought back: the round it was taken after and the names it held."""

    status: LoadStatus
    round_id: str | None = None
    names: tuple[str, ...] = ()  # at most MAX_NAMES (``count`` says how many it held)
    dropped: tuple[str, ...] = ()  # closed files, finished generators: nothing to bring back
    count: int = 0
    seconds: float = 0.0
    error: str = ""
    not_saved: dict[str, str] = field(default_factory=dict)  # why no later snapshot: these cannot be pickled
    too_big_mb: float = 0.0  # or: the variables passed this bound

    def why_older(self) -> str:
        """Why the snapshot is older than the chat's last round, in words a user can read."""
        if self.not_saved:
            listed = ", ".join(
                f"{code_span(name)} ({code_span(kind)})" for name, kind in list(self.not_saved.items())[:10]
            )
            return (
                f"Variables cannot be saved while these exist: {listed}; `del` them when done "
                "to make the next restore fast."
            )
        if self.too_big_mb:
            return (
                f"The variables took more than {self.too_big_mb:.0f} MB once saved "
                "(session.snapshot_max_mb, or the folder's room), so they were not saved."
            )
        return ""


def snapshot_path(folder: Path) -> str:
    """The snapshot's absolute path as the kernel sees it (a sandbox binds the folder at its own path)."""
    return str(folder.resolve() / SNAPSHOT_PATH)


def save_snapshot(
    kernel: _Kernel, round_id: str, max_mb: float, only_if: Callable[[], bool], folder: Path
) -> SaveResult:
    """Ask the kernel to save its variables as taken after ``round_id``, if ``only_if()`` still holds
    once no code runs (no newer round has run code). Never starts a kernel; never raises."""
    limit = int(max_mb * MB)
    room = kernel.disk_room()
    if room is not None:
        limit = min(limit, max(0, room - MB))  # a margin: the user's next run must not meet a full disk
    payload = json.dumps({"path": snapshot_path(folder), "max_bytes": limit, "round_id": round_id})
    try:
        answer = kernel.call_helper(f"{_KERNEL}.save({payload!r})", only_if=only_if)
    except Exception as exc:  # noqa: BLE001 - a kernel that died or did not answer: no snapshot
        return SaveResult(SaveStatus.FAILED, limit_bytes=limit, error=f"{type(exc).__name__}: {exc}")
    if answer is None:
        return SaveResult(SaveStatus.NOT_TAKEN, limit_bytes=limit)
    data = _json(answer)
    try:
        status = SaveStatus(data.get("status"))
    except ValueError:
        return SaveResult(SaveStatus.FAILED, limit_bytes=limit, error=f"unexpected answer {answer[:200]!r}")
    return SaveResult(
        status,
        names=_names(data.get("names")),
        not_saved=_kinds(data.get("not_saved")),
        bytes=int(data.get("bytes", 0) or 0),
        limit_bytes=limit,
    )


def load_snapshot(kernel: _Kernel, round_ids: list[str], folder: Path) -> LoadResult:
    """Ask a new kernel (started if need be) to load the chat's snapshot, if it was taken after one of
    ``round_ids``. Never raises: a failure is a status, and the caller runs the code again."""
    started = time.monotonic()
    payload = json.dumps({"path": snapshot_path(folder), "round_ids": round_ids})
    try:
        answer = kernel.call_helper(f"{_KERNEL}.load({payload!r})", start=True)
    except Exception as exc:  # noqa: BLE001
        return LoadResult(LoadStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
    if answer is None:
        return LoadResult(LoadStatus.FAILED, error="the kernel is stopping")
    data = _json(answer)
    try:
        status = LoadStatus(data.get("status"))
    except ValueError:
        return LoadResult(LoadStatus.FAILED, error=f"unexpected answer {answer[:200]!r}")
    round_id = data.get("round_id")
    why: dict[str, Any] = data["why_older"] if isinstance(data.get("why_older"), dict) else {}
    too_big = why.get("max_bytes") if why.get("status") == "too_big" else None
    return LoadResult(
        status,
        round_id=round_id if isinstance(round_id, str) else None,
        names=_names(data.get("names")),
        dropped=_names(data.get("dropped")),
        count=_count(data.get("count"), data.get("names")),
        seconds=time.monotonic() - started,
        error=str(data.get("error", ""))[:300],
        not_saved=_kinds(why.get("not_saved")) if why.get("status") == "unpicklable" else {},
        too_big_mb=float(too_big) / MB if isinstance(too_big, (int, float)) else 0.0,
    )


def ran_code(rnd: Round) -> bool:
    """Whether the round sent code to the kernel (whatever came of it: even failed code may have
    changed variables before its error)."""
    return any(
        post.send_from == RoleName.CodeInterpreter and post.first(AttachmentType.execution_status) is not None
        for post in rnd.post_list
    )


def _json(answer: str) -> dict[str, Any]:
    """The kernel's answer (the user's kernel is not trusted: anything odd, or too long, is an
    empty answer, which reads as a failure)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return {}
    try:
        data = json.loads(answer)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _names(value: Any) -> tuple[str, ...]:
    """A list of names from the kernel's answer: strings only, each and all of them bounded."""
    if not isinstance(value, list):
        return ()
    return tuple(n[:MAX_NAME_CHARS] for n in value[:MAX_NAMES] if isinstance(n, str))


def _kinds(value: Any) -> dict[str, str]:
    """``name -> type`` from the kernel's answer, bounded like ``_names``."""
    if not isinstance(value, dict):
        return {}
    return {str(k)[:MAX_NAME_CHARS]: str(v)[:MAX_NAME_CHARS] for k, v in list(value.items())[:MAX_NAMES]}


def _count(value: Any, names: Any) -> int:
    """How many variables the kernel says it loaded (the length of its list when it does not say)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return len(names) if isinstance(names, list) else 0


class Snapshots:
    """A session's snapshots: which round is due, one save at a time, in the background or now."""

    def __init__(self, kernel: _Kernel, max_mb: float, log: logging.Logger, folder: Path) -> None:
        self.kernel = kernel
        self.max_mb = max_mb
        self.log = log
        self.folder = folder
        self.stopped = False  # a restore did not complete: no snapshot for the rest of the session
        self.generation = 0  # bumped before any code of a round (or replay) may run
        self.last: SaveResult | None = None  # the latest attempt, for the UI and tests
        self._due: str | None = None  # the round after which the namespace changed, unsaved
        self._lock = threading.Lock()  # one save at a time
        self._pending: Later | None = None  # the background save, waiting or running

    @property
    def enabled(self) -> bool:
        return self.max_mb > 0

    def stop_taking(self) -> None:
        """Take no more snapshots in this session: its namespace lacks what a restore that did not
        complete left out, and a snapshot of it would pass for the whole chat at the next resume."""
        self.stopped = True
        self._due = None

    def code_may_run(self) -> None:
        """Called before a round or replay starts: a pending snapshot is no longer of the latest state."""
        self.generation += 1

    def round_ran_code(self, round_id: str) -> None:
        """The namespace may have changed in that round: save it when the chat is idle."""
        if self.enabled and not self.stopped:
            self._due = round_id

    def nothing_due(self) -> None:
        """The namespace is what the latest snapshot holds (a restore that ran no code)."""
        self._due = None

    def in_background(self) -> None:
        """Save the due round on a thread of its own once the chat has been idle ``IDLE_S``; the caller
        (a round just over) does not wait, nor start a thread (``core.later``)."""
        if self._due is None or not self.enabled:
            return
        generation = self.generation

        def when_idle() -> None:
            if self.generation == generation:  # no round started meanwhile (it saves after itself)
                self.save_due()

        pending = self._pending
        if pending is not None:
            pending.cancel()  # a later round is due now; a save already running goes on
        self._pending = call_later(IDLE_S, when_idle, name="weaver-snapshot")

    def wait(self, timeout: float) -> bool:
        """Wait for a background save to end (tests, and a stop); True if none is running."""
        pending = self._pending
        return pending.wait(timeout) if pending is not None else True

    def save_due(self) -> SaveResult | None:
        """Save now if a round's changes are unsaved and no round has started since; never raises."""
        with self._lock:
            round_id, generation = self._due, self.generation
            if round_id is None or not self.enabled or self.stopped:
                return None

            def only_if() -> bool:  # no round ran code meanwhile, and no restore stopped the snapshots
                return self.generation == generation and not self.stopped

            result = save_snapshot(self.kernel, round_id, self.max_mb, only_if, self.folder)
            if result.status is SaveStatus.NOT_TAKEN:
                return result
            self.last = result
            if self._due == round_id and self.generation == generation:
                self._due = None  # saved, or cannot be: the next round that runs code tries again
            self._report(round_id, result)
            return result

    def _report(self, round_id: str, result: SaveResult) -> None:
        if result.status is SaveStatus.SAVED:
            self.log.info(
                "snapshot after round %s: %d variables, %.1f MB", round_id, len(result.names), result.bytes / MB
            )
        elif result.status is SaveStatus.UNPICKLABLE:
            self.log.info(
                "no snapshot after round %s: these variables cannot be saved: %s",
                round_id,
                ", ".join(f"{k} ({v})" for k, v in result.not_saved.items()),
            )
        elif result.status is SaveStatus.TOO_BIG:
            self.log.info(
                "no snapshot after round %s: the variables take more than %.0f MB once saved "
                "(session.snapshot_max_mb, or the folder's room)",
                round_id,
                result.limit_bytes / MB,
            )
        else:
            self.log.warning("no snapshot after round %s: %s", round_id, result.error)
