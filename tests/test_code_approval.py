"""Code approval: generated code waits for Run, Edit or Cancel before it runs (real kernels, the
offline backend: a message that is a Python fence is the code the model "wrote")."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from core import Round, Session, TaskWeaverApp
from core.approval import Decision
from core.events import ApprovalRequested, PostEventType, SessionEventHandler, TaskWeaverEvent
from core.memory import AttachmentType, RoleName
from core.resume import replay_plan

WRITE = "```python\nopen('ran.txt', 'w').write('model')\nmade = 'model'\nprint('model code ran')\n```"


class Asked(SessionEventHandler):
    """Records the approval requests of a round, and wakes the test at each."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, ApprovalRequested]] = []
        self.asked = threading.Event()

    def handle(self, event: TaskWeaverEvent) -> None:
        if event.t is PostEventType.post_approval_request and isinstance(event.payload, ApprovalRequested):
            assert event.post_id is not None
            self.requests.append((event.post_id, event.payload))
            self.asked.set()


@pytest.fixture(scope="module")
def approving(app_dir: Path) -> Iterator[TaskWeaverApp]:
    application = TaskWeaverApp(
        app_dir=app_dir,
        config={"code_interpreter.require_confirmation": True, "code_interpreter.confirmation_timeout": 60},
    )
    yield application
    application.stop()


def run_with_answer(session: Session, message: str, answer: Decision, code: str | None = None) -> tuple[Round, Asked]:
    asked = Asked()
    result: list[Round] = []
    worker = threading.Thread(target=lambda: result.append(session.send_message(message, event_handler=asked)))
    worker.start()
    assert asked.asked.wait(60), "no approval was asked"
    post_id, request = asked.requests[0]
    assert "open('ran.txt', 'w')" in request.code and request.timeout_s == 60
    assert not (Path(session.execution_cwd) / "ran.txt").exists(), "the code ran before it was approved"
    assert session.approve(post_id, answer, code)
    worker.join(120)
    assert not session.approve(post_id, Decision.RUN), "an answer was taken twice"
    return result[0], asked


def coder_post(rnd: Round):  # type: ignore[no-untyped-def]
    return next(p for p in rnd.post_list if p.send_from == RoleName.CodeInterpreter)


def test_cancel_runs_nothing_and_says_so(approving: TaskWeaverApp) -> None:
    session = approving.get_session()
    rnd, _ = run_with_answer(session, WRITE, Decision.CANCEL)
    assert rnd.state == "finished" and rnd.reply_text == "You cancelled the code, so nothing was run."
    assert not (Path(session.execution_cwd) / "ran.txt").exists()
    session.set_code_approval(False)  # look into the kernel without being asked
    check = session.send_message("```python\nprint('made' in globals())\n```")
    assert "False" in check.reply_text, check.reply_text


def test_run_runs_the_code_as_written(approving: TaskWeaverApp) -> None:
    session = approving.get_session()
    rnd, _ = run_with_answer(session, WRITE, Decision.RUN)
    assert (Path(session.execution_cwd) / "ran.txt").read_text() == "model"
    assert "model code ran" in rnd.reply_text, rnd.reply_text


def test_edit_runs_the_edited_cell_and_the_memory_says_so(approving: TaskWeaverApp) -> None:
    session = approving.get_session()
    edited = "open('ran.txt', 'w').write('user')\nmade = 'user'\nprint('edited code ran')"
    rnd, _ = run_with_answer(session, WRITE, Decision.EDIT, edited)
    assert (Path(session.execution_cwd) / "ran.txt").read_text() == "user"
    post = coder_post(rnd)
    assert post.first(AttachmentType.reply_content) == edited, "the round's memory does not hold what ran"
    assert post.message.startswith("Note: the user edited this code before it ran"), post.message
    assert "edited code ran" in rnd.reply_text
    (step,) = replay_plan([rnd], [])
    assert step.code.startswith("open('ran.txt', 'w').write('user')"), "a resume would replay the model's code"


def test_edited_code_still_meets_the_verification_rules(app_dir: Path) -> None:
    strict = TaskWeaverApp(
        app_dir=app_dir,
        config={
            "code_interpreter.require_confirmation": True,
            "code_interpreter.confirmation_timeout": 60,
            "code_interpreter.code_verification_on": True,
            "code_interpreter.blocked_functions": ["eval"],
        },
    )
    try:
        session = strict.get_session()
        rnd, _ = run_with_answer(session, WRITE, Decision.EDIT, "eval(\"open('ran.txt', 'w').write('evil')\")")
        assert not (Path(session.execution_cwd) / "ran.txt").exists(), "the edit bypassed verification"
        assert "verification" in coder_post(rnd).message, coder_post(rnd).message
    finally:
        strict.stop()


def test_no_answer_in_time_runs_nothing(app_dir: Path) -> None:
    hurried = TaskWeaverApp(
        app_dir=app_dir,
        config={"code_interpreter.require_confirmation": True, "code_interpreter.confirmation_timeout": 0.5},
    )
    try:
        session = hurried.get_session()
        rnd = session.send_message(WRITE)
        assert rnd.state == "finished"
        assert "Nobody approved the code within 0.5 s" in rnd.reply_text, rnd.reply_text
        assert not (Path(session.execution_cwd) / "ran.txt").exists()
    finally:
        hurried.stop()


def test_stop_ends_a_round_waiting_for_approval(approving: TaskWeaverApp) -> None:
    session = approving.get_session()
    asked = Asked()
    result: list[Round] = []
    worker = threading.Thread(target=lambda: result.append(session.send_message(WRITE, event_handler=asked)))
    worker.start()
    assert asked.asked.wait(60)
    assert session.cancel()
    worker.join(30)
    assert not worker.is_alive() and result[0].state == "cancelled"
    assert not (Path(session.execution_cwd) / "ran.txt").exists()


def test_a_chat_may_turn_approval_off_and_on(approving: TaskWeaverApp) -> None:
    session = approving.get_session()
    session.set_code_approval(False)
    rnd = session.send_message(WRITE)
    assert "model code ran" in rnd.reply_text and (Path(session.execution_cwd) / "ran.txt").exists()
    assert session.approval_required is False
    session.set_code_approval(None)
    assert session.approval_required is True
