"""History rows the database has not taken yet, kept on disk so that a crash loses none of them.

While the database fails, the write-behind (``ui.history.write_behind``) appends every change it
holds to a file of this server's own, ``<app_dir>/history-spool/<server>-<random>.jsonl``: one JSON
line per batch (``{"rows": {key: values}}``, the rows in the order they came), written whole and
``fsync``'d before the write-behind goes on, so a crash leaves at most a torn last line (skipped
when read). Applied one after another, the lines end in the state the server held.

The file is locked (``flock``) for as long as its server lives: the lock goes with the process, so
a file nobody holds is one whose server died. Servers sharing an app folder (replicas) each write
their own file, and a server starting takes over only the files nobody holds (``orphans``): it
locks each, reads its rows, keeps them in its own spool, then removes the file. When the database
takes the rows, the server empties its file; a clean stop removes it.

Files are created as the server's user only (0600, in a 0700 folder), never through a link.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger("weaver.ui.history")

SPOOL_DIR = "history-spool"
SUFFIX = ".jsonl"
PART = ".part"  # a file being created: renamed to its .jsonl name once locked
PART_STALE_S = 60.0
Rows = dict[str, dict[str, Any]]

_OPEN = os.O_CLOEXEC | os.O_NOFOLLOW


def encode(rows: Rows) -> bytes:
    """One spool line: the rows as JSON (values JSON cannot hold are written as text)."""
    return json.dumps({"rows": rows}, separators=(",", ":"), default=str).encode() + b"\n"


def _file_name(server_id: str) -> str:
    """``<server>-<random>.jsonl``: the server's name for people reading the folder, made safe for a
    file name, and a random part so that a restarted server (same name, maybe the same PID in a
    container) never takes its dead predecessor's file for its own."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", server_id)[:64].lstrip(".") or "server"
    return f"{safe}-{secrets.token_hex(6)}{SUFFIX}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Spool:
    """This server's spool file: created and locked at the first append, emptied by ``clear``."""

    def __init__(self, folder: Path, server_id: str = "server") -> None:
        self.folder = Path(folder)
        self.name = _file_name(server_id)
        self._fd: int | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def append(self, line: bytes) -> None:
        """Add one line (``encode``) and make it durable before returning. Blocking: call it off the loop."""
        fd = self._open()
        _write_all(fd, line)
        os.fsync(fd)

    def clear(self) -> None:
        """Everything in the file is stored: empty it (the file and its lock stay until ``close``)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)

    def close(self, remove: bool) -> None:
        """Let the file go: removed when ``remove`` (nothing is waiting), else left, unlocked, for
        the next server to start to take over."""
        self._closed = True
        if self._fd is None:
            return
        try:
            if remove:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        if self._closed:
            raise OSError(f"the history spool {self.path} is closed")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = self.folder / f".{self.name}{PART}"
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _OPEN, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone: nobody else knows the name yet
            os.rename(part, self.path)  # the lock is on the file, and moves with it
            _sync_folder(self.folder)
        except BaseException:
            os.close(fd)
            part.unlink(missing_ok=True)
            raise
        self._fd = fd
        logger.info("history: rows waiting for the database are kept in %s", self.path)
        return fd


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Orphan:
    """A spool file left by a server that died, locked by us until ``remove`` or ``release``."""

    path: Path
    fd: int

    def batches(self) -> Iterator[Rows]:
        """Its lines in order, as rows; a line that cannot be read (torn by the crash) is skipped."""
        with os.fdopen(os.dup(self.fd), "rb") as file:
            file.seek(0)
            for number, line in enumerate(file, 1):
                try:
                    rows = json.loads(line)["rows"]
                    if not isinstance(rows, dict):
                        raise ValueError("rows is not an object")
                except (ValueError, KeyError, TypeError) as exc:
                    logger.warning("history spool %s: line %d skipped (%s)", self.path.name, number, exc)
                    continue
                yield {str(k): v for k, v in rows.items() if isinstance(v, dict)}

    def remove(self) -> None:
        """Its rows are safe elsewhere: remove the file, then let the lock go."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def orphans(folder: Path, keep: str | None = None) -> list[Orphan]:
    """The spool files in ``folder`` that no live server holds (oldest first), each locked for the
    caller; ``keep`` names the caller's own file. Files half-created by a server that died are removed."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    found: list[tuple[float, Orphan]] = []
    for name in names:
        if name == keep or not (name.endswith(SUFFIX) or name.endswith(PART)):
            continue
        path = Path(folder) / name
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN)
        except OSError:
            continue  # gone meanwhile, or a link
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live server's
            continue
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode) or held.st_nlink == 0 or not _same_file(path, held):
            os.close(fd)  # not a plain file, or another server took it over just before us
            continue
        if name.endswith(PART):  # created, never written: its server died before its first line
            orphan = Orphan(path, fd)
            if time.time() - held.st_mtime > PART_STALE_S:  # (a young one may be a server locking it now)
                orphan.remove()
            orphan.release()
            continue
        found.append((held.st_mtime, Orphan(path, fd)))
    return [orphan for _, orphan in sorted(found, key=lambda pair: pair[0])]


def _same_file(path: Path, held: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
