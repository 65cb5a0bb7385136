"""The audit log ``<app_dir>/audit.jsonl`` (``ui.audit``): one JSON line per event, written safely.

The file itself: lines whole when several processes append at once, bounded, never through a
link. Then a real password-login server behind a "proxy" (the test, trusted as 127.0.0.1, naming
the browser in ``X-Forwarded-For``): each event an operator would look for is there with the
user and the browser's address, and ``weaver user`` writes its own lines.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.ui_harness import REPO_ROOT, ChatClient, UIServer, start_server, stop_server, wait_until
from ui.audit import AUDIT_FILE, MAX_LINE_BYTES, AuditEvent, AuditLog
from ui.logins import UserStore

BROWSER = "203.0.113.9"  # the address the proxy names (TEST-NET-3: nothing is ever sent there)


def lines(app_dir: Path) -> list[dict[str, Any]]:
    path = app_dir / AUDIT_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_event(app_dir: Path, event: AuditEvent, **fields: Any) -> dict[str, Any]:
    def found() -> dict[str, Any]:
        return next(
            (e for e in lines(app_dir) if e["event"] == event.value and all(e.get(k) == v for k, v in fields.items())),
            {},
        )

    return wait_until(found, 30, f"audit line {event.value} {fields}")


# ------------------------------------------------------------------ the file


def test_a_line_is_json_with_time_event_user_and_client(tmp_path: Path) -> None:
    assert AuditLog(tmp_path).record(AuditEvent.CHAT_DELETED, user="alice", client="192.0.2.1", chat="c-1")
    (entry,) = lines(tmp_path)
    assert entry["event"] == "chat_deleted" and entry["user"] == "alice" and entry["client"] == "192.0.2.1"
    assert entry["chat"] == "c-1" and entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert (tmp_path / AUDIT_FILE).stat().st_mode & 0o777 == 0o600  # names and addresses: the operator's only


def _append_many(app_dir: str, writer: int, count: int) -> None:
    log = AuditLog(Path(app_dir))
    for n in range(count):
        log.record(AuditEvent.FILE_DOWNLOADED, user=f"w{writer}", client="x", n=n, file="é" * 180, chat="c" * 180)


def test_lines_from_several_processes_stay_whole(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 150)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    entries = lines(tmp_path)  # every line parses: none interleaved with another
    assert len(entries) == 600
    for writer in range(4):
        assert sorted(e["n"] for e in entries if e["user"] == f"w{writer}") == list(range(150))


def test_a_long_field_is_cut_and_the_line_stays_bounded(tmp_path: Path) -> None:
    AuditLog(tmp_path).record(AuditEvent.LOGIN_FAILED, user="u" * 10_000, client="c", a="界" * 5000, b="x" * 5000)
    raw = (tmp_path / AUDIT_FILE).read_bytes()
    assert raw.count(b"\n") == 1 and len(raw) <= MAX_LINE_BYTES
    (entry,) = lines(tmp_path)
    assert entry["event"] == "login_failed" and entry["user"].startswith("uuu") and len(entry["user"]) <= 200


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_the_log_is_never_written_through_a_link_or_into_a_fifo(tmp_path: Path, kind: str) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched\n")
    target = tmp_path / "app" / AUDIT_FILE
    target.parent.mkdir()
    if kind == "symlink":
        target.symlink_to(canary)
    elif kind == "hardlink":
        os.link(canary, target)
    else:
        os.mkfifo(target)
    assert AuditLog(target.parent).record(AuditEvent.LOGOUT, user="mallory", client="c") is False
    assert canary.read_text() == "untouched\n"


def weaver_user(app_dir: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
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


def test_weaver_user_writes_who_was_added_changed_and_removed(tmp_path: Path) -> None:
    assert weaver_user(tmp_path, "add", "carol", password="carol-password").returncode == 0
    assert weaver_user(tmp_path, "passwd", "carol", password="carol-password-2").returncode == 0
    assert weaver_user(tmp_path, "remove", "carol").returncode == 0
    assert weaver_user(tmp_path, "remove", "carol").returncode == 1  # nobody removed: nothing written
    assert [(e["event"], e["user"], e["client"]) for e in lines(tmp_path)] == [
        ("user_added", "carol", "cli"),
        ("password_changed", "carol", "cli"),
        ("user_removed", "carol", "cli"),
    ]
    assert all(e["by"] for e in lines(tmp_path))
    assert "carol-password" not in (tmp_path / AUDIT_FILE).read_text()


# ------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-audit")
    app = root / "app"
    store = UserStore(app)  # set-up only: `weaver user` itself is tested above and by the removal below
    for name in ("alice", "bob", "dora", "erin"):
        store.add(name, f"{name}-password")
    env = {
        "WEAVER_UI_AUTH": "password",
        "WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1",  # the test is the proxy
        "WEAVER_UI_LOGIN_ATTEMPTS_PER_USER": "2",
    }
    server = start_server(app, root / "server.log", extra_env=env)
    try:
        yield server
    finally:
        stop_server(server)


def login(server: UIServer, name: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/login",
        data={"username": name, "password": password},
        headers={"X-Forwarded-For": BROWSER},
        timeout=30,
    )


def browser(server: UIServer, response: httpx.Response) -> ChatClient:
    assert response.status_code == 200, response.text
    client = server.client()
    client.headers = {
        "Cookie": "; ".join(f"{k}={v}" for k, v in response.cookies.items()),
        "X-Forwarded-For": BROWSER,
    }
    return client


def test_logins_failed_logins_and_logouts_name_the_user_and_the_browser(audited: UIServer) -> None:
    app = audited.app_dir
    assert login(audited, "alice", "wrong").status_code == 401
    assert wait_event(app, AuditEvent.LOGIN_FAILED, user="alice", reason="credentials")["client"] == BROWSER
    assert login(audited, "alice", "wrong").status_code == 401
    assert login(audited, "alice", "wrong").status_code == 429
    assert wait_event(app, AuditEvent.LOGIN_FAILED, user="alice", reason="throttled")["client"] == BROWSER
    assert [login(audited, "alice", "wrong").status_code for _ in range(3)] == [429] * 3
    throttled = [e for e in lines(app) if e["event"] == "login_failed" and e.get("reason") == "throttled"]
    assert len(throttled) == 1, "a throttled client's every try was written: the audit log can be flooded"
    assert login(audited, "nobody", "x").status_code == 401
    wait_event(app, AuditEvent.LOGIN_FAILED, user="nobody")

    response = login(audited, "bob", "bob-password")
    assert wait_event(app, AuditEvent.LOGIN, user="bob")["client"] == BROWSER
    cookie = browser(audited, response).headers
    out = httpx.post(f"{audited.base_url}/logout", headers={**cookie, "Origin": audited.base_url}, timeout=30)
    assert out.status_code == 200, out.text
    assert wait_event(app, AuditEvent.LOGOUT, user="bob")["client"] == BROWSER
    assert "bob-password" not in (app / AUDIT_FILE).read_text() and "wrong" not in (app / AUDIT_FILE).read_text()


def test_downloads_on_both_routes_and_a_deleted_chat(audited: UIServer) -> None:
    app = audited.app_dir
    with browser(audited, login(audited, "dora", "dora-password")) as dora:
        file_id = dora.upload("sales.csv", b"a,b\n1,2\n")
        live = httpx.get(
            f"{audited.base_url}/project/file/{file_id}",
            params={"session_id": dora.session_id},
            headers=dora.headers,
            timeout=30,
        )
        assert live.status_code == 200 and live.content == b"a,b\n1,2\n"
        got = wait_event(app, AuditEvent.FILE_DOWNLOADED, user="dora", file="sales.csv")
        assert got["client"] == BROWSER and got["path"].startswith("/project/file/")
        dora.ask("hello", [file_id])
        thread_id = wait_until(dora.thread_id, 30, "the chat's id")
        thread = httpx.get(f"{audited.base_url}/project/thread/{thread_id}", headers=dora.headers, timeout=30).json()
        (url,) = [e["url"] for e in thread["elements"] if e.get("url")]
        stored = httpx.get(audited.base_url + url, headers=dora.headers, timeout=30)
        assert stored.status_code == 200 and stored.content == b"a,b\n1,2\n"
        got = wait_event(app, AuditEvent.FILE_DOWNLOADED, user="dora", path=url)
        assert got["client"] == BROWSER and got["chat"] == thread_id and got["file"] == "sales.csv"
    refused = httpx.get(audited.base_url + url, headers={"X-Forwarded-For": BROWSER}, timeout=30)
    assert refused.status_code == 401
    assert sum(e["event"] == "file_downloaded" for e in lines(app)) == 2  # a refused one is no download
    gone = httpx.request(
        "DELETE",
        f"{audited.base_url}/project/thread",
        json={"threadId": thread_id},
        headers={**dora.headers, "Origin": audited.base_url},
        timeout=30,
    )
    assert gone.status_code == 200, gone.text
    assert wait_event(app, AuditEvent.CHAT_DELETED, chat=thread_id)["user"] == "dora"


def test_a_chat_stopped_because_an_admin_removed_its_user(audited: UIServer) -> None:
    app = audited.app_dir
    with browser(audited, login(audited, "erin", "erin-password")) as erin:
        erin.ask("hello")
        assert weaver_user(app, "remove", "erin").returncode == 0
        wait_event(app, AuditEvent.USER_REMOVED, user="erin", client="cli")
        ended = wait_event(app, AuditEvent.SESSION_ENDED, user="erin")
        assert ended["reason"] == "user_removed" and ended["client"] == BROWSER
        assert ended["chat"] == erin.thread_id()
    assert uuid.UUID(ended["chat"])
