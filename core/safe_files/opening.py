"""Opening a file of a session folder without following any link, and checking the open handle.

``openat2(2)`` beneath the folder's descriptor where the kernel has it, else one component at a
time with ``O_NOFOLLOW``; then ``fstat`` of the handle (regular, same device, one name, size). The
refusals (``Refusal``, ``UnsafeFile``) are shared by listing and writing. See the package docstring.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.errors import WeaverError

MAX_PARTS = 64  # folders deep; deeper paths are refused

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
_LEAF_FLAGS = os.O_RDONLY | O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | O_CLOEXEC

# openat2(2): same number on x86_64 and aarch64; struct open_how {u64 flags, mode, resolve}.
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV


class Refusal(enum.Enum):
    """Why a file of a session folder was not read or written; the value is the user's sentence."""

    LINK = "is a link; links are not served"
    CHANGED = "was changed while it was being read"
    NOT_REGULAR = "is not a regular file (a folder, pipe or device); it is not served"
    HARD_LINK = "has more than one name (a hard link); it is not served"
    TOO_BIG = "is over the size limit"
    BAD_NAME = "is not a plain path inside the session folder"
    OUTSIDE = "is on another file system than the session folder; it is not served"
    MISSING = "does not exist (any more)"


class UnsafeFile(WeaverError, ValueError):
    """A file of a session folder was refused: ``name`` (relative to the folder) and ``reason``."""

    def __init__(self, name: str, reason: Refusal, limit: int | None = None) -> None:
        said = reason.value
        if reason is Refusal.TOO_BIG and limit is not None:
            said = f"is over the {limit / 1e6:.1f} MB limit"
        super().__init__(f"{name} {said}")
        self.name = name
        self.reason = reason
        self.said = said  # the message without the name, for a UI that formats the name itself


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_openat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64", "arm64"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    call.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_OpenHow), ctypes.c_size_t]
    return call


_SYSCALL = _load_openat2()
_openat2_works: bool | None = None  # learnt on first use: ENOSYS/EPERM (old kernel, seccomp) means no


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    """``openat2`` beneath ``dir_fd``; raises OSError (ENOSYS when the kernel lacks it)."""
    if _SYSCALL is None:
        raise OSError(errno.ENOSYS, "openat2 is not available")
    how = _OpenHow(flags, 0, _RESOLVE)
    fd = _SYSCALL(_SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), rel)
    return int(fd)


def openat2_available() -> bool:
    """Whether this kernel resolves paths with ``openat2`` (else the component walk is used)."""
    global _openat2_works
    if _openat2_works is None:
        probe = os.open("/", DIR_FLAGS)
        try:
            os.close(_openat2(probe, ".", DIR_FLAGS))
            _openat2_works = True
        except OSError as exc:
            _openat2_works = exc.errno not in (errno.ENOSYS, errno.EPERM)
        finally:
            os.close(probe)
    return _openat2_works


def split_path(rel: str | Path) -> list[str]:
    """The plain parts of a relative path; ``UnsafeFile(BAD_NAME)`` for absolute paths, ``..``,
    empty or ``.`` parts, NUL, or more than ``MAX_PARTS`` parts."""
    text = str(rel)
    found = text.split("/")
    if (
        not text
        or text.startswith("/")
        or "\x00" in text
        or len(found) > MAX_PARTS
        or any(p in ("", ".", "..") for p in found)
    ):
        raise UnsafeFile(text, Refusal.BAD_NAME)
    return found


def open_root(root: str | Path) -> int:
    """A descriptor of the session folder itself (its own last component must not be a link)."""
    return os.open(root, DIR_FLAGS)


def refusal_for(code: int, dir_fd: int, name: str) -> Refusal:
    """Which refusal an ``open`` error means (the ``lstat`` only picks the words)."""
    if code == errno.ENOENT:
        return Refusal.MISSING
    if code == errno.EXDEV:
        return Refusal.OUTSIDE
    if code == errno.EAGAIN:
        return Refusal.CHANGED
    if code in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                return Refusal.LINK
        except OSError:
            return Refusal.CHANGED
        return Refusal.LINK if code == errno.ELOOP else Refusal.NOT_REGULAR
    return Refusal.NOT_REGULAR


def open_beneath(root_fd: int, rel: str, flags: int, *, use_openat2: bool | None = None) -> int:
    """Open ``rel`` under ``root_fd`` following no symlink and leaving neither the folder nor its
    file system; raises ``UnsafeFile``. ``use_openat2=False`` forces the component walk (tests)."""
    names = split_path(rel)
    root_dev = os.fstat(root_fd).st_dev
    if use_openat2 is None:
        use_openat2 = openat2_available()
    if use_openat2:
        try:
            return _openat2(root_fd, rel, flags)
        except OSError as exc:
            raise UnsafeFile(rel, _refusal_beneath(root_fd, names, exc.errno or 0)) from None
    fd = os.dup(root_fd)
    try:
        for index, name in enumerate(names):
            last = index == len(names) - 1
            try:
                child = os.open(name, flags if last else DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeFile(rel, refusal_for(exc.errno or 0, fd, name)) from None
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != root_dev:  # a mount point inside the folder
                raise UnsafeFile(rel, Refusal.OUTSIDE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal_beneath(root_fd: int, names: list[str], code: int) -> Refusal:
    """The refusal for an ``openat2`` error: find the component that failed for the words."""
    if code not in (errno.ELOOP, errno.ENOTDIR):
        return refusal_for(code, root_fd, names[0])
    for depth in range(len(names)):
        try:
            info = os.lstat("/".join(names[: depth + 1]), dir_fd=root_fd)
        except OSError:
            break
        if stat.S_ISLNK(info.st_mode):
            return Refusal.LINK
    return Refusal.NOT_REGULAR if code == errno.ENOTDIR else Refusal.CHANGED


@dataclass
class OpenedFile:
    """A regular file of a session folder, open for reading; its size as checked."""

    name: str
    file: BinaryIO
    size: int
    modified: float

    def read_all(self) -> bytes:
        """The whole file; ``CHANGED`` if it is no longer the size it was when checked."""
        self.file.seek(0)
        data = self.file.read(self.size + 1)
        if len(data) != self.size:
            raise UnsafeFile(self.name, Refusal.CHANGED)
        return data

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_file(
    root: str | Path | int, rel: str, max_bytes: int | None = None, *, use_openat2: bool | None = None
) -> OpenedFile:
    """Open the regular file ``rel`` of the session folder ``root`` (a path or its descriptor) for
    reading, after checking the open handle; raises ``UnsafeFile``."""
    root_fd = root if isinstance(root, int) else open_root(root)
    try:
        fd = open_beneath(root_fd, rel, _LEAF_FLAGS, use_openat2=use_openat2)
        try:
            _check_regular(fd, rel, os.fstat(root_fd).st_dev, max_bytes)
            os.set_blocking(fd, True)
            info = os.fstat(fd)
            return OpenedFile(rel, os.fdopen(fd, "rb"), info.st_size, info.st_mtime)
        except BaseException:
            os.close(fd)
            raise
    finally:
        if not isinstance(root, int):
            os.close(root_fd)


def _check_regular(fd: int, rel: str, root_dev: int, max_bytes: int | None) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(rel, Refusal.NOT_REGULAR)
    if info.st_dev != root_dev:
        raise UnsafeFile(rel, Refusal.OUTSIDE)
    if info.st_nlink != 1:
        raise UnsafeFile(rel, Refusal.HARD_LINK)
    if max_bytes is not None and info.st_size > max_bytes:
        raise UnsafeFile(rel, Refusal.TOO_BIG, max_bytes)


def read_file(root: str | Path | int, rel: str, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``rel`` of the session folder ``root``; raises ``UnsafeFile``."""
    with open_file(root, rel, max_bytes) as opened:
        return opened.read_all()


def relative_name(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` by its text alone (nothing on disk is looked at): a relative
    path as it is, an absolute one only when it starts with ``root``; else ``UnsafeFile``."""
    text = str(path)
    if not text.startswith("/"):
        return text
    prefix = str(root).rstrip("/") + "/"
    if not text.startswith(prefix):
        raise UnsafeFile(text, Refusal.BAD_NAME)
    return text[len(prefix) :]


def open_plain(path: str | Path, max_bytes: int | None = None) -> OpenedFile:
    """Open a file whose folders are the server's own (an upload in Chainlit's store), refusing a
    link, FIFO, device or hard link as its last component."""
    folder, name = os.path.split(os.fspath(path))
    dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    try:
        return open_file(dir_fd, name, max_bytes, use_openat2=False)
    finally:
        os.close(dir_fd)
