"""Each server's own folder for the files its chats upload or are shown: ``<app_dir>/.files-<id>``.

Chainlit keeps them under one folder and deletes it when it stops (``ui/patches/files_dir.py``
points it at this one). It lives in the app folder (not ``/tmp``, which other users of the machine
share and which may be small or wiped), mode 0700. A server that dies without its shutdown leaves
its folder behind, so each server holds a lock (``flock``) on ``<app_dir>/.files-<id>.lock`` for its
whole life, taken *before* the folder is made; at start a server removes the folders whose lock
nobody holds (their servers are gone), and their lock files.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

logger = logging.getLogger("weaver.ui.files")

PREFIX = ".files-"
LOCK_SUFFIX = ".lock"
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_held: list[int] = []  # this process's lock, held until it exits (the kernel lets it go then)


def server_files_dir(app_dir: Path) -> Path:
    """Make this server's folder (mode 0700) after sweeping dead servers' folders; returns it."""
    app_dir.mkdir(parents=True, exist_ok=True)
    swept = sweep(app_dir)
    if swept:
        logger.info("removed %d files folder(s) of servers that are gone", swept)
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(app_dir / f"{name}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: nobody else can hold it
    _held.append(fd)
    folder = app_dir / name
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)  # whatever the umask
    return folder


def sweep(app_dir: Path) -> int:
    """Remove the files folders (and lock files) of servers that no longer run; how many."""
    removed = 0
    for lock in sorted(app_dir.glob(f"{PREFIX}*{LOCK_SUFFIX}")):
        try:
            fd = os.open(lock, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or a link
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live server's
            folder = app_dir / lock.name[: -len(LOCK_SUFFIX)]
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed


def ensure(folder: Path) -> None:
    """Make ``folder`` again (0700) if it is gone."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
