"""The one way the server reads, lists and writes files in a session's folder.

A session's folder is written by user code at the same time as the server reads it, so a name
checked a moment ago may be a symlink (to a root-only file, to ``/proc/self/environ``), a FIFO or
a hard link by the time the server opens it. Every function here therefore works on *open
handles*, never on a path that is checked and then opened again:

- a path inside the folder is opened without following any symlink in any component:
  ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
  RESOLVE_NO_XDEV`` where the kernel has it, else one component at a time with ``O_NOFOLLOW``
  relative to the folder's descriptor (the leaf also ``O_NONBLOCK``, so a FIFO cannot hang us);
- the opened handle is checked with ``fstat``: a regular file, on the folder's device, with one
  name only (a hard link could name a file from elsewhere), within the caller's size limit;
- callers get the bytes or the open file, and a refusal is an ``UnsafeFile`` naming the file
  and the reason, written for the user;
- writes go to a fresh hidden name (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the opened parent
  folder, are given to the owner of the session folder, and are renamed into place (a rename
  replaces a symlink itself, never what it points to).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import itertools
import os
import platform
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from core.errors import WeaverError

TEMP_PREFIX = ".weaver-tmp-"
MAX_PARTS = 64  # folders deep; deeper paths are refused
MAX_WALKED = 20_000  # entries (files and folders) one listing looks at

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
_LEAF_FLAGS = os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | _O_CLOEXEC

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


# ----- opening without following ----------------------------------------------------------------


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
        probe = os.open("/", _DIR_FLAGS)
        try:
            os.close(_openat2(probe, ".", _DIR_FLAGS))
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
    return os.open(root, _DIR_FLAGS)


def _refusal_for(code: int, dir_fd: int, name: str) -> Refusal:
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
                child = os.open(name, flags if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeFile(rel, _refusal_for(exc.errno or 0, fd, name)) from None
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
        return _refusal_for(code, root_fd, names[0])
    for depth in range(len(names)):
        try:
            info = os.lstat("/".join(names[: depth + 1]), dir_fd=root_fd)
        except OSError:
            break
        if stat.S_ISLNK(info.st_mode):
            return Refusal.LINK
    return Refusal.NOT_REGULAR if code == errno.ENOTDIR else Refusal.CHANGED


# ----- reading -----------------------------------------------------------------------------------


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
    dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        return open_file(dir_fd, name, max_bytes, use_openat2=False)
    finally:
        os.close(dir_fd)


# ----- listing -----------------------------------------------------------------------------------


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
                fd = os.dup(root_fd) if not prefix else open_beneath(root_fd, prefix, _DIR_FLAGS)
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


# ----- writing -----------------------------------------------------------------------------------


def _open_parent(root_fd: int, names: list[str], create: bool, owner: tuple[int, int]) -> int:
    """The folder holding ``names[-1]``, each folder opened without following links (and made,
    belonging to the session folder's owner, when ``create``)."""
    fd = os.dup(root_fd)
    root_dev = os.fstat(root_fd).st_dev
    try:
        for index, name in enumerate(names[:-1]):
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                except PermissionError:
                    pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeFile("/".join(names), _refusal_for(exc.errno or 0, fd, name)) from None
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != root_dev:
                raise UnsafeFile("/".join(names[: index + 1]), Refusal.OUTSIDE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NewFile:
    """A file being written into a session folder: a hidden temporary in the (opened) target
    folder, given to the folder's owner, put in place by ``commit`` (replacing whatever the name
    held, a symlink included, never writing through it) or removed by ``abort``."""

    def __init__(self, root: str | Path | int, rel: str, *, make_folders: bool = False) -> None:
        self.rel = rel
        self._names = split_path(rel)
        if self._names[-1].startswith(TEMP_PREFIX):
            raise UnsafeFile(rel, Refusal.BAD_NAME)
        root_fd = root if isinstance(root, int) else open_root(root)
        try:
            info = os.fstat(root_fd)
            owner = (info.st_uid, info.st_gid)
            self._dir_fd = _open_parent(root_fd, self._names, make_folders, owner)
        finally:
            if not isinstance(root, int):
                os.close(root_fd)
        self._temp = TEMP_PREFIX + secrets.token_hex(8)
        try:
            fd = os.open(
                self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o644, dir_fd=self._dir_fd
            )
        except BaseException:
            os.close(self._dir_fd)
            raise
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            pass  # not root: the file is ours, as the folder is
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self, replace: bool = True) -> os.stat_result:
        """Put the file in place; with ``replace=False`` an existing name (even a dangling link)
        raises ``FileExistsError`` instead. Returns the new file's ``stat``."""
        self.file.flush()
        info = os.fstat(self.file.fileno())
        self.file.close()
        name = self._names[-1]
        try:
            if replace:
                os.rename(self._temp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            else:
                os.link(self._temp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd, follow_symlinks=False)
                os.unlink(self._temp, dir_fd=self._dir_fd)
        except BaseException:
            self.abort()
            raise
        self._done = True
        os.close(self._dir_fd)
        return info

    def commit_new(self, names: Iterable[str]) -> str:
        """Put the file in place under the first of ``names`` (in the same folder) that is not
        taken, never replacing anything (a dangling link counts as taken); returns the name used.
        The bytes are written once, whatever the number of names tried."""
        self.file.flush()
        self.file.close()
        try:
            for name in names:
                if len(split_path(name)) != 1 or name.startswith(TEMP_PREFIX):
                    raise UnsafeFile(name, Refusal.BAD_NAME)
                try:
                    os.link(self._temp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd, follow_symlinks=False)
                except FileExistsError:
                    continue
                os.unlink(self._temp, dir_fd=self._dir_fd)
                self._done = True
                os.close(self._dir_fd)
                return name
            raise FileExistsError("no free name")
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove the temporary; the target name is untouched."""
        if self._done:
            return
        self._done = True
        self.file.close()
        try:
            os.unlink(self._temp, dir_fd=self._dir_fd)
        except OSError:
            pass
        os.close(self._dir_fd)

    def __enter__(self) -> NewFile:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def write_file(
    root: str | Path | int, rel: str, data: bytes | BinaryIO, *, replace: bool = True, make_folders: bool = False
) -> os.stat_result:
    """Write ``data`` (bytes, or a file object copied in chunks) as ``rel`` of the session folder;
    see ``NewFile``. ``replace=False``: ``FileExistsError`` when the name is taken."""
    with NewFile(root, rel, make_folders=make_folders) as new:
        if isinstance(data, (bytes, bytearray, memoryview)):
            new.write(bytes(data))
        else:
            while chunk := data.read(1 << 20):
                new.write(chunk)
        return new.commit(replace=replace)


def write_new(root: str | Path | int, names: Iterable[str], data: bytes | BinaryIO) -> str:
    """Write ``data`` under the first of ``names`` (in the session folder's top level) not taken
    yet, never replacing anything; returns the name used."""
    names = iter(names)
    first = next(names)
    with NewFile(root, first) as new:
        if isinstance(data, (bytes, bytearray, memoryview)):
            new.write(bytes(data))
        else:
            while chunk := data.read(1 << 20):
                new.write(chunk)
        return new.commit_new(itertools.chain((first,), names))


def numbered(stem: str, suffix: str, start: int = 1) -> Iterator[str]:
    """``stem.suffix``, ``stem-2.suffix``, ``stem-3.suffix``, … from the ``start``-th (for ``write_new``)."""
    if start <= 1:
        yield f"{stem}{suffix}"
    n = max(2, start)
    while True:
        yield f"{stem}-{n}{suffix}"
        n += 1
