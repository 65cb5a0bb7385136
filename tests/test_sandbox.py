"""Each kernel in its own sandbox: from session A's code, nothing of B, the server or the machine.

Every hostile probe is harmless if the sandbox were broken: signals are 0 (an existence and
permission check), writes go to fresh names that are removed again, sizes are tiny through the
settings, fork loops are bounded and their children exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import TaskWeaverApp
from core.config import ExecutionSettings
from core.errors import SandboxUnavailableError
from core.execution import kernel_procs, kernel_users, limits, sandbox
from core.execution.kernel import KernelExecutor
from core.execution.launcher import REPO_ROOT
from core.execution.local_backend import LocalBackend
from tests.conftest import FIXTURE_APP, cgroups_of, pid_alive

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason=f"no working bubblewrap: {sandbox.bwrap_problem()}"),
]

SERVER_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-test-secret",
    "CHAINLIT_AUTH_SECRET": "chainlit-test-secret",
    "DATABASE_URL": "postgres://u:db-test-secret@h/db",
    "GITHUB_PAT": "ghp-test-secret",
    "SENTRY_DSN": "https://sentry-test-secret@sentry.io/1",
    "SSH_AUTH_SOCK": "/tmp/ssh-test-secret/agent.1",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secret/gcp-test-secret.json",
}
API_KEY = "sk-config-test-secret"


def code(source: str) -> str:
    return f"```python\n{source}\n```"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskWeaverApp]:
    """A sandboxed app whose server holds secrets in its environment and its config file."""
    app_dir = tmp_path_factory.mktemp("app")
    shutil.copytree(FIXTURE_APP, app_dir, dirs_exist_ok=True)
    (app_dir / "taskweaver_config.json").write_text(json.dumps({"llm.api_type": "offline", "llm.api_key": API_KEY}))
    (app_dir / "public").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SERVER_SECRETS.items():
            mp.setenv(name, value)
        application = TaskWeaverApp(app_dir=app_dir)
        yield application
        application.stop()


@pytest.fixture(scope="module")
def pair(app: TaskWeaverApp):
    """Session A (the attacker) and session B (the victim, with an upload and a variable)."""
    a, b = app.get_session(), app.get_session()
    rnd = b.send_message(
        code("secret_of_b = 'b-variable'"), files=[{"name": "b_data.csv", "content": b"x\nb-upload\n"}]
    )
    assert rnd.state == "finished", rnd.error
    assert a.executor.execute("1").is_success
    yield a, b
    a.stop()
    b.stop()


def run_in_a(pair, source: str) -> str:
    a, _ = pair
    res = a.executor.execute(source)
    return f"{res.stdout}{res.result}{res.error or ''}"


def assert_b_intact(pair) -> None:
    _, b = pair
    assert (b.cwd / "b_data.csv").read_bytes() == b"x\nb-upload\n"
    assert b.executor.execute("secret_of_b").result == "'b-variable'"


def test_a_cannot_read_or_overwrite_b_upload(pair) -> None:
    _, b = pair
    target = b.cwd / "b_data.csv"
    out = run_in_a(pair, f"open({str(target)!r}).read()")
    assert "FileNotFoundError" in out and "b-upload" not in out
    out = run_in_a(pair, f"open({str(target)!r}, 'w').write('overwritten')")
    assert "Error" in out
    assert_b_intact(pair)


def test_a_cannot_list_the_sessions_or_read_b_log(pair) -> None:
    a, b = pair
    sessions = a.workspace.parent
    out = run_in_a(pair, f"import os\nos.listdir({str(sessions)!r})")
    assert "PermissionError" in out and b.session_id not in out
    out = run_in_a(pair, f"open({str(b.workspace / 'rounds.jsonl')!r}).read()")
    assert "FileNotFoundError" in out and "secret_of_b" not in out
    assert_b_intact(pair)


def test_a_cannot_read_the_app_config_home_or_system_secrets(pair, app: TaskWeaverApp) -> None:
    probes = [
        app.app_dir / "taskweaver_config.json",
        Path.home() / ".ssh",
        Path("/etc/shadow"),
        REPO_ROOT / "README.md",
    ]
    for path in probes:
        out = run_in_a(
            pair,
            f"import os\nopen({str(path)!r}).read() if os.path.isfile({str(path)!r}) else os.listdir({str(path)!r})",
        )
        assert "FileNotFoundError" in out or "PermissionError" in out, (path, out)
        assert API_KEY not in out
    assert "FileNotFoundError" in run_in_a(pair, f"import os\nos.listdir({str(app.app_dir / 'public')!r})")


def test_a_cannot_see_or_signal_the_server_or_b(pair) -> None:
    _, b = pair
    server, b_kernel = os.getpid(), b.executor.kernel_pid
    assert b_kernel is not None
    out = run_in_a(pair, f"open('/proc/{server}/environ').read()")
    assert "FileNotFoundError" in out and "test-secret" not in out
    visible = run_in_a(pair, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    assert str(server) not in visible.split("[")[1] and str(b_kernel) not in visible.split("[")[1]
    for pid in (server, b_kernel, os.getppid()):
        assert "ProcessLookupError" in run_in_a(pair, f"import os\nos.kill({pid}, 0)")  # 0: lookup only
    assert pid_alive(b_kernel)
    assert_b_intact(pair)


def test_a_cannot_reach_b_kernel_channel(pair) -> None:
    _, b = pair
    km = b.executor.process.manager
    assert km is not None
    info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in km.get_connection_info().items()}
    assert info["transport"] == "ipc" and oct(Path(km.connection_file).parent.stat().st_mode & 0o777) == "0o700"
    probe = (
        "import os, queue\nfrom jupyter_client import BlockingKernelClient\n"
        f"info = {info!r}\nprint('file visible:', os.path.exists({km.connection_file!r}))\n"
        "kc = BlockingKernelClient()\nkc.load_connection_info(info)\nkc.start_channels()\n"
        "try:\n    kc.kernel_info()\n    kc.get_shell_msg(timeout=2)\n    print('CONNECTED')\n"
        "except queue.Empty:\n    print('no reply')\nfinally:\n    kc.stop_channels()"
    )
    out = run_in_a(pair, probe)
    assert "file visible: False" in out and "no reply" in out and "CONNECTED" not in out
    assert_b_intact(pair)


def test_a_cannot_write_to_the_repository_or_public(pair, app: TaskWeaverApp) -> None:
    name = f"sandbox-probe-{uuid.uuid4().hex}.txt"
    targets = [
        REPO_ROOT / "core" / name,
        REPO_ROOT / name,
        app.app_dir / "public" / name,
        app.app_dir / "plugins" / name,
    ]
    try:
        for target in targets:
            out = run_in_a(pair, f"open({str(target)!r}, 'w').write('pwned')")
            assert any(e in out for e in ("Read-only file system", "FileNotFoundError", "PermissionError")), (
                target,
                out,
            )
            assert not target.exists()
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_a_cannot_connect_to_the_server_port(pair) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0)
        port = listener.getsockname()[1]
        out = run_in_a(pair, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)")
        assert "ConnectionRefusedError" in out or "OSError" in out
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_network_setting_turns_outbound_network_on(tmp_path: Path) -> None:
    ex = KernelExecutor("net", tmp_path / "cwd", settings=ExecutionSettings(network=True))
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            res = ex.execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).close()")
            assert res.is_success, res.error
    finally:
        ex.stop()


def test_a_cannot_create_namespaces_to_escape(pair) -> None:
    out = run_in_a(
        pair,
        "import subprocess\nprint('rc', subprocess.run(['unshare', '--user', '--map-root-user', 'true']).returncode)",
    )
    assert "rc 0" not in out and "rc " in out


def test_no_server_secret_reaches_user_code(pair) -> None:
    out = run_in_a(
        pair,
        "import os\nprint(sorted(os.environ))\nprint(open('/proc/1/environ').read())\nprint(dict(os.environ))",
    )
    for name, value in SERVER_SECRETS.items():
        assert name not in out and value not in out
    assert "HOME" in out and "PATH" in out


def test_kernel_runs_at_lower_priority_than_the_server(pair) -> None:
    a, _ = pair
    assert a.executor.kernel_pid is not None
    fields = Path(f"/proc/{a.executor.kernel_pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(fields[16]) == os.getpriority(os.PRIO_PROCESS, 0) + 10  # field 19 of stat: nice
    # and SCHED_IDLE, so many kernels together cannot outweigh the web server (chrt is util-linux's)
    assert shutil.which("chrt") is None or os.sched_getscheduler(a.executor.kernel_pid) == os.SCHED_IDLE
    reported = run_in_a(pair, "from ipykernel.connect import get_connection_file\nprint(get_connection_file())")
    assert kernel_procs.kernel_host_pid(reported.strip()) == a.executor.kernel_pid  # how tests find a kernel's pid


def _cpu_group(pid: int) -> str:
    """The process's cgroup (v1) path in the cpu hierarchy."""
    return cgroups_of(pid).get("cpu", "")


def test_a_killed_kernel_dies_at_the_servers_priority_not_the_kernels(tmp_path: Path) -> None:
    """A dying process still does its exit's work in Linux (unmapping, its sandbox's namespaces);
    at the kernels' priority a crowd starved that work while it held locks others wait for."""
    ex = small_kernel(tmp_path)
    try:
        ex.execute("x = 1")
        pid = ex.kernel_pid
        assert pid is not None
        if os.sched_getscheduler(pid) != os.SCHED_IDLE or "/weaver/" not in _cpu_group(pid):
            pytest.skip("kernels here have no SCHED_IDLE or no cpu cgroup of their own")
        os.kill(pid, signal.SIGSTOP)  # it runs no code of its own from here, as after SIGKILL
        limits.hasten_exit({pid})
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)  # the server's nice
        assert _cpu_group(pid) == _cpu_group(os.getpid())  # out of the kernels' low-weight group
    finally:
        ex.stop()
    assert not pid_alive(pid)  # the stop killed it, stopped or not


# ----- limits --------------------------------------------------------------------------------


def small_kernel(tmp_path: Path, **settings: object) -> KernelExecutor:
    return KernelExecutor(f"limits-{uuid.uuid4().hex[:6]}", tmp_path / "cwd", settings=ExecutionSettings(**settings))


def test_memory_over_the_limit_restarts_the_kernel_with_a_plain_message(tmp_path: Path) -> None:
    ex = small_kernel(tmp_path, memory_mb=256)
    try:
        res = ex.execute("kept = 1\nblock = bytearray(1 << 30)")  # 1 GB against 256 MB
        assert res.kernel_died and not res.is_success
        assert "memory" in (res.error or "") and "256 MB" in (res.error or "") and "fresh kernel" in (res.error or "")
        assert ex.execute("2 + 2").result == "4"
    finally:
        ex.stop()


FORK_LOOP = """
import os
r, w = os.pipe()
children, refused = [], 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # every child waits for the loop to end, then exits
        os._exit(0)
    children.append(pid)
os.close(w)
for pid in children:
    os.waitpid(pid, 0)
print(len(children), refused)
"""


def test_a_fork_loop_fails_inside_its_own_sandbox(tmp_path: Path) -> None:
    ex = small_kernel(tmp_path, max_processes=16)
    try:
        res = ex.execute(FORK_LOOP)
        assert res.is_success, res.error
        started, refused = map(int, res.stdout.split())
        assert started < 16 and refused == 40 - started
        assert ex.execute("'still here'").result == "'still here'"
    finally:
        ex.stop()


def test_a_kernel_holds_at_most_max_open_files_and_is_told_which_setting(tmp_path: Path) -> None:
    """The server raises its own open-files limit for its kernels' sockets; user code keeps the
    kernel's own (``execution.max_open_files``), soft and hard, and cannot raise it back."""
    ex = small_kernel(tmp_path, max_open_files=64)
    try:
        res = ex.execute("import resource\nprint(*resource.getrlimit(resource.RLIMIT_NOFILE))")
        assert res.is_success and res.stdout.split() == ["64", "64"], (res.stdout, res.error)
        res = ex.execute("held = [open('many.txt', 'w') for _ in range(100)]")
        assert not res.is_success and "Too many open files" in (res.error or "")
        assert "execution.max_open_files" in (res.error or "")
        res = ex.execute("resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))")
        assert not res.is_success and "not allowed" in (res.error or ""), res.error
        assert ex.execute("'still here'").result == "'still here'"
    finally:
        ex.stop()


def test_writes_past_the_disk_limit_fail_clearly_and_uploads_are_refused(tmp_path: Path) -> None:
    ex = small_kernel(tmp_path, disk_mb=5, max_file_mb=3)
    try:
        res = ex.execute("with open('big.bin', 'wb') as f:\n    for _ in range(20):\n        f.write(b'x' * 2**20)")
        assert not res.is_success and "File too large" in (res.error or "")
        assert "execution.max_file_mb" in (res.error or "")
        assert (ex.cwd / "big.bin").stat().st_size <= 3 * 2**20
        # Many files, each under the per-file cap: the folder check stops or reports the run.
        res = ex.execute("for i in range(20):\n    open(f'part{i}.bin', 'wb').write(b'x' * 2**20)")
        assert not res.is_success and "execution.disk_mb" in (res.error or "")
        assert ex.disk_room() == 0
        res = ex.execute("with open('more.bin', 'wb') as f:\n    f.write(b'x' * 1024)")
        assert not res.is_success and "File too large" in (res.error or "")
        assert ex.execute("import os\nfor n in os.listdir('.'):\n    os.remove(n)").is_success
        assert ex.disk_room() == 5 * 2**20
    finally:
        ex.stop()


def test_an_upload_into_a_full_session_is_refused(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE_APP, tmp_path, dirs_exist_ok=True)
    application = TaskWeaverApp(app_dir=tmp_path, config={"execution.disk_mb": 1, "execution.prewarm": False})
    try:
        s = application.get_session()
        part = {"name": "part.bin", "content": b"x" * 600_000}
        assert s.send_message("", files=[part]).state == "finished"
        with pytest.raises(ValueError, match="execution.disk_mb"):
            s.send_message("", files=[{**part, "name": "more.bin"}])
        assert not (s.cwd / "more.bin").exists()
    finally:
        application.stop()


def test_a_detached_process_dies_with_its_session(app: TaskWeaverApp) -> None:
    marker = f"weaver-detached-{uuid.uuid4().hex}"
    s = app.get_session()
    found: list[int] = []
    try:
        src = (
            "import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}],"
            " start_new_session=True)\n"
            "print('started')"
        )
        assert "started" in s.send_message(code(src)).reply_text
        found = [pid for pid in _pids() if marker in _cmdline(pid)]
        assert len(found) == 1 and pid_alive(found[0])
        s.stop()
        # killed by the time stop() returns; on a loaded machine its exit may still be finishing
        deadline = time.monotonic() + 5
        while pid_alive(found[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(found[0])
    finally:
        s.stop()
        for pid in found:  # if the sandbox failed, don't leave it running
            if pid_alive(pid) and marker in _cmdline(pid):
                os.kill(pid, 9)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_a_thread_still_running_at_timeout_is_killed_with_the_kernel(tmp_path: Path) -> None:
    ex = small_kernel(tmp_path)
    try:
        ex.execute("kept = 1")
        res = ex.execute(
            "import threading, time\n"
            "threading.Thread(target=lambda: [time.sleep(0.05) for _ in iter(int, 1)], daemon=True).start()\n"
            "time.sleep(600)",
            timeout=2,
        )
        assert res.timed_out and res.kernel_died
        assert "thread" in (res.error or "") and "restarted" in (res.error or "")
        assert "NameError" in (ex.execute("kept").error or "")
    finally:
        ex.stop()


# ----- user files cannot shadow what Weaver imports --------------------------------------------


def test_session_files_do_not_shadow_weaver_or_installed_modules(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("pandas", "core", "zmq", "json", "ipykernel_launcher", "IPython"):
        (cwd / f"{name}.py").write_text(f"raise ImportError('shadowed {name}')\n")
    (cwd / "mymodule.py").write_text("VALUE = 'mine'\n")
    ex = KernelExecutor("shadow", cwd)
    try:
        ex.start()
        assert ex.plugin_errors == []
        res = ex.execute("import pandas\ndf = pandas.DataFrame({'a': [1, 2]})\ndf")
        assert res.is_success, res.error
        assert res.tables and res.tables[0].columns == ["a"]  # Weaver's runtime formatted it
        assert ex.execute("import mymodule\nmymodule.VALUE").result == "'mine'"
    finally:
        ex.stop()


# ----- modes -----------------------------------------------------------------------------------


def test_unsandboxed_mode_warns_and_still_allowlists_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test-secret")
    shutil.copytree(FIXTURE_APP, tmp_path, dirs_exist_ok=True)
    application = TaskWeaverApp(app_dir=tmp_path, config={"execution.sandbox": "none"})
    try:
        assert application.sandbox_warning and "WITHOUT a sandbox" in application.sandbox_warning
        assert "WITHOUT a sandbox" in caplog.text
        application.kernel_backend.require_sandbox("with login on")  # an explicit choice is respected
        s = application.get_session()
        reply = s.send_message(code("import os\nprint('leaked:', 'AWS_ACCESS_KEY_ID' in os.environ)")).reply_text
        assert "leaked: False" in reply
    finally:
        application.stop()


def test_without_bwrap_auto_warns_and_public_serving_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    sandbox.bwrap_problem.cache_clear()
    try:
        settings = ExecutionSettings()
        assert "not installed" in (LocalBackend(settings).sandbox_warning() or "")
        with pytest.raises(SandboxUnavailableError, match="allow_unsandboxed"):
            LocalBackend(settings).require_sandbox("with login on")
        LocalBackend(ExecutionSettings(allow_unsandboxed=True)).require_sandbox("with login on")
        with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
            TaskWeaverApp(app_dir=tmp_path, config={"execution.sandbox": "bwrap"})
    finally:
        monkeypatch.undo()
        sandbox.bwrap_problem.cache_clear()
    assert sandbox.bwrap_problem() is None


# ----- the kernel's own uid and its seccomp filter ---------------------------------------------

KERNEL_UIDS = ExecutionSettings().kernel_uids
assert KERNEL_UIDS is not None
needs_uid_switch = pytest.mark.skipif(
    kernel_users.uid_switch_problem(KERNEL_UIDS[0]) is not None,
    reason=f"kernels cannot get a uid of their own here: {kernel_users.uid_switch_problem(KERNEL_UIDS[0])}",
)


def proc_status(pid: int) -> dict[str, list[str]]:
    """``/proc/<pid>/status`` as the host sees it: each field's words."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, value in (line.split(":", 1) for line in lines)}


def outcome(ex: KernelExecutor, source: str) -> str:
    res = ex.execute(source)
    return f"{res.stdout}{res.result}{res.error or ''}"


@needs_uid_switch
@pytest.mark.parametrize("forked", [True, False], ids=["forked", "unforked"])
def test_a_kernel_runs_as_a_uid_of_its_own_under_the_seccomp_filter(tmp_path: Path, forked: bool) -> None:
    ex = small_kernel(tmp_path, fork_kernels=forked)
    try:
        inside = outcome(ex, "import os, getpass\nprint(os.getuid(), os.getgid(), os.getgroups(), getpass.getuser())")
        assert ex.process.box is not None and ex.process.box.forked == forked
        pid = ex.kernel_pid
        assert pid is not None
        status = proc_status(pid)
        uid = int(status["Uid"][0])
        assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(uid)] * 4  # real, effective, saved, fs
        assert KERNEL_UIDS[0] <= uid <= KERNEL_UIDS[1]
        assert status["Groups"] == [] and status["CapEff"] == ["0000000000000000"]
        assert status["Seccomp"] == ["2"] and status["NoNewPrivs"] == ["1"]
        assert f"{uid} {uid} [] kernel" in inside
        # what it writes is its own, and so is its folder
        assert "written" in outcome(ex, "open('mine.txt', 'w').write('x')\nprint('written')")
        assert (tmp_path / "cwd" / "mine.txt").stat().st_uid == uid
        assert (tmp_path / "cwd").stat().st_uid == uid
    finally:
        ex.stop()


@needs_uid_switch
def test_two_kernels_have_different_uids_and_a_later_one_takes_over_the_folder(tmp_path: Path) -> None:
    first, second = small_kernel(tmp_path / "a"), small_kernel(tmp_path / "b")
    try:
        uid_a, uid_b = (int(outcome(ex, "import os\nprint(os.getuid())").strip()) for ex in (first, second))
        assert uid_a != uid_b and 0 not in (uid_a, uid_b)
        outcome(
            first,
            "import os\nos.makedirs('sub')\nopen('sub/f.txt', 'w').write('x')\nos.symlink('/etc/hostname', 'link')",
        )
    finally:
        first.stop()
        second.stop()
    # a kernel started again on the same folder while its uid is taken (held here) gets another:
    # everything in it becomes its own, the link itself and not what it points to
    hostname_owner = Path("/etc/hostname").stat().st_uid
    kernel_users.KERNEL_UIDS.take(uid_a, uid_a)
    again = small_kernel(tmp_path / "a")
    try:
        try:
            uid = int(outcome(again, "import os\nprint(os.getuid())").strip())
        finally:
            kernel_users.KERNEL_UIDS.give_back(uid_a)
        assert uid != uid_a
        assert "appended" in outcome(again, "open('sub/f.txt', 'a').write('y')\nprint('appended')")
        assert (tmp_path / "a" / "cwd" / "sub" / "f.txt").stat().st_uid == uid
        assert (tmp_path / "a" / "cwd" / "link").lstat().st_uid == uid
        assert Path("/etc/hostname").stat().st_uid == hostname_owner
    finally:
        again.stop()


@needs_uid_switch
def test_a_kernel_started_again_takes_its_folders_uid_when_it_is_free(tmp_path: Path) -> None:
    """No re-owning of the whole folder at every restart: the folder's uid is taken again."""
    first = small_kernel(tmp_path)
    try:
        uid = int(outcome(first, "import os\nprint(os.getuid())").strip())
    finally:
        first.stop()
    again = small_kernel(tmp_path)
    try:
        assert int(outcome(again, "import os\nprint(os.getuid())").strip()) == uid
    finally:
        again.stop()


@needs_uid_switch
def test_a_file_only_root_may_read_is_out_of_a_kernels_reach(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "public.csv").write_text("a\n1\n")
    canary = data / "canary.txt"
    canary.write_text("root-only-canary")
    canary.chmod(0o600)  # owned by root: a kernel running as root (even without capabilities) reads it
    ex = small_kernel(tmp_path, data_dir=data)
    try:
        assert "a\n1" in outcome(ex, "print(open('/data/public.csv').read())")
        out = outcome(ex, "print(open('/data/canary.txt').read())")
        assert "PermissionError" in out and "root-only-canary" not in out
        out = outcome(ex, "import os\nprint(os.listdir('/root'))")
        assert "PermissionError" in out or "FileNotFoundError" in out
    finally:
        ex.stop()


# Each probe runs in a forked child, so a filter that failed to load changes nothing in the kernel
# (a child traced by its parent, in a namespace of its own, or without address randomisation exits).
SYSCALL_PROBES = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def probe(name, call):
    pid = os.fork()
    if pid == 0:
        result = call()
        os._exit(0 if result >= 0 else ctypes.get_errno())
    print(name, errno.errorcode.get(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), 'allowed'))
probe('ptrace', lambda: libc.ptrace(0, 0, 0, 0))  # PTRACE_TRACEME
probe('mount', lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
probe('unshare', lambda: libc.unshare(0x10000000))  # CLONE_NEWUSER
probe('keyctl', lambda: libc.syscall(250, 0, -3, 0))  # KEYCTL_GET_KEYRING_ID of the session keyring
probe('personality', lambda: libc.personality(0x0040000))  # ADDR_NO_RANDOMIZE
probe('clone3', lambda: libc.syscall(435, None, 0))
"""


THREADS_AND_CHILDREN = """
import subprocess, threading
ran = []
threads = [threading.Thread(target=ran.append, args=(i,)) for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print('threads ran', len(ran))
print('child exit', subprocess.run(['true']).returncode)
"""


@needs_uid_switch
@pytest.mark.parametrize("forked", [True, False], ids=["forked", "unforked"])
def test_system_calls_a_data_kernel_never_needs_are_refused(tmp_path: Path, forked: bool) -> None:
    ex = small_kernel(tmp_path, fork_kernels=forked)
    try:
        out = outcome(ex, SYSCALL_PROBES)
        for name in ("ptrace", "mount", "unshare", "keyctl", "personality"):
            assert f"{name} EPERM" in out, out
        assert "clone3 ENOSYS" in out  # so glibc falls back to clone, whose flags the filter reads
        # threads and child processes still start (clone without namespace flags)
        out = outcome(ex, THREADS_AND_CHILDREN)
        assert "threads ran 3" in out and "child exit 0" in out
    finally:
        ex.stop()


@needs_uid_switch
def test_with_the_uid_switch_and_seccomp_off_a_kernel_runs_as_before(tmp_path: Path) -> None:
    ex = small_kernel(tmp_path, kernel_uid_range="", seccomp=False)
    try:
        assert outcome(ex, "import os\nprint(os.getuid())").strip() == str(os.geteuid())
        assert ex.kernel_pid is not None and proc_status(ex.kernel_pid)["Seccomp"] == ["0"]
    finally:
        ex.stop()


@needs_uid_switch
def test_pandas_charts_plugins_and_uploads_work_as_the_kernels_uid(pair) -> None:
    a, _ = pair
    out = run_in_a(
        pair,
        "import os, pandas as pd, matplotlib.pyplot as plt\n"
        "df = pd.DataFrame({'k': [1, 2, 1], 'v': [1.0, 2.0, 3.0]})\n"
        "print(df.groupby('k').v.sum().to_dict())\n"
        "plt.plot(df.v)\nplt.savefig('chart.png')\nprint('uid', os.getuid())",
    )
    assert "{1: 4.0, 2: 2.0}" in out
    uid = int(out.split("uid ")[1].split()[0])
    assert uid != 0 and (a.cwd / "chart.png").stat().st_uid == uid
    rnd = a.send_message(code("print(whoami('Hi'))"), files=[{"name": "upload.csv", "content": b"x\n1\n"}])
    assert "Hi, " in rnd.reply_text
    # an upload the server wrote is the kernel's to change
    assert "changed" in run_in_a(pair, "open('upload.csv', 'a').write('2\\n')\nprint('changed')")
    assert (a.cwd / "upload.csv").stat().st_uid == uid


def test_the_uid_range_setting_is_checked() -> None:
    assert ExecutionSettings(kernel_uid_range=" 300000-300009 ").kernel_uids == (300000, 300009)
    assert ExecutionSettings(kernel_uid_range="").kernel_uids is None
    for bad in ("0-10", "10", "20-10", "a-b", "1-4294967295"):
        with pytest.raises(ValueError):
            ExecutionSettings(kernel_uid_range=bad)


def test_uids_are_handed_out_once_until_given_back() -> None:
    uids = kernel_users.KernelUids()
    taken = [uids.take(500, 502) for _ in range(3)]
    assert sorted(taken) == [500, 501, 502]
    with pytest.raises(SandboxUnavailableError, match="kernel_uid_range"):
        uids.take(500, 502)
    uids.give_back(501)
    assert uids.take(500, 502) == 501


def test_without_libseccomp_bwrap_mode_refuses_to_start_and_auto_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from core.execution import syscalls

    def missing() -> None:
        raise RuntimeError("Unable to find libseccomp")

    monkeypatch.setattr(syscalls, "_library", missing)
    syscalls.seccomp_problem.cache_clear()
    sandbox._warn_once.cache_clear()
    try:
        with pytest.raises(SandboxUnavailableError, match="libseccomp"):
            sandbox.check_confinement(ExecutionSettings(sandbox="bwrap"))
        sandbox.check_confinement(ExecutionSettings(sandbox="bwrap", seccomp=False))
        sandbox.check_confinement(ExecutionSettings())
        assert "without a seccomp filter" in caplog.text and "libseccomp" in caplog.text
    finally:
        monkeypatch.undo()
        syscalls.seccomp_problem.cache_clear()
        sandbox._warn_once.cache_clear()
    assert syscalls.seccomp_problem() is None


def test_weaver_ui_as_root_with_a_login_for_others_says_to_run_it_as_a_user(tmp_path: Path) -> None:
    from ui.cli import root_warning, server_environment

    for mode in ("password", "header", "oauth"):
        warning = root_warning({"WEAVER_UI_AUTH": mode}, euid=0)
        assert warning is not None and "runs as root" in warning and "deploy/weaver.service" in warning
    # A proxy's user header alone means the header login, as the server reads it.
    assert root_warning({"WEAVER_UI_USER_HEADER": "X-Forwarded-User"}, euid=0) is not None
    # The login named in the server's .env counts as much as one in the shell's environment.
    (tmp_path / ".env").write_text("WEAVER_UI_AUTH=password\n")
    assert root_warning(server_environment({}, tmp_path), euid=0) is not None
    assert root_warning({"WEAVER_UI_AUTH": "password"}, euid=1000) is None  # an ordinary user: nothing to say
    assert root_warning({"WEAVER_UI_AUTH": "local"}, euid=0) is None and root_warning({}, euid=0) is None


def test_without_a_uid_switch_kernels_keep_the_servers_uid_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ExecutionSettings(kernel_uid_range="300000-300001")
    monkeypatch.setenv("PATH", str(tmp_path))  # no setpriv to be found
    sandbox._warn_once.cache_clear()
    try:
        assert sandbox._kernel_uid(settings) is None
        sandbox.check_confinement(settings)
        assert caplog.text.count("not one of their own") == 1 and "setpriv" in caplog.text
    finally:
        monkeypatch.undo()
        kernel_users.uid_switch_problem.cache_clear()
        sandbox._warn_once.cache_clear()


def test_a_chart_prints_no_fontconfig_error_and_leaves_no_cache_in_the_chat_folder(app: TaskWeaverApp) -> None:
    """Fonts' configuration is there, read-only; fontconfig's cache goes to the sandbox's own /tmp."""
    s = app.get_session()
    try:
        out = run_in_a(
            (s, None),
            "import matplotlib.pyplot as plt, os\nplt.plot([1, 2, 3])\nplt.title('sales')\nplt.savefig('chart.png')\n"
            "print(os.environ['XDG_CACHE_HOME'], open('/etc/fonts/fonts.conf').read(5))",
        )
        assert "Fontconfig" not in out and "/tmp/cache <?xml" in out, out
        names = [p.relative_to(s.cwd).as_posix() for p in s.cwd.rglob("*")]
        assert "chart.png" in names and not any(name.startswith(".cache") for name in names), names
        assert "Fontconfig" not in (s.cwd.parent / "kernel.log").read_text(errors="replace")
    finally:
        s.stop()


NO_CHILD_AFTER_STOP = r"""
import json, os, sys
from pathlib import Path
from core import TaskWeaverApp

def children():
    found = set()
    for task in Path("/proc/self/task").iterdir():
        found.update((task / "children").read_text().split())
    return sorted(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in found)

config = {"llm.api_type": "offline", "execution.pool_size": 0, "execution.fork_kernels": True}
first, second = TaskWeaverApp(app_dir=sys.argv[1], config=config), TaskWeaverApp(app_dir=sys.argv[2], config=config)
for app in (first, second):
    assert app.get_session().executor.execute("1 + 1").result == "2"
first.stop()
after_first = children()
second.stop()
print(json.dumps({"after_first": after_first, "after_last": children()}))
"""


def test_no_child_process_remains_after_the_last_app_stops(tmp_path: Path) -> None:
    """The kernel fork server serves every app of a process; it ends with the last one's ``stop``."""
    done = subprocess_run_python(NO_CHILD_AFTER_STOP, str(tmp_path / "one"), str(tmp_path / "two"))
    seen = json.loads(done.splitlines()[-1])
    # the second app's kernel (in its sandbox) and the fork server, still serving the second app
    assert any("core.execution.zygote" in cmd for cmd in seen["after_first"]), seen
    assert any("bwrap" in cmd for cmd in seen["after_first"]), seen
    assert seen["after_last"] == []


def subprocess_run_python(source: str, *args: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
