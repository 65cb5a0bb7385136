"""Copying user files into a session's working folder under safe names.

Everything is validated before anything is written, and a write that fails part-way removes what
it wrote, so a bad entry leaves the folder untouched. Reading and writing go through
``core.safe_files``: an upload is read from the handle that was checked, and written as a new
name in the opened folder, so a link user code planted there is never followed.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from core.errors import BadFiles
from core.safe_files import TEMP_PREFIX, OpenedFile, UnsafeFile, open_plain, open_root, walk, write_new
from core.snapshot import SNAPSHOT_DIR

MAX_NAME_BYTES = 200  # file systems allow 255 bytes; leave room for a "-N" clash suffix
_UNSAFE_CHARS = re.compile(r'[<>:"|?*]')


@dataclass
class _PendingFile:
    name: str
    source: OpenedFile | None  # an upload, already opened (links refused) and checked
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
        try:  # the handle read later is the one checked now: a swap in between changes nothing
            source = open_plain(str(entry["path"]))
        except (OSError, UnsafeFile):
            raise BadFiles(f"file {entry['name']!r} could not be read") from None
        size = source.size
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
        if pending.source is not None:
            pending.source.close()
        raise BadFiles(f"file {name!r} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit per file")
    return pending


def _free_names(name: str) -> Iterator[str]:
    """``name``, then ``stem-1.ext``, ``stem-2.ext``, … (taken ones are skipped by the writer)."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    counter = 1
    while True:
        yield f"{stem}-{counter}.{ext}" if ext else f"{stem}-{counter}"
        counter += 1


def add_files(folder: Path, files: Sequence[Mapping[Any, Any]], max_bytes: int) -> list[str]:
    """Copy ``files`` into ``folder``; returns the names they got there (in order)."""
    pending: list[_PendingFile] = []
    try:
        for entry in files:
            pending.append(_validate(entry, max_bytes))
        folder.mkdir(parents=True, exist_ok=True)
        return _write_all(folder, pending)
    finally:
        for item in pending:
            if item.source is not None:
                item.source.close()


def _write_all(folder: Path, pending: list[_PendingFile]) -> list[str]:
    """Write every file as a new name (never following or replacing anything); all or nothing."""
    written: list[str] = []
    root = open_root(folder)
    try:
        for item in pending:
            data = item.content if item.content is not None else item.source.file if item.source else b""
            written.append(write_new(root, _free_names(item.name), data))
    except (OSError, UnsafeFile) as exc:
        for name in written:  # all or nothing: the message will not mention a partial set
            try:
                os.unlink(name, dir_fd=root)
            except OSError:
                pass
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadFiles(f"could not save the uploaded files: {reason}") from exc
    finally:
        os.close(root)
    return written


_ADDED = "files added: "


def files_prefix(names: list[str]) -> str:
    """TaskWeaver's note to the agent about added files, put before the user's message."""
    return f"{_ADDED}{', '.join(names)}.\n" if names else ""


def split_files_prefix(query: str) -> tuple[str, str]:
    """A round's query as ``(files_prefix(...), the user's own text)``: an edit keeps the files."""
    head, newline, rest = query.partition("\n")
    if newline and head.startswith(_ADDED) and head.endswith("."):
        return head + newline, rest
    return "", query


def files_in_prefix(prefix: str) -> list[str]:
    """The names a ``files_prefix`` lists (a re-run hands them to its round again)."""
    listed = prefix.strip()
    if not listed.startswith(_ADDED) or not listed.endswith("."):
        return []
    return [name for name in listed[len(_ADDED) : -1].split(", ") if name]


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
    try:
        found = walk(folder, skip_hidden_prefixes=(TEMP_PREFIX, SNAPSHOT_DIR)).files  # not the saved variables
    except OSError:
        found = []
    entries = [FileEntry(f.path, f.size, f.modified) for f in found]
    entries.sort(key=lambda f: (-f.modified, f.path))
    return FileListing(entries[:limit], len(entries), sum(f.size for f in entries), quota_bytes)
