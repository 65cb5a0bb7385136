"""Login from a trusted proxy header (``WEAVER_UI_USER_HEADER``) against a real Chainlit server.

The test plays the authenticating proxy: it adds ``X-Forwarded-User`` to ``POST /auth/header``
(what the frontend calls when ``/auth/config`` says ``headerAuth``), keeps the access-token
cookie Chainlit sets and connects the socket with it, as the browser does. The app folder holds
the ``whoami`` plugin, which greets the session's ``user_name``.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Mapping

import httpx
import jwt
import pytest
import socketio

from tests.ui_harness import (
    KERNEL_ID_CODE,
    REPO_ROOT,
    ChatClient,
    UIServer,
    answers,
    code_block,
    free_port,
    kernel_pid_in,
    login_cookie,
    pid_alive,
    server_command,
    start_server,
    steps,
    stop_server,
    ui_server,
    wait_until,
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
        assert not client.headers.get("Cookie")
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
    cmd = server_command(free_port())
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "CHAINLIT_AUTH_SECRET" in done.stderr and "WEAVER_UI_AUTH=header" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_by_default_the_local_user_is_logged_in_without_a_question(ui_server: UIServer) -> None:
    config = httpx.get(f"{ui_server.base_url}/auth/config", timeout=10).json()
    assert config["requireLogin"] and config["headerAuth"] and not config["passwordAuth"]
    cookie = login_cookie(ui_server.base_url)
    assert cookie, "the page's automatic login was refused"
    me = httpx.get(f"{ui_server.base_url}/user", headers=cookie, timeout=10).json()
    assert me["identifier"] == getpass.getuser()
    secret_file = ui_server.app_dir / ".auth_secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    with ui_server.client() as client:  # the secret is the server's: user code never sees it
        turn = client.ask(code_block("import os\nprint('secret visible:', 'CHAINLIT_AUTH_SECRET' in os.environ)"))
    assert any("secret visible: False" in a for a in answers(turn)), answers(turn)


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
    cmd = server_command(free_port())
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "without a sandbox with header login" in done.stderr and "allow_unsandboxed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------------------------ password login


def add_user(app_dir: Path, name: str, password: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "user", "--app-dir", str(app_dir), "add", name, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def password_login(server: UIServer, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/login", data={"username": name, "password": password}, timeout=30)


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-ui-password")
    shutil.copytree(PLUGINS, root / "app" / "plugins")
    add_user(root / "app", "alice", "alice-password")
    add_user(root / "app", "bob", "bob-password-2")
    env = {"WEAVER_UI_AUTH": "password", "WEAVER_UI_LOGIN_ATTEMPTS_PER_USER": "3", "WEAVER_UI_SESSION_HOURS": "2"}
    server = start_server(root / "app", root / "server.log", extra_env=env)
    try:
        yield server
    finally:
        stop_server(server)


def logged_in_with_password(server: UIServer, name: str, password: str) -> ChatClient:
    response = password_login(server, name, password)
    assert response.status_code == 200, response.text
    client = server.client()
    client.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
    return client


def test_weaver_user_manages_the_password_store(tmp_path: Path) -> None:
    add_user(tmp_path, "carol", "carol-password")
    store = tmp_path / "users.json"
    assert store.stat().st_mode & 0o777 == 0o600 and "carol-password" not in store.read_text()
    listed = subprocess.run(
        [sys.executable, "-m", "ui.cli", "user", "--app-dir", str(tmp_path), "list"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert listed.stdout.split() == ["carol", "user"]  # name, role (and "disabled" when it is)
    short = subprocess.run(
        [sys.executable, "-m", "ui.cli", "user", "--app-dir", str(tmp_path), "add", "dave", "--password-stdin"],
        input="short\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert short.returncode == 1 and "at least 8 characters" in short.stderr


def test_password_users_see_their_own_name_and_a_wrong_password_is_refused_plainly(password_server: UIServer) -> None:
    config = httpx.get(f"{password_server.base_url}/auth/config", timeout=10).json()
    assert config["passwordAuth"] and not config["headerAuth"]
    for name, password in (("alice", "wrong-password"), ("nobody", "alice-password")):
        refused = password_login(password_server, name, password)
        assert refused.status_code == 401 and "set-cookie" not in refused.headers  # same answer for either part
    with (
        logged_in_with_password(password_server, "alice", "alice-password") as alice,
        logged_in_with_password(password_server, "bob", "bob-password-2") as bob,
    ):
        a_turn, b_turn = alice.ask(WHOAMI), bob.ask(WHOAMI)
        intruder = server_client_with(password_server, bob.headers, alice.session_id)
        with pytest.raises(socketio.exceptions.ConnectionError):
            intruder.connect(expect_chat_start=False)
        stolen_upload = httpx.post(
            f"{password_server.base_url}/project/file",
            params={"session_id": alice.session_id},
            files={"file": ("x.csv", b"a\n1\n", "text/csv")},
            headers=bob.headers,
            timeout=10,
        )
        assert stolen_upload.status_code == 401
    assert any("Hi, alice!" in a for a in answers(a_turn)), answers(a_turn)
    assert any("Hi, bob!" in a for a in answers(b_turn)), answers(b_turn)


def server_client_with(server: UIServer, headers: dict[str, str], session_id: str) -> ChatClient:
    client = server.client(session_id)
    client.headers.update(headers)
    return client


def test_repeated_wrong_passwords_are_throttled(password_server: UIServer) -> None:
    for _ in range(3):
        assert password_login(password_server, "bob", "not-bobs").status_code == 401
    locked = password_login(password_server, "bob", "bob-password-2")  # even the right one waits now
    assert locked.status_code == 429 and "Too many failed logins" in locked.json()["detail"]
    assert password_login(password_server, "alice", "alice-password").status_code == 200  # others are not locked out


# ------------------------------------------------------------------ refusing to start


def run_server_expecting_refusal(tmp_path: Path, host: str, extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEAVER_", "OAUTH_", "CHAINLIT_AUTH"))}
    env.update({"WEAVER_APP_DIR": str(tmp_path / "app"), "WEAVER_LLM__API_TYPE": "offline", **extra})
    cmd = server_command(free_port(), host)
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_local_login_on_an_address_others_can_reach_refuses_to_start(tmp_path: Path) -> None:
    said = run_server_expecting_refusal(tmp_path, "0.0.0.0", {"WEAVER_UI_AUTH": "local"})
    assert "WEAVER_UI_AUTH=local" in said and "other machines can reach" in said
    said = run_server_expecting_refusal(tmp_path, "0.0.0.0", {})
    assert "needs a login: set WEAVER_UI_AUTH" in said


def test_oauth_needs_a_provider_and_a_list_of_who_may_enter(tmp_path: Path) -> None:
    secret = {"CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(32), "WEAVER_UI_AUTH": "oauth"}
    assert "OAUTH_<PROVIDER>_CLIENT_ID" in run_server_expecting_refusal(tmp_path, "127.0.0.1", secret)
    github = {**secret, "OAUTH_GITHUB_CLIENT_ID": "id", "OAUTH_GITHUB_CLIENT_SECRET": "s"}
    assert "WEAVER_UI_ALLOWED_USERS" in run_server_expecting_refusal(tmp_path, "127.0.0.1", github)


# ------------------------------------------------------------------ logins that end


def weaver_user(app_dir: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``weaver user`` command, in a process of its own (as an operator runs it)."""
    command = [sys.executable, "-m", "ui.cli", "user", "--app-dir", str(app_dir), *args]
    if password is not None:
        command.append("--password-stdin")
    return subprocess.run(
        command,
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def cookie_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in response.cookies.items())}


def user_page(server: UIServer, cookie: Mapping[str, str]) -> int:
    """``GET /user`` with this cookie, as the page asks at load: 200 shows the chat, 401 the login."""
    return httpx.get(f"{server.base_url}/user", headers=dict(cookie), timeout=30).status_code


def socket_refused(server: UIServer, cookie: Mapping[str, str]) -> bool:
    client = server_client_with(server, dict(cookie), str(uuid.uuid4()))
    try:
        client.connect(expect_chat_start=False)
    except socketio.exceptions.ConnectionError:
        return True
    client.disconnect()
    return False


def kernel_of(client: ChatClient) -> int:
    turn = client.ask(code_block(KERNEL_ID_CODE))
    return kernel_pid_in("\n".join(steps(turn, "CodeInterpreter") + answers(turn)))


def test_logout_ends_the_login_on_every_route_and_socket(password_server: UIServer) -> None:
    cookie = cookie_of(password_login(password_server, "alice", "alice-password"))
    other = cookie_of(password_login(password_server, "alice", "alice-password"))  # another browser of hers
    assert user_page(password_server, cookie) == 200 and not socket_refused(password_server, cookie)
    out = httpx.post(f"{password_server.base_url}/logout", headers=cookie, timeout=30)
    assert out.status_code == 200
    assert user_page(password_server, cookie) == 401  # the page shows the login again
    assert socket_refused(password_server, cookie)
    jwt_login = httpx.post(
        f"{password_server.base_url}/auth/jwt",
        headers={"Authorization": f"Bearer {cookie['Cookie'].partition('=')[2]}"},
        timeout=30,
    )
    assert jwt_login.status_code == 401  # nor can the old token be traded for a new cookie
    # PyJWT also accepts the token with padding after its signature: the same login, still ended
    token = cookie["Cookie"].partition("=")[2]
    assert user_page(password_server, {"Authorization": f"Bearer {token}="}) == 401
    assert user_page(password_server, {"Cookie": f"access_token={token}="}) == 401
    # the history's file route asks the same check as every other route
    history_file = f"{password_server.base_url}/weaver/files/{uuid.uuid4()}/{uuid.uuid4()}/x.csv"
    assert httpx.get(history_file, headers=cookie, timeout=30).status_code == 401
    assert httpx.get(history_file, headers=other, timeout=30).status_code != 401
    assert user_page(password_server, other) == 200  # only that login ended
    live = httpx.post(
        f"{password_server.base_url}/auth/jwt",
        headers={"Authorization": f"Bearer {other['Cookie'].partition('=')[2]}"},
        timeout=30,
    )
    assert live.status_code == 401  # a live token is not traded for a new, longer login either


def test_a_removed_user_is_refused_at_once_and_their_live_chat_stops(password_server: UIServer) -> None:
    assert weaver_user(password_server.app_dir, "add", "erin", password="erin-password").returncode == 0
    cookie = cookie_of(password_login(password_server, "erin", "erin-password"))
    with server_client_with(password_server, cookie, str(uuid.uuid4())) as erin:
        pid = kernel_of(erin)
        assert pid_alive(pid)
        removed = weaver_user(password_server.app_dir, "remove", "erin")
        assert removed.returncode == 0 and "logins end at once" in removed.stdout
        assert user_page(password_server, cookie) == 401 and socket_refused(password_server, cookie)
        wait_until(lambda: not pid_alive(pid), 30, f"erin's kernel {pid} to exit")
        told = erin.wait_for(
            lambda: [m for m in erin.messages().values() if "account was removed" in str(m.get("output"))],
            30,
            "erin's page to be told",
        )
        assert "Reload the page to sign in again" in told[0]["output"]
    assert password_login(password_server, "erin", "erin-password").status_code == 401


def test_a_new_password_ends_the_old_logins_and_a_new_login_works(password_server: UIServer) -> None:
    assert weaver_user(password_server.app_dir, "add", "frank", password="frank-password").returncode == 0
    old = cookie_of(password_login(password_server, "frank", "frank-password"))
    assert user_page(password_server, old) == 200
    changed = weaver_user(password_server.app_dir, "passwd", "frank", password="frank-password-2")
    assert changed.returncode == 0, changed.stderr
    assert user_page(password_server, old) == 401 and socket_refused(password_server, old)
    assert password_login(password_server, "frank", "frank-password").status_code == 401
    new = cookie_of(password_login(password_server, "frank", "frank-password-2"))
    assert user_page(password_server, new) == 200 and not socket_refused(password_server, new)
    nobody = weaver_user(password_server.app_dir, "passwd", "nobody", password="whatever-password")
    assert nobody.returncode == 1 and "no user 'nobody'" in nobody.stderr


def minted(server: UIServer, user: str, issued_hours_ago: float) -> dict[str, str]:
    """A token signed with the server's own secret, as its login made it ``issued_hours_ago`` hours
    ago, but with Chainlit's default lifetime of 15 days, so its ``exp`` is still ahead."""
    secret = (server.app_dir / ".auth_secret").read_text().strip()
    epoch = json.loads((server.app_dir / "users.json").read_text())[user]["login_epoch"]
    now = time.time()
    claims = {
        "identifier": user,
        "display_name": None,
        "metadata": {"provider": "password", "login_epoch": epoch},
        "iat": int(now - issued_hours_ago * 3600),
        "exp": int(now - issued_hours_ago * 3600 + 15 * 86400),
    }
    return {"Cookie": f"access_token={jwt.encode(claims, secret, algorithm='HS256')}"}


def test_a_login_lasts_as_long_as_the_session_setting(password_server: UIServer) -> None:
    """The server runs with WEAVER_UI_SESSION_HOURS=2."""
    response = password_login(password_server, "alice", "alice-password")
    token = response.cookies["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 2 * 3600
    assert "Max-Age=7200" in response.headers["set-cookie"]
    assert user_page(password_server, minted(password_server, "alice", 1.5)) == 200
    stale = minted(password_server, "alice", 2.5)
    assert user_page(password_server, stale) == 401 and socket_refused(password_server, stale)


def test_a_logout_is_still_honoured_after_a_restart(tmp_path: Path) -> None:
    app = tmp_path / "app"
    add_user(app, "gina", "gina-password")
    env = {"WEAVER_UI_AUTH": "password"}
    server = start_server(app, tmp_path / "server.log", extra_env=env)
    try:
        out = cookie_of(password_login(server, "gina", "gina-password"))
        kept = cookie_of(password_login(server, "gina", "gina-password"))
        assert httpx.post(f"{server.base_url}/logout", headers=out, timeout=30).status_code == 200
    finally:
        stop_server(server)
    server = start_server(app, tmp_path / "server-2.log", extra_env=env)
    try:
        assert user_page(server, out) == 401 and socket_refused(server, out)
        assert user_page(server, kept) == 200
    finally:
        stop_server(server)
