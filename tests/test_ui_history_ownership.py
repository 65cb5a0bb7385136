"""Hostile: one signed-in person writing to another's history through Chainlit's own routes and
events, against a real server with password users (alice and bob) and SQLite.

Chainlit's feedback and element routes write whatever ids the request names, and its socket's
message removal deletes a step by id alone. What a user checks: bob cannot add, re-point or
delete feedback on alice's messages, nor overwrite or delete her files, nor delete her messages;
alice's feedback, files and messages are as she left them, and she can still vote on her own.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import httpx
import pytest

from tests.test_ui_auth import PLUGINS, add_user
from tests.test_ui_history import client_of, cookie
from tests.ui_harness import UIServer, start_server, stop_server, wait_until

ENV = {"WEAVER_UI_AUTH": "password"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-ui-ownership")
    shutil.copytree(PLUGINS, root / "app" / "plugins")
    add_user(root / "app", "alice", "alice-password")
    add_user(root / "app", "bob", "bob-password-2")
    srv = start_server(root / "app", root / "server.log", extra_env=ENV)
    try:
        yield srv
    finally:
        stop_server(srv)


def thread(server: UIServer, headers: dict[str, str], thread_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/project/thread/{thread_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def step_ids(server: UIServer, headers: dict[str, str], thread_id: str) -> set[str]:
    return {s["id"] for s in thread(server, headers, thread_id)["steps"]}


def feedback_on(server: UIServer, headers: dict[str, str], thread_id: str, step_id: str) -> dict[str, Any] | None:
    (step,) = [s for s in thread(server, headers, thread_id)["steps"] if s["id"] == step_id]
    return step.get("feedback")


def put_feedback(server: UIServer, headers: dict[str, str], feedback: dict[str, Any]) -> httpx.Response:
    body = {"feedback": feedback, "sessionId": str(uuid.uuid4())}
    return httpx.put(f"{server.base_url}/feedback", json=body, headers=headers, timeout=10)


def delete_feedback(server: UIServer, headers: dict[str, str], feedback_id: str) -> httpx.Response:
    body = {"feedbackId": feedback_id}
    return httpx.request("DELETE", f"{server.base_url}/feedback", json=body, headers=headers, timeout=10)


def an_answer(server: UIServer, headers: dict[str, str], thread_id: str) -> str:
    answers = [s["id"] for s in thread(server, headers, thread_id)["steps"] if s["type"] == "assistant_message"]
    assert answers, "the chat has an answer to vote on"
    return str(answers[0])


def test_feedback_on_another_persons_message_is_refused_and_theirs_is_intact(server: UIServer) -> None:
    alice, bob = cookie(server, "alice", "alice-password"), cookie(server, "bob", "bob-password-2")
    with client_of(server, alice) as chat:
        chat.ask("hello")
        alice_thread = chat.wait_for(chat.thread_id, 30, "the chat's history id")
    with client_of(server, bob) as chat:
        chat.ask("hello too")
        bob_thread = chat.wait_for(chat.thread_id, 30, "the chat's history id")
    alice_step, bob_step = an_answer(server, alice, alice_thread), an_answer(server, bob, bob_thread)
    given = put_feedback(server, alice, {"forId": alice_step, "value": 1, "comment": "useful"})
    assert given.status_code == 200, given.text
    alice_feedback = given.json()["feedbackId"]

    added = put_feedback(server, bob, {"forId": alice_step, "value": 0, "comment": "bob was here"})
    assert added.status_code == 403 and "your own chats" in added.json()["detail"]
    overwritten = put_feedback(server, bob, {"id": alice_feedback, "forId": alice_step, "value": 0})
    assert overwritten.status_code == 403
    moved = put_feedback(server, bob, {"id": alice_feedback, "forId": bob_step, "value": 0, "comment": "mine now"})
    assert moved.status_code == 403 and "not on one of your messages" in moved.json()["detail"]
    deleted = delete_feedback(server, bob, alice_feedback)
    assert deleted.status_code == 403
    kept = feedback_on(server, alice, alice_thread, alice_step)
    assert kept is not None and (kept["id"], kept["value"], kept["comment"]) == (alice_feedback, 1, "useful")
    assert feedback_on(server, bob, bob_thread, bob_step) is None

    own = put_feedback(server, bob, {"forId": bob_step, "value": 0, "comment": "meh"})
    assert own.status_code == 200 and (feedback_on(server, bob, bob_thread, bob_step) or {}).get("comment") == "meh"
    changed = put_feedback(server, alice, {"id": alice_feedback, "forId": alice_step, "value": 0})
    assert changed.status_code == 200
    assert (feedback_on(server, alice, alice_thread, alice_step) or {}).get("value") == 0
    assert delete_feedback(server, alice, alice_feedback).status_code == 200
    assert feedback_on(server, alice, alice_thread, alice_step) is None


def test_another_persons_element_cannot_be_overwritten_or_deleted(server: UIServer) -> None:
    alice, bob = cookie(server, "alice", "alice-password"), cookie(server, "bob", "bob-password-2")
    with client_of(server, alice) as chat:
        chat.ask("", [chat.upload("sales.csv", b"region,units\nnorth,3\n")])
        alice_thread = chat.wait_for(chat.thread_id, 30, "the chat's history id")
    (upload,) = [e for e in thread(server, alice, alice_thread)["elements"] if e["name"] == "sales.csv"]
    with client_of(server, bob) as chat:
        chat.ask("hello")
        payloads = [
            {"id": upload["id"], "threadId": upload["threadId"], "forId": upload["forId"]},
            {"id": upload["id"], "threadId": "", "forId": upload["forId"]},
        ]
        for target in payloads:
            element = {**target, "type": "custom", "name": "sales.csv", "display": "inline", "props": {"x": "bob"}}
            body = {"element": element, "sessionId": chat.session_id}
            put = httpx.put(f"{server.base_url}/project/element", json=body, headers=bob, timeout=10)
            assert put.status_code == 403 and "not in one of your chats" in put.json()["detail"], put.text
            url = f"{server.base_url}/project/element"
            removed = httpx.request("DELETE", url, json=body, headers=bob, timeout=10)
            assert removed.status_code == 403, removed.text
    (still,) = [e for e in thread(server, alice, alice_thread)["elements"] if e["id"] == upload["id"]]
    assert (still["type"], still["mime"]) == (upload["type"], upload["mime"])
    served = httpx.get(f"{server.base_url}{still['url']}", headers=alice, timeout=10)
    assert served.status_code == 200 and served.content == b"region,units\nnorth,3\n"


def _message(message_id: str, text: str) -> dict[str, Any]:
    created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    return {"threadId": "", "id": message_id, "name": "User", "type": "user_message", "output": text,
            "createdAt": created, "metadata": {}}  # fmt: skip


def test_removing_a_message_that_carries_another_chats_step_id_leaves_that_step(server: UIServer) -> None:
    """Editing a message removes every later one, each deleted by id; bob's chat holds a message
    sent with the id of alice's message."""
    alice, bob = cookie(server, "alice", "alice-password"), cookie(server, "bob", "bob-password-2")
    with client_of(server, alice) as chat:
        alice_message = chat.send("my message")
        chat.wait_turn(alice_message)
        alice_thread = chat.wait_for(chat.thread_id, 30, "the chat's history id")
    assert alice_message in step_ids(server, alice, alice_thread)
    with client_of(server, bob) as chat:
        first = chat.send("first")
        chat.wait_turn(first)
        bob_thread = chat.wait_for(chat.thread_id, 30, "the chat's history id")
        chat.sio.emit("client_message", {"message": _message(alice_message, "borrowed id"), "fileReferences": []})
        chat.wait_turn(alice_message)
        last = chat.send("last")
        chat.wait_turn(last)
        assert last in step_ids(server, bob, bob_thread)
        chat.sio.emit("edit_message", {"message": {"id": first, "output": "first, edited"}})
        # the later messages are deleted in order, the borrowed id before ``last``
        wait_until(lambda: last not in step_ids(server, bob, bob_thread), 30, "bob's later message to be deleted")
    assert alice_message in step_ids(server, alice, alice_thread)
