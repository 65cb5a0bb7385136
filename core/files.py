"""Copying user files into a session's working folder under safe names.

Everything is validated before anything is written, and a write that fails part-way removes what
it wrote, so a bad entry leaves the folder untouched; every target must resolve inside the folder.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.errors import BadFiles

MAX_NAME_BYTES = 200  # file systems allow 255 bytes; leave room for a "-N" clash suffix
_UNSAFE_CHARS = re.compile(r'[<>:"|?*]')


@dataclass
class _PendingFile:
    name: str
    source: Path | None
    content: bytes | None


def safe_file_name(name: str) -> str:
    """Reduce a user-given name to a plain file name: no folders, no ``..``, no control chars, not hidden."""
    if not isinstance(name, str):
        raise BadFiles(f"file name must be a string, got {type(name).__name__}")
    if "\x00" in name:
        raise BadFiles(f"file name {name!r} contains a NUL character")
    last_part = re.split(r"[\\/]", name)[-1]
    cleaned = "".join(ch for ch in last_part if unicodedata.category(ch)[0] != "C")
    cleaned = _UNSAFE_CHARS.sub("_", cleaned).strip().lstrip(".").strip()
    if not cleaned:
        raise BadFiles(f"file name {name!r} has no usable characters")
    if len(cleaned.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = cleaned.rpartition(".")
        ext = f".{ext}" if dot and stem and len(ext) <= 10 else ""
        base = stem if ext else cleaned
        while len((base + ext).encode("utf-8")) > MAX_NAME_BYTES:
            base = base[:-1]
        cleaned = base + ext
    return cleaned


def _validate(entry: Any, max_bytes: int) -> _PendingFile:
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise BadFiles(f"each file must be a dict with a 'name' and a 'path' or 'content', got {entry!r}")
    name = safe_file_name(entry["name"])
    if entry.get("path") is not None:
        source = Path(entry["path"])
        if not source.is_file():
            raise BadFiles(f"file {entry['name']!r} could not be read")
        size = source.stat().st_size
        pending = _PendingFile(name, source, None)
    elif entry.get("content") is not None:
        content = entry["content"]
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, (bytes, bytearray)):
            raise BadFiles(f"file {entry['name']!r}: content must be bytes or str")
        size = len(content)
        pending = _PendingFile(name, None, bytes(content))
    else:
        raise BadFiles(f"file {entry['name']!r} has neither 'path' nor 'content'")
    if size > max_bytes:
        raise BadFiles(f"file {name!r} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit per file")
    return pending


def _free_name(folder: Path, name: str) -> str:
    """``name`` or, if taken, ``stem-1.ext``, ``stem-2.ext``, …"""
    if not os.path.lexists(folder / name):
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    counter = 1
    while True:
        candidate = f"{stem}-{counter}.{ext}" if ext else f"{stem}-{counter}"
        if not os.path.lexists(folder / candidate):
            return candidate
        counter += 1


def add_files(folder: Path, files: Sequence[Mapping[Any, Any]], max_bytes: int) -> list[str]:
    """Copy ``files`` into ``folder``; returns the names they got there (in order)."""
    pending = [_validate(entry, max_bytes) for entry in files]
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    try:
        for item in pending:
            written.append(_write(folder, item))
    except OSError as exc:
        for name in written:  # all or nothing: the message will not mention a partial set
            (folder / name).unlink(missing_ok=True)
        raise BadFiles(f"could not save the uploaded files: {exc.strerror or exc}") from exc
    return written


def _write(folder: Path, item: _PendingFile) -> str:
    """Create a new file (never following or replacing anything) and copy the data in."""
    name = _free_name(folder, item.name)
    target = (folder / name).resolve()
    if target.parent != folder:
        raise BadFiles(f"file name {item.name!r} would leave the session folder")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            if item.content is not None:
                out.write(item.content)
            else:
                assert item.source is not None
                with item.source.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    except OSError:
        target.unlink(missing_ok=True)
        raise
    return name


def files_prefix(names: list[str]) -> str:
    """TaskWeaver's note to the agent about added files, put before the user's message."""
    return f"files added: {', '.join(names)}.\n" if names else ""


@dataclass(frozen=True)
class FileEntry:
    """One file of a session folder, as a chat's file list shows it."""

    path: str  # relative to the folder, with "/"
    size: int
    modified: float  # seconds since the epoch


@dataclass(frozen=True)
class FileListing:
    """The newest files of a session folder (at most the limit asked for), and its totals."""

    entries: list[FileEntry]
    total_files: int
    used_bytes: int
    quota_bytes: int | None


def list_files(folder: Path, limit: int, quota_bytes: int | None = None) -> FileListing:
    """Every regular file under ``folder`` (links are not followed), newest first, at most ``limit``."""
    found: list[FileEntry] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    relative = Path(entry.path).relative_to(folder).as_posix()
                    found.append(FileEntry(relative, info.st_size, info.st_mtime))
            except (OSError, ValueError):
                continue
    found.sort(key=lambda f: (-f.modified, f.path))
    return FileListing(found[:limit], len(found), sum(f.size for f in found), quota_bytes)
