"""Kernels on a real Jupyter kernel gateway: the same rounds, files following the kernel, refusals.

One ``jupyter-kernel-gateway`` process for the module (tests/gateway_server.py), on 127.0.0.1
with a token; every kernel here is its child, never this process's.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from core import TaskWeaverApp
from core.errors import GatewayAuthError, GatewayUnavailable
from core.events import PostEventType, SessionEventHandler, TaskWeaverEvent
from core.memory import AttachmentType
from core.session import Session
from tests.conftest import FIXTURE_APP
from tests.gateway_server import KERNEL_NAME, Gateway, free_port, start_gateway

pytestmark = [pytest.mark.gateway, pytest.mark.timeout(180)]
PLUGIN_FIXTURES = Path(__file__).parent / "plugin_fixtures"


def code(source: str) -> str:
    return f"Please run:\n```python\n{source}\n```"


def gateway_config(gw: Gateway, **more: object) -> dict[str, object]:
    return {
        "execution.gateway_url": gw.url,
        "execution.gateway_token": gw.token,
        "execution.gateway_kernel_name": KERNEL_NAME,
        "execution.pool_size": 0,
        "execution.max_file_mb": 1,
        **more,
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def gw_app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("gw-app")
    shutil.copytree(FIXTURE_APP, target, dirs_exist_ok=True)
    for name in ("save_table.py", "save_table.yaml"):  # a plugin that writes an artifact
        shutil.copy(PLUGIN_FIXTURES / name, target / "plugins" / name)
    return target


@pytest.fixture(scope="module")
def gw_app(gateway: Gateway, gw_app_dir: Path) -> Iterator[TaskWeaverApp]:
    application = TaskWeaverApp(app_dir=gw_app_dir, config=gateway_config(gateway))
    yield application
    application.stop()


@pytest.fixture(scope="module")
def session(gw_app: TaskWeaverApp) -> Iterator[Session]:
    s = gw_app.get_session()
    s.update_session_var({"user_name": "alice"})
    yield s
    s.stop()


def remote_folder(gw: Gateway, s: Session) -> Path:
    return gw.root / f"weaver-{s.session_id}"


class Outputs(SessionEventHandler):
    """The texts of the events a round streams."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        self.texts.append(f"{event.msg} {event.extra}")


def test_code_runs_in_a_kernel_the_gateway_started_and_its_output_streams(gateway: Gateway, session: Session) -> None:
    seen = Outputs()
    rnd = session.send_message(code("import os\nprint('pids', os.getpid(), os.getppid())"), event_handler=seen)
    assert rnd.state == "finished"
    pid, parent = (int(w) for w in rnd.reply_text.split("pids", 1)[1].split()[:2])
    assert parent == gateway.pid != os.getpid()
    assert session.executor.pid == pid and session.executor.kernel_pid is None
    assert any(f"pids {pid} {parent}" in text for text in seen.texts)  # came through the events path
    assert any(k["id"] == session.executor.process.kernel_id for k in gateway.kernels())  # type: ignore[attr-defined]


def test_what_a_remote_cell_prints_arrives_while_it_runs(gateway: Gateway, session: Session) -> None:
    """Live output comes through the gateway's websocket too: the cell waits for a file this test
    writes only once its first line has arrived."""
    folder = remote_folder(gateway, session)
    printed: list[str] = []

    class OpenGate(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            if event.t == PostEventType.post_execution_output:
                printed.append(event.msg)
                if "tick 1" in event.msg:
                    (folder / "gate").touch()

    source = (
        "import os, time\nprint('tick', 1 + 0, flush=True)\ndeadline = time.monotonic() + 3\n"
        "while not os.path.exists('gate') and time.monotonic() < deadline:\n    time.sleep(0.02)\n"
        "print('gate seen' if os.path.exists('gate') else 'no gate')"
    )
    rnd = session.send_message(code(source), event_handler=OpenGate())
    assert rnd.state == "finished", rnd.error
    assert "gate seen" in rnd.reply_text
    assert printed[0] == "tick 1\n" and "".join(printed) == "tick 1\ngate seen\n"


def test_an_uploaded_csv_is_read_by_the_remote_kernel(gateway: Gateway, session: Session) -> None:
    table = "region,revenue\nEMEA,10\nAPAC,32\n"
    rnd = session.send_message(
        code("import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint('total', df['revenue'].sum())\ndf.describe()"),
        files=[{"name": "sales.csv", "content": table}],
    )
    assert "total 42" in rnd.reply_text
    assert "mean" in rnd.reply_text  # describe() came back as a table
    assert (remote_folder(gateway, session) / "sales.csv").read_text() == table


def test_a_saved_chart_comes_back_with_identical_bytes(gateway: Gateway, session: Session) -> None:
    rnd = session.send_message(
        code(
            "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
            "plt.plot([1, 3, 2]); plt.savefig('chart.png'); plt.close()\n"
            "import os; os.makedirs('out', exist_ok=True); open('out/note.txt', 'w').write('made remotely')"
        )
    )
    assert rnd.state == "finished"
    local = session.cwd / "chart.png"
    assert local.read_bytes() == (remote_folder(gateway, session) / "chart.png").read_bytes()
    assert local.read_bytes().startswith(b"\x89PNG")
    assert (session.cwd / "out" / "note.txt").read_text() == "made remotely"
    assert "chart.png" in [f.path for f in session.files().entries]  # what the Files panel lists


def test_the_servers_kernel_variables_go_with_each_start(
    gw_app: TaskWeaverApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KERNEL_* settings of the web tier reach the gateway (Enterprise Gateway picks a kernel's
    container image from KERNEL_IMAGE); other server variables stay behind."""
    monkeypatch.setenv("KERNEL_IMAGE", "registry.example/weaver-kernel:1")
    monkeypatch.setenv("WEAVER_SERVER_ONLY", "secret")
    s = gw_app.get_session()
    try:
        probe = "import os\nprint('seen', os.environ.get('KERNEL_IMAGE'), os.environ.get('WEAVER_SERVER_ONLY'))"
        assert "seen registry.example/weaver-kernel:1 None" in s.send_message(code(probe)).reply_text
    finally:
        s.stop()


def test_a_plugin_runs_remotely_and_sees_the_session_variable(session: Session) -> None:
    assert "Hi, alice! (from the config)" in session.send_message(code("print(whoami('Hi'))")).reply_text


def test_a_plugin_artifact_comes_back_and_is_listed(gateway: Gateway, session: Session) -> None:
    rnd = session.send_message(code("df, note = save_table(3)\nprint(note)"))
    assert "saved 3 rows" in rnd.reply_text
    paths = [p for p in rnd.post_list if p.send_from == "CodeInterpreter"][0].first(AttachmentType.artifact_paths)
    assert paths and Path(paths[0]).parent == session.cwd
    assert Path(paths[0]).read_bytes() == (remote_folder(gateway, session) / Path(paths[0]).name).read_bytes()
    assert Path(paths[0]).read_text().startswith("month,sales")


def test_stop_interrupts_a_busy_loop_promptly_and_state_survives(session: Session) -> None:
    session.send_message(code("kept = 41"))
    running = threading.Event()

    class WhenRunning(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            if event.t == PostEventType.post_status_update and event.msg == "executing code":
                running.set()

    cancelled_at: list[float] = []

    def cancel() -> None:
        assert running.wait(30)
        cancelled_at.append(time.monotonic())
        session.cancel()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    rnd = session.send_message(code("while True:\n    pass"), event_handler=WhenRunning())
    ended = time.monotonic()
    canceller.join()
    assert rnd.state == "cancelled"
    assert ended - cancelled_at[0] < 4.0  # past the interrupt grace (5 s) the kernel would be replaced
    assert "42" in session.send_message(code("print(kept + 1)")).reply_text


def test_a_timeout_interrupts_and_state_survives(session: Session) -> None:
    session.send_message(code("kept = 41"))
    rnd = session.send_message(code("while True:\n    pass"))
    assert "interrupted" in rnd.reply_text
    assert rnd.post_list[2].first("execution_status") == "timeout"  # type: ignore[arg-type]
    assert "42" in session.send_message(code("print(kept + 1)")).reply_text


def test_a_dead_kernel_is_replaced_and_the_next_round_works(gateway: Gateway, session: Session) -> None:
    session.send_message(code("print('uploaded')"), files=[{"name": "before.csv", "content": "n\n40\n2\n"}])
    old_kernel = session.executor.process.kernel_id  # type: ignore[attr-defined]
    rnd = session.send_message(code("import os\nos._exit(1)"))
    assert "kernel died" in rnd.reply_text.lower() and "lost" in rnd.reply_text
    # Files follow the new kernel too: the upload is sent again (its old copy is gone first here,
    # as it would be with a new container per kernel).
    (remote_folder(gateway, session) / "before.csv").unlink()
    assert "back" in session.send_message(code("print('back')")).reply_text
    ids = [k["id"] for k in gateway.kernels()]
    assert old_kernel not in ids and session.executor.process.kernel_id in ids  # type: ignore[attr-defined]
    again = code("import pandas as pd\nprint('total', pd.read_csv('before.csv')['n'].sum())")
    assert "total 42" in session.send_message(again).reply_text


def test_a_kernel_the_gateway_stopped_on_its_own_is_replaced(gateway: Gateway, session: Session) -> None:
    assert session.send_message(code("print(1)")).state == "finished"
    kernel_id = session.executor.process.kernel_id  # type: ignore[attr-defined]
    response = httpx.delete(
        f"{gateway.url}/api/kernels/{kernel_id}", headers={"Authorization": f"token {gateway.token}"}, timeout=30
    )
    assert response.status_code == 204  # as an idle-kernel cull would
    deadline = time.monotonic() + 10
    while session.executor.process.alive() and time.monotonic() < deadline:  # the websocket closes
        time.sleep(0.05)
    rnd = session.send_message(code("print('after the cull')"))
    assert "before this code could run" in rnd.reply_text and "lost" in rnd.reply_text
    assert "after the cull" in session.send_message(code("print('after the cull')")).reply_text


def test_a_file_over_the_cap_stays_in_the_kernel_and_the_user_is_told(session: Session) -> None:
    rnd = session.send_message(code("open('big.bin', 'wb').write(b'x' * (2 * 1024 * 1024))"))
    assert "big.bin" in rnd.reply_text and "execution.max_file_mb" in rnd.reply_text
    assert not (session.cwd / "big.bin").exists()


def test_a_run_bringing_back_more_than_its_share_waits_for_the_next_run(
    gateway: Gateway, gw_app_dir: Path, tmp_path: Path
) -> None:
    """Many files each under the per-file cap: one execution moves at most ``gateway_sync_mb``,
    says what waits, and the rest follows after the next execution."""
    app = TaskWeaverApp(app_dir=gw_app_dir, config=gateway_config(gateway, **{"execution.gateway_sync_mb": 1}))
    s = app.get_session()
    try:
        writes = "for i in range(3):\n    open(f'part{i}.bin', 'wb').write(bytes([i]) * (600 * 1024))"
        rnd = s.send_message(code(writes))
        back = sorted(p.name for p in s.cwd.glob("part*.bin"))
        assert len(back) == 1, back  # 600 KB fits in 1 MB; a second would not
        assert "execution.gateway_sync_mb" in rnd.reply_text and "after the next execution" in rnd.reply_text
        s.send_message(code("print('next')"))
        s.send_message(code("print('and the next')"))
        for i in range(3):
            assert (s.cwd / f"part{i}.bin").read_bytes() == bytes([i]) * (600 * 1024)
    finally:
        s.stop()
        app.stop()


def test_hostile_names_from_the_kernel_are_not_written_outside(gateway: Gateway, gw_app: TaskWeaverApp) -> None:
    s = gw_app.get_session()
    try:
        outside = s.cwd.parent
        # User code replaces the kernel-side helpers: the kernel is not trusted.
        rnd = s.send_message(
            code(
                "import json, base64, os\nimport core.plugins.kernel_files as kf\n"
                "kf.manifest = lambda a: json.dumps({'files': [['../escape.txt', 4, 1], ['/tmp/abs-escape.txt', 4, 1],"
                " ['a/../../up.txt', 4, 1], ['ok.txt', 4, 1]], 'truncated': False})\n"
                "kf.read = lambda a: json.dumps({'data': base64.b64encode(b'evil').decode()})\n"
                "os.symlink('/etc/hostname', 'link.txt')"
            )
        )
        assert rnd.state == "finished"
        assert "refuses" in rnd.reply_text
        assert not (outside / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
        assert not (outside.parent / "up.txt").exists()
        assert (s.cwd / "ok.txt").read_bytes() == b"evil"  # a plain name is fine, whatever its bytes
        # A symlink in the kernel's folder is never followed: its target's content does not come back.
        s.send_message(code("import importlib; importlib.reload(kf)"))
        assert not (s.cwd / "link.txt").exists()
        # Nor a local symlink sent to the kernel.
        (s.cwd / "passwd-link").symlink_to("/etc/passwd")
        s.send_message(code("print(1)"))
        assert not os.path.lexists(remote_folder(gateway, s) / "passwd-link")
    finally:
        s.stop()


def test_a_lying_or_malformed_file_list_is_refused_not_fatal(gw_app: TaskWeaverApp) -> None:
    """The kernel's own code may replace its file helpers: a negative size must not make room in
    the per-execution share for what follows, malformed entries are refused one by one, and a
    list that is not a list costs the run a note, never the round."""
    s = gw_app.get_session()
    try:
        rnd = s.send_message(
            code(
                "import json, base64\nimport core.plugins.kernel_files as kf\n"
                "kf.manifest = lambda a: json.dumps({'files': [['neg.txt', -10**15, 1], {'x': 1}, ['short.txt', 4],"
                " ['none.txt', 4, None], [7, 4, 1], ['ok.txt', 4, 1]], 'truncated': False})\n"
                "kf.read = lambda a: json.dumps({'data': base64.b64encode(b'evil').decode()})"
            )
        )
        assert rnd.state == "finished", rnd.error
        assert rnd.reply_text.count("refuses to copy") == 5, rnd.reply_text
        assert sorted(p.name for p in s.cwd.iterdir()) == ["ok.txt"]
        rnd = s.send_message(code("kf.manifest = lambda a: json.dumps({'files': 5})"))
        assert rnd.state == "finished" and "could not be synchronised" in rnd.reply_text, rnd.reply_text
        rnd = s.send_message(code("import importlib\nimportlib.reload(kf)\nprint(6 * 7)"))
        assert rnd.state == "finished" and "42" in rnd.reply_text
    finally:
        s.stop()


def test_a_file_over_the_per_run_share_but_under_the_file_cap_still_comes_back(
    gateway: Gateway, gw_app_dir: Path
) -> None:
    """``gateway_sync_mb`` below ``max_file_mb``: a file between the two moves alone, not never."""
    config = gateway_config(gateway, **{"execution.gateway_sync_mb": 1, "execution.max_file_mb": 2})
    app = TaskWeaverApp(app_dir=gw_app_dir, config=config)
    s = app.get_session()
    try:
        rnd = s.send_message(code("open('big.bin', 'wb').write(b'b' * (1536 * 1024))"))
        assert rnd.state == "finished", rnd.error
        assert (s.cwd / "big.bin").read_bytes() == b"b" * (1536 * 1024)
    finally:
        s.stop()
        app.stop()


def test_a_wrong_token_or_no_gateway_is_refused_at_start(gateway: Gateway, tmp_path: Path) -> None:
    with pytest.raises(GatewayAuthError, match="execution.gateway_token"):
        TaskWeaverApp(app_dir=tmp_path / "a", config={**gateway_config(gateway), "execution.gateway_token": "wrong"})
    with pytest.raises(GatewayAuthError):
        TaskWeaverApp(app_dir=tmp_path / "b", config={**gateway_config(gateway), "execution.gateway_token": None})
    with pytest.raises(GatewayUnavailable, match="could not be reached"):
        TaskWeaverApp(
            app_dir=tmp_path / "c",
            config={**gateway_config(gateway), "execution.gateway_url": f"http://127.0.0.1:{free_port()}"},
        )
    with pytest.raises(GatewayUnavailable, match="no-such-kernel"):
        TaskWeaverApp(
            app_dir=tmp_path / "d",
            config={**gateway_config(gateway), "execution.gateway_kernel_name": "no-such-kernel"},
        )


def test_weaver_ui_refuses_to_start_with_a_gateway_it_cannot_use(gateway: Gateway, tmp_path: Path) -> None:
    """``weaver ui`` exits non-zero at once with the engine's sentence, not a served site whose every
    chat fails: a wrong token names execution.gateway_token, no gateway names execution.gateway_url."""
    import subprocess
    import sys

    from tests.ui_harness import REPO_ROOT

    base = {k: v for k, v in os.environ.items() if not k.startswith(("WEAVER_", "CHAINLIT_"))}
    base.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "WEAVER_LLM__API_TYPE": "offline",
            "WEAVER_UI_CHECK_MODEL_AT_START": "false",
            "WEAVER_EXECUTION__GATEWAY_URL": gateway.url,
            "WEAVER_EXECUTION__GATEWAY_KERNEL_NAME": KERNEL_NAME,
        }
    )
    before = gateway.kernels()
    cases = {
        "execution.gateway_token": {"WEAVER_EXECUTION__GATEWAY_TOKEN": "wrong-token"},
        "execution.gateway_url": {"WEAVER_EXECUTION__GATEWAY_URL": f"http://127.0.0.1:{free_port()}"},
    }
    for named, env in cases.items():
        port = str(free_port())
        done = subprocess.run(
            [sys.executable, "-m", "ui.cli", "ui", "--port", port, "--app-dir", str(tmp_path / "app")],
            cwd=tmp_path,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = done.stdout + done.stderr
        assert done.returncode != 0, said
        refusal = [line for line in said.splitlines() if line.startswith("Weaver UI: ")]
        assert len(refusal) == 1 and named in refusal[0], said
        assert "Traceback" not in said, said
    assert gateway.kernels() == before, "a refused server started no kernel"


def test_another_server_adopts_a_sessions_kernel_with_its_variables(gateway: Gateway, tmp_path: Path) -> None:
    """What a replica does when the one that ran a chat died: the same kernel id, the same variables,
    nothing replayed; a kernel id the gateway no longer has gives a new kernel and a pending replay."""
    others = {k["id"] for k in gateway.kernels()}  # the module's session may hold one
    first = TaskWeaverApp(app_dir=tmp_path / "shared", config=gateway_config(gateway))
    second = TaskWeaverApp(app_dir=tmp_path / "shared", config=gateway_config(gateway))
    try:
        s1 = first.get_session()
        started: list[str | None] = []
        s1.executor.on_kernel_started = started.append
        assert s1.send_message(code("kept = 41\nopen('made.txt', 'w').write('x')")).state == "finished"
        kernel_id = s1.executor.remote_kernel_id
        assert kernel_id and started[-1] == kernel_id
        s2 = second.open_session(s1.session_id, kernel_id=kernel_id)
        assert s2.executor.adopted and s2.executor.remote_kernel_id == kernel_id
        assert not s2.replay_pending, "an adopted kernel still holds the variables"
        rnd = s2.send_message(code("import os\nprint('kept', kept + 1, os.path.basename(os.getcwd()))"))
        assert f"kept 42 weaver-{s1.session_id}" in rnd.reply_text, rnd.reply_text
        assert {k["id"] for k in gateway.kernels()} - others == {kernel_id}, "attached, not started"

        s2.stop()  # deletes the kernel; the chat's next server cannot adopt it any more
        third = second.open_session(s1.session_id, kernel_id=kernel_id)
        assert not third.executor.adopted and third.replay_pending
        assert third.executor.remote_kernel_id not in (None, kernel_id)
        third.stop()
    finally:
        second.stop()
        first.stop()
    assert {k["id"] for k in gateway.kernels()} <= others


def test_the_pool_works_and_stopping_leaves_no_kernel_on_the_gateway(
    gateway: Gateway, session: Session, tmp_path: Path
) -> None:
    session.stop()
    application = TaskWeaverApp(
        app_dir=tmp_path / "pooled", config=gateway_config(gateway, **{"execution.pool_size": 1})
    )
    try:
        assert application.pool.wait_ready(1, 60)
        s = application.get_session()
        assert "pooled 7" in s.send_message(code("print('pooled', 3 + 4)")).reply_text
        assert application.pool.handed_over == 1
        s.stop()
    finally:
        application.stop()
    assert gateway.kernels() == []


def test_weaver_check_gives_a_verdict_on_the_gateway(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ui.check import main as weaver_check

    (tmp_path / "taskweaver_config.json").write_text(json.dumps(gateway_config(gateway)))
    assert weaver_check(str(tmp_path)) == 0
    assert "token accepted" in capsys.readouterr().out
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps({**gateway_config(gateway), "execution.gateway_token": "wrong"})
    )
    assert weaver_check(str(tmp_path)) == 1
    assert "execution.gateway_token" in capsys.readouterr().out


def test_a_tls_gateway_is_used_with_its_ca_and_refused_without(tmp_path_factory: pytest.TempPathFactory) -> None:
    gw = start_gateway(tmp_path_factory.mktemp("tls-gateway"), tls=True)
    apps = tmp_path_factory.mktemp("tls-apps")
    try:
        assert gw.url.startswith("https://") and gw.cert is not None
        application = TaskWeaverApp(
            app_dir=apps / "a", config=gateway_config(gw, **{"execution.gateway_ca_file": str(gw.cert)})
        )
        try:  # REST and the websocket (wss) both check the certificate against the CA
            assert "tls 3" in application.get_session().send_message(code("print('tls', 1 + 2)")).reply_text
        finally:
            application.stop()
        with pytest.raises(GatewayUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            TaskWeaverApp(app_dir=apps / "b", config=gateway_config(gw))
        unchecked = TaskWeaverApp(
            app_dir=apps / "c", config=gateway_config(gw, **{"execution.gateway_validate_cert": False})
        )
        unchecked.stop()
        assert gw.kernels() == []
    finally:
        gw.stop()


def test_files_coming_back_replace_a_planted_link_and_never_write_through_one(
    gw_app: TaskWeaverApp, tmp_path: Path
) -> None:
    s = gw_app.get_session()
    try:
        canary = tmp_path / "canary.txt"
        canary.write_bytes(b"canary")
        (tmp_path / "elsewhere").mkdir()
        s.cwd.mkdir(parents=True, exist_ok=True)
        (s.cwd / "res.csv").symlink_to(canary)
        (s.cwd / "out").symlink_to(tmp_path / "elsewhere")
        if os.geteuid() == 0:
            os.chown(s.cwd, 54321, 54322)
        rnd = s.send_message(
            code(
                "import os\nos.makedirs('out', exist_ok=True)\n"
                "open('res.csv', 'w').write('a,b')\nopen('out/x.csv', 'w').write('x')"
            )
        )
        assert rnd.state == "finished"
        assert canary.read_bytes() == b"canary" and list((tmp_path / "elsewhere").iterdir()) == []
        local = s.cwd / "res.csv"
        assert not local.is_symlink() and local.read_text() == "a,b"
        assert "out/x.csv could not be copied from the kernel: out/x.csv is a link" in rnd.reply_text
        if os.geteuid() == 0:
            assert (local.stat().st_uid, local.stat().st_gid) == (54321, 54322)
    finally:
        s.stop()
