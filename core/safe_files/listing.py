"""Listing a session folder's files (``walk``) and their total size (``folder_bytes``).

Each folder is opened again from the root without following links (``opening.open_beneath``), so
a folder swapped for a link while the walk runs is skipped; the walk is bounded in depth and size.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

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


def walk(
    root: str | Path | int, max_walked: int = MAX_WALKED, *, skip_hidden_prefixes: Iterable[str] = (TEMP_PREFIX,)
) -> Walk:
    """Every regular file under the session folder, never entering a symlinked folder or another
    file system; each folder is opened from the root again without following links, so a folder
    swapped for a link while we walk is skipped. Stops after ``max_walked`` entries."""
    skip = tuple(skip_hidden_prefixes)
    root_fd = root if isinstance(root, int) else open_root(root)
    found: list[Found] = []
    walked = 0
    try:
        root_dev = os.fstat(root_fd).st_dev
        pending = [""]
        while pending:
            prefix = pending.pop()
            try:
                fd = os.dup(root_fd) if not prefix else open_beneath(root_fd, prefix, DIR_FLAGS)
            except (UnsafeFile, OSError):
                continue
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        walked += 1
                        if walked > max_walked:
                            return Walk(found, True)
                        if skip and entry.name.startswith(skip):
                            continue
                        rel = f"{prefix}/{entry.name}" if prefix else entry.name
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if info.st_dev != root_dev:
                            continue
                        if stat.S_ISDIR(info.st_mode):
                            if rel.count("/") + 1 < MAX_PARTS:
                                pending.append(rel)
                        elif stat.S_ISREG(info.st_mode):
                            found.append(Found(rel, info.st_size, info.st_mtime, info.st_mtime_ns))
            finally:
                os.close(fd)
    finally:
        if not isinstance(root, int):
            os.close(root_fd)
    return Walk(found, False)


def folder_bytes(root: str | Path) -> int:
    """Apparent size of the regular files under the folder (links not followed, bounded walk)."""
    try:
        return sum(f.size for f in walk(root).files)
    except OSError:
        return 0
