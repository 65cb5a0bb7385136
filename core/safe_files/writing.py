"""Writing a file into a session folder: a hidden temporary, renamed into place.

The temporary is made with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the target folder, opened without
following links, and given to the session folder's owner; a rename replaces a symlink itself,
never what it points to. ``write_new`` and ``numbered`` pick a name not taken yet.
"""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from core.safe_files.opening import (
    DIR_FLAGS,
    O_CLOEXEC,
    O_NOFOLLOW,
    Refusal,
    UnsafeFile,
    open_root,
    refusal_for,
    split_path,
)

TEMP_PREFIX = ".weaver-tmp-"  # a file being written; listings skip it


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
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeFile("/".join(names), refusal_for(exc.errno or 0, fd, name)) from None
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
                self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644, dir_fd=self._dir_fd
            )
        except BaseException:
            os.close(self._dir_fd)
            raise
        try:
            try:
                os.fchown(fd, *owner)
            except PermissionError:
                pass  # not root: the file is ours, as the folder is
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            _unlink_quietly(self._temp, self._dir_fd)
            os.close(self._dir_fd)
            raise
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
        _fill(new, data)
        return new.commit(replace=replace)


def write_new(root: str | Path | int, names: Iterable[str], data: bytes | BinaryIO) -> str:
    """Write ``data`` under the first of ``names`` (in the session folder's top level) not taken
    yet, never replacing anything; returns the name used."""
    names = iter(names)
    first = next(names)
    with NewFile(root, first) as new:
        _fill(new, data)
        return new.commit_new(itertools.chain((first,), names))


def _fill(new: NewFile, data: bytes | BinaryIO) -> None:
    """Bytes as they are, a file object copied in chunks."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        new.write(bytes(data))
        return
    while chunk := data.read(1 << 20):
        new.write(chunk)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def numbered(stem: str, suffix: str, start: int = 1) -> Iterator[str]:
    """``stem.suffix``, ``stem-2.suffix``, ``stem-3.suffix``, … from the ``start``-th (for ``write_new``)."""
    if start <= 1:
        yield f"{stem}{suffix}"
    n = max(2, start)
    while True:
        yield f"{stem}-{n}{suffix}"
        n += 1
