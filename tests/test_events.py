"""What a round's events carry: typed payloads read by attribute, TaskWeaver's ``extra`` dicts built
from them, and one label per attachment type shared by the web and the terminal UIs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from core import (
    AttachmentChunk,
    AttachmentType,
    ExecutionOutput,
    MessageChunk,
    Post,
    PostAdded,
    PostEventType,
    PostStarted,
    RoundEnded,
    RoundEventType,
    RoundStarted,
    SendToUpdated,
    SessionEventHandler,
    SessionEventHandlerBase,
    TaskWeaverApp,
    TaskWeaverEvent,
)
from core.events import EventEmitter
from core.memory import ATTACHMENT_LABELS
from ui.console import ConsoleEventHandler
from ui.view import RoundView

PAYLOAD_OF = {
    RoundEventType.round_start: RoundStarted,
    RoundEventType.round_end: RoundEnded,
    RoundEventType.round_new_post: PostAdded,
    PostEventType.post_start: PostStarted,
    PostEventType.post_send_to_update: SendToUpdated,
    PostEventType.post_message_update: MessageChunk,
    PostEventType.post_attachment_update: AttachmentChunk,
    PostEventType.post_execution_output: ExecutionOutput,
}
# TaskWeaver's keys of each ``extra`` (docs: taskweaver-behaviour.md), and the ones Weaver adds.
TASKWEAVER_KEYS = {
    PostEventType.post_start: ({"role"}, {"model"}),
    PostEventType.post_send_to_update: ({"role"}, set()),
    PostEventType.post_message_update: ({"is_end"}, {"replace"}),
    PostEventType.post_attachment_update: ({"type", "extra", "id", "is_end"}, {"data"}),
    PostEventType.post_execution_output: (set(), {"stream", "skipped"}),  # Weaver's own event
}


class _Recorder(SessionEventHandler):
    def __init__(self) -> None:
        self.events: list[TaskWeaverEvent] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        self.events.append(event)


class _TaskWeaverStyle(SessionEventHandlerBase):
    """A handler written against TaskWeaver: it gets ``extra`` dicts, never the payload types."""

    def __init__(self) -> None:
        self.extras: list[tuple[PostEventType, Any]] = []

    def handle_post(self, type: PostEventType, msg: str, extra: Any, post_id: str, round_id: str, **kw: Any) -> None:
        self.extras.append((type, extra))


def test_a_round_tells_its_data_in_typed_payloads_and_in_taskweaver_dicts(app: TaskWeaverApp) -> None:
    session = app.get_session()
    recorder, taskweaver = _Recorder(), _TaskWeaverStyle()

    class Both(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            recorder.handle(event)
            taskweaver.handle(event)

    try:
        rnd = session.send_message("Please run:\n```python\nprint('typed')\n```", event_handler=Both())
    finally:
        session.stop()
    assert rnd.state == "finished", rnd.error
    events = recorder.events
    for event in events:
        expected = PAYLOAD_OF.get(event.t)
        assert (type(event.payload) is expected) if expected else event.payload is None, event
    # What the code printed came while it ran, as well as in its result.
    printed = [(e.msg, e.payload) for e in events if e.t == PostEventType.post_execution_output]
    assert printed == [("typed\n", ExecutionOutput("stdout"))]
    # The payloads say what the round's memory holds.
    started = events[0].payload
    assert isinstance(started, RoundStarted) and started.model
    assert events[-1].payload == RoundEnded("finished")
    posts = rnd.post_list[1:]  # after the user's own post
    added = [e.payload for e in events if isinstance(e.payload, PostAdded)]
    assert added == [PostAdded(p.id, p.send_from, p.send_to) for p in posts]
    for post in posts:
        mine = [e.payload for e in events if e.post_id == post.id]
        assert mine[0] == PostStarted(post.send_from, started.model)
        send_to = [p for p in mine if isinstance(p, SendToUpdated)]
        assert send_to[-1].role == post.send_to
        chunks = [p for p in mine if isinstance(p, AttachmentChunk)]
        assert {c.id for c in chunks} == {a.id for a in post.attachment_list}
        assert all(c.type == a.type for c in chunks for a in post.attachment_list if a.id == c.id)
    # A TaskWeaver handler gets the same data as dicts with TaskWeaver's keys.
    assert taskweaver.extras
    for t, extra in taskweaver.extras:
        if t not in TASKWEAVER_KEYS:
            assert extra is None, (t, extra)
            continue
        required, added_by_weaver = TASKWEAVER_KEYS[t]
        assert isinstance(extra, dict) and required <= extra.keys() <= required | added_by_weaver, (t, extra)
    starts = [extra for t, extra in taskweaver.extras if t == PostEventType.post_start]
    assert [s["role"] for s in starts] == [p.send_from for p in posts]


def test_one_label_per_attachment_type_in_the_web_and_the_terminal(tmp_path: Path) -> None:
    assert set(ATTACHMENT_LABELS) == set(AttachmentType)
    assert len(set(ATTACHMENT_LABELS.values())) == len(ATTACHMENT_LABELS)
    emitter, view = EventEmitter(), RoundView(tmp_path)
    out = io.StringIO()
    console = ConsoleEventHandler(out, color=False)

    class Both(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            view.apply(event)
            console.handle(event)

    emitter.register(Both())
    proxy = emitter.post_proxy("r1", Post(send_from="CodeInterpreter"))
    shown_by_both = {
        AttachmentType.plan: "1. load the data",
        AttachmentType.current_plan_step: "load the data",
        AttachmentType.verification: "INCORRECT",
        AttachmentType.code_error: "open() is not allowed",
        AttachmentType.invalid_response: "{not json",
        AttachmentType.execution_result: "The execution succeeded.",
    }
    for kind, text in shown_by_both.items():
        proxy.update_attachment(text, kind)
    proxy.end()
    web = view.posts[proxy.post.id].markdown()
    terminal = out.getvalue()
    for kind in shown_by_both:
        assert f"**{kind.label.capitalize()}" in web, (kind, web)
        assert f"  {kind.label}:" in terminal, (kind, terminal)
    assert "**Invalid response:** {not json" in web and "  invalid response:\n    {not json" in terminal
