"""A host uid of its own for each sandboxed kernel, when the server runs as root.

The uids come from ``execution.kernel_uid_range``: ``KERNEL_UIDS`` hands each live kernel a free
one, its folders are given to that uid (``give_tree``, never following a link a kernel left) and
``setpriv`` switches to it inside the sandbox (``drop_to``), right before the kernel runs. The
sandbox itself (``sandbox.py``) decides whether a kernel gets one.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from pathlib import Path

from core.errors import SandboxUnavailableError
from core.execution.bwrap_probe import probe_problem
from core.safe_files import Progress, entries, open_root

logger = logging.getLogger(__name__)

# The name a kernel's uid goes by (USER, LOGNAME): no passwd entry exists for it, and getpass,
# IPython and friends ask the environment first.
KERNEL_USER = "kernel"

# Kept through bubblewrap's --cap-drop ALL for ``drop_to`` alone: it needs them to change uid and
# to empty the bounding set, and bubblewrap to enter a working folder that only the kernel's uid
# may enter (--chdir comes after the capabilities are dropped). The change of uid clears them all.
UID_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_READ_SEARCH")


def drop_to(uid: int) -> list[str]:
    """``setpriv`` that runs the rest of argv as host ``uid`` and gid, no supplementary groups, no
    capability in any set (a uid change from root clears the rest) and no new privileges."""
    setpriv = shutil.which("setpriv") or "setpriv"
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"] + [
        "--no-new-privs",
        "--",
    ]


@functools.lru_cache(maxsize=None)
def uid_switch_problem(uid: int) -> str | None:
    """Why kernels cannot run as host uid ``uid`` here, or None when they can (probed once per uid):
    the server must be root, with bubblewrap and setpriv."""
    if os.geteuid() != 0:
        return "the server does not run as root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--cap-drop", "ALL"]
    probe += [arg for cap in UID_CAPS for arg in ("--cap-add", cap)]
    probe += ["--ro-bind", "/", "/", "--proc", "/proc", "--", *drop_to(uid), "true"]
    return probe_problem(probe, "cannot switch a kernel's uid")


class KernelUids:
    """The host uids of this process's live kernels: each kernel takes a free one of the range and
    gives it back when it is torn down. Taken round the range, so a uid comes back as late as it can."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[int] = set()
        self._next = 0

    def take(self, first: int, last: int, prefer: int | None = None) -> int:
        with self._lock:
            if prefer is not None and first <= prefer <= last and prefer not in self._in_use:
                self._in_use.add(prefer)
                return prefer
            size = last - first + 1
            for step in range(size):
                uid = first + (self._next + step) % size
                if uid not in self._in_use:
                    self._in_use.add(uid)
                    self._next = (uid - first + 1) % size
                    return uid
        raise SandboxUnavailableError(
            f"every uid of execution.kernel_uid_range ({first}-{last}) is taken by a live kernel; widen the range"
        )

    def give_back(self, uid: int) -> None:
        with self._lock:
            self._in_use.discard(uid)

    @property
    def in_use(self) -> set[int]:
        with self._lock:
            return set(self._in_use)


KERNEL_UIDS = KernelUids()


def give_tree(folder: Path, uid: int) -> None:
    """Make ``uid`` (and gid) own ``folder`` and, if it did not already, everything in it.

    Never follows a symlink: each folder opened without following links (``core.safe_files.entries``,
    a list, not recursion) and ``lchown`` of each name in it, so a link an earlier kernel left cannot
    point the change at a file outside, nor a FIFO or a deep tree stop it."""
    top = os.lstat(folder)
    if top.st_uid == uid and top.st_gid == uid:
        give_entries(folder, uid)
        return
    try:
        root_fd = open_root(folder)
    except OSError:
        return
    try:
        _give(root_fd, None, uid)
        for entry in entries(root_fd, Progress()):
            _give(entry.dir_fd, entry.name, uid)
    finally:
        os.close(root_fd)


def give_entries(folder: Path, uid: int) -> None:
    """Give ``uid`` the entries directly in ``folder`` that it does not own (what the server added
    since: uploads, saved figures), so the kernel may write to them as to its own files."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        _give(fd, entry.name, uid)
                except OSError:
                    continue
    finally:
        os.close(fd)


def _give(dir_fd: int, name: str | None, uid: int) -> None:
    try:
        if name is None:
            os.chown(dir_fd, uid, uid)
        else:
            os.chown(name, uid, uid, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        logger.debug("could not give %s to uid %d: %s", name or "a folder", uid, exc)
