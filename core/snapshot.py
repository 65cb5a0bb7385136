"""A session's variables kept across kernels: saved when the chat goes idle or stops, loaded at resume.

The kernel does the work (``core.snapshot_kernel``): it pickles its own variables into its own
folder (``.weaver/snapshot.pkl``) and, in a later kernel of the same chat, loads them back. The
server only sends those calls and reads their JSON answers: it never opens the file, because
unpickling runs code, and that may only happen inside the user's own sandbox.

When: after a round that ran code (the namespace can only change when code runs), in the
background once the chat has been idle for ``IDLE_S``, so neither the answer nor a next message
sent at once is held up; and when the session stops
(idle timeout, server drain or stop). A round that starts meanwhile goes first: the snapshot is
then skipped, and taken after that round instead. Its size is bounded by
``session.snapshot_max_mb`` (0 turns snapshots off) and the folder's room (``execution.disk_mb``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Protocol

from core.execution.limits import MB
from core.memory import AttachmentType, RoleName, Round

SNAPSHOT_DIR = ".weaver"  # in the kernel's working folder; not among the chat's listed files
SNAPSHOT_PATH = f"{SNAPSHOT_DIR}/snapshot.pkl"
_KERNEL = "__import__('core.snapshot_kernel', fromlist=['save'])"
IDLE_S = 1.0  # a chat idle this long after a round is saved (rounds sent back to back are not held up)

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
    names: tuple[str, ...] = ()
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
    names: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # closed files, finished generators: nothing to bring back
    seconds: float = 0.0
    error: str = ""
    not_saved: dict[str, str] = field(default_factory=dict)  # why no later snapshot: these cannot be pickled
    too_big_mb: float = 0.0  # or: the variables passed this bound

    def why_older(self) -> str:
        """Why the snapshot is older than the chat's last round, in words a user can read."""
        if self.not_saved:
            listed = ", ".join(f"{name} ({kind})" for name, kind in list(self.not_saved.items())[:10])
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


def save_snapshot(kernel: _Kernel, round_id: str, max_mb: float, only_if: Callable[[], bool]) -> SaveResult:
    """Ask the kernel to save its variables as taken after ``round_id``, if ``only_if()`` still holds
    once no code runs (no newer round has run code). Never starts a kernel; never raises."""
    limit = int(max_mb * MB)
    room = kernel.disk_room()
    if room is not None:
        limit = min(limit, max(0, room - MB))  # a margin: the user's next run must not meet a full disk
    payload = json.dumps({"path": SNAPSHOT_PATH, "max_bytes": limit, "round_id": round_id})
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
    not_saved = data.get("not_saved") if isinstance(data.get("not_saved"), dict) else {}
    return SaveResult(
        status,
        names=tuple(str(n) for n in data.get("names", []) if isinstance(n, str)),
        not_saved={str(k): str(v) for k, v in (not_saved or {}).items()},
        bytes=int(data.get("bytes", 0) or 0),
        limit_bytes=limit,
    )


def load_snapshot(kernel: _Kernel, round_ids: list[str]) -> LoadResult:
    """Ask a new kernel (started if need be) to load the chat's snapshot, if it was taken after one of
    ``round_ids``. Never raises: a failure is a status, and the caller runs the code again."""
    started = time.monotonic()
    payload = json.dumps({"path": SNAPSHOT_PATH, "round_ids": round_ids})
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
    not_saved = why.get("not_saved") if why.get("status") == "unpicklable" else None
    not_saved = not_saved if isinstance(not_saved, dict) else {}
    too_big = why.get("max_bytes") if why.get("status") == "too_big" else None
    return LoadResult(
        status,
        round_id=round_id if isinstance(round_id, str) else None,
        names=tuple(str(n) for n in data.get("names", []) if isinstance(n, str)),
        dropped=tuple(str(n) for n in data.get("dropped", []) if isinstance(n, str)),
        seconds=time.monotonic() - started,
        error=str(data.get("error", ""))[:300],
        not_saved={str(k): str(v)[:100] for k, v in list(not_saved.items())[:50]},
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
    """The kernel's answer (the user's kernel is not trusted: anything odd is an empty answer)."""
    try:
        data = json.loads(answer)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Snapshots:
    """A session's snapshots: which round is due, one save at a time, in the background or now."""

    def __init__(self, kernel: _Kernel, max_mb: float, log: logging.Logger) -> None:
        self.kernel = kernel
        self.max_mb = max_mb
        self.log = log
        self.generation = 0  # bumped before any code of a round (or replay) may run
        self.last: SaveResult | None = None  # the latest attempt, for the UI and tests
        self._due: str | None = None  # the round after which the namespace changed, unsaved
        self._lock = threading.Lock()  # one save at a time
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.max_mb > 0

    def code_may_run(self) -> None:
        """Called before a round or replay starts: a pending snapshot is no longer of the latest state."""
        self.generation += 1

    def round_ran_code(self, round_id: str) -> None:
        """The namespace may have changed in that round: save it when the chat is idle."""
        if self.enabled:
            self._due = round_id

    def nothing_due(self) -> None:
        """The namespace is what the latest snapshot holds (a restore that ran no code)."""
        self._due = None

    def in_background(self) -> None:
        """Save the due round on a thread of its own once the chat has been idle ``IDLE_S``; the caller
        (a round just over) does not wait."""
        if self._due is None or not self.enabled:
            return
        generation = self.generation

        def when_idle() -> None:
            if self.generation == generation:  # no round started meanwhile (it saves after itself)
                self.save_due()

        thread = threading.Timer(IDLE_S, when_idle)
        thread.name, thread.daemon = "weaver-snapshot", True
        self._thread = thread
        thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait for a background save to end (tests, and a stop); True if none is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def save_due(self) -> SaveResult | None:
        """Save now if a round's changes are unsaved and no round has started since; never raises."""
        with self._lock:
            round_id, generation = self._due, self.generation
            if round_id is None or not self.enabled:
                return None
            result = save_snapshot(self.kernel, round_id, self.max_mb, lambda: self.generation == generation)
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
