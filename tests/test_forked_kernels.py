"""Kernels forked from the pre-imported fork server: confined exactly like a kernel bubblewrap starts.

Each test compares what the host sees of a forked kernel with what it sees of the placeholder that
bubblewrap started in the same sandbox, so a confinement step the fork server missed shows up as a
difference. Hostile probes stay harmless: signals are 0, writes go to the test's own temp folder.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import ExecutionSettings
from core.execution import kernel_procs, kernel_users, sandbox
from core.execution.kernel_forks import FORK_SERVER, ForkServerError, KernelForkServer
from core.execution.kernel_process import KernelProcess
from core.execution.launcher import REPO_ROOT

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason=f"no working bubblewrap: {sandbox.bwrap_problem()}"),
]


def _launch(tmp_path: Path, name: str = "s") -> KernelProcess:
    cwd = tmp_path / name / "work"
    kernel = KernelProcess(name, cwd, ExecutionSettings(), {"PLUGIN_EXAMPLE": "x"}, 30, [])
    kernel.launch()
    return kernel


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[KernelProcess]:
    kp = _launch(tmp_path)
    yield kp
    kp.teardown(graceful=False)


def run(kp: KernelProcess, source: str) -> str:
    assert kp.client is not None
    out: list[str] = []

    def keep(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    msg_id = kp.client.execute(source)
    while True:
        msg = kp.client.get_iopub_msg(timeout=20)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)
        keep(msg)


def placeholder_of(kp: KernelProcess) -> int:
    assert kp.pid is not None
    (init,) = kernel_procs.children(kp.pid)
    return min(kernel_procs.children(init))  # the placeholder was started before the kernel was forked in


def status(pid: int, *fields: str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in lines) if k in fields}


def test_a_sandboxed_kernel_is_forked_and_confined_like_its_placeholder(kernel: KernelProcess) -> None:
    pid, placeholder = kernel.kernel_pid, placeholder_of(kernel)
    assert pid is not None and pid != placeholder
    assert b"core.execution.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()
    own_uid = kernel.box is not None and kernel.box.uid is not None
    for ns in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{placeholder}/ns/{ns}"), ns
        if ns != "user" or not own_uid:  # a kernel with a uid of its own has no user namespace
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    confinement = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid", "Gid")
    assert status(pid, *confinement) == status(placeholder, *confinement)
    assert status(pid, "CapBnd", "NoNewPrivs") == {"CapBnd": "0000000000000000", "NoNewPrivs": "1"}
    assert Path(f"/proc/{pid}/cgroup").read_text() == Path(f"/proc/{placeholder}/cgroup").read_text()
    assert Path(f"/proc/{pid}/limits").read_text() == Path(f"/proc/{placeholder}/limits").read_text()
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, placeholder)
    assert os.sched_getscheduler(pid) == os.sched_getscheduler(placeholder)
    root, its_root = os.stat(f"/proc/{pid}/root/"), os.stat(f"/proc/{placeholder}/root/")
    assert (root.st_dev, root.st_ino) == (its_root.st_dev, its_root.st_ino)
    # no descriptor leads out of the sandbox: no folder (the fork server's view of the host's /proc)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            assert not stat.S_ISDIR(os.stat(f"/proc/{pid}/fd/{fd}").st_mode), os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
    # adopted by the sandbox's own init, which reaps it, not by the host's pid 1
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent == kernel_procs.children(kernel.pid)[0]


@pytest.mark.skipif(
    kernel_users.uid_switch_problem(200000) is not None,
    reason=f"no uid switch here: {kernel_users.uid_switch_problem(200000)}",
)
def test_a_forked_kernel_runs_as_its_own_uid_under_the_seccomp_filter(kernel: KernelProcess) -> None:
    pid, placeholder = kernel.kernel_pid, placeholder_of(kernel)
    assert pid is not None and kernel.box is not None and kernel.box.forked
    uid = kernel.box.uid
    assert uid is not None and uid != 0
    both = status(pid, "Uid", "Gid", "Groups", "Seccomp", "CapEff", "CapPrm")
    assert both == status(placeholder, "Uid", "Gid", "Groups", "Seccomp", "CapEff", "CapPrm")
    assert both["Uid"].split() == [str(uid)] * 4 and both["Gid"].split() == [str(uid)] * 4
    assert both["Groups"] == "" and both["Seccomp"] == "2" and both["CapPrm"] == "0000000000000000"
    assert run(kernel, "import os\nprint(os.getuid(), os.getgid(), os.environ['USER'])").split() == [
        str(uid),
        str(uid),
        "kernel",
    ]
    # the kernel's folders are its own: the private one (sockets, connection file) and the session's
    assert os.stat(kernel.box.runtime_dir).st_uid == uid and os.stat(kernel.box.connection_file).st_uid == uid
    assert os.stat(kernel.cwd).st_uid == uid


def test_a_forked_kernel_sees_only_its_sandbox_and_its_own_environment(kernel: KernelProcess, tmp_path: Path) -> None:
    seen = run(
        kernel,
        "import os, sys, core\n"
        "print(os.getcwd()); print(core.__file__); print(sorted(os.environ))\n"
        f"print(os.path.exists({str(REPO_ROOT)!r}), len([p for p in os.listdir('/proc') if p.isdigit()]) < 6,"
        " os.getsid(0) == os.getpid())",
    )
    lines = seen.splitlines()
    assert lines[0] == str(tmp_path / "s" / "work")
    assert lines[1] == "/opt/weaver/core/__init__.py"  # Weaver's runtime comes from inside the sandbox
    assert "'PLUGIN_EXAMPLE'" in lines[2] and "'WEAVER_SESSION_ID'" in lines[2]
    assert lines[3] == "False True True"  # no checkout, a PID namespace of a few processes, its own session


def secrets_in_memory(pid: int, secret: bytes) -> int:
    """How often ``secret`` is in the writable memory of process ``pid``."""
    hits = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith("rw"):
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    hits += mem.read(end - start).count(secret)
                except OSError:
                    continue
    return hits


def test_the_fork_server_never_holds_what_a_kernel_was_given(tmp_path: Path) -> None:
    """Every kernel is forked from the fork server's memory: one kernel's environment kept there
    would be readable by every later kernel."""
    secret = uuid.uuid4().hex
    settings = ExecutionSettings()
    first = KernelProcess("first", tmp_path / "first" / "work", settings, {"PLUGIN_TOKEN": secret}, 30, [])
    first.launch()
    try:
        assert run(first, "import os; print(os.environ['PLUGIN_TOKEN'])").strip() == secret
        assert FORK_SERVER._run is not None
        assert secrets_in_memory(FORK_SERVER._run.proc.pid, secret.encode()) == 0
    finally:
        first.teardown(graceful=False)


def test_when_the_forked_kernel_dies_its_sandbox_ends_and_the_server_knows(kernel: KernelProcess) -> None:
    pid, proc = kernel.kernel_pid, kernel.proc
    assert pid is not None and proc is not None and kernel.alive()
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)  # the placeholder read end-of-file, bubblewrap took the sandbox down
    assert not kernel.alive()


def test_many_threads_may_ask_at_once_whether_a_forked_kernel_lives(kernel: KernelProcess) -> None:
    """A round's thread and a status check ask at the same moment under a crowd: the shared poll
    object raised "concurrent poll() invocation" and that user's round failed inside Weaver."""
    failures: list[BaseException] = []
    answers: set[bool] = set()

    def ask() -> None:
        try:
            for _ in range(3000):
                answers.add(kernel.alive())
        except BaseException as exc:  # noqa: BLE001 - what a round's thread would have raised
            failures.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == [], failures[:3]
    assert answers == {True}


def test_a_child_the_kernel_forked_does_not_keep_a_dead_kernel_alive(kernel: KernelProcess) -> None:
    run(kernel, "import os, time\nif os.fork() == 0:\n    time.sleep(60); os._exit(0)")
    pid = kernel.kernel_pid
    assert pid is not None
    exited = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([exited], [], [], 10)[0], "the kernel did not die"
    finally:
        os.close(exited)
    assert kernel.proc is not None and kernel.proc.poll() is None  # the child still holds the sandbox open
    assert not kernel.alive()


def test_kernels_and_the_fork_server_take_the_cpu_as_one_process_at_the_kernels_nice(kernel: KernelProcess) -> None:
    """Every process of a kernel, one that made itself a new session too, is in the kernel's cpu
    group inside the kernels' shared group, which weighs as one process at ``execution.nice``
    (10: 110 against 1024), and so is the fork server. A session of its own (autogroup) would
    otherwise weigh as much as the whole web server."""
    assert kernel.box is not None
    cpu, memory = kernel.box.cgroups.dirs["cpu"], kernel.box.cgroups.dirs["memory"]
    assert ExecutionSettings().nice == 10 and (cpu.parent / "cpu.shares").read_text().strip() == "110"
    idle = cpu.parent / "cpu.idle"
    assert not idle.exists() or idle.read_text().strip() == "0"
    run(kernel, "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)")

    def procs(folder: Path) -> set[int]:
        return {int(p) for p in (folder / "cgroup.procs").read_text().split()}

    assert kernel.kernel_pid in procs(cpu)
    assert procs(cpu) == procs(memory) and len(procs(cpu)) >= 2  # the kernel and the new session's sleep
    assert FORK_SERVER._run is not None and FORK_SERVER._run.proc.pid in procs(cpu.parent)


def test_a_killed_fork_server_is_started_again(tmp_path: Path) -> None:
    first = _launch(tmp_path, "a")
    first.teardown(graceful=False)
    assert FORK_SERVER._run is not None
    proc = FORK_SERVER._run.proc
    assert proc.poll() is None
    proc.kill()
    proc.wait(timeout=10)
    second = _launch(tmp_path, "b")
    try:
        assert b"core.execution.zygote" in Path(f"/proc/{second.kernel_pid}/cmdline").read_bytes()
        assert FORK_SERVER._run is not None and FORK_SERVER._run.proc is not proc
        assert run(second, "print(6 * 7)").strip() == "42"
    finally:
        second.teardown(graceful=False)


def test_the_fork_server_refuses_a_target_that_is_not_a_sandbox(tmp_path: Path) -> None:
    """A placeholder outside any namespace (here two plain shells) gets an error, never a kernel."""
    fifo = tmp_path / "kernel.alive"
    os.mkfifo(fifo, 0o600)
    middle = tmp_path / "middle.sh"
    middle.write_text('cat -- "$1" >/dev/null\n:\n')
    outer = subprocess.Popen(["/bin/sh", "-c", 'sh "$0" "$1"; :', str(middle), str(fifo)])
    server = KernelForkServer()
    try:
        with pytest.raises(ForkServerError, match="not in a sandbox of its own"):
            server.fork(
                outer_pid=outer.pid,
                fifo=fifo,
                connection_file=tmp_path / "kernel.json",
                env={},
                cwd=tmp_path,
                log=tmp_path / "kernel.log",
                cgroups=[],
                timeout=10,
            )
        assert not (tmp_path / "fork.json").exists()  # the helper read the request and removed it
    finally:
        server.close()
        try:  # a placeholder still reading gets end-of-file and exits (the helper's write end ended it already)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader left
        outer.wait(timeout=10)


def test_liveness_works_when_the_server_holds_more_than_1024_descriptors(tmp_path: Path) -> None:
    """A server with a hundred kernels holds well over 1024 descriptors (select() cannot watch those)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        kp = _launch(tmp_path)
        try:
            assert kp.alive() and run(kp, "print(6 * 7)").strip() == "42"
            assert kp.kernel_pid is not None
            os.kill(kp.kernel_pid, signal.SIGKILL)
            assert kp.proc is not None
            kp.proc.wait(timeout=10)
            assert not kp.alive()
        finally:
            kp.teardown(graceful=False)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
