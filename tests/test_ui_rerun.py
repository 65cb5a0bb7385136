"""Edit and Regenerate through a real Chainlit server, driven over socket.io as the page does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.ui_harness import (
    ChatClient,
    UIServer,
    answers,
    code_block,
    gated_code,
    start_server,
    stop_server,
    ui_server,
    wait_started,
    wait_until,
)

__all__ = ["ui_server"]
COUNT = code_block("n = globals().get('n', 0) + 1\nprint('n is', n, 'a is', a)")


def runs_of(client: ChatClient, message_id: str) -> list[dict[str, Any]]:
    """The finished "on_message" runs under a user message (a re-run adds one)."""
    return [
        m
        for m in client.messages().values()
        if m.get("name") == "on_message" and m.get("parentId") == message_id and m.get("end")
    ]


def answers_under(client: ChatClient, message_id: str) -> list[str]:
    run_ids = {m["id"] for m in client.messages().values() if m.get("parentId") == message_id}
    return answers([m for m in client.messages().values() if m.get("parentId") in run_ids])


def press(server: UIServer, client: ChatClient, action: dict[str, Any]) -> None:
    pressed = httpx.post(
        f"{server.base_url}/project/action",
        json={"sessionId": client.session_id, "action": action},
        headers=client.headers,
        timeout=30,
    )
    assert pressed.status_code == 200, pressed.text


def regenerate_button(client: ChatClient, message_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        ids = {m["id"] for m in client.messages().values() if m.get("type") == "assistant_message"}
        shown = [d for n, d in client.events if n == "action" and d.get("name") == "weaver_regenerate"]
        removed = {d.get("id") for n, d in client.events if n == "remove_action" and isinstance(d, dict)}
        live = [d for d in shown if d.get("forId") in ids and d.get("id") not in removed]
        return live[-1] if live else None

    found = client.wait_for(find, 30, "the Regenerate button")
    assert found is not None
    return found


def test_regenerate_and_edit_rerun_from_the_state_before_the_round(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        client.ask(code_block("a = 41"))
        second = client.send(COUNT)
        client.wait_turn(second)
        assert any("n is 1 a is 41" in a for a in answers_under(client, second)), answers_under(client, second)
        press(ui_server, client, regenerate_button(client, second))
        client.wait_for(lambda: len(runs_of(client, second)) == 2, 90, "the regenerated round")
        shown = answers_under(client, second)
        assert len([a for a in shown if "n is" in a]) == 1, f"the old answer is still shown: {shown}"
        assert any("n is 1 a is 41" in a for a in shown), f"the discarded round's n leaked: {shown}"

        client.sio.emit(
            "edit_message",
            {"message": {"id": second, "output": code_block("print('n' in globals(), a + 1)")}},
        )
        client.wait_for(
            lambda: (
                any("False 42" in a for a in answers_under(client, second)) and client.event_names()[-1] == "task_end"
            ),
            90,
            "the edited round",
        )
        shown = answers_under(client, second)
        assert not any("n is" in a for a in shown), f"the replaced answer is still shown: {shown}"
        edited = client.messages()[second]
        assert "a + 1" in str(edited.get("output")), edited
        thread_id = client.wait_for(client.thread_id, 30, "the chat's history id")

        def stored() -> str:
            thread = httpx.get(f"{ui_server.base_url}/project/thread/{thread_id}", headers=client.headers, timeout=10)
            return "\n".join(str(step.get("output") or "") for step in thread.json().get("steps") or [])

        # The history (write-behind) ends up as the page: the edited round only, none of those it replaced.
        def settled() -> str:
            text = stored()
            return text if "False 42" in text and "n is" not in text else ""

        history = wait_until(settled, 30, "the history to hold only the edited round")
        assert "a + 1" in history, "the edited message is not stored as edited"


def test_an_edit_while_a_round_runs_is_refused(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        first = client.send(code_block("x = 1"))
        client.wait_turn(first)
        second = client.send(gated_code("busy", "print('busy done')"))
        gate = wait_started(ui_server, "busy")
        client.sio.emit("edit_message", {"message": {"id": first, "output": code_block("print('edited ran')")}})
        client.wait_for(
            lambda: any("still being worked on" in str(m.get("output")) for m in client.messages().values()),
            30,
            "the refusal",
        )
        gate.write_text("")
        done = client.wait_turn(second)
        assert any("busy done" in a for a in answers(done))
        assert not any("edited ran" in str(m.get("output")) for m in client.messages().values())


def test_stop_cancels_a_regenerated_round(ui_server: UIServer) -> None:
    # Waits at its gate each time it runs, and clears its marks when let through.
    gated = gated_code("again", "os.remove('started-again')\nos.remove('gate-again')\nprint('let through')")
    with ui_server.client() as client:
        message = client.send(gated)
        wait_started(ui_server, "again").write_text("")
        client.wait_turn(message)
        press(ui_server, client, regenerate_button(client, message))
        wait_started(ui_server, "again")  # the regenerated round runs the code again and waits
        assert "task_start" in client.event_names()[-40:], "the page does not show the round running"
        client.stop()
        client.wait_for(
            lambda: any("Round cancelled" in a for a in answers_under(client, message)), 60, "the cancelled round"
        )


@pytest.fixture()
def no_edit_server(tmp_path: Path) -> Iterator[UIServer]:
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_UI_EDIT_MESSAGES": "false"})
    try:
        yield server
    finally:
        stop_server(server)


def test_with_editing_off_the_server_refuses_an_edit(no_edit_server: UIServer) -> None:
    settings = httpx.get(
        f"{no_edit_server.base_url}/project/settings", params={"language": "en-US"}, headers={}, timeout=30
    )
    with no_edit_server.client() as client:
        if settings.status_code == 401:
            settings = httpx.get(
                f"{no_edit_server.base_url}/project/settings",
                params={"language": "en-US"},
                headers=client.headers,
                timeout=30,
            )
        assert settings.json()["features"]["edit_message"] is False, "the page would still show the pencil"
        first = client.send(code_block("x = 1\nprint('first ran')"))
        client.wait_turn(first)
        ack = client.sio.call(
            "edit_message", {"message": {"id": first, "output": code_block("print('edited ran')")}}, timeout=10
        )
        assert ack == {"refused": "Editing messages is turned off on this server."}
        no_edit_server.wait_log("refused an edit on socket", 10)
        assert len(runs_of(client, first)) == 1
        assert first not in client.messages(), "the server updated the message it refused to edit"
        assert not any("edited ran" in a for a in answers_under(client, first))


def test_the_approval_switch_makes_code_wait_and_stop_ends_the_wait(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        client.sio.emit("chat_settings_change", {"code_approval": True})
        try:
            message = client.send(code_block("open('approved.txt', 'w').write('x')"))
            question = client.wait_for(
                lambda: next((d for n, d in client.events if n == "ask" and "waits for your approval" in str(d)), None),
                60,
                "the approval question",
            )
            assert "open('approved.txt'" in str(question) and "action" in str(question), question
            client.stop()
            client.wait_for(
                lambda: any("Round cancelled" in a for a in answers_under(client, message)), 60, "the cancelled round"
            )
            assert not list(Path(ui_server.app_dir).rglob("approved.txt")), "code ran without approval"
        finally:  # the switch is the user's, for all their chats: the server's other tests run code freely
            client.sio.emit("chat_settings_change", {"code_approval": False})
        turn = client.ask(code_block("print('free' 'ly')"))
        assert any("freely" in a for a in answers(turn)), answers(turn)
