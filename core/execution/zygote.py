"""The kernel fork server: ipykernel imported once, each kernel forked from it into its own sandbox.

Importing ipykernel and IPython is ~70 % of a kernel start's CPU (~0.2 s of ~0.3 s); a hundred
users arriving together made the machine import the same modules a hundred times. This process
imports them once, then forks a kernel per request.

A forked kernel must be confined exactly like one bubblewrap started itself. So bubblewrap still
builds every sandbox: the server launches it, as for any kernel, around a placeholder (``cat`` of a
FIFO in the kernel's private folder) that proves the sandbox is set up by opening the FIFO. A helper
forked from here then copies the placeholder's confinement onto itself: its cgroups (the server
names them), rlimits, nice and scheduling policy, then its IPC, UTS, network, cgroup, PID and mount
namespaces, its root and working folder, and last its user namespace (if the sandbox has one: a
kernel with a uid of its own has none). There it drops every capability (bounding and ambient sets
included), becomes the kernel's uid and gid with no supplementary groups (as ``setpriv`` does for a
kernel bubblewrap starts), sets no-new-privileges, loads the seccomp filter bubblewrap would have
loaded (``syscalls.py``, built once here) and forks the kernel, which therefore lands inside the
sandbox's PID namespace. The kernel holds the FIFO's only write end: when
it exits the placeholder reads end-of-file and exits, and bubblewrap takes the sandbox down.

Runs outside any sandbox as the server's user, takes orders only from the server (stdin, JSON
lines) and answers on stdout. An order names a file in the kernel's private folder that holds the
request (environment included); only the forked helper reads it, so nothing one kernel is given
stays in the memory every later kernel is forked from. It imports the standard library and
``kernel_main`` only: a forked kernel re-imports Weaver's runtime from inside its sandbox.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import signal
import sys
import time
from typing import Any, NoReturn

from core.execution import kernel_main, syscalls

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522
# Joined in this order, as the server's user: the user namespace last, because bubblewrap nests it
# (--disable-userns) below the one that owns the others, and inside it nothing outside is reachable.
NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")
KERNEL_FIFO_FD = 3  # the kernel's write end of the placeholder's FIFO
_HOST_PATH = frozenset(filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))  # the sandbox has its own
_FILTER: Any = None  # the seccomp filter, built once at start where libseccomp is there
RLIMITS = sorted(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def _children(pid: int, proc: int | None = None) -> list[int]:
    """Child pids of ``pid``; ``proc`` is the host's /proc, opened before entering a sandbox (whose
    own /proc numbers processes as its PID namespace does)."""
    path = f"{pid}/task/{pid}/children"
    with open(path if proc is not None else f"/proc/{path}", opener=lambda p, f: os.open(p, f, dir_fd=proc)) as file:
        return [int(p) for p in file.read().split()]


def _same_namespace(pid: int, kind: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino


def _rlimits(pid: int) -> dict[int, tuple[int, int]]:
    """The rlimits of ``pid``, from /proc/<pid>/limits: ``prlimit`` of a process of another uid
    needs CAP_SYS_RESOURCE, which a container may not grant even to root. Its lines follow the
    RLIMIT_* numbers (fs/proc/base.c)."""
    with open(f"/proc/{pid}/limits") as file:
        rows = file.read().splitlines()[1:]
    found: dict[int, tuple[int, int]] = {}
    for limit in RLIMITS:
        soft, hard = rows[limit][26:].split()[:2]
        found[limit] = (_rlimit_value(soft), _rlimit_value(hard))
    return found


def _rlimit_value(text: str) -> int:
    return resource.RLIM_INFINITY if text == "unlimited" else int(text)


def _drop_privileges(last_cap: int, uid: int | None) -> None:
    """What ``bwrap --cap-drop ALL`` leaves, as host ``uid`` if given: no capability in any set,
    and none to be regained. The bounding set goes first, while this process still holds the
    capability to drop it (a change of uid may clear the others)."""
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap, "dropping the capability bounding set")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), (_CapData * 2)()), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")


def _enter_sandbox(request: dict[str, Any], steps: list[tuple[str, float]]) -> tuple[int, int]:
    """Give this process the placeholder's confinement; returns the write end of its FIFO and the
    host's /proc."""
    fifo = os.open(request["fifo"], os.O_WRONLY | os.O_CLOEXEC)  # blocks until the placeholder reads it
    steps.append(("sandbox_up", time.monotonic()))
    (init,) = _children(request["outer"])
    placeholder = _children(init)[0]
    for procs in request["cgroups"]:
        with open(procs, "w") as cgroup:
            cgroup.write(str(os.getpid()))
    for limit, values in _rlimits(placeholder).items():
        resource.setrlimit(limit, values)
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, placeholder))
    os.sched_setscheduler(0, os.sched_getscheduler(placeholder), os.sched_param(0))
    with open("/proc/sys/kernel/cap_last_cap") as caps:
        last_cap = int(caps.read())
    joins = [kind for kind in NAMESPACES if not _same_namespace(placeholder, kind)]
    if "mnt" not in joins or "pid" not in joins:
        raise RuntimeError("the placeholder is not in a sandbox of its own")
    user = None if _same_namespace(placeholder, "user") else os.open(f"/proc/{placeholder}/ns/user", os.O_RDONLY)
    handles = [os.open(f"/proc/{placeholder}/ns/{kind}", os.O_RDONLY) for kind in joins]
    root = os.open(f"/proc/{placeholder}/root", os.O_RDONLY | os.O_DIRECTORY)
    host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for kind, handle in zip(joins, handles, strict=True):
        _check(_libc.setns(handle, 0), f"joining the sandbox's {kind} namespace")
        os.close(handle)
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    os.chdir(request["cwd"])
    if user is not None:
        _check(_libc.setns(user, 0), "joining the sandbox's user namespace")
        os.close(user)
    _drop_privileges(last_cap, request.get("uid"))
    if request.get("seccomp"):
        if _FILTER is None:
            raise RuntimeError("the fork server has no seccomp filter")
        _FILTER.load()
    return fifo, host_proc


def _reply(message: dict[str, Any]) -> None:
    """One line on the server's pipe: short (under PIPE_BUF), so concurrent helpers never interleave."""
    os.write(1, (json.dumps(message) + "\n").encode())


def _timed_out(signum: int, frame: Any) -> NoReturn:
    raise TimeoutError("the sandbox did not come up in time")


def _helper(order: dict[str, Any], hidden: list[str]) -> NoReturn:
    """The forked helper: enter the sandbox, start the kernel there, report its host pid, exit.

    The kernel is a grandchild, forked by a first process in the sandbox's PID namespace that then
    ends: orphaned there, it is adopted by the sandbox's own init (bubblewrap's), which reaps it,
    rather than by whatever is pid 1 on the host."""
    request: dict[str, Any] = {"id": order.get("id")}
    steps = [("helper", time.monotonic())]  # when each step ended, for the server's start timeline
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with open(order["request"], "rb") as file:  # in the kernel's private folder, written by the server
            request.update(json.load(file))
        os.unlink(order["request"])
        signal.signal(signal.SIGALRM, _timed_out)
        signal.alarm(max(1, int(request["timeout"])))
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fifo, host_proc = _enter_sandbox(request, steps)
        steps.append(("entered", time.monotonic()))
        first = os.fork()
        if first == 0:
            os.close(host_proc)  # nothing in the sandbox may hold a way back to the host's /proc
            if os.fork() == 0:
                _kernel(request, hidden, log, fifo)
            os.kill(os.getpid(), signal.SIGSTOP)  # until the helper has read the kernel's host pid
            os._exit(0)
        os.waitpid(first, os.WUNTRACED)
        (kernel,) = _children(first, host_proc)
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
    except BaseException as exc:  # noqa: BLE001 - every failure is the server's to report
        _reply({"id": request["id"], "error": f"{type(exc).__name__}: {exc}"[:1000]})
        os._exit(1)
    steps.append(("kernel_forked", time.monotonic()))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = used.ru_utime + used.ru_stime  # for bench/kernel_starts.py (its short-lived first child left out)
    _reply({"id": request["id"], "pid": kernel, "steps": steps, "cpu": round(cpu, 6)})
    os._exit(0)


def _kernel(request: dict[str, Any], hidden: list[str], log: int, fifo: int) -> NoReturn:
    """The kernel itself, already inside its sandbox: its own session, stdio, environment, path."""
    try:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(fifo, KERNEL_FIFO_FD, inheritable=False)
        os.closerange(KERNEL_FIFO_FD + 1, os.sysconf("SC_OPEN_MAX"))
        os.environ.clear()
        os.environ.update(request["env"])
        inherited = [p for p in sys.path if p not in _HOST_PATH]
        sys.path[:] = [*filter(None, request["env"].get("PYTHONPATH", "").split(os.pathsep)), *inherited]
        kernel_main.forget_host_core()  # Weaver's runtime is imported again from inside the sandbox
        sys.argv = [sys.executable, *request["argv"]]
        kernel_main.run(request["argv"], hidden)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def preload() -> list[str]:
    """What every kernel shares with this process: the seccomp filter, ipykernel and what a kernel
    imports at its start (``kernel_main.prepare``) and the kernel application with the command line
    every kernel shares (``kernel_main.prebuild``), the caches every kernel fills on its first cell
    (``kernel_main.warm_caches``) and an empty attribute cache; the code kernels run gathered on pages
    of its own (``kernel_main.gather_hot_code``); then the free chunks of the C heap and the free
    blocks of Python's allocator are taken (a kernel's new objects go to fresh pages,
    ``kernel_main.fill_malloc_holes`` and ``fill_free_slots``) and every object is frozen
    out of the collector's reach (a collection in a kernel would otherwise write to, and so copy, each
    page it visits).
    Nothing here is any kernel's: it runs before the first request. Returns the hidden module names."""
    global _FILTER
    if syscalls.seccomp_problem() is None:
        _FILTER = syscalls.build_filter()
    hidden = kernel_main.prepare()
    kernel_main.prebuild()
    kernel_main.warm_caches()
    kernel_main.prebuild_runtime()
    kernel_main.note_modules()
    gc.collect()
    # The interpreter's attribute cache holds a reference to each name it caches (4,096 entries, names
    # from all over the heap): every entry a kernel replaced wrote to the count of the name it evicted,
    # copying that name's page. Emptied here, a kernel only adds names: ~0.4 MB less per kernel.
    sys._clear_type_cache()
    kernel_main.fill_malloc_holes()  # first, so that the copies of the code kernels run lie together
    kernel_main.fill_free_slots()
    kernel_main.gather_hot_code()
    gc.collect()
    kernel_main.fill_malloc_holes()
    kernel_main.fill_free_slots()
    gc.freeze()
    return hidden


def serve() -> None:
    """Answer fork requests from stdin until the server closes it (or dies: parent-death signal)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "setting the parent-death signal")
    if os.getppid() == 1:
        return
    hidden = preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # helpers exit at once and are reaped by the system
    _reply({"ready": True})
    for line in sys.stdin.buffer:
        order = json.loads(line)  # an id and a file name: what a kernel gets stays out of this process
        if os.fork() == 0:
            _helper(order, hidden)


if __name__ == "__main__":
    serve()
