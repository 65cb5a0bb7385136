"""The seccomp filter every sandboxed kernel runs under: system calls a data kernel never needs are refused.

Built with libseccomp (through ``pyseccomp``), never hand-written BPF. Everything is allowed except
the calls below, which fail with ``EPERM`` (``clone3`` with ``ENOSYS``, so glibc falls back to
``clone``, whose flags a filter can read). They are the kernel's widest attack surface for code
that already has no capabilities: debugging other processes, mounts and namespaces, keyrings,
eBPF, perf, modules, io_uring, clocks, swap, reboot, handles to files by inode. System calls of
another architecture (x32, 32-bit ``int 0x80``) kill the caller (libseccomp's default).

A bubblewrap-started kernel gets the filter as BPF on a descriptor (``--seccomp FD``); a forked
kernel's helper loads the same filter itself before it forks the kernel (``zygote.py``).
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any

# Refused with EPERM, whatever their arguments. Names unknown on this architecture are skipped.
REFUSED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "name_to_handle_at",
    "open_by_handle_at",
    "iopl",
    "ioperm",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "syslog",
    "vhangup",
    "uselib",
    "fanotify_init",
)
# clone() with any of these flags (a new namespace) is refused; plain clone (fork, threads) is not.
CLONE_NEW_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
INSTALL_HINT = "install libseccomp (Debian/Ubuntu: apt-get install libseccomp2) and pyseccomp (pip install pyseccomp)"


def _library() -> Any:
    import pyseccomp  # raises RuntimeError when libseccomp.so.2 is missing

    return pyseccomp


def build_filter() -> Any:
    """A ``pyseccomp.SyscallFilter`` with the rules above, ready to ``load()`` or ``export_bpf``."""
    sc = _library()
    refuse = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(sc.ALLOW)
    for name in REFUSED:
        try:
            rules.add_rule(refuse, name)
        except (OSError, ValueError, RuntimeError):
            continue  # not a system call of this architecture
    for flag in CLONE_NEW_FLAGS.values():
        rules.add_rule(refuse, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # personality(): only the default persona (0) and the query (0xffffffff). A rule compares an
    # argument once, so "neither" is written as: some bit set whose next bit (cyclically) is clear,
    # which holds for every 32-bit value except all-zeros and all-ones.
    for bit in range(32):
        this, following = 1 << bit, 1 << ((bit + 1) % 32)
        rules.add_rule(refuse, "personality", sc.Arg(0, sc.MASKED_EQ, this | following, this))
    return rules


@functools.lru_cache(maxsize=1)
def seccomp_problem() -> str | None:
    """Why no seccomp filter can be built here, or None when it can (checked once)."""
    try:
        build_filter()
    except (ImportError, RuntimeError, OSError) as exc:
        return f"no seccomp filter can be built ({type(exc).__name__}: {exc})"
    return None


@functools.lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The filter as classic BPF, the form ``bwrap --seccomp`` reads (built once per process)."""
    fd = os.memfd_create("weaver-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        build_filter().export_bpf(out)
        out.seek(0)
        return out.read()


def bpf_descriptor() -> int:
    """A new descriptor to read the BPF from, positioned at its start (the caller closes it)."""
    fd = os.memfd_create("weaver-seccomp", os.MFD_CLOEXEC)
    os.write(fd, filter_bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
