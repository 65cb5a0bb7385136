"""The Session API end to end on the offline backend, with a real kernel per session."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from core import (
    AttachmentType,
    PostEventType,
    SessionEventHandler,
    SessionStopped,
    TaskWeaverApp,
    TaskWeaverEvent,
)
from tests.conftest import pid_alive
from tests.llm_server import Answer, ScriptedLLMServer
from tests.test_llm_rounds import planner, to_user


class Recorder(SessionEventHandler):
    def __init__(self) -> None:
        self.events: list[TaskWeaverEvent] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.t.value for e in self.events]


def code(source: str) -> str:
    return f"Please run:\n```python\n{source}\n```"


@pytest.fixture(scope="module")
def session(app: TaskWeaverApp):
    s = app.get_session()
    yield s
    s.stop()


def test_code_block_result_is_in_the_reply(session) -> None:
    rnd = session.send_message(code("answer = 6 * 7\nprint(f'answer={answer}')"))
    assert rnd.state == "finished", rnd.error
    assert "answer=42" in rnd.reply_text
    assert rnd.reply.send_from == "Planner" and rnd.reply.send_to == "User"
    roles = [p.send_from for p in rnd.post_list]
    assert roles == ["User", "Planner", "CodeInterpreter", "Planner"]
    ci_post = rnd.post_list[2]
    assert ci_post.first(AttachmentType.reply_content).startswith("answer = 6 * 7")
    assert ci_post.first(AttachmentType.execution_status) == "success"


def test_variables_persist_between_rounds(session) -> None:
    session.send_message(code("persisted = [1, 2, 3]"))
    rnd = session.send_message(code("print(sum(persisted) * 100)"))
    assert rnd.state == "finished"
    assert "600" in rnd.reply_text


def test_handler_sees_every_step_in_order(session) -> None:
    recorder = Recorder()
    rnd = session.send_message(code("print('streamed')"), event_handler=recorder)
    types = recorder.types()
    assert types[0] == "round_start" and types[-1] == "round_end"
    assert recorder.events[-1].extra == {"state": "finished"}
    # Each post opens, changes, and closes before the next one opens.
    post_ids = [e.post_id for e in recorder.events if e.t == PostEventType.post_start]
    assert post_ids == [p.id for p in rnd.post_list[1:]]
    for post_id in post_ids:
        mine = [e.t for e in recorder.events if e.post_id == post_id]
        assert mine[0] == PostEventType.post_start and mine[-1] == PostEventType.post_end
        assert PostEventType.post_status_update in mine
    # The code streamed in several chunks, the last one closing the attachment.
    code_chunks = [
        e
        for e in recorder.events
        if e.t == PostEventType.post_attachment_update and e.extra["type"] == AttachmentType.reply_content
    ]
    assert len(code_chunks) >= 3
    assert code_chunks[0].extra["is_end"] is False and code_chunks[-1].extra["is_end"] is True
    assert "".join(e.msg for e in code_chunks) == "print('streamed')"
    # The answer's message streamed too and ends with is_end.
    answer = [e for e in recorder.events if e.t == PostEventType.post_message_update and e.post_id == rnd.reply.id]
    assert answer[-1].extra["is_end"] is True
    assert "".join(e.msg for e in answer) == rnd.reply_text
    # The handler is registered for one call only.
    session.send_message(code("1"))
    assert recorder.types()[-1] == "round_end" and len(recorder.types()) == len(types)


def test_files_by_path_and_content_land_in_cwd_and_are_profiled(session, tmp_path: Path) -> None:
    csv = tmp_path / "sales.csv"
    csv.write_text("region,amount\nnorth,10\nsouth,27\neast,5\n")
    rnd = session.send_message(
        "", files=[{"name": "sales.csv", "path": str(csv)}, {"name": "notes.txt", "content": b"alpha beta\ngamma\n"}]
    )
    assert rnd.state == "finished", rnd.error
    assert rnd.user_query.startswith("files added: sales.csv, notes.txt.")
    assert (session.cwd / "sales.csv").read_bytes() == csv.read_bytes()
    assert (session.cwd / "notes.txt").read_bytes() == b"alpha beta\ngamma\n"
    reply = rnd.reply_text
    assert "sales.csv: 3 rows x 2 columns" in reply and "`sales`" in reply
    assert "notes.txt: text, 2 lines, 3 words" in reply
    tables = rnd.post_list[2].get_attachment(AttachmentType.table)
    assert tables and tables[0].content["columns"] == ["region", "amount"]
    # The table stays loaded under the file's name.
    assert "42" in session.send_message(code("print(sales.amount.sum())")).reply_text


def test_an_image_is_profiled_with_size_and_mode(session) -> None:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (32, 16), "red").save(buffer, format="PNG")
    rnd = session.send_message("", files=[{"name": "red.png", "content": buffer.getvalue()}])
    assert "red.png: image 32 x 16 pixels, mode RGB" in rnd.reply_text


def test_a_broken_table_is_reported_not_fatal(session) -> None:
    rnd = session.send_message("", files=[{"name": "broken.parquet", "content": b"not parquet at all"}])
    assert rnd.state == "finished"
    assert "broken.parquet: could not be read as a table" in rnd.reply_text


@pytest.mark.parametrize("hostile", ["../../escape.txt", "/etc/passwd", "..\\..\\win.txt", ".hidden", "a\x07b.txt"])
def test_hostile_names_are_neutralised(session, hostile: str) -> None:
    outside_before = set(session.workspace.parent.parent.rglob("*"))
    rnd = session.send_message("", files=[{"name": hostile, "content": b"x"}])
    assert rnd.state == "finished"
    added = rnd.user_query.split("files added: ")[1].split(".\n")[0]
    assert "/" not in added and "\\" not in added and not added.startswith(".") and "\x07" not in added
    assert (session.cwd / added).read_bytes() == b"x"
    sessions = session.workspace.parent
    new_paths = set(sessions.parent.rglob("*")) - outside_before
    # the warm pool refills meanwhile: folders of other (pooled) sessions may appear beside this one
    pooled = {p for p in new_paths if p.is_relative_to(sessions) and p != sessions and _is_other_session(p, session)}
    assert all(
        session.cwd in p.parents or p == session.cwd / added or p.parent == session.workspace
        for p in new_paths - pooled
    ), new_paths


def _is_other_session(path: Path, session: Any) -> bool:
    """Whether ``path`` is in, or is, the folder of a session other than ``session``."""
    top = path.relative_to(session.workspace.parent).parts[0]
    return top != session.workspace.name and re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", top) is not None


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"name": "nul\x00.txt", "content": b"x"}, "NUL"),
        ({"name": "nothing.txt"}, "neither"),
        ({"name": "..", "content": b"x"}, "no usable"),
        ({"name": "missing.csv", "path": "/nonexistent/missing.csv"}, "could not be read"),
        ({"path": "/etc/hostname"}, "'name'"),
    ],
)
def test_bad_file_entries_raise_before_the_round(session, entry: dict[str, Any], reason: str) -> None:
    rounds_before = len(session.rounds)
    files_before = sorted(os.listdir(session.cwd))
    with pytest.raises(ValueError, match=reason):
        session.send_message("hi", files=[{"name": "fine.txt", "content": b"ok"}, entry])
    assert len(session.rounds) == rounds_before
    assert sorted(os.listdir(session.cwd)) == files_before  # nothing written, not even fine.txt


def test_a_name_clash_gets_a_suffix(session) -> None:
    session.send_message("", files=[{"name": "dup.txt", "content": b"one"}])
    rnd = session.send_message("", files=[{"name": "dup.txt", "content": b"two"}])
    assert "files added: dup-1.txt." in rnd.user_query
    assert (session.cwd / "dup.txt").read_bytes() == b"one"
    assert (session.cwd / "dup-1.txt").read_bytes() == b"two"


def test_prose_gets_an_honest_offline_reply(session) -> None:
    rnd = session.send_message("What is the average sales per region?")
    assert rnd.state == "finished"
    assert "offline mode" in rnd.reply_text and "WEAVER_LLM__API_KEY" in rnd.reply_text
    assert [p.send_from for p in rnd.post_list] == ["User", "Planner"]


def test_a_raising_cell_reports_its_traceback_and_the_round_ends(session) -> None:
    rnd = session.send_message(code("def f():\n    return 1 / 0\nf()"))
    assert rnd.state == "finished"
    assert "ZeroDivisionError" in rnd.reply_text
    ci_posts = [p for p in rnd.post_list if p.send_from == "CodeInterpreter"]
    assert ci_posts[0].first(AttachmentType.execution_status) == "failure"
    assert "ZeroDivisionError" in ci_posts[0].first(AttachmentType.execution_result)


def test_runaway_code_is_interrupted_and_the_session_goes_on(session) -> None:
    session.send_message(code("kept = 'still here'"))
    rnd = session.send_message(code("while True:\n    pass"))
    assert rnd.state == "finished"
    assert "interrupted" in rnd.reply_text
    assert rnd.post_list[2].first(AttachmentType.execution_status) == "timeout"
    assert "still here" in session.send_message(code("print(kept)")).reply_text


def test_cancel_from_another_thread_ends_the_round_cancelled(session) -> None:
    started = threading.Event()

    class CancelWhenCodeRuns(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            if event.t == PostEventType.post_status_update and event.msg == "executing code":
                started.set()

    def cancel_when_running() -> None:
        assert started.wait(30)
        session.cancel()

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    rnd = session.send_message(
        code("import time\nfor _ in range(100):\n    time.sleep(0.1)"), event_handler=CancelWhenCodeRuns()
    )
    canceller.join()
    assert rnd.state == "cancelled"
    assert "works after cancel" in session.send_message(code("print('works after cancel')")).reply_text


def test_two_sessions_see_their_own_session_vars_in_a_plugin(app: TaskWeaverApp) -> None:
    alice, bob = app.get_session(), app.get_session()
    try:
        alice.update_session_var({"user_name": "alice"})
        bob.update_session_var({"user_name": "bob"})
        assert "Hi, alice! (from the config)" in alice.send_message(code("print(whoami('Hi'))")).reply_text
        assert "Hi, bob!" in bob.send_message(code("print(whoami('Hi'))")).reply_text
        alice.send_message(code("secret = 1"))
        assert "NameError" in bob.send_message(code("print(secret)")).reply_text
        assert alice.cwd != bob.cwd
    finally:
        alice.stop()
        bob.stop()


def test_plugin_description_reaches_the_code_interpreter_prompt(app_dir: Path, llm_server: ScriptedLLMServer) -> None:
    application = TaskWeaverApp(
        app_dir=app_dir,
        config={
            "llm.api_type": "openai",
            "llm.api_base": llm_server.base_url,
            "llm.api_key": "test",
            "llm.model": "scripted",
            "execution.prewarm": False,
        },
    )
    try:
        assert application.plugins.errors == []
        llm_server.push(
            Answer(planner("CodeInterpreter", "Greet the user.")),
            Answer(json.dumps({"thought": "", "reply_type": "text", "reply_content": "Use whoami('Hi')."})),
            to_user("You can call whoami."),
        )
        rnd = application.get_session().send_message("What can you do?")
        assert rnd.state == "finished", rnd.error
        planner_request, coder_request, _ = llm_server.requests
        coder_system = coder_request.body["messages"][0]
        assert coder_system["role"] == "system" and "You are the CodeInterpreter" in coder_system["content"]
        assert "whoami" in coder_system["content"]
        assert "Greets the user of this session by name." in coder_system["content"]
        assert "whoami" in planner_request.body["messages"][0]["content"]  # the Planner knows what the worker can call
    finally:
        application.stop()


def test_stop_leaves_no_kernel_process(app: TaskWeaverApp) -> None:
    s = app.get_session()
    assert s.send_message(code("print('up')")).state == "finished"
    pid = s.executor.pid
    assert pid and pid_alive(pid)
    s.stop()
    assert not pid_alive(pid)
    with pytest.raises(SessionStopped, match="session has ended"):
        s.send_message("hello")


def test_app_stop_stops_every_session(app_dir: Path) -> None:
    application = TaskWeaverApp(app_dir=app_dir)
    sessions = [application.get_session() for _ in range(2)]
    for s in sessions:
        assert s.send_message(code("print('up')")).state == "finished"
    pids = [s.executor.pid for s in sessions]
    assert all(pid and pid_alive(pid) for pid in pids)
    application.stop()
    assert not any(pid_alive(pid) for pid in pids)
    with pytest.raises(KeyError):
        application.get_session(sessions[0].session_id)


def test_get_session_by_id_returns_the_live_session(app: TaskWeaverApp) -> None:
    s = app.get_session()
    assert app.get_session(s.session_id) is s
    assert s.cwd == s.workspace / "cwd" and s.cwd.is_dir()
    s.stop()
    with pytest.raises(KeyError):
        app.get_session(s.session_id)


def test_each_session_keeps_a_log_of_its_rounds(app: TaskWeaverApp) -> None:
    s = app.get_session()
    try:
        rounds = [s.send_message("Hello there"), s.send_message("And once more")]
        logged = [json.loads(line) for line in (s.workspace / "rounds.jsonl").read_text().splitlines()]
        assert [(r["id"], r["state"], r["user_query"]) for r in logged] == [
            (rnd.id, "finished", rnd.user_query) for rnd in rounds
        ]
        assert f"session {s.session_id} started" in (s.workspace / "session.log").read_text()
    finally:
        s.stop()


def test_a_crashed_kernel_is_reported_and_replaced(app: TaskWeaverApp) -> None:
    s = app.get_session()
    try:
        s.send_message(code("before = 1"))
        old_pid = s.executor.pid
        rnd = s.send_message(code("import os\nos._exit(1)"))
        assert rnd.state == "finished"
        assert "kernel died" in rnd.reply_text and "fresh kernel" in rnd.reply_text
        assert not pid_alive(old_pid)
        after = s.send_message(code("print('alive again')\nprint('before' in globals())"))
        assert "alive again" in after.reply_text and "False" in after.reply_text
    finally:
        s.stop()


def test_file_names_are_data_not_code_and_builtins_survive(session) -> None:
    rnd = session.send_message(
        "",
        files=[
            {"name": "{__import__('os').getpid()}.csv", "content": b"a\n1\n"},
            {"name": "print.csv", "content": b"b\n2\n"},
        ],
    )
    reply = rnd.reply_text
    assert "{__import__('os').getpid()}.csv: 1 rows x 1 columns" in reply
    assert "print.csv: 1 rows x 1 columns, loaded as `print_data`" in reply
    after = session.send_message(code("print('builtins fine', int(print_data.b.sum()))"))
    assert "builtins fine 2" in after.reply_text
    assert "NameError" in session.send_message(code("_describe_table")).reply_text  # helpers are cleaned up


def test_live_sessions_are_capped_and_stopped_ones_are_forgotten(tmp_path: Path) -> None:
    application = TaskWeaverApp(app_dir=tmp_path, config={"session.max_live_sessions": 2, "execution.prewarm": False})
    try:
        first, second = application.get_session(), application.get_session()
        with pytest.raises(RuntimeError, match="limit of 2 sessions"):
            application.get_session()
        first.stop()
        third = application.get_session()  # the stopped one no longer counts
        assert [s.session_id for s in application.sessions] == [second.session_id, third.session_id]
    finally:
        application.stop()


def test_the_cap_holds_when_many_sessions_are_made_at_once(tmp_path: Path) -> None:
    """Sessions are built side by side, outside the app's lock: twenty at once under a cap of five
    make exactly five, and the others are told the limit."""
    application = TaskWeaverApp(app_dir=tmp_path, config={"session.max_live_sessions": 5, "execution.pool_size": 0})
    start = threading.Barrier(20, timeout=10)
    made: list[str] = []
    refused: list[str] = []

    def open_one() -> None:
        start.wait()
        try:
            made.append(application.get_session().session_id)
        except RuntimeError as exc:
            refused.append(str(exc))

    try:
        threads = [threading.Thread(target=open_one) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(made) == 5 and len(set(made)) == 5 and len(refused) == 15
        assert all("limit of 5 sessions" in text for text in refused)
        assert sorted(s.session_id for s in application.sessions) == sorted(made)
    finally:
        application.stop()


def test_the_specs_console_handler_prints_readable_events(session, capsys: pytest.CaptureFixture[str]) -> None:
    class ConsoleEventHandler(SessionEventHandler):  # the spec's example, verbatim
        def handle(self, event: TaskWeaverEvent):
            print(event.t, event.msg)

    session.send_message(code("print('hi')"), ConsoleEventHandler())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "round_start Round started"
    assert lines[-1].startswith("round_end")
    assert any(line.startswith("post_status_update executing code") for line in lines)
