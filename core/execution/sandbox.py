"""Every kernel in its own bubblewrap sandbox, so a user's code reaches only that user's work.

Inside, the kernel sees a read-only system (``/usr``, a few files of ``/etc``, the Python install
and Weaver's ``core`` package), the plugins folder read-only, a private ``/tmp`` and its own
session folder, writable. It has its own PID, IPC, UTS and (unless ``execution.network``) network
namespaces, no capabilities, and talks to the server over ZMQ ``ipc`` sockets in a private 0700
folder bound into that sandbox only. Limits (cgroups, rlimits, nice) are in ``limits.py``.

As root, each kernel also runs as a host uid of its own (``kernel_users.py``), switched to inside
the sandbox right before the kernel runs. Bubblewrap itself still runs as root: run as the kernel's
uid it must reach every folder it binds by path as that uid, and a Python under ``/root`` or a
session under a 0700 folder is out of its reach. Every kernel also runs under a seccomp filter
(``syscalls.py``). Kernel processes are found on the host, and an earlier server's left-overs
swept, in ``kernel_procs.py``.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import select
import shutil
import site
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from core.errors import SandboxUnavailableError
from core.execution import syscalls
from core.execution.bwrap_probe import probe_problem
from core.execution.kernel_procs import RUNTIME_PREFIX, children
from core.execution.kernel_users import (
    KERNEL_UIDS,
    KERNEL_USER,
    UID_CAPS,
    drop_to,
    give_entries,
    give_tree,
    uid_switch_problem,
)
from core.execution.limits import DATA_FALLBACK_FACTOR, KernelCgroups, Limits, wrapper_argv

if TYPE_CHECKING:
    from core.config import ExecutionSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE_DIR = REPO_ROOT / "core"
# Inside the sandbox Weaver's runtime sits alone in a listable folder: the checkout's own folders
# are passable but not listable there (no capabilities), and Python's import system lists the
# folders on sys.path. A fixed place also works whichever checkout or install the server runs.
SANDBOX_ROOT = Path("/opt/weaver")
# The project's datasets (``execution.data_dir``) are mounted read-only here: one short path the
# prompts can name, the same whatever the app folder is, so code kept in a chat still runs after
# the app moves.
DATA_MOUNT = Path("/data")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "passwd",
    "group",
    "nsswitch.conf",
    "mime.types",
    "ssl",
    "ca-certificates",
    "hosts",
    "fonts",  # fontconfig's configuration: without it a chart's first font lookup prints an error
)
_ETC_NETWORK = ("resolv.conf", "gai.conf", "protocols", "services", "host.conf")


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox a kernel here, or None when it works (probed once)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [
        exe,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "true",
    ]
    return probe_problem(probe, "cannot create namespaces")


@functools.lru_cache(maxsize=1)
def _userns_flags() -> tuple[str, ...]:
    """Forbid user namespaces inside (bubblewrap >= 0.8), closing that kernel attack surface, if it works here."""
    flags = ("--unshare-user", "--disable-userns")
    try:
        done = subprocess.run(
            [shutil.which("bwrap") or "bwrap", *flags, "--ro-bind", "/", "/", "true"],
            capture_output=True,
            timeout=20,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return flags if done.returncode == 0 else ()


def uses_bwrap(settings: ExecutionSettings) -> bool:
    """Whether a local kernel runs in bubblewrap; ``sandbox = "bwrap"`` without a working bwrap raises.

    The policy around it (the warning, the refusal to serve others unsandboxed) is the local
    kernel backend's (``local_backend.py``); kernels elsewhere never reach this module."""
    if settings.sandbox == "none":
        return False
    problem = bwrap_problem()
    if problem is None:
        return True
    if settings.sandbox == "bwrap":
        raise SandboxUnavailableError(
            f"execution.sandbox is 'bwrap' but {problem}: {INSTALL_HINT}, or set execution.sandbox to 'auto' or 'none'."
        )
    return False


def limits_of(settings: ExecutionSettings) -> Limits:
    return Limits(
        settings.memory_mb,
        settings.max_processes,
        settings.disk_mb,
        settings.max_file_mb,
        settings.nice,
        settings.max_open_files,
    )


def confinement_problems(settings: ExecutionSettings) -> list[str]:
    """What of the uid switch and the seccomp filter cannot be had here, as sentences for operators
    (empty when kernels get both, or when they are not sandboxed at all). Only the local backend
    asks (``local_backend.py``, ``KernelBox``): kernels elsewhere never reach this module."""
    if settings.sandbox == "none" or bwrap_problem() is not None:
        return []
    problems = []
    uids = settings.kernel_uids
    if uids is not None and (why := uid_switch_problem(uids[0])) is not None:
        problems.append(f"kernels run as the server's own uid {os.geteuid()}, not one of their own, because {why}")
    if settings.seccomp and (why := syscalls.seccomp_problem()) is not None:
        problems.append(
            f"kernels run without a seccomp filter: {why}, so ptrace, mount and the like are refused only by "
            "the missing capabilities, and a kernel with a uid of its own may create user namespaces (as any "
            f"unprivileged user of this host can); to fix it, {syscalls.INSTALL_HINT}"
        )
    return problems


def check_confinement(settings: ExecutionSettings) -> None:
    """At start: with ``execution.sandbox = "bwrap"``, refuse to run without the seccomp filter the
    settings ask for; otherwise log, loudly and once, whatever of the confinement is missing."""
    if settings.sandbox == "bwrap" and settings.seccomp and syscalls.seccomp_problem() is not None:
        _seccomp_usable(settings)  # raises
    for problem in confinement_problems(settings):
        _warn_once(problem)


def _python_dirs() -> list[Path]:
    """The interpreter's install folders: what the kernel needs to import its packages."""
    dirs = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix), *map(Path, site.getsitepackages())]
    return [d.resolve() for d in dirs if d.is_dir()]


def _minimal(paths: Iterable[Path]) -> list[Path]:
    """Drop paths inside another path of the list (and anything under /usr, bound anyway)."""
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if path.is_relative_to("/usr") or any(path.is_relative_to(k) for k in kept):
            continue
        kept.append(path)
    return kept


def _hidden_ancestors(targets: Iterable[Path], mounts: set[Path]) -> list[str]:
    """``--dir`` every folder above a bind target with mode 0111: passable, but not listable."""
    args: list[str] = []
    seen: set[Path] = set()
    for target in targets:
        for parent in reversed(target.parents):
            if parent in seen or parent in mounts or len(parent.parts) <= 1:
                continue
            seen.add(parent)
            args += ["--perms", "0111", "--dir", str(parent)]
    return args


def _listable(folder: Path) -> list[str]:
    """``--dir`` ``folder`` and the folders above it with mode 0755 (bubblewrap's own are 0700, out
    of a kernel's reach when it does not run as root)."""
    return [
        arg for parent in [*reversed(folder.parents), folder][1:] for arg in ("--perms", "0755", "--dir", str(parent))
    ]


def data_mount(data_dir: Path, sandboxed: bool) -> Path:
    """Where kernels read the datasets folder: ``/data`` in the sandbox; its own path unsandboxed
    (nothing can be mounted there) or when it already lives under ``/data``."""
    real = data_dir.resolve()
    if not sandboxed or real.is_relative_to(DATA_MOUNT):
        return real
    return DATA_MOUNT


def bwrap_argv(
    cwd: Path,
    runtime_dir: Path,
    read_only: Iterable[Path],
    network: bool,
    data_dir: Path | None = None,
    *,
    uid: int | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The bubblewrap command line that runs the rest of argv as a sandboxed kernel.

    ``data_dir`` (the project's datasets) is bound read-only at ``data_mount``: code reads it and
    cannot write, rename or delete anything in it (a read-only mount, and no capability to remount).
    With ``uid``, what runs inside becomes that host uid and gid (``kernel_users.drop_to``);
    ``seccomp_fd`` holds the seccomp filter's BPF, loaded just before the command runs."""
    exe = shutil.which("bwrap") or "bwrap"
    args = [
        exe,
        # A user namespace would map only root: the kernel's own uid could not exist inside. It
        # mattered for --disable-userns; with a uid, the seccomp filter refuses new namespaces.
        *(_userns_flags() if uid is None else ()),
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *(arg for cap in UID_CAPS for arg in ("--cap-add", cap) if uid is not None),
        "--hostname",
        "weaver",
    ]
    if not network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/usr", "/usr"]
    for name in _TOP_LEVEL:
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    # Passable by a kernel with a uid of its own (bubblewrap makes the folder 0700): the few files
    # bound below are all it holds.
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC_FILES + (_ETC_NETWORK if network else ()):
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # /tmp and /dev/shm are the sandbox's own: writable by its kernel whichever uid it runs as.
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--perms", "1777"]
    args += ["--tmpfs", "/tmp"]
    data = data_dir.resolve() if data_dir is not None and data_dir.is_dir() else None
    data_at_own_path = data is not None and data_mount(data, True) == data
    extra_ro = [data] if data is not None and data_at_own_path else []
    ro = _minimal([*_python_dirs(), *(Path(p).resolve() for p in read_only), *extra_ro])
    rw = [cwd, runtime_dir]
    args += _hidden_ancestors([*ro, *rw], {Path("/tmp"), Path("/usr"), Path("/etc"), Path("/dev"), Path("/proc")})
    for path in ro:
        args += ["--ro-bind", str(path), str(path)]
    args += _listable(SANDBOX_ROOT)
    args += ["--ro-bind", str(CORE_DIR), str(SANDBOX_ROOT / "core")]
    if data is not None and not data_at_own_path:
        args += _listable(DATA_MOUNT.parent) if len(DATA_MOUNT.parts) > 2 else []
        args += ["--ro-bind", str(data), str(DATA_MOUNT)]
    for path in rw:
        args += ["--bind", str(path), str(path)]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--chdir", str(cwd), "--", *(drop_to(uid) if uid is not None else ())]


class KernelBox:
    """One kernel launch's confinement: argv prefix, environment, private folder, cgroups, uid."""

    def __init__(self, name: str, cwd: Path, settings: ExecutionSettings, read_only: Iterable[Path] = ()) -> None:
        self.sandboxed = uses_bwrap(settings)
        self.limits = limits_of(settings)
        self.cwd = cwd
        self.seccomp = self.sandboxed and settings.seccomp and _seccomp_usable(settings)
        self.uid: int | None = None
        self.runtime_dir = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))  # mode 0700
        self.pass_fds: list[int] = []  # for the launch only (the seccomp filter): closed once it started
        self.cgroups = KernelCgroups(f"{name}-{secrets.token_hex(4)}", self.limits)
        if self.cgroups.problems:
            logger.warning(
                "kernel %s runs without some cgroup limits (%s): without a memory cgroup, memory is bounded "
                "per process by RLIMIT_DATA at %dx execution.memory_mb only; without a pids cgroup, the number "
                "of processes is not bounded",
                name,
                "; ".join(self.cgroups.problems),
                DATA_FALLBACK_FACTOR,
            )
        self._kernel_pid: int | None = None
        self._pidfd: int | None = None
        self._exit_poller: select.poll | None = None
        self._exit_poll_lock = threading.Lock()
        try:
            # A restarted kernel takes its folder's uid again when it is free: nothing to re-own.
            self.uid = _kernel_uid(settings, _owner(cwd)) if self.sandboxed else None
            if self.uid is not None:
                give_tree(self.runtime_dir, self.uid)
                give_tree(cwd, self.uid)
            self.argv_prefix = wrapper_argv(
                self.limits,
                self.cgroups.procs_files,
                "memory" in self.cgroups.dirs,
                self.uid,
                [str(self.connection_file)],  # written by the launch, just before the wrapper runs
            )
            if self.sandboxed:
                seccomp_fd = None
                if self.seccomp:
                    seccomp_fd = syscalls.bpf_descriptor()
                    self.pass_fds.append(seccomp_fd)
                self.argv_prefix += bwrap_argv(
                    cwd,
                    self.runtime_dir,
                    read_only,
                    settings.network,
                    settings.data_dir,
                    uid=self.uid,
                    seccomp_fd=seccomp_fd,
                )
        except BaseException:
            self.close()
            raise

    def launched(self) -> None:
        """The kernel's process is started: the descriptor of its seccomp filter is not needed any more."""
        fds, self.pass_fds = self.pass_fds, []
        for fd in fds:
            os.close(fd)

    def claim_new_files(self) -> None:
        """Give the kernel's uid what the server put in its folder since (uploads, saved figures)."""
        if self.uid is not None:
            give_entries(self.cwd, self.uid)

    @property
    def connection_file(self) -> Path:
        return self.runtime_dir / "kernel.json"

    @property
    def fifo(self) -> Path:
        """Read by the placeholder of a forked kernel (``zygote.py``); only the kernel writes it."""
        return self.runtime_dir / "kernel.alive"

    def placeholder_argv(self) -> list[str]:
        """What bubblewrap runs when the kernel is forked in: ``cat`` of the FIFO, until the kernel exits."""
        os.mkfifo(self.fifo, 0o600)
        if self.uid is not None:
            os.chown(self.fifo, self.uid, self.uid, follow_symlinks=False)
        return ["/bin/sh", "-c", 'exec cat -- "$0" >/dev/null', str(self.fifo)]

    def adopt_kernel(self, pid: int) -> None:
        """Record the kernel forked into this box; a pidfd tells its exit apart from a reused pid."""
        self._kernel_pid = pid
        self._pidfd = os.pidfd_open(pid)
        # Asked at every liveness check; poll(), not select(): a server with many kernels has
        # descriptors past 1024.
        self._exit_poller = select.poll()
        self._exit_poller.register(self._pidfd, select.POLLIN)

    @property
    def forked(self) -> bool:
        return self._pidfd is not None

    def kernel_exited(self) -> bool:
        """Whether a forked kernel is gone (its sandbox may still be held open by a child it forked).
        Asked from any thread (a round's, a status check's): one poll object takes one caller at a
        time, a second raised "concurrent poll() invocation" and failed that user's round."""
        if self._exit_poller is None:
            return False
        with self._exit_poll_lock:
            return bool(self._exit_poller.poll(0))

    @property
    def ipc_prefix(self) -> Path:
        return self.runtime_dir / "ipc"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The kernel's environment: ``base`` plus private config folders and bounded thread pools."""
        private = Path("/tmp") if self.sandboxed else self.runtime_dir
        env = dict(base)
        env["IPYTHONDIR"] = str(private / "ipython")
        env["MPLCONFIGDIR"] = str(private / "matplotlib")
        # Caches (fontconfig's, pip's...) go to the private folder, not under HOME, the user's folder.
        env["XDG_CACHE_HOME"] = str(private / "cache")
        if self.sandboxed:
            env["PYTHONPATH"] = str(SANDBOX_ROOT)
        if self.uid is not None:
            env["USER"] = env["LOGNAME"] = KERNEL_USER
        if self.limits.max_processes > 0:  # BLAS pools start a thread per core, each counts as a task
            threads = str(max(1, min(os.cpu_count() or 1, self.limits.max_processes // 8)))
            for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS"):
                env.setdefault(key, threads)
        return env

    def kernel_pid(self, outer_pid: int | None) -> int | None:
        """The host pid of the Python kernel (inside bwrap it is the grandchild of the launched pid)."""
        if self._kernel_pid is None and outer_pid is not None:
            if not self.sandboxed:
                self._kernel_pid = outer_pid
            else:
                init = children(outer_pid)
                kernel = children(init[0]) if init else []
                self._kernel_pid = kernel[0] if kernel else None
        return self._kernel_pid

    def oom_killed(self) -> bool:
        return self.cgroups.oom_kills() > 0

    def close(self) -> None:
        """Kill whatever the kernel left running, drop its cgroups and its private folder."""
        self.launched()
        self.cgroups.remove()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self._pidfd is not None:
            self._exit_poller = None
            os.close(self._pidfd)
            self._pidfd = None
        if self.uid is not None:  # nothing runs as it any more: the cgroups were emptied above
            KERNEL_UIDS.give_back(self.uid)
            self.uid = None


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning("!!! %s", message)


def _owner(folder: Path) -> int | None:
    try:
        return os.lstat(folder).st_uid
    except OSError:
        return None


def _kernel_uid(settings: ExecutionSettings, prefer: int | None = None) -> int | None:
    """A host uid of its own for a new kernel (``prefer`` when it is in the range and free), or
    None (off, or not possible here: warned once)."""
    uids = settings.kernel_uids
    if uids is None:
        return None
    if uid_switch_problem(uids[0]) is not None:
        for problem in confinement_problems(settings):
            _warn_once(problem)
        return None
    return KERNEL_UIDS.take(*uids, prefer=prefer)


def _seccomp_usable(settings: ExecutionSettings) -> bool:
    """Whether the seccomp filter can be built; ``sandbox = "bwrap"`` refuses to go without it."""
    problem = syscalls.seccomp_problem()
    if problem is None:
        return True
    if settings.sandbox == "bwrap":
        raise SandboxUnavailableError(
            f"execution.sandbox is 'bwrap' but {problem}: {syscalls.INSTALL_HINT}, or set execution.seccomp = false."
        )
    for sentence in confinement_problems(settings):
        _warn_once(sentence)
    return False
