"""Stopping a server without losing work: the drain, Chainlit's generic variable names, each server's files.

Everything is real: Chainlit servers started the way ``weaver ui`` starts them (or ``weaver ui``
itself), their kernels, a Jupyter kernel gateway and a throwaway PostgreSQL for the hand-over, all on
127.0.0.1 and stopped by their own PIDs. What a user would check: a round that runs when the server
is told to stop still answers, the server then exits 0 with the round in its history; meanwhile a
new page or login is told to come back later (503 and ``Retry-After``), and a message in an open
chat is told to be sent again; a gateway kernel survives the stop and the next server carries the
chat on with its variables; a stray ``RUN=`` does not stop the server; stopping one server leaves
another's downloads working.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import uvicorn

from tests.gateway_server import KERNEL_NAME, start_gateway
from tests.pg_cluster import start_cluster
from tests.processes import stop_process
from tests.ui_harness import (
    REPO_ROOT,
    ChatClient,
    UIServer,
    answers,
    code_block,
    free_port,
    pid_alive,
    start_server,
    stop_server,
    wait_until,
)
from ui import chainlit_env
from ui.drain import DEFAULT_DRAIN_S, RETRY_AFTER_S, ROUND_REFUSED, Drain, drain_seconds

DRAIN_S = 30
# A round that runs for ~3 s after telling the test it started; files in the chat's own folder.
SLOW_ROUND = code_block(
    "import time\nopen('started-slow', 'w').close()\nfor _ in range(30):\n    time.sleep(0.1)\nprint('slow round done')"
)
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
SHOW_IMAGE = code_block(
    f"import base64\nfrom IPython.display import Image, display\ndisplay(Image(data=base64.b64decode({TINY_PNG!r})))"
)
GENERIC = {"RUN": "x", "ui": "x", "PROJECT": "x", "ROOT": "/nonexistent", "DEBUG": "x", "CI": "true"}


def slow_round_started(app_dir: Path) -> Path | None:
    return next(Path(app_dir, "workspace", "sessions").glob("*/cwd/started-slow"), None)


def refused_while_draining(base_url: str) -> None:
    """A new socket (socket.io's first request) and a login are told to come back later."""
    for response in (
        httpx.get(f"{base_url}/ws/socket.io/", params={"EIO": "4", "transport": "polling"}, timeout=10),
        httpx.post(f"{base_url}/auth/header", timeout=10),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == str(RETRY_AFTER_S)
        assert "restarting" in response.json()["detail"]
    ready = httpx.get(f"{base_url}/ready", timeout=10)  # the load balancer sends no one new here
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["draining"]["ok"] is False


def history_outputs(app_dir: Path, thread_id: str) -> str:
    with sqlite3.connect(app_dir / "weaver.db") as db:
        rows = db.execute('SELECT "output" FROM steps WHERE "threadId" = ?', (thread_id,)).fetchall()
    return "\n".join(str(output) for (output,) in rows)


# ----------------------------------------------------------------------------- Chainlit's names


def _chainlit_source(relative: str) -> ast.Module:
    """The installed Chainlit's source, read rather than imported (importing ``chainlit.cli`` would
    make this test process's asyncio re-entrant, see ``ui/patches/no_nest_asyncio.py``)."""
    spec = importlib.util.find_spec("chainlit")
    assert spec is not None and spec.origin is not None
    return ast.parse((Path(spec.origin).parent / relative).read_text(encoding="utf-8"))


def test_the_generic_names_are_the_ones_the_installed_chainlit_reads() -> None:
    config = next(
        node
        for node in ast.walk(_chainlit_source("config.py"))
        if isinstance(node, ast.ClassDef) and node.name == "ChainlitConfig"
    )
    assert [b.id for b in config.bases if isinstance(b, ast.Name)] == ["BaseSettings"]
    fields = {n.target.id for n in config.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    assert "model_config" not in fields  # no env_prefix: every field is read by its bare name
    assert {name.upper() for name in fields} == set(chainlit_env.SETTINGS_FIELDS)

    run = next(
        node
        for node in ast.walk(_chainlit_source("cli/__init__.py"))
        if isinstance(node, ast.FunctionDef) and node.name == "chainlit_run"
    )
    envvars = {
        str(keyword.value.value)
        for decorator in run.decorator_list
        if isinstance(decorator, ast.Call)
        for keyword in decorator.keywords
        if keyword.arg == "envvar" and isinstance(keyword.value, ast.Constant)
    }
    assert {v for v in envvars if not v.startswith("CHAINLIT_")} == set(chainlit_env.RUN_OPTIONS)

    environ = {"run": "x", "Ui": "y", "CI": "true", "CHAINLIT_AUTH_SECRET": "kept", "RUNNER": "kept"}
    assert chainlit_env.isolate(environ) == ["Ui", "run"]  # CI removed too, without a word
    assert environ == {"CHAINLIT_AUTH_SECRET": "kept", "RUNNER": "kept"}


# ----------------------------------------------------------------------------- the drain


def drain_until_exit(drain: Drain, rounds: list[float], signals: list[tuple[float, int]]) -> float:
    """Rounds of the given lengths run, each as its own task; the signals arrive at their times.
    Returns how long after the first signal uvicorn was told to exit."""

    async def scenario() -> float:
        server = uvicorn.Server(uvicorn.Config(app="ui.app:never_loaded"))  # never served: the drain sets its flag

        @drain.one_round
        async def round_of(seconds: float) -> None:
            await asyncio.sleep(seconds)

        tasks = [asyncio.ensure_future(round_of(s)) for s in rounds]
        await asyncio.sleep(0)  # the rounds start
        loop = asyncio.get_running_loop()
        first = loop.time()
        for at, sig in signals:
            await asyncio.sleep(max(0.0, first + at - loop.time()))
            assert drain.on_signal(server, sig)
        while not server.should_exit:
            await asyncio.sleep(0.01)
        took = loop.time() - first
        for task in tasks:
            task.cancel()
        return took

    return asyncio.run(scenario())


def test_the_drain_waits_for_running_rounds_up_to_its_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="weaver.ui.drain")
    finishing = Drain()
    finishing.configure(5.0, None)
    assert drain_until_exit(finishing, [0.3], [(0, signal.SIGTERM), (0.1, signal.SIGTERM)]) < 2.0
    assert finishing.draining and "SIGTERM again while draining: ignored" in caplog.text
    assert "no round is running" in caplog.text

    endless = Drain()
    endless.configure(0.5, None)  # WEAVER_UI_DRAIN_S=0.5
    assert 0.5 <= drain_until_exit(endless, [60.0], [(0, signal.SIGTERM)]) < 5.0
    assert "1 round(s) still running are cancelled" in caplog.text

    impatient = Drain()
    impatient.configure(30.0, None)
    assert drain_until_exit(impatient, [60.0], [(0, signal.SIGINT), (0.2, signal.SIGINT)]) < 5.0
    assert "Ctrl-C again: the drain ends now" in caplog.text

    at_once = Drain()
    at_once.configure(0.0, None)  # WEAVER_UI_DRAIN_S=0: stop at once
    assert drain_until_exit(at_once, [60.0], [(0, signal.SIGTERM)]) < 2.0


def test_the_drain_setting_is_checked_and_a_newer_uvicorn_only_loses_the_drain(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ui import patches
    from ui.settings import UISettingsError, ui_settings

    ui_settings.cache_clear()
    try:
        monkeypatch.setenv("WEAVER_UI_DRAIN_S", "-1")
        with pytest.raises(UISettingsError, match="WEAVER_UI_DRAIN_S"):
            ui_settings()
        ui_settings.cache_clear()
        monkeypatch.setenv("WEAVER_UI_DRAIN_S", "0")
        assert ui_settings().drain_s == 0
        monkeypatch.delenv("WEAVER_UI_DRAIN_S")
        ui_settings.cache_clear()
        assert ui_settings().drain_s == DEFAULT_DRAIN_S == 30
    finally:
        ui_settings.cache_clear()
    assert drain_seconds({"WEAVER_UI_DRAIN_S": "12"}) == 12 and drain_seconds({"WEAVER_UI_DRAIN_S": "x"}) == 30

    def newer(distribution: str) -> str | None:
        return "0.99.0" if distribution == "uvicorn" else patches.installed_version(distribution)

    monkeypatch.setattr(patches, "_warned", set())  # each misfit is warned about once per process: not this one's
    with caplog.at_level(logging.WARNING, logger="weaver.ui.patches"):
        assert "drain_signal" not in patches.check(version_of=newer)  # skipped, not refused
    assert "'drain_signal' does not fit uvicorn 0.99.0" in caplog.text
    assert "a stop cancels running rounds at once" in caplog.text


def test_the_wrapper_reads_the_drain_from_the_servers_env_file(tmp_path: Path) -> None:
    """The server reads the checkout's ``.env``; ``weaver ui``'s kill deadline must use the same
    ``WEAVER_UI_DRAIN_S`` (the environment wins), or it could kill a server mid-drain."""
    from ui.cli import server_environment

    (tmp_path / ".env").write_text("WEAVER_UI_DRAIN_S=95\n")
    assert drain_seconds(server_environment({}, tmp_path)) == 95
    assert drain_seconds(server_environment({"WEAVER_UI_DRAIN_S": "7"}, tmp_path)) == 7
    assert drain_seconds(server_environment({}, tmp_path / "elsewhere")) == DEFAULT_DRAIN_S


def test_a_failing_or_slow_shutdown_step_lets_the_next_ones_run(caplog: pytest.LogCaptureFixture) -> None:
    """Chainlit closes the history after the app's shutdown hook, and not at all if it raises:
    each of Weaver's steps logs its failure, and a slow one is given up on within its bound."""
    from ui import shutdown_steps

    ran: list[str] = []

    async def broken() -> None:
        raise RuntimeError("the registry is gone")

    async def slow() -> None:
        await asyncio.sleep(30)

    async def fine() -> None:
        ran.append("fine")

    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        done = [
            await shutdown_steps.step("a broken step", broken()),
            await shutdown_steps.step("a slow step", slow(), 0.2),
            await shutdown_steps.step("the history's turn", fine()),
        ]
        assert loop.time() - started < 5
        return done

    with caplog.at_level(logging.WARNING, logger="weaver.ui.shutdown"):
        assert asyncio.run(scenario()) == [False, False, True]
    assert ran == ["fine"]
    assert "shutdown: a broken step failed; going on" in caplog.text and "the registry is gone" in caplog.text
    assert "shutdown: a slow step took over 0.2s; going on without it" in caplog.text


@dataclass
class Launched:
    """``weaver ui`` (the launcher) and its server, as an operator runs it."""

    launcher: subprocess.Popen[bytes]
    base_url: str
    app_dir: Path
    log: Path

    def server_pids(self) -> set[int]:
        pid = self.launcher.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def launch_weaver_ui(root: Path) -> Launched:
    """``weaver ui`` with Chainlit's generic names set to nonsense, as a stray ``RUN=`` was."""
    port = free_port()
    (root / "app" / "plugins").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CHAINLIT_AUTH_SECRET", "DATABASE_URL")},
        **GENERIC,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "WEAVER_APP_DIR": str(root / "app"),
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_CHECK_MODEL_AT_START": "false",
        "WEAVER_EXECUTION__POOL_SIZE": "0",
        "WEAVER_UI_DRAIN_S": str(DRAIN_S),
    }
    log = root / "launcher.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    launched = Launched(launcher, f"http://127.0.0.1:{port}", root / "app", log)

    def healthy() -> bool:
        assert launcher.poll() is None, log.read_text()
        try:
            return httpx.get(f"{launched.base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, "weaver ui to serve", every=0.2)
    except BaseException:
        stop_launched(launched)
        raise
    return launched


def stop_launched(launched: Launched) -> None:
    pids = launched.server_pids() if launched.launcher.poll() is None else set()
    stop_process(launched.launcher, signal.SIGINT, timeout=DRAIN_S)
    for pid in pids:  # only if a test failed: our own server, by its PID
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UIServer, Launched]]:
    """From the one checkout, started together: a server as the harness starts it, and ``weaver ui``."""
    root = tmp_path_factory.mktemp("drain")
    env = {"WEAVER_UI_DRAIN_S": str(DRAIN_S), "WEAVER_EXECUTION__POOL_SIZE": "0"}
    with ThreadPoolExecutor(2) as pool:
        direct = pool.submit(start_server, root / "direct" / "app", root / "direct.log", extra_env=env)
        wrapped = pool.submit(launch_weaver_ui, root / "wrapped")
    started: list[UIServer | Launched] = []
    try:
        for future in (direct, wrapped):
            started.append(future.result())
        yield started[0], started[1]  # type: ignore[misc]
    finally:
        for server in started:
            stop_launched(server) if isinstance(server, Launched) else stop_server(server)


def test_sigterm_lets_the_running_round_answer_then_exits_0_and_leaves_the_other_servers_files(
    servers: tuple[UIServer, Launched],
) -> None:
    stopping, staying = servers
    with ChatClient(staying.base_url) as other:
        other.ask(SHOW_IMAGE)
        images = [e for e in other.elements() if e.get("type") == "image"]
        assert images and other.fetch_element(images[0]).status_code == 200
        with stopping.client() as chat, stopping.client() as idle:
            message_id = chat.send(SLOW_ROUND)
            wait_until(lambda: slow_round_started(stopping.app_dir), 60, "the slow round to run")
            stopping.proc.send_signal(signal.SIGTERM)
            stopping.wait_log(r"SIGTERM: draining", 10)

            refused_while_draining(stopping.base_url)
            late = idle.send(code_block("print('never run')"))
            told = idle.wait_turn(late, 20)
            assert any(ROUND_REFUSED in a for a in answers(told)), answers(told)

            turn = chat.wait_turn(message_id, DRAIN_S)
            assert any("slow round done" in a for a in answers(turn)), answers(turn)
            thread_id = chat.thread_id()
            assert stopping.proc.wait(timeout=DRAIN_S) == 0, stopping.log()[-3000:]
        assert "Traceback" not in stopping.log()
        assert "slow round done" in history_outputs(stopping.app_dir, thread_id)

        got = other.fetch_element(images[0])  # the stopped server deleted only its own files
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
    assert not [p for p in stopping.app_dir.glob(".files-*") if p.is_dir()]  # its own folder went with it
    (kept,) = [p for p in staying.app_dir.glob(".files-*") if p.is_dir()]  # in the app folder, not /tmp
    assert kept.stat().st_mode & 0o777 == 0o700


def test_a_dead_servers_files_folder_is_swept_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    """Each server's files folder is ``<app_dir>/.files-*`` (0700), locked for the server's life; a
    server that starts removes those of servers that are gone, never a running one's."""
    from ui import files_folder

    make = "import sys; from pathlib import Path; from ui.files_folder import server_files_dir as m; "
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    live = subprocess.Popen(
        [sys.executable, "-c", make + "print(m(Path(sys.argv[1])), flush=True); sys.stdin.read()", str(tmp_path)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None
        running = Path(live.stdout.readline().strip())
        dead = subprocess.run(
            [sys.executable, "-c", make + "print(m(Path(sys.argv[1])))", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (Path(dead) / "upload.csv").write_text("a,b\n")  # what its chats had, left when it died
        assert running.is_dir() and Path(dead).is_dir()
        mine = files_folder.server_files_dir(tmp_path)
        assert not Path(dead).exists() and not Path(dead + files_folder.LOCK_SUFFIX).exists()
        assert running.is_dir(), "a running server's folder was removed"
        assert mine.parent == tmp_path and mine.stat().st_mode & 0o777 == 0o700
        mine.rmdir()  # as another Chainlit server's shutdown could
        files_folder.ensure(mine)
        assert mine.is_dir() and mine.stat().st_mode & 0o777 == 0o700
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=10)


def test_weaver_ui_drains_its_server_on_sigterm_and_ignores_chainlits_generic_names(
    servers: tuple[UIServer, Launched],
) -> None:
    _, launched = servers
    said = launched.log.read_text()
    assert "Weaver UI: ignoring DEBUG, PROJECT, ROOT, RUN, ui: names Chainlit would misread" in said, said
    server_pids = launched.server_pids()
    with ChatClient(launched.base_url) as chat:
        message_id = chat.send(SLOW_ROUND)
        wait_until(lambda: slow_round_started(launched.app_dir), 60, "the slow round to run")
        launched.launcher.send_signal(signal.SIGTERM)
        turn = chat.wait_turn(message_id, DRAIN_S)
        assert any("slow round done" in a for a in answers(turn)), answers(turn)
        assert launched.launcher.wait(timeout=DRAIN_S + 10) == 0, launched.log.read_text()[-3000:]
    assert not any(pid_alive(p) for p in server_pids)
    said = launched.log.read_text()
    assert "SIGTERM: draining" in said and "Traceback" not in said


# ----------------------------------------------------------------------------- a gateway's kernels


@pytest.mark.gateway
@pytest.mark.replicas
def test_a_drained_servers_gateway_kernel_is_kept_and_the_next_server_carries_the_chat_on(tmp_path: Path) -> None:
    """A rolling restart with kernels on a gateway: the chat's kernel outlives the drained server, and
    the chat goes on in it on the next one, variables included, with nothing replayed."""
    gateway = start_gateway(tmp_path / "gateway")
    pg = start_cluster()
    try:
        env = {
            "WEAVER_DATABASE_URL": pg.create_database(),
            "WEAVER_EXECUTION__GATEWAY_URL": gateway.url,
            "WEAVER_EXECUTION__GATEWAY_TOKEN": gateway.token,
            "WEAVER_EXECUTION__GATEWAY_KERNEL_NAME": KERNEL_NAME,
            "WEAVER_EXECUTION__POOL_SIZE": "0",
            "WEAVER_UI_REPLICA_HEARTBEAT_S": "1",
            "WEAVER_UI_DRAIN_S": str(DRAIN_S),
        }
        app_dir = tmp_path / "app"
        # A kernel nobody adopts is deleted after the grace period: long enough for a busy machine's start.
        grace = 120.0
        first = start_server(app_dir, tmp_path / "first.log", grace, {**env, "WEAVER_UI_REPLICA_ID": "first"})
        try:
            with first.client() as page:
                said = "\n".join(answers(page.ask(code_block("import os\nx = 41\nprint('KPID', os.getpid())"))))
                pid = int(said.split("KPID", 1)[1].split()[0])
                kernels = {str(k["id"]) for k in gateway.kernels()}
                assert len(kernels) == 1
                message_id = page.send(SLOW_ROUND)
                wait_until(lambda: next(gateway.root.glob("weaver-*/started-slow"), None), 60, "the slow round")
                first.proc.send_signal(signal.SIGTERM)
                turn = page.wait_turn(message_id, DRAIN_S)
                assert any("slow round done" in a for a in answers(turn)), answers(turn)
                assert first.proc.wait(timeout=DRAIN_S) == 0, first.log()[-3000:]
            assert {str(k["id"]) for k in gateway.kernels()} == kernels, "the chat's kernel is still on the gateway"
            assert "left running on the gateway" in first.log()
        finally:
            stop_server(first)

        second = start_server(app_dir, tmp_path / "second.log", grace, {**env, "WEAVER_UI_REPLICA_ID": "second"})
        try:
            again = second.client(session_id=page.session_id)  # the page reconnects, as after any drop
            again.connect(expect_chat_start=False)
            again.wait_for(lambda: "resume_thread" in again.event_names(), 30, "the chat's history")
            turn = again.ask(code_block("import os\nprint('x+1 =', x + 1, 'in', os.getpid())"), timeout=60)
            assert any(f"x+1 = 42 in {pid}" in a for a in answers(turn)), answers(turn)
            assert not [m for m in again.messages().values() if m.get("name") == "Restoring your session"]
            second.wait_log(rf"chat {page.session_id}: adopting gateway kernel", 5)
            again.disconnect()
        finally:
            stop_server(second)
    finally:
        pg.stop()
        gateway.stop()
