"""TaskWeaver's public data API as TaskWeaver's own code and tests use it: ``Post.create``,
``Round.create``, ``Attachment.create``, ``get_attachment(...)[0].content``, ``del_attachment``,
``change_round_state``, ``Memory``, ``session.memory``, ``Session.to_dict()``, ``execution_cwd`` as a
string and ``TaskWeaverApp.discover_app_dir``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from core import TaskWeaverApp
from core.errors import SessionNotFound
from core.memory import Attachment, AttachmentType, Memory, Post, Round
from core.session import Session

REPO = Path(__file__).resolve().parents[1]


def test_the_create_constructors_take_taskweavers_arguments() -> None:
    thought = Attachment.create(AttachmentType.thought, "think first")
    plan = Attachment.create("plan", "1. load\n2. report", id="atta-7", extra={"step": 1})  # a type's name works
    post = Post.create(
        message="create a dataframe", send_from="Planner", send_to="CodeInterpreter", attachment_list=[thought, plan]
    )
    assert post.id.startswith("post-") and thought.id.startswith("atta-")
    assert (plan.type, plan.id, plan.extra) == (AttachmentType.plan, "atta-7", {"step": 1})
    assert Post.create(None, "User").message == "" and Post.create("hi", "User").send_to == "Unknown"
    assert Post.create("hi", "User").attachment_list == []  # a fresh list each time
    rnd = Round.create(user_query="hello", id="round-1")
    assert (rnd.id, rnd.state, rnd.post_list) == ("round-1", "created", [])
    assert Round.create("hello").id.startswith("round-") and Round.create("x", state="failed").state == "failed"
    rnd.add_post(post)
    rnd.change_round_state("finished")
    assert rnd.state == "finished"
    again = Round.from_dict(json.loads(json.dumps(rnd.to_dict())))
    assert again.post_list[0].attachment_list[1].content == "1. load\n2. report" and again.state == "finished"
    with pytest.raises(ValueError):
        Attachment.create("no_such_type", "x")


def test_get_attachment_returns_attachments_and_del_attachment_removes_them() -> None:
    post = Post.create("code", "CodeInterpreter", "Planner")
    post.add_attachment(Attachment.create(AttachmentType.reply_content, "print(1)"))
    post.add_attachment(Attachment.create(AttachmentType.execution_status, "success"))
    post.add_attachment(Attachment.create(AttachmentType.reply_content, "print(2)"))
    found = post.get_attachment(AttachmentType.reply_content)
    assert all(isinstance(a, Attachment) for a in found)
    assert found[0].content == "print(1)" and [a.content for a in found] == ["print(1)", "print(2)"]
    assert post.get_attachment(AttachmentType.plan) == []
    post.del_attachment([AttachmentType.reply_content])
    assert [a.type for a in post.attachment_list] == [AttachmentType.execution_status]
    post.del_attachment(AttachmentType.execution_status)  # one type, not in a list
    assert post.attachment_list == []


def test_memory_gives_each_role_its_rounds_as_copies() -> None:
    memory = Memory(session_id="session-1")
    first = Round.create(user_query="hello", id="round-1")
    first.add_post(Post.create("create a dataframe", "Planner", "CodeInterpreter"))
    first.add_post(Post.create("done", "CodeInterpreter", "Planner"))
    first.add_post(Post.create("here it is", "Planner", "User"))
    memory.conversation.add_round(first)
    failed = memory.create_round("hello again")
    failed.change_round_state("failed")
    rounds = memory.get_role_rounds(role="CodeInterpreter")
    assert [r.id for r in rounds] == ["round-1"]
    assert [p.message for p in rounds[0].post_list] == ["create a dataframe", "done"]
    assert len(memory.get_role_rounds("CodeInterpreter", include_failure_rounds=True)) == 2
    rounds[0].post_list[0].message = "changed"
    assert memory.conversation.rounds[0].post_list[0].message == "create a dataframe"


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    app = TaskWeaverApp(tmp_path / "app", config={"llm.api_type": "offline", "execution.pool_size": 0})
    try:
        yield app.get_session()
    finally:
        app.stop()


def test_a_sessions_memory_to_dict_and_working_folder_are_taskweavers(session: Session) -> None:
    rnd = session.send_message("```python\nprint(6 * 7)\n```")
    assert rnd.state == "finished", rnd.error
    assert session.memory.session_id == session.session_id
    assert session.memory.conversation.rounds == [rnd] and session.memory.conversation.rounds[-1] is rnd
    worker = next(p for p in rnd.post_list if p.send_from == "CodeInterpreter")
    assert worker.get_attachment(AttachmentType.reply_content)[0].content == "print(6 * 7)"
    assert "42" in worker.get_attachment(AttachmentType.execution_result)[0].content
    assert isinstance(session.execution_cwd, str) and os.path.isdir(session.execution_cwd)
    with open(os.path.join(session.execution_cwd, "note.txt"), "w") as out:  # TaskWeaver's code joins strings
        out.write("x")
    assert "note.txt" in [e.path for e in session.files().entries]
    assert session.to_dict() == {
        "session_id": session.session_id,
        "workspace": os.path.dirname(session.execution_cwd),
        "execution_cwd": session.execution_cwd,
    }
    assert json.loads(json.dumps(session.to_dict())) == session.to_dict()


def test_get_session_by_id_returns_the_live_one_and_refuses_an_unknown_id(session: Session, tmp_path: Path) -> None:
    """TaskWeaver's SessionManager.get_session raises "session id not found" for an id it does not
    hold (it makes a session only when no id is given); Weaver raises SessionNotFound, an Exception."""
    app = TaskWeaverApp(tmp_path / "other", config={"llm.api_type": "offline", "execution.pool_size": 0})
    try:
        mine = app.get_session()
        assert app.get_session(mine.session_id) is mine
        with pytest.raises(SessionNotFound):
            app.get_session("session-never-made")
    finally:
        app.stop()


def test_discover_app_dir_finds_the_nearest_app_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    deep = project / "notebooks" / "deep"
    deep.mkdir(parents=True)
    (project / "taskweaver_config.json").write_text('{"llm.model": "m"}')
    monkeypatch.chdir(deep)
    assert TaskWeaverApp.discover_app_dir() == (str(project), True, False)
    assert TaskWeaverApp.discover_app_dir(str(deep)) == (str(deep), False, True)
    assert TaskWeaverApp.discover_app_dir(str(tmp_path / "absent")) == (str(tmp_path / "absent"), False, True)
    (project / "taskweaver_config.json").write_text("[1, 2]")  # not an object: not an app folder
    assert TaskWeaverApp.discover_app_dir() == (str(deep), False, True)


def test_the_data_api_through_taskweavers_import_paths(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import core.compat.taskweaver  # noqa: F401
        from taskweaver.app.app import TaskWeaverApp
        from taskweaver.memory import Attachment, Memory, Post, Round
        from taskweaver.memory.attachment import AttachmentType
        from taskweaver.utils.app_utils import discover_app_dir

        post = Post.create(message="m", send_from="Planner", send_to="User",
                           attachment_list=[Attachment.create(AttachmentType.thought, "t")])
        rnd = Round.create(user_query="q", id="round-1", post_list=[post])
        memory = Memory(session_id="s")
        memory.conversation.add_round(rnd)
        print(post.get_attachment(AttachmentType.thought)[0].content, memory.conversation.rounds[0].id,
              TaskWeaverApp.discover_app_dir(".")[1], discover_app_dir(".")[1])
        """
    )
    (tmp_path / "taskweaver_config.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=100, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["t", "round-1", "True", "True"]
