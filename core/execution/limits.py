"""Resource limits of one kernel: cgroup v1 memory, pids and cpu groups, rlimits, nice, disk room.

As root, RLIMIT_NPROC does not bind and a process can raise its own rlimits only up to the hard
limit we set, so memory and process counts are enforced with cgroups the kernel can't see or
leave (``/sys`` is not mounted in the sandbox). File sizes use RLIMIT_FSIZE, which binds root too.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from core.safe_files import Usage, usage

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MB = 1024 * 1024
_RMDIR_TRIES = 16  # with the back-off, ~2.5 s
KILL_WAIT_S = 5.0  # the longest ``kill_all`` waits for a group's killed processes to be gone
DATA_FALLBACK_FACTOR = 4


@dataclass(frozen=True)
class Limits:
    """What one kernel (with everything it starts) may use; 0 means no limit."""

    memory_mb: int = 2048
    max_processes: int = 64
    disk_mb: int = 1024
    max_file_mb: int = 512
    nice: int = 10
    max_open_files: int = 1024


def _own_cgroup(controller: str) -> Path | None:
    """The writable v1 hierarchy directory of this process for ``controller``, if any."""
    base = CGROUP_ROOT / controller
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            folder = base / path.lstrip("/")
            return folder if os.access(folder, os.W_OK) and (folder / "cgroup.procs").exists() else None
    return None


# The kernel's CFS weight of each nice value 0..19 (kernel/sched/core.c, sched_prio_to_weight).
NICE_WEIGHTS = (1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15)


@functools.lru_cache(maxsize=None)
def kernels_cpu_group(nice: int) -> Path | None:
    """The cpu cgroup (v1) every kernel's cpu group sits in, made once per process, weighing as
    one process at ``nice`` (10: 110 against a nice-0 process's 1024); None without one."""
    parent = _own_cgroup("cpu")
    if parent is None:
        return None
    folder = parent / "weaver"
    try:
        folder.mkdir(exist_ok=True)
        idle = folder / "cpu.idle"
        if idle.exists() and idle.read_text().strip() != "0":
            idle.write_text("0")
        (folder / "cpu.shares").write_text(str(NICE_WEIGHTS[max(0, min(nice, 19))]))
    except OSError as exc:
        logger.debug("no cpu cgroup for the kernels at %s: %s", folder, exc)
        return None
    return folder


class KernelCgroups:
    """A memory, a pids and a cpu cgroup for one kernel launch; every process it starts stays inside.

    The cpu groups of all kernels share one parent, ``weaver``, that weighs as one process at
    ``execution.nice``: together, the kernels take what the web server and the rest of the machine
    leave, and never less than that share (an idle group could starve them under a sustained
    load, past their wall-clock timeouts). Nice and ``SCHED_IDLE`` alone did not do that where the
    kernel groups tasks by session (autogroup, on by default on most distributions): every sandbox
    is a session of its own, so each kernel weighed as much as the whole web server, and under a
    crowd its event loop waited for a CPU half of the time. A task in a cpu cgroup is outside
    autogroup, so user code that calls ``setsid()`` gains nothing either.
    """

    def __init__(self, name: str, limits: Limits) -> None:
        self.dirs: dict[str, Path] = {}
        self.problems: list[str] = []
        wanted = {"memory": limits.memory_mb > 0, "pids": limits.max_processes > 0}
        for controller, needed in wanted.items():
            parent = _own_cgroup(controller) if needed else None
            if needed and parent is None:
                self.problems.append(f"no writable {controller} cgroup (v1) under {CGROUP_ROOT}")
                continue
            if parent is None:
                continue
            folder = parent / "weaver" / name
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self.dirs[controller] = folder
                self._configure(controller, folder, limits)
            except OSError as exc:
                self.problems.append(f"{controller} cgroup {folder}: {exc}")
        shared = kernels_cpu_group(limits.nice) if limits.nice > 0 else None  # a priority, not a limit
        if shared is not None:
            try:
                (shared / name).mkdir(exist_ok=True)
                self.dirs["cpu"] = shared / name
            except OSError as exc:
                logger.debug("no cpu cgroup for %s: %s", name, exc)

    @staticmethod
    def _configure(controller: str, folder: Path, limits: Limits) -> None:
        if controller == "memory":
            (folder / "memory.limit_in_bytes").write_text(str(limits.memory_mb * MB))
            swap = folder / "memory.memsw.limit_in_bytes"
            if swap.exists():  # memory + swap: no way around the limit through swap
                swap.write_text(str(limits.memory_mb * MB))
        else:
            (folder / "pids.max").write_text(str(limits.max_processes))

    @property
    def shared_cpu_group(self) -> Path | None:
        """The cpu cgroup all kernels share (the parent of this kernel's), if it has one."""
        cpu = self.dirs.get("cpu")
        return cpu.parent if cpu is not None else None

    @property
    def procs_files(self) -> list[str]:
        """``cgroup.procs`` files the launcher writes its own pid into before it execs."""
        return [str(folder / "cgroup.procs") for folder in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for folder in self.dirs.values():
            try:
                found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return found

    def oom_kills(self) -> int:
        """How often the memory limit made the kernel OOM-kill a process in this group."""
        folder = self.dirs.get("memory")
        if folder is None:
            return 0
        try:
            for line in (folder / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
            return 1 if int((folder / "memory.failcnt").read_text()) > 0 else 0
        except (OSError, ValueError):
            return 0

    def kill_all(self) -> None:
        """SIGKILL every process left in the group, including ones that called setsid(), and wait
        until they are gone: up to ``KILL_WAIT_S``, as a killed process on a machine busy with a
        crowd can take a second to be scheduled and exit (0.5 s was too short: "survived" errors
        for processes that were gone a moment later).

        Killed processes are hastened (``hasten_exit``): a dying process still runs its exit in the
        kernel (unmapping its memory, taking down its sandbox's namespaces), and at the kernels'
        low priority a crowd starved that work while it held locks other processes wait for."""
        deadline = time.monotonic() + KILL_WAIT_S
        pause = 0.01
        while True:
            pids = self.pids()
            if not pids:
                return
            killed = set()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except OSError:
                    pass  # gone already: its pid is not touched again (it could be another's by now)
            hasten_exit(killed)
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        left = sorted(self.pids())
        if left:
            logger.error("processes %s survived SIGKILL in their cgroup for %g s", left, KILL_WAIT_S)

    def remove(self) -> None:
        self.kill_all()
        for folder in self.dirs.values():
            pause = 0.01
            for _ in range(_RMDIR_TRIES):  # an exiting process can keep the group busy for a moment
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(pause)  # backing off: a crowd's teardowns must not spin on the GIL
                    pause = min(pause * 2, 0.2)
        self.dirs = {}


def hasten_exit(pids: set[int]) -> None:
    """Let killed processes finish dying at the server's priority: out of the kernels' cpu group,
    ``SCHED_OTHER`` at the server's nice. Only for processes already sent SIGKILL, which run no code
    of their own again, so nothing a user wrote gains the priority. Best effort: a process may be
    gone, and without privileges the priority stays as it was."""
    server_cpu_group = _own_cgroup("cpu")
    server_nice = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in pids:
        if server_cpu_group is not None:
            try:
                (server_cpu_group / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass
        try:
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, pid, server_nice)
        except OSError:
            pass


def wrapper_argv(
    limits: Limits, procs_files: list[str], memory_cgroup: bool, uid: int | None = None, owned: list[str] | None = None
) -> list[str]:
    """``sh`` that joins the cgroups, sets the rlimits and nice, then execs the rest of argv.

    Joining before the exec (rather than moving the process afterwards) means no child of the
    kernel can ever be outside the groups; a failed join stops the launch instead of running
    unlimited. With ``uid``, it first gives ``owned`` (files the launch writes just before it
    runs, e.g. the connection file) to that uid and gid, never following a symlink.
    """
    script = [f"echo $$ > {shlex.quote(path)} || exit 97" for path in procs_files]
    if uid is not None and owned:
        script.append(f"chown -h {uid}:{uid} -- {' '.join(shlex.quote(path) for path in owned)} || exit 96")
    if limits.max_file_mb > 0:
        script.append(f"ulimit -f {limits.max_file_mb * MB // 512} || exit 98")  # 512-byte blocks
    if limits.memory_mb > 0 and not memory_cgroup:
        # Fallback only: RLIMIT_DATA counts reserved, not used, memory (pyarrow's allocator alone
        # reserves ~1 GB), so it is set well above the limit and bounds one process, not the tree.
        script.append(f"ulimit -d {limits.memory_mb * 1024 * DATA_FALLBACK_FACTOR} || exit 98")
    if limits.max_open_files > 0:
        # Soft and hard alike (code cannot raise it back), never above what the server may give: the
        # server raises its own soft limit for its kernels' sockets, which must not pass to user code.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        cap = limits.max_open_files if hard == resource.RLIM_INFINITY else min(limits.max_open_files, hard)
        script.append(f"ulimit -n {cap} || exit 98")
    script.append("ulimit -c 0")
    # Nice and SCHED_IDLE order a kernel's processes among the other kernels. Against the web
    # server it is the kernels' shared cpu cgroup that counts (see ``KernelCgroups``): where Linux
    # groups tasks by session, nice alone let each sandbox weigh as much as the whole server.
    script.append('if command -v chrt >/dev/null 2>&1; then exec chrt --idle 0 nice -n "$0" "$@"; fi')
    script.append('exec nice -n "$0" "$@"')
    return ["/bin/sh", "-c", "; ".join(script), str(limits.nice)]


def folder_usage(folder: Path) -> Usage:
    """What the session folder holds, for the disk limit (``core.safe_files.usage``: folders opened
    without following links, walked with a list, so user code swapping a folder for a link, a FIFO
    or a very deep tree cannot send the server's walk across the host, block it or crash it)."""
    return usage(folder)


def folder_bytes(folder: Path) -> int:
    return folder_usage(folder).bytes


def disk_room(folder: Path, disk_mb: int) -> int | None:
    """Bytes the session folder may still grow by, or None when there is no disk limit. A folder
    with folders nested too deep to count has no room (see ``Usage.too_deep``)."""
    if disk_mb <= 0:
        return None
    found = folder_usage(folder)
    return 0 if found.too_deep else max(0, disk_mb * MB - found.bytes)


def set_file_size_limit(pid: int, max_bytes: int) -> bool:
    """Lower (or restore) RLIMIT_FSIZE of a running kernel; its later children inherit it.

    Setting another uid's limits needs CAP_SYS_RESOURCE, which a container may withhold even from
    root. A kernel with a uid of its own then has its soft limit set by a process of that uid
    (``setpriv`` + ``prlimit``), below the hard limit the launch set (``execution.max_file_mb``):
    it can go up again when room is made, and code that raises it itself is still held by the
    hard limit and by the folder check after each run."""
    import resource

    try:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        return True
    except PermissionError:
        pass
    except (OSError, ValueError):
        return False
    try:
        current, hard = _file_size_limits(pid)
    except (OSError, ValueError):
        return False
    soft = max_bytes if hard is None else min(max_bytes, hard)
    if current == soft:  # already so (the usual case from one run to the next): no setpriv + prlimit (~2 ms)
        return True
    uid = _uid_of(pid)
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if uid is None or uid == os.geteuid() or setpriv is None or prlimit is None:
        return False
    drop = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    try:
        done = subprocess.run([*drop, prlimit, f"--pid={pid}", f"--fsize={soft}:"], capture_output=True, timeout=10)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _file_size_limits(pid: int) -> tuple[int | None, int | None]:
    """RLIMIT_FSIZE's soft and hard limits of ``pid`` (None: unlimited), read where any process may
    read them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max file size"):
            soft, hard = line[26:].split()[:2]
            return (None if soft == "unlimited" else int(soft)), (None if hard == "unlimited" else int(hard))
    return None, None


def _uid_of(pid: int) -> int | None:
    """The real uid of ``pid`` (from its status: a process that changed uid without exec has its
    /proc folder owned by root)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def incoming_bytes(files: list[object]) -> int:
    """Total size of ``send_message``'s files (``path`` or ``content``); bad entries count 0."""
    total = 0
    for entry in files:
        if not isinstance(entry, dict):
            continue
        if entry.get("path") is not None:
            try:
                total += Path(entry["path"]).stat().st_size
            except OSError:
                continue
        elif isinstance(entry.get("content"), (bytes, bytearray, str)):
            content = entry["content"]
            total += len(content.encode("utf-8") if isinstance(content, str) else content)
    return total


def sweep_stale_cgroups(min_age_s: float = 60.0) -> int:
    """Remove empty kernel cgroups left by a server that died without cleaning up; returns how many.

    Only groups older than ``min_age_s``: a new one is empty for the moment between its creation
    and the launcher joining it.
    """
    removed = 0
    for controller in ("memory", "pids", "cpu"):
        parent = _own_cgroup(controller)
        base = parent / "weaver" if parent is not None else None
        if base is None or not base.is_dir():
            continue
        for folder in base.iterdir():
            try:
                if (
                    folder.is_dir()
                    and time.time() - folder.stat().st_ctime > min_age_s
                    and not (folder / "cgroup.procs").read_text().strip()
                ):
                    folder.rmdir()
                    removed += 1
            except OSError:
                continue
    return removed
