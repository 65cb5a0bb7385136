"""Copying user files into a session's working folder under safe names.

Everything is validated before anything is written, so a bad entry leaves the folder untouched,
and every target is checked to resolve inside the folder.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

MAX_NAME_LENGTH = 120
_UNSAFE_CHARS = re.compile(r'[<>:"|?*]')


@dataclass
class _PendingFile:
    name: str
    source: Path | None
    content: bytes | None


def safe_file_name(name: str) -> str:
    """Reduce a user-given name to a plain file name: no folders, no ``..``, no control chars, not hidden."""
    if not isinstance(name, str):
        raise ValueError(f"file name must be a string, got {type(name).__name__}")
    if "\x00" in name:
        raise ValueError(f"file name {name!r} contains a NUL character")
    last_part = re.split(r"[\\/]", name)[-1]
    cleaned = "".join(ch for ch in last_part if unicodedata.category(ch)[0] != "C")
    cleaned = _UNSAFE_CHARS.sub("_", cleaned).strip().lstrip(".").strip()
    if not cleaned:
        raise ValueError(f"file name {name!r} has no usable characters")
    if len(cleaned) > MAX_NAME_LENGTH:
        stem, dot, ext = cleaned.rpartition(".")
        ext = ext if dot and len(ext) <= 10 else ""
        keep = MAX_NAME_LENGTH - len(ext) - (1 if ext else 0)
        cleaned = (stem if ext else cleaned)[:keep] + (f".{ext}" if ext else "")
    return cleaned


def _validate(entry: Any, max_bytes: int) -> _PendingFile:
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"each file must be a dict with a 'name' and a 'path' or 'content', got {entry!r}")
    name = safe_file_name(entry["name"])
    if entry.get("path") is not None:
        source = Path(entry["path"])
        if not source.is_file():
            raise ValueError(f"file {entry['name']!r}: path {str(source)!r} is not a readable file")
        size = source.stat().st_size
        pending = _PendingFile(name, source, None)
    elif entry.get("content") is not None:
        content = entry["content"]
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, (bytes, bytearray)):
            raise ValueError(f"file {entry['name']!r}: content must be bytes or str")
        size = len(content)
        pending = _PendingFile(name, None, bytes(content))
    else:
        raise ValueError(f"file {entry['name']!r} has neither 'path' nor 'content'")
    if size > max_bytes:
        raise ValueError(
            f"file {name!r} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit per file"
        )
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


def add_files(folder: Path, files: list[Mapping[str, Any]], max_bytes: int) -> list[str]:
    """Copy ``files`` into ``folder``; returns the names they got there (in order)."""
    pending = [_validate(entry, max_bytes) for entry in files]
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for item in pending:
        name = _free_name(folder, item.name)
        target = (folder / name).resolve()
        if target.parent != folder:
            raise ValueError(f"file name {item.name!r} would leave the session folder")
        data = item.content if item.content is not None else None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as out:
            if data is not None:
                out.write(data)
            else:
                assert item.source is not None
                with item.source.open("rb") as src:
                    while block := src.read(1 << 20):
                        out.write(block)
        written.append(name)
    return written


def files_prefix(names: list[str]) -> str:
    """TaskWeaver's note to the agent about added files, put before the user's message."""
    return f"files added: {', '.join(names)}.\n" if names else ""
