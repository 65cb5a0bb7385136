"""Walking a session folder: its files (``walk``), its size (``usage``) and every entry (``entries``).

Each folder is opened again from the root without following links (``opening.open_beneath``, one
descriptor at a time, no recursion), so a folder swapped for a link or a FIFO while the walk runs
is skipped, never followed and never waited on. The walk is bounded in depth (``MAX_PARTS``): a
folder nested deeper is not entered, and ``usage`` says so, because what it holds cannot be counted.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from core.safe_files.opening import DIR_FLAGS, MAX_PARTS, UnsafeFile, open_beneath, open_root
from core.safe_files.writing import TEMP_PREFIX

MAX_WALKED = 20_000  # entries (files and folders) one listing looks at


@dataclass(frozen=True)
class Found:
    """A regular file met by ``walk``: its path relative to the folder (with ``/``), size and time."""

    path: str
    size: int
    modified: float
    modified_ns: int


@dataclass
class Walk:
    """What ``walk`` found, and whether it stopped at its bound before the end."""

    files: list[Found]
    truncated: bool


@dataclass(frozen=True)
class Entry:
    """One entry under the folder: the descriptor of the folder holding it (open only while the
    entry is being looked at), its name there, its path from the root, and its ``lstat``."""

    dir_fd: int
    name: str
    path: str
    info: os.stat_result


@dataclass
class Progress:
    """What an ``entries`` walk met besides its entries."""

    walked: int = 0
    truncated: bool = False  # stopped at ``max_walked``
    too_deep: bool = False  # a folder ``MAX_PARTS`` levels down was not entered
    skip: tuple[str, ...] = field(default_factory=tuple)


def entries(root_fd: int, progress: Progress, max_walked: int | None = None) -> Iterator[Entry]:
    """Every entry under the folder (files, folders, links, anything), never entering a linked
    folder or another file system; folders are walked with a list, not recursion."""
    root_dev = os.fstat(root_fd).st_dev
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            fd = os.dup(root_fd) if not prefix else open_beneath(root_fd, prefix, DIR_FLAGS)
        except (UnsafeFile, OSError):
            continue
        try:
            depth = prefix.count("/") + 1 if prefix else 0
            with os.scandir(fd) as listing:
                for item in listing:
                    progress.walked += 1
                    if max_walked is not None and progress.walked > max_walked:
                        progress.truncated = True
                        return
                    if progress.skip and item.name.startswith(progress.skip):
                        continue
                    try:
                        info = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if info.st_dev != root_dev:
                        continue
                    rel = f"{prefix}/{item.name}" if prefix else item.name
                    yield Entry(fd, item.name, rel, info)
                    if stat.S_ISDIR(info.st_mode):
                        if depth + 1 < MAX_PARTS:
                            pending.append(rel)
                        else:
                            progress.too_deep = True
        finally:
            os.close(fd)


def walk(
    root: str | Path | int, max_walked: int = MAX_WALKED, *, skip_hidden_prefixes: Iterable[str] = (TEMP_PREFIX,)
) -> Walk:
    """Every regular file under the session folder (see ``entries``). Stops after ``max_walked`` entries."""
    progress = Progress(skip=tuple(skip_hidden_prefixes))
    root_fd = root if isinstance(root, int) else open_root(root)
    try:
        found = [
            Found(e.path, e.info.st_size, e.info.st_mtime, e.info.st_mtime_ns)
            for e in entries(root_fd, progress, max_walked)
            if stat.S_ISREG(e.info.st_mode)
        ]
    finally:
        if not isinstance(root, int):
            os.close(root_fd)
    return Walk(found, progress.truncated)


@dataclass(frozen=True)
class Usage:
    """How much a folder holds: the apparent size of its files, and whether part of it lies too
    deep to be counted (the disk limit then treats the folder as full)."""

    bytes: int
    too_deep: bool


def usage(root: str | Path) -> Usage:
    """The folder's size for the disk limit: every file counted (no bound on their number, so no
    number of empty files can hide the rest), links not followed."""
    progress = Progress()
    try:
        root_fd = open_root(root)
    except OSError:
        return Usage(0, False)
    try:
        total = sum(e.info.st_size for e in entries(root_fd, progress) if stat.S_ISREG(e.info.st_mode))
    finally:
        os.close(root_fd)
    return Usage(total, progress.too_deep)


def folder_bytes(root: str | Path) -> int:
    """Apparent size of the regular files under the folder (see ``usage``)."""
    return usage(root).bytes
