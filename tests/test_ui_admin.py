"""The admin page and roles against a real server with password login (SQLite history).

``root`` is an admin (``weaver user add --admin``), ``bob`` an ordinary user. The test drives the
page as a browser does: it reads the page, takes the form's CSRF token from it and posts the forms
with this server's own ``Origin``. What a user would check: an added user can sign in, a disabled
one is refused at their next request and their chat ends, a stopped session's kernel is gone from
``/proc``, non-admins and strangers are refused every admin route, a user's new password holds and
the old one does not, and feedback shows on the page, escaped.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.test_ui_auth import add_user, cookie_of, kernel_of, password_login, socket_refused, user_page
from tests.test_ui_history import client_of
from tests.test_ui_history_ownership import an_answer, put_feedback
from tests.ui_harness import REPO_ROOT, UIServer, login_cookie, pid_alive, start_server, stop_server, wait_until

ENV = {"WEAVER_UI_AUTH": "password"}
HEADER = "X-Forwarded-User"
ACTIONS = ("users/add", "users/disable", "users/enable", "users/role", "users/password", "sessions/stop")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-ui-admin")
    add_admin(root / "app", "root", "root-password")
    add_user(root / "app", "bob", "bob-password-2")
    srv = start_server(root / "app", root / "server.log", extra_env=ENV)
    try:
        yield srv
    finally:
        stop_server(srv)


def weaver_user(app_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ui.cli", "user", "--app-dir", str(app_dir), *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def add_admin(app_dir: Path, name: str, password: str) -> None:
    done = weaver_user(app_dir, "add", name, "--admin", "--password-stdin", stdin=password + "\n")
    assert done.returncode == 0 and "(admin)" in done.stdout, done.stderr


class Browser:
    """One signed-in browser: its cookie, and the admin page's forms as it posts them."""

    def __init__(self, server: UIServer, name: str, password: str | None = None) -> None:
        """A password login, or (``password`` None) a header login with the proxy's header."""
        self.server = server
        if password is None:
            self.cookie = login_cookie(server.base_url, {HEADER: name})
            assert self.cookie, f"{name} could not sign in"
        else:
            self.cookie = cookie_of(password_login(server, name, password))

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.server.base_url}{path}", headers=self.cookie, timeout=30)

    def csrf(self, path: str = "/admin") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def post(self, path: str, data: dict[str, str], origin: str | None = "", csrf: str | None = None) -> httpx.Response:
        headers = dict(self.cookie)
        if origin is not None:
            headers["Origin"] = origin or self.server.base_url
        form = {"csrf": self.csrf() if csrf is None else csrf, **data}
        return httpx.post(f"{self.server.base_url}{path}", data=form, headers=headers, timeout=60)

    def act(self, action: str, **data: str) -> str:
        """Post an admin form and return the page it lands on (its note says what happened)."""
        done = self.post(f"/admin/{action}", data)
        assert done.status_code == 303, (done.status_code, done.text)
        landed = self.get(done.headers["location"])
        assert landed.status_code == 200
        return landed.text


def audit_lines(server: UIServer) -> list[dict[str, Any]]:
    path = server.app_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def audited(server: UIServer, event: str, user: str) -> dict[str, Any]:
    found = [e for e in audit_lines(server) if e["event"] == event and e["user"] == user]
    assert found, f"no {event} line for {user}"
    return found[-1]


def test_an_admin_adds_a_user_who_signs_in_then_disables_them(server: UIServer) -> None:
    admin = Browser(server, "root", "root-password")
    assert "carol" not in admin.get("/admin").text
    page = admin.act("users/add", name="carol", password="carol-password")
    assert "User carol added." in page and 'data-user="carol"' in page
    assert audited(server, "user_added", "carol")["by"] == "root"

    carol = cookie_of(password_login(server, "carol", "carol-password"))
    assert user_page(server, carol) == 200
    with client_of(server, carol) as chat:
        pid = kernel_of(chat)
        assert pid_alive(pid)
        page = admin.act("users/disable", name="carol")
        assert "User carol disabled" in page
        assert user_page(server, carol) == 401 and socket_refused(server, carol)  # her very next request
        wait_until(lambda: not pid_alive(pid), 30, f"carol's kernel {pid} to exit")
        told = chat.wait_for(
            lambda: [m for m in chat.messages().values() if "disabled by an administrator" in str(m.get("output"))],
            30,
            "carol's page to be told",
        )
        assert "Reload the page to sign in again" in told[0]["output"]
    assert password_login(server, "carol", "carol-password").status_code == 401
    assert audited(server, "user_disabled", "carol")["by"] == "root"

    assert "User carol enabled" in admin.act("users/enable", name="carol")
    assert user_page(server, carol) == 401  # the login she had stays ended
    assert password_login(server, "carol", "carol-password").status_code == 200


def test_an_admin_resets_a_password_and_changes_a_role(server: UIServer) -> None:
    admin = Browser(server, "root", "root-password")
    admin.act("users/add", name="dora", password="dora-password")
    dora = Browser(server, "dora", "dora-password")
    assert dora.get("/admin").status_code == 403
    assert "dora is now admin" in admin.act("users/role", name="dora", role="admin")
    assert dora.get("/admin").status_code == 200  # at her next request, with the login she has
    assert "dora is now user" in admin.act("users/role", name="dora", role="user")
    assert dora.get("/admin").status_code == 403
    assert audited(server, "role_changed", "dora")["role"] == "user"

    assert "Password of dora reset" in admin.act("users/password", name="dora", password="dora-new-password")
    assert user_page(server, dora.cookie) == 401
    assert password_login(server, "dora", "dora-password").status_code == 401
    assert password_login(server, "dora", "dora-new-password").status_code == 200
    short = admin.act("users/password", name="dora", password="short")
    assert "at least 8 characters" in short
    assert "You cannot disable yourself" in admin.act("users/disable", name="root")
    # a link someone crafted cannot put words on the admin's page: only the server's own notes show
    crafted = admin.get("/admin?" + urlencode({"done": "invalid", "why": "your session expired, sign in at evil.test"}))
    assert crafted.status_code == 200 and "evil.test" not in crafted.text


def test_an_admin_stops_another_users_live_session_and_its_kernel_is_gone(server: UIServer) -> None:
    admin = Browser(server, "root", "root-password")
    bob = cookie_of(password_login(server, "bob", "bob-password-2"))
    with client_of(server, bob) as chat:
        pid = kernel_of(chat)
        page = admin.get("/admin").text
        rows = re.findall(r'<tr data-session="([^"]+)"><td>bob</td>(.*?)</tr>', page)
        assert rows, page
        session_id, cells = rows[-1]
        assert "MiB" in cells and "of a core" in cells and "connected" in cells
        landed = admin.act("sessions/stop", session=session_id)
        assert "The session of bob was stopped" in landed
        wait_until(lambda: not pid_alive(pid), 30, f"bob's kernel {pid} to exit")
        chat.wait_for(
            lambda: [m for m in chat.messages().values() if "An administrator stopped" in str(m.get("output"))],
            30,
            "bob's page to be told",
        )
        assert session_id not in admin.get("/admin").text
        again = kernel_of(chat)  # his next message gets a new session
        assert again != pid and pid_alive(again)
    line = audited(server, "session_stopped", "bob")
    assert line["by"] == "root" and line["session"] == session_id


def test_non_admins_and_strangers_are_refused_every_admin_route(server: UIServer) -> None:
    bob = Browser(server, "bob", "bob-password-2")
    admin = Browser(server, "root", "root-password")
    token = admin.csrf()
    for path in ("/admin", *(f"/admin/{a}" for a in ACTIONS)):
        assert bob.get(path).status_code == 403, path
        refused = bob.post(path, {"name": "bob", "role": "admin", "password": "x" * 12, "session": "x"}, csrf=token)
        assert refused.status_code == 403, path
        assert httpx.post(f"{server.base_url}{path}", data={"name": "bob"}, timeout=30).status_code == 401, path
        stranger = httpx.get(f"{server.base_url}{path}", timeout=30)
        assert stranger.status_code == 303 and stranger.headers["location"] == "/login", path
    assert audited(server, "admin_refused", "bob")["reason"] == "not_admin"
    assert "bob\tuser" in weaver_user(server.app_dir, "list").stdout  # nothing above made him an admin

    # The admin's own forms: from another site, without the page's token, or without an origin
    for origin, csrf in (("http://evil.example", token), ("", "0" * 64), (None, token)):
        done = admin.post("/admin/users/role", {"name": "bob", "role": "admin"}, origin=origin, csrf=csrf)
        assert done.status_code == 403, (origin, csrf, done.text)
    assert "bob\tuser" in weaver_user(server.app_dir, "list").stdout
    page = admin.get("/admin")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


def test_a_user_changes_their_own_password(server: UIServer) -> None:
    add_user(server.app_dir, "erin", "erin-password")
    erin, elsewhere = Browser(server, "erin", "erin-password"), Browser(server, "erin", "erin-password")
    path = "/account/password"
    erins_form = erin.csrf(path)
    wrong = erin.post(
        path,
        {"current": "not-it-at-all", "new": "erin-new-password", "again": "erin-new-password"},
        csrf=erin.csrf(path),
    )
    assert wrong.status_code == 303 and "current password is wrong" in erin.get(wrong.headers["location"]).text
    changed = erin.post(
        path,
        {"current": "erin-password", "new": "erin-new-password", "again": "erin-new-password"},
        csrf=erin.csrf(path),
    )
    assert changed.status_code == 303
    assert password_login(server, "erin", "erin-password").status_code == 401
    assert password_login(server, "erin", "erin-new-password").status_code == 200
    assert user_page(server, elsewhere.cookie) == 401  # her other login ended
    kept = {"Cookie": "; ".join(f"{k}={v}" for k, v in changed.cookies.items())}
    assert user_page(server, kept) == 200  # this browser has a login under the new password
    assert audited(server, "password_changed", "erin")["by"] == "erin"
    bob = Browser(server, "bob", "bob-password-2")  # someone else's token is no good for her form
    stolen = bob.post(path, {"current": "bob-password-2", "new": "x" * 12, "again": "x" * 12}, csrf=erins_form)
    assert stolen.status_code == 403


def test_feedback_given_by_a_user_is_listed_for_admins_escaped(server: UIServer) -> None:
    add_user(server.app_dir, "fay", "fay-password")
    fay = cookie_of(password_login(server, "fay", "fay-password"))
    with client_of(server, fay) as chat:
        chat.ask("hello there")
        thread_id = chat.wait_for(chat.thread_id, 30, "the chat's history id")
    step = an_answer(server, fay, thread_id)
    comment = f"wrong <b>answer</b> {uuid.uuid4().hex[:6]}"
    assert put_feedback(server, fay, {"forId": step, "value": 0, "comment": comment}).status_code == 200
    page = Browser(server, "root", "root-password").get("/admin").text
    table = page[page.index('id="feedback"') :]
    assert html.escape(comment) in table and comment not in table
    row = next(r for r in table.split("<tr>") if html.escape(comment) in r)
    assert 'aria-label="thumbs down"' in row and "fay" in row
    assert "weaver_rounds" in page  # the figures of /metrics


def test_weaver_user_roles_and_disabling(tmp_path: Path) -> None:
    # a store written before roles existed still loads: no role is an ordinary user
    add_user(tmp_path, "old", "old-password")
    store = tmp_path / "users.json"
    data = json.loads(store.read_text())
    data["old"].pop("role", None)
    store.write_text(json.dumps(data))
    assert weaver_user(tmp_path, "list").stdout.split() == ["old", "user"]
    add_admin(tmp_path, "ada", "ada-password")
    assert "ada\tadmin" in weaver_user(tmp_path, "list").stdout
    done = weaver_user(tmp_path, "disable", "old")
    assert done.returncode == 0 and "end at once" in done.stdout
    assert "old\tuser\tdisabled" in weaver_user(tmp_path, "list").stdout
    assert weaver_user(tmp_path, "enable", "old").returncode == 0
    assert "old\tuser\n" in weaver_user(tmp_path, "list").stdout
    assert "now an admin" in weaver_user(tmp_path, "role", "old", "admin").stdout
    # a new password keeps the role and the state
    assert weaver_user(tmp_path, "passwd", "old", "--password-stdin", stdin="old-password-2\n").returncode == 0
    assert "old\tadmin" in weaver_user(tmp_path, "list").stdout
    missing = weaver_user(tmp_path, "disable", "nobody")
    assert missing.returncode == 1 and "no user 'nobody'" in missing.stderr
    events = [json.loads(line)["event"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {"user_disabled", "user_enabled", "role_changed"} <= set(events)


@pytest.fixture(scope="module")
def header_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """Header login (the test plays the proxy), with ``boss`` named in WEAVER_UI_ADMINS."""
    root = tmp_path_factory.mktemp("weaver-ui-admin-header")
    env = {"WEAVER_UI_USER_HEADER": HEADER, "CHAINLIT_AUTH_SECRET": "s" * 40, "WEAVER_UI_ADMINS": "Boss, other"}
    srv = start_server(root / "app", root / "server.log", extra_env=env)
    try:
        yield srv
    finally:
        stop_server(srv)


def test_header_login_admins_come_from_the_setting_and_may_disable_users(header_server: UIServer) -> None:
    server = header_server
    gil = Browser(server, "gil")
    assert gil.get("/admin").status_code == 403
    boss = Browser(server, "boss")  # named "Boss" in WEAVER_UI_ADMINS: compared without case
    page = boss.get("/admin").text
    assert 'data-user="gil"' in page and "Add user" not in page  # the proxy adds users, not Weaver
    assert "User gil disabled" in boss.act("users/disable", name="gil")
    assert user_page(server, gil.cookie) == 401  # his next request
    assert not login_cookie(server.base_url, {HEADER: "gil"})  # and the proxy cannot sign him in again
    assert audited(server, "login_failed", "gil")["reason"] == "disabled"
    assert "User gil enabled" in boss.act("users/enable", name="gil")
    assert login_cookie(server.base_url, {HEADER: "gil"})
    # the command line does the same for a user of the proxy, who has no password here
    done = weaver_user(server.app_dir, "disable", "hal", "--outside")
    assert done.returncode == 0, done.stderr
    assert not login_cookie(server.base_url, {HEADER: "hal"})
    assert weaver_user(server.app_dir, "enable", "hal", "--outside").returncode == 0
    assert login_cookie(server.base_url, {HEADER: "hal"})
    for refused in ("users/add", "users/role", "users/password"):  # nothing to manage here: refused plainly
        assert boss.post(f"/admin/{refused}", {"name": "gil", "password": "x" * 12, "role": "admin"}).status_code == 409
