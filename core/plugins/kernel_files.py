"""Files of a folder, listed, read and written in bounded base64 chunks, never outside the folder.

Runs on both ends of a remote kernel's file transfer (``core/execution/file_sync.py``): inside the
kernel, on its working folder, called through silent executions; and on the web tier, on the
session's folder. Only the standard library: it is imported in every remote kernel.

Every path is relative, made of plain parts (no ``..``, no absolute path, no NUL) and opened one
folder at a time with ``O_NOFOLLOW``, so a symlink (to ``/etc`` or another session) is never
followed, read or written through. Writes go to a hidden part file and replace the target at the
end, so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from typing import Any

PART_PREFIX = ".weaver-part-"
MAX_LISTED = 2000  # files one manifest lists: a folder of a million files must not stall a round
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class UnsafePath(ValueError):
    """A path that could leave the folder (absolute, ``..``, empty parts, NUL) or names a part file."""


def parts(rel: str) -> list[str]:
    """The plain parts of a relative path; raises ``UnsafePath`` for anything else."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise UnsafePath(f"refused path {rel!r}")
    found = rel.split("/")
    if any(p in ("", ".", "..") for p in found) or found[-1].startswith(PART_PREFIX):
        raise UnsafePath(f"refused path {rel!r}")
    return found


def _open_folder(base: str, folders: list[str], create: bool) -> int:
    """A descriptor of ``base/folders...``, each step refusing symlinks; created when asked."""
    fd = os.open(base, _DIR_FLAGS)
    try:
        for name in folders:
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def listing(base: str, max_listed: int = MAX_LISTED) -> tuple[dict[str, tuple[int, int]], bool]:
    """Regular files under ``base`` (symlinks and part files skipped): ``{path: (size, mtime_ns)}``,
    and whether the listing stopped at ``max_listed``."""
    found: dict[str, tuple[int, int]] = {}
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(base, prefix) if prefix else base), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            try:
                if entry.is_symlink() or entry.name.startswith(PART_PREFIX):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    if len(found) >= max_listed:
                        return found, True
                    info = entry.stat(follow_symlinks=False)
                    found[rel] = (info.st_size, info.st_mtime_ns)
            except OSError:
                continue
    return found, False


def read_chunk(base: str, rel: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes of a regular file at ``offset``."""
    names = parts(rel)
    folder = _open_folder(base, names[:-1], create=False)
    try:
        fd = os.open(names[-1], os.O_RDONLY | _NOFOLLOW, dir_fd=folder)
    finally:
        os.close(folder)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(f"{rel!r} is not a regular file")
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def write_chunk(base: str, rel: str, offset: int, data: bytes, last: bool) -> tuple[int, int] | None:
    """Write ``data`` at ``offset`` of the file's part file; on ``last`` it replaces the file and
    its ``(size, mtime_ns)`` is returned."""
    names = parts(rel)
    part = PART_PREFIX + names[-1]
    folder = _open_folder(base, names[:-1], create=True)
    try:
        flags = os.O_WRONLY | _NOFOLLOW | (os.O_CREAT | os.O_TRUNC if offset == 0 else 0)
        fd = os.open(part, flags, 0o644, dir_fd=folder)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{rel!r}: the part file is not a regular file")
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        if not last:
            return None
        os.replace(part, names[-1], src_dir_fd=folder, dst_dir_fd=folder)  # replaces a link, never follows it
        info = os.stat(names[-1], dir_fd=folder, follow_symlinks=False)
        return info.st_size, info.st_mtime_ns
    finally:
        os.close(folder)


# ----- called inside the kernel through silent executions: JSON in, JSON out --------------------


def manifest(args_json: str) -> str:
    args: dict[str, Any] = json.loads(args_json)
    files, truncated = listing(os.getcwd(), int(args.get("max_listed", MAX_LISTED)))
    return json.dumps({"files": [[k, s, m] for k, (s, m) in files.items()], "truncated": truncated})


def read(args_json: str) -> str:
    args: dict[str, Any] = json.loads(args_json)
    data = read_chunk(os.getcwd(), str(args["path"]), int(args["offset"]), int(args["length"]))
    return json.dumps({"data": base64.b64encode(data).decode("ascii")})


def write(args_json: str) -> str:
    args: dict[str, Any] = json.loads(args_json)
    data = base64.b64decode(str(args["data"]), validate=True)
    sig = write_chunk(os.getcwd(), str(args["path"]), int(args["offset"]), data, bool(args["last"]))
    return json.dumps({"sig": list(sig) if sig else None})
