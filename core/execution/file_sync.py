"""Files follow a remote kernel: the session's folder mirrored to and from the kernel's working folder.

A remote kernel cannot see the web tier's disk. Before each execution the session's new or changed
files (uploads, mostly) go to the kernel; after it the kernel's new or changed files (charts,
plugin artifacts, outputs) come back, so the UI lists and serves them as for a local kernel.
Everything travels through the kernel's own channel: silent executions of
``core.plugins.kernel_files`` helpers, in base64 chunks of ``CHUNK_BYTES``. A manifest of
``(size, mtime)`` per path, remembered for both ends, makes only changes move.

Bounds: a file over ``execution.max_file_mb`` does not move (the user is told); each direction moves
at most ``execution.gateway_sync_mb`` per execution, the rest waits for the next execution (told
too); nothing comes back past the session folder's room (``execution.disk_mb``). Deletions are
not mirrored. Paths are checked on both ends (``kernel_files.parts``), and the kernel's answers are
never trusted: a path that could leave the folder is refused here, whatever the kernel says. On
this side every file is listed, read and written through ``core.safe_files`` (no link followed,
new files renamed into place and given to the session folder's owner).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.execution.limits import MB
from core.plugins import kernel_files
from core.plugins.kernel_files import PART_PREFIX, UnsafePath, parts
from core.safe_files import TEMP_PREFIX, NewFile, UnsafeFile, open_file, walk

if TYPE_CHECKING:
    from core.execution.handle import SilentEval

logger = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024  # ~700 KB of base64 per message, far below the gateway's websocket limit
_HELPERS = "__import__('core.plugins.kernel_files', fromlist=['manifest'])"
Sig = tuple[int, int]  # (size, mtime_ns)


class FileSync:
    """What was last seen on both ends for each path, and the two moves."""

    def __init__(self, cwd: Path, max_file_bytes: int, max_run_bytes: int) -> None:
        self.cwd = cwd
        self.max_file_bytes = max_file_bytes  # 0: no per-file cap
        self.max_run_bytes = max_run_bytes  # 0: no per-execution cap
        self._seen: dict[str, tuple[Sig | None, Sig | None]] = {}  # path -> (here, in the kernel)

    def reset(self) -> None:
        """A new kernel: its folder may hold none of our files, so everything goes again."""
        self._seen.clear()

    def _over_share(self, moved: int, size: int) -> bool:
        """Whether a file of ``size`` waits for a later execution: past the per-execution share,
        unless it is the execution's first (a file under ``max_file_mb`` but over the share moves alone)."""
        return bool(self.max_run_bytes) and moved > 0 and moved + size > self.max_run_bytes

    # ----- session folder -> kernel ------------------------------------------------------------

    def push(self, rpc: SilentEval) -> list[str]:
        """Send the session's new or changed files to the kernel; returns notes for the user."""
        try:
            found = walk(self.cwd, skip_hidden_prefixes=(TEMP_PREFIX, PART_PREFIX)).files[: kernel_files.MAX_LISTED]
        except OSError:  # no folder yet: nothing to send
            found = []
        here: dict[str, Sig] = {f.path: (f.size, f.modified_ns) for f in found}
        notes: list[str] = []
        moved = 0
        waiting: list[str] = []
        for rel, sig in sorted(here.items(), key=lambda item: item[1][1]):
            local_seen, remote_seen = self._seen.get(rel, (None, None))
            if local_seen == sig:
                continue
            if self.max_file_bytes and sig[0] > self.max_file_bytes:
                self._seen[rel] = (sig, remote_seen)
                notes.append(f"{rel} ({sig[0] / MB:.1f} MB) was not sent to the kernel: over execution.max_file_mb.")
                continue
            if self._over_share(moved, sig[0]):
                waiting.append(rel)
                continue
            try:
                remote = self._send(rpc, rel, sig[0])
            except (OSError, UnsafePath, UnsafeFile, RuntimeError, ValueError) as exc:
                notes.append(f"{rel} could not be sent to the kernel: {exc}")
                logger.warning("sending %s to a remote kernel failed: %s", rel, exc)
                continue
            self._seen[rel] = (sig, remote)
            moved += sig[0]
        if waiting:
            notes.append(_waiting_note(waiting, "sent to the kernel", self.max_run_bytes))
        return notes

    def _send(self, rpc: SilentEval, rel: str, size: int) -> Sig:
        """Send the file from one handle, opened without following links (``core.safe_files``)."""
        with open_file(self.cwd, rel, size) as opened:
            offset = 0
            while True:
                data = os.pread(opened.file.fileno(), CHUNK_BYTES, offset)
                last = offset + len(data) >= size or len(data) < CHUNK_BYTES
                args = {"path": rel, "offset": offset, "data": base64.b64encode(data).decode("ascii"), "last": last}
                answer = _call(rpc, "write", args)
                offset += len(data)
                if last:
                    return _sig(answer.get("sig"), "the kernel's confirmation of the file")

    # ----- kernel -> session folder ------------------------------------------------------------

    def pull(self, rpc: SilentEval, room: int | None) -> list[str]:
        """Bring the kernel's new or changed files back; ``room``: bytes the folder may still grow by."""
        answer = _call(rpc, "manifest", {"max_listed": kernel_files.MAX_LISTED})
        notes: list[str] = []
        if answer.get("truncated"):
            notes.append(f"The kernel's folder holds over {kernel_files.MAX_LISTED} files; only those were looked at.")
        moved = 0
        waiting: list[str] = []
        files = answer.get("files", [])
        if not isinstance(files, list):
            raise ValueError(f"the kernel's file list is a {type(files).__name__}")
        for entry in files[: kernel_files.MAX_LISTED]:
            try:
                if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                    raise ValueError("not [name, size, mtime]")
                rel, (size, mtime) = entry[0], _sig(entry[1:], "a size and time")
                parts(rel)
            except (UnsafePath, ValueError):
                notes.append(f"The kernel named a file Weaver refuses to copy: {str(entry)[:120]!r}.")
                continue
            local_seen, remote_seen = self._seen.get(rel, (None, None))
            if remote_seen == (size, mtime):
                continue
            if self.max_file_bytes and size > self.max_file_bytes:
                self._seen[rel] = (local_seen, (size, mtime))
                notes.append(f"{rel} ({size / MB:.1f} MB) stayed in the kernel: over execution.max_file_mb.")
                continue
            if self._over_share(moved, size) or (room is not None and moved + size > room):
                waiting.append(rel)
                continue
            try:
                local = self._fetch(rpc, rel, size)
            except (OSError, UnsafePath, UnsafeFile, RuntimeError, ValueError) as exc:
                notes.append(f"{rel} could not be copied from the kernel: {exc}")
                logger.warning("copying %s from a remote kernel failed: %s", rel, exc)
                continue
            self._seen[rel] = (local, (size, mtime))
            moved += size
        if waiting:
            notes.append(_waiting_note(waiting, "copied from the kernel", self.max_run_bytes, room))
        return notes

    def _fetch(self, rpc: SilentEval, rel: str, size: int) -> Sig:
        """Read the file in chunks into a new hidden file in the (opened) folder, put in place at the
        end (``core.safe_files.NewFile``); stop at ``size`` even if it grew meanwhile."""
        with NewFile(self.cwd, rel, make_folders=True) as new:
            offset = 0
            while True:
                length = min(CHUNK_BYTES, size - offset)
                data = b""
                if length > 0:
                    answer = _call(rpc, "read", {"path": rel, "offset": offset, "length": length})
                    data = base64.b64decode(str(answer.get("data", "")), validate=True)[:length]
                new.write(data)
                offset += len(data)
                if len(data) < CHUNK_BYTES or offset >= size:
                    info = new.commit()
                    return info.st_size, info.st_mtime_ns


def _call(rpc: SilentEval, function: str, args: dict[str, Any]) -> dict[str, Any]:
    answer = json.loads(rpc.silent_value(f"{_HELPERS}.{function}({json.dumps(args)!r})"))
    if not isinstance(answer, dict):
        raise ValueError(f"the kernel's {function} answered {type(answer).__name__}")
    return answer


def _sig(value: Any, what: str) -> Sig:
    """A (size, mtime_ns) pair as the kernel sent it: two whole numbers, neither negative (a size
    below zero would make room in the per-execution share for everything after it)."""
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)):
        raise ValueError(f"{what} is not two whole numbers of zero or more: {str(value)[:60]}")
    return value[0], value[1]


def _waiting_note(names: list[str], what: str, cap: int, room: int | None = None) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    bound = f"{cap / MB:.0f} MB per execution (execution.gateway_sync_mb)" if cap else ""
    if room is not None:
        bound = f"{bound} or the session folder's room (execution.disk_mb)" if bound else "execution.disk_mb"
    return f"Not yet {what} ({bound}); they follow after the next execution: {shown}."
