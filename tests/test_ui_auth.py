"""Login from a trusted proxy header (``WEAVER_UI_USER_HEADER``) against a real Chainlit server.

The test plays the authenticating proxy: it adds ``X-Forwarded-User`` to ``POST /auth/header``
(what the frontend calls when ``/auth/config`` says ``headerAuth``), keeps the access-token
cookie Chainlit sets and connects the socket with it, as the browser does. The app folder holds
the ``whoami`` plugin, which greets the session's ``user_name``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import socketio

from tests.ui_harness import (
    REPO_ROOT,
    ChatClient,
    UIServer,
    answers,
    code_block,
    free_port,
    start_server,
    steps,
    stop_server,
    ui_server,
)

__all__ = ["ui_server"]

HEADER = "X-Forwarded-User"
PLUGINS = Path(__file__).parent / "app_fixture" / "plugins"
WHOAMI = code_block('print(whoami("Hi"))')


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """The UI server with header login on and the whoami plugin installed."""
    root = tmp_path_factory.mktemp("weaver-ui-auth")
    shutil.copytree(PLUGINS, root / "app" / "plugins")
    env = {"WEAVER_UI_USER_HEADER": HEADER, "CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(32)}
    server = start_server(root / "app", root / "server.log", extra_env=env)
    try:
        yield server
    finally:
        stop_server(server)


def logged_in(server: UIServer, user: str, session_id: str | None = None) -> ChatClient:
    client = server.client(session_id)
    response = client.login_with_header(HEADER, user)
    assert response.status_code == 200, response.text
    assert "Cookie" in client.headers, "no access-token cookie was set"
    return client


def session_dirs(server: UIServer) -> set[str]:
    root = server.app_dir / "workspace" / "sessions"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_frontend_is_told_to_log_in_by_header(auth_server: UIServer) -> None:
    config = httpx.get(f"{auth_server.base_url}/auth/config", timeout=10).json()
    assert config["requireLogin"] is True and config["headerAuth"] is True
    assert config["passwordAuth"] is False


def test_two_users_see_their_own_name_and_not_each_others_variables(auth_server: UIServer) -> None:
    with logged_in(auth_server, "alice") as alice, logged_in(auth_server, "bob") as bob:
        a_id = alice.send(code_block('alices_var = 1\nprint(whoami("Hi"))'))
        b_id = bob.send(WHOAMI)
        a_turn, b_turn = alice.wait_turn(a_id), bob.wait_turn(b_id)
        b_second = bob.ask(code_block("print(alices_var)"))

    a_said, b_said = "\n".join(answers(a_turn)), "\n".join(answers(b_turn))
    assert "Hi, alice!" in a_said and "bob" not in a_said, a_said
    assert "Hi, bob!" in b_said and "alice" not in b_said, b_said
    assert "NameError" in "\n".join(steps(b_second, "CodeInterpreter") + answers(b_second))


def test_a_client_without_the_header_gets_no_session(auth_server: UIServer) -> None:
    before = session_dirs(auth_server)
    for blank in (None, ""):
        client = auth_server.client()
        response = client.login_with_header(HEADER, blank)
        assert response.status_code == 401, (blank, response.status_code, response.text)
        assert not client.headers
    mark = auth_server.log_size()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect()
    auth_server.wait_log(r"Authentication failed in websocket connect", 10, mark)
    assert not client.sio.connected
    assert session_dirs(auth_server) == before


def test_another_user_cannot_take_over_a_chat_by_its_id(auth_server: UIServer) -> None:
    with logged_in(auth_server, "alice") as alice:
        intruder = logged_in(auth_server, "bob", session_id=alice.session_id)
        mark = auth_server.log_size()
        with pytest.raises(socketio.exceptions.ConnectionError):
            intruder.connect(expect_chat_start=False)
        auth_server.wait_log(r"Authorization for the session failed", 10, mark)
        turn = alice.ask(WHOAMI)
    assert any("Hi, alice!" in a for a in answers(turn)), answers(turn)


def test_header_login_without_a_secret_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CHAINLIT_AUTH_SECRET"}
    env.update(
        {"WEAVER_UI_USER_HEADER": HEADER, "WEAVER_APP_DIR": str(tmp_path / "app"), "WEAVER_LLM__API_TYPE": "offline"}
    )
    cmd = [
        sys.executable,
        "-m",
        "chainlit",
        "run",
        "ui/app.py",
        "--headless",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "CHAINLIT_AUTH_SECRET" in done.stderr and "WEAVER_UI_USER_HEADER" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_without_the_setting_nobody_logs_in(ui_server: UIServer) -> None:
    config = httpx.get(f"{ui_server.base_url}/auth/config", timeout=10).json()
    assert not config["requireLogin"] and not config["headerAuth"]


def test_a_repeated_login_header_is_refused(auth_server: UIServer) -> None:
    """A proxy that appends its header to the client's copy must not let the client's copy win."""
    twice = httpx.post(
        f"{auth_server.base_url}/auth/header", headers=[(HEADER, "mallory-as-alice"), (HEADER, "mallory")], timeout=10
    )
    assert twice.status_code == 400 and "more than once" in twice.json()["detail"]
    assert "set-cookie" not in twice.headers
    assert logged_in(auth_server, "mallory").headers["Cookie"]  # one copy still logs in


def test_only_the_owner_may_fetch_a_chat_file(auth_server: UIServer) -> None:
    with logged_in(auth_server, "alice") as alice:
        file_id = alice.upload("mine.csv", b"a,b\n1,2\n")
        url = f"{auth_server.base_url}/project/file/{file_id}"
        params = {"session_id": alice.session_id}
        own = httpx.get(url, params=params, headers=alice.headers, timeout=10)
        assert own.status_code == 200 and own.content == b"a,b\n1,2\n"
        bob = logged_in(auth_server, "bob")
        assert httpx.get(url, params=params, headers=bob.headers, timeout=10).status_code == 401
        assert httpx.get(url, params=params, timeout=10).status_code == 401


def test_login_without_a_working_sandbox_refuses_to_start(tmp_path: Path) -> None:
    """Users who log in are different people: their code must not run unsandboxed unless asked by name."""
    no_tools = tmp_path / "bin"
    no_tools.mkdir()  # a PATH where bubblewrap cannot be found
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEAVER_")}
    env.update(
        {
            "PATH": str(no_tools),
            "WEAVER_UI_USER_HEADER": HEADER,
            "CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(32),
            "WEAVER_APP_DIR": str(tmp_path / "app"),
            "WEAVER_LLM__API_TYPE": "offline",
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "chainlit",
        "run",
        "ui/app.py",
        "--headless",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "without a sandbox with login on" in done.stderr and "allow_unsandboxed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
