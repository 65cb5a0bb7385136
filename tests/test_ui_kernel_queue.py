"""A chat whose kernel waits in line to start says where it is, through a real server and real kernels.

The server starts one kernel at a time (``execution.max_concurrent_starts = 1``, no warm pool), and
every kernel loads a plugin that holds its start until the test opens a gate: the first chat's start
holds the only slot, and the chats after it wait in line, each told its place in its code step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from core import KernelQueued, PostEventType
from core.events import EventEmitter, PostEventProxy
from core.memory import Post
from tests.ui_harness import (
    ChatClient,
    UIServer,
    answers,
    code_block,
    start_server,
    steps,
    stop_server,
    wait_until,
)
from ui.view import RoundView

PLUGIN_YAML = """name: hold
enabled: true
required: false
description: Holds every kernel's start until the test opens its gate.
parameters: []
returns: []
"""
# Runs in each kernel as it starts (plugins load in its bootstrap): says so in the session folder,
# then waits for the gate file the test writes beside the plugin (the folder is bound read-only),
# or for a ``go`` file the test puts in this kernel's own session folder (one start let through).
PLUGIN_PY = """import os, time
from taskweaver.plugin import Plugin, register_plugin

open("start-held", "w").close()
_GATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")
while not (os.path.exists(_GATE) or os.path.exists("go")):
    time.sleep(0.05)


@register_plugin
class Hold(Plugin):
    def __call__(self) -> str:
        return "held"
"""
WAITING = "Waiting for a kernel:"


@pytest.fixture
def one_start_at_a_time(tmp_path: Path) -> Iterator[UIServer]:
    plugins = tmp_path / "app" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "hold.yaml").write_text(PLUGIN_YAML)
    (plugins / "hold.py").write_text(PLUGIN_PY)
    env = {"WEAVER_EXECUTION__MAX_CONCURRENT_STARTS": "1", "WEAVER_EXECUTION__POOL_SIZE": "0"}
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        yield server
    finally:
        (plugins / "gate").write_text("")
        stop_server(server)


def _shown(client: ChatClient) -> list[str]:
    """Every text the chat's steps showed, in order (each streamed or updated output)."""
    with client._cond:
        events = list(client.events)
    texts = []
    for name, data in events:
        if isinstance(data, dict) and name in ("new_message", "update_message", "stream_start", "stream_token"):
            texts.append(str(data.get("token") if name == "stream_token" else data.get("output") or ""))
    return texts


def _code_steps_show(client: ChatClient, text: str) -> bool:
    return any(text in shown for shown in _shown(client))


def test_a_chat_waiting_for_a_kernel_start_sees_its_place_in_line(one_start_at_a_time: UIServer) -> None:
    server = one_start_at_a_time
    sessions = Path(server.app_dir, "workspace", "sessions")
    with server.client() as first, server.client() as second, server.client() as third:
        first_id = first.send(code_block("print('first')"))
        first_held = wait_until(
            lambda: next(sessions.glob("*/cwd/start-held"), None), 60, "the first kernel to hold its start"
        )
        second_id = second.send(code_block("print('second')"))
        second.wait_for(lambda: _code_steps_show(second, f"{WAITING}** you are next"), 60, "second to see its place")
        third_id = third.send(code_block("print('third')"))
        third.wait_for(lambda: _code_steps_show(third, f"{WAITING}** 1 ahead of you"), 60, "third to see its place")
        assert not _code_steps_show(first, WAITING)  # it did not wait: it had the slot
        (first_held.parent / "go").write_text("")  # only the first start goes on; the second's holds
        # Once the first start is done, the line moves: the third one is next.
        third.wait_for(lambda: _code_steps_show(third, f"{WAITING}** you are next"), 60, "third to move up")
        (server.app_dir / "plugins" / "gate").write_text("")
        chats = ((first, first_id, "first"), (second, second_id, "second"), (third, third_id, "third"))
        for client, message_id, word in chats:
            turn = client.wait_turn(message_id, timeout=120)
            assert any(word in answer for answer in answers(turn)), answers(turn)
            # Its place in line is gone from the step once its kernel started.
            assert not any(WAITING in shown for shown in steps(turn, "CodeInterpreter"))


def test_the_step_shows_the_place_in_line_and_drops_it_when_the_start_begins(tmp_path: Path) -> None:
    view = RoundView(tmp_path)
    events: list[Any] = []

    class Recorder(EventEmitter):
        def emit(self, event: Any) -> None:
            events.append(event)
            view.apply(event)

    proxy = PostEventProxy(Recorder(), "r1", Post(send_from="CodeInterpreter"))
    proxy.update_status("starting your Python kernel")
    proxy.kernel_queue(13)
    step = view.posts[proxy.post.id]
    assert f"{WAITING}** 12 ahead of you" in step.markdown()
    proxy.kernel_queue(1)
    assert f"{WAITING}** you are next" in step.markdown() and "12 ahead" not in step.markdown()
    proxy.kernel_queue(0)
    assert WAITING not in step.markdown() and "starting your Python kernel" in step.markdown()
    queued = [e for e in events if e.t == PostEventType.post_kernel_queue]
    assert [e.payload for e in queued] == [KernelQueued(13), KernelQueued(1), KernelQueued(0)]
    assert queued[0].extra == {"position": 13, "ahead": 12}
