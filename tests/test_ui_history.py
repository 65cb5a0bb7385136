"""Chat history and resume against a real server, with password users (two people) and SQLite.

What a user checks: my chats are listed and nobody else's; another person's chat, its files and
its uploads are refused; after a server restart my chat is there, and continuing it brings my
variables back; deleting a chat deletes its files and its session folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.test_ui_auth import PLUGINS, add_user, password_login
from tests.ui_harness import ChatClient, UIServer, answers, code_block, start_server, steps, stop_server
from ui.restore import TITLE as RESTORE_TITLE

ENV = {"WEAVER_UI_AUTH": "password"}


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weaver-ui-history")
    shutil.copytree(PLUGINS, root / "app" / "plugins")
    add_user(root / "app", "alice", "alice-password")
    add_user(root / "app", "bob", "bob-password-2")
    return root / "app"


@pytest.fixture(scope="module")
def server(app_dir: Path) -> Iterator[UIServer]:
    srv = start_server(app_dir, app_dir.parent / "server.log", extra_env=ENV)
    try:
        yield srv
    finally:
        stop_server(srv)


def cookie(server: UIServer, name: str, password: str) -> dict[str, str]:
    response = password_login(server, name, password)
    assert response.status_code == 200, response.text
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in response.cookies.items())}


def client_of(server: UIServer, headers: dict[str, str], resume_thread_id: str = "") -> ChatClient:
    client = ChatClient(server.base_url, resume_thread_id=resume_thread_id)
    client.headers.update(headers)
    return client


def threads(server: UIServer, headers: dict[str, str], search: str | None = None) -> list[dict]:
    body = {"pagination": {"first": 20, "cursor": None}, "filter": {"search": search} if search else {}}
    response = httpx.post(f"{server.base_url}/project/threads", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_each_person_sees_and_opens_only_their_own_chats(server: UIServer) -> None:
    alice, bob = cookie(server, "alice", "alice-password"), cookie(server, "bob", "bob-password-2")
    with client_of(server, alice) as chat:
        chat.ask("", [chat.upload("sales.csv", b"region,units\nnorth,3\n")])
        thread_id = chat.wait_for(chat.thread_id, 30, "the chat's history id")
    mine = threads(server, alice)
    assert [t["id"] for t in mine] == [thread_id]
    assert threads(server, bob) == []
    assert httpx.get(f"{server.base_url}/project/thread/{thread_id}", headers=alice, timeout=10).status_code == 200
    theirs = httpx.get(f"{server.base_url}/project/thread/{thread_id}", headers=bob, timeout=10)
    assert theirs.status_code == 403
    assert httpx.get(f"{server.base_url}/project/thread/{thread_id}", timeout=10).status_code == 401
    thread = httpx.get(f"{server.base_url}/project/thread/{thread_id}", headers=alice, timeout=10).json()
    urls = [e["url"] for e in thread.get("elements") or [] if e.get("url")]
    assert urls, "the upload is kept with the chat"
    assert httpx.get(f"{server.base_url}{urls[0]}", headers=alice, timeout=10).status_code == 200
    assert httpx.get(f"{server.base_url}{urls[0]}", headers=bob, timeout=10).status_code == 404
    renamed = httpx.put(
        f"{server.base_url}/project/thread",
        json={"threadId": thread_id, "name": "Sales chat"},
        headers=alice,
        timeout=10,
    )
    assert renamed.status_code == 200
    assert [t["name"] for t in threads(server, alice, search="sales")] == ["Sales chat"]
    stolen = httpx.put(
        f"{server.base_url}/project/thread", json={"threadId": thread_id, "name": "mine now"}, headers=bob, timeout=10
    )
    assert stolen.status_code == 403


def test_after_a_restart_a_chat_is_listed_and_continues_with_its_variables(app_dir: Path, server: UIServer) -> None:
    alice = cookie(server, "alice", "alice-password")
    with client_of(server, alice) as chat:
        assert any("set 41" in a for a in answers(chat.ask(code_block("x = 41\nprint('set', x)"))))
        chat.ask(code_block("open('notes.txt', 'w').write('kept')"))
        thread_id = chat.thread_id()
    stop_server(server)  # every kernel goes with it
    again = start_server(app_dir, app_dir.parent / "server-2.log", extra_env=ENV)
    try:
        assert thread_id in [t["id"] for t in threads(again, alice)]  # the same login cookie still works
        chat = client_of(again, alice, resume_thread_id=thread_id).connect(expect_chat_start=False)
        try:
            chat.wait_for(lambda: "resume_thread" in chat.event_names(), 30, "the chat's history to load")
            turn = chat.ask(code_block("print(x + 1, open('notes.txt').read())"), timeout=120)
        finally:
            chat.disconnect()
        restore = [m for m in chat.messages().values() if str(m.get("name")).startswith(RESTORE_TITLE)]
        assert restore and "Loaded" in str(restore[0].get("output")), restore
        said = "\n".join(answers(turn) + steps(turn, "CodeInterpreter"))
        assert "42 kept" in said, said
    finally:
        stop_server(again)


def test_deleting_a_chat_deletes_its_files_and_its_session(app_dir: Path) -> None:
    srv = start_server(app_dir, app_dir.parent / "server-3.log", extra_env=ENV)
    try:
        alice = cookie(srv, "alice", "alice-password")
        with client_of(srv, alice) as chat:
            chat.ask("", [chat.upload("gone.csv", b"a\n1\n")])
            thread_id = chat.thread_id()
        sessions = [p for p in (app_dir / "workspace" / "sessions").iterdir() if (p / "cwd" / "gone.csv").exists()]
        assert len(sessions) == 1
        stored = list((app_dir / "files").rglob("gone.csv"))
        assert stored
        bob = cookie(srv, "bob", "bob-password-2")
        forbidden = httpx.request("DELETE", f"{srv.base_url}/project/thread", json={"threadId": thread_id}, headers=bob)
        assert forbidden.status_code == 403 and sessions[0].exists()
        deleted = httpx.request("DELETE", f"{srv.base_url}/project/thread", json={"threadId": thread_id}, headers=alice)
        assert deleted.status_code == 200
        assert not any(p.exists() for p in stored) and not sessions[0].exists()
        assert thread_id not in [t["id"] for t in threads(srv, alice)]
    finally:
        stop_server(srv)


def test_with_local_login_history_works_with_no_set_up(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "app", tmp_path / "server.log")  # no WEAVER_UI_AUTH, no database settings
    try:
        with srv.client() as chat:
            chat.ask(code_block("print('kept for later')"))
            thread_id = chat.thread_id()
        mine = threads(srv, chat.headers)
        assert [t["id"] for t in mine] == [thread_id]
        assert (tmp_path / "app" / "weaver.db").stat().st_mode & 0o777 == 0o600
    finally:
        stop_server(srv)
