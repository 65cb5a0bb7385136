"""Regenerating an answer or editing a sent message re-runs that round from the kernel state before
it (real kernels, the offline backend: a message that is a Python fence runs that code)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core import NothingToRerun, RoundInProgress, TaskWeaverApp
from core.events import RoundEventType, SessionEventHandler, TaskWeaverEvent
from core.snapshot import SaveStatus
from tests.ui_harness import wait_until


def code(text: str) -> str:
    return f"```python\n{text}\n```"


COUNT = code("n = globals().get('n', 0) + 1\nprint('n is', n, 'a is', a)")


def saved(session: object) -> SaveStatus | None:
    snapshots = session.snapshots  # type: ignore[attr-defined]
    assert snapshots.wait(60), "the snapshot did not finish"
    return snapshots.last.status if snapshots.last is not None else None


def test_regenerate_forgets_the_discarded_round_and_keeps_the_earlier_ones(app: TaskWeaverApp) -> None:
    session = app.get_session()
    assert session.send_message(code("a = 41")).state == "finished"
    assert saved(session) is SaveStatus.SAVED
    first = session.send_message(COUNT)
    assert "n is 1 a is 41" in first.reply_text, first.reply_text
    assert saved(session) is SaveStatus.SAVED  # the snapshot before it is kept one round back
    again = session.rerun()
    assert "n is 1 a is 41" in again.reply_text, "the discarded round's n was still there: " + again.reply_text
    assert [r.id for r in session.rounds][-1] == again.id and len(session.rounds) == 2
    assert first.id not in (session.log.rounds_path.read_text()), "rounds.jsonl still has the discarded round"
    report = session.last_rerun
    assert report is not None and report.discarded == (first.id,) and report.complete, report
    assert report.restore.from_snapshot and report.restore.ran == 0, report.restore.summary()
    # And once more: the snapshot before the regenerated round is still the one kept.
    saved(session)
    third = session.rerun()
    assert "n is 1 a is 41" in third.reply_text, third.reply_text
    assert session.last_rerun is not None and session.last_rerun.restore.from_snapshot


def test_edit_reruns_an_earlier_message_with_its_new_text_and_drops_later_rounds(app: TaskWeaverApp) -> None:
    session = app.get_session()
    assert session.send_message(code("a = 1")).state == "finished"
    second = session.send_message(code("b = 2\nopen('b.txt', 'w').write('b')"))
    third = session.send_message(code("c = 3"))
    edited = session.rerun(second.id, code("print('b' in globals(), 'c' in globals(), a)"))
    assert "False False 1" in edited.reply_text, edited.reply_text
    assert [r.id for r in session.rounds] == [session.rounds[0].id, edited.id]
    assert session.last_rerun is not None and session.last_rerun.discarded == (second.id, third.id)
    assert (Path(session.execution_cwd) / "b.txt").exists(), "files of a discarded round are kept"
    with pytest.raises(NothingToRerun):
        session.rerun(third.id, "again")


def test_a_rerun_without_snapshots_runs_the_earlier_code_again(app_dir: Path) -> None:
    no_snapshots = TaskWeaverApp(app_dir=app_dir, config={"session.snapshot_max_mb": 0})
    try:
        session = no_snapshots.get_session()
        assert session.send_message(code("a = 5")).state == "finished"
        assert "n is 1 a is 5" in session.send_message(COUNT).reply_text
        again = session.rerun()
        assert "n is 1 a is 5" in again.reply_text, again.reply_text
        report = session.last_rerun
        assert report is not None and not report.restore.from_snapshot and report.restore.ran == 1
    finally:
        no_snapshots.stop()


class _Started(SessionEventHandler):
    def __init__(self) -> None:
        self.code_running = threading.Event()

    def handle(self, event: TaskWeaverEvent) -> None:
        if event.t is RoundEventType.round_start or "post_execution_output" in str(event.t):
            self.code_running.set()


def test_a_rerun_is_refused_while_a_round_runs_and_when_there_is_nothing_to_rerun(app: TaskWeaverApp) -> None:
    session = app.get_session()
    with pytest.raises(NothingToRerun) as nothing:
        session.rerun()
    assert "send a message first" in str(nothing.value)
    started = _Started()
    worker = threading.Thread(
        target=session.send_message, args=(code("import time\nprint('go', flush=True)\ntime.sleep(60)"), started)
    )
    worker.start()
    try:
        assert started.code_running.wait(60)
        with pytest.raises(RoundInProgress):
            session.rerun()
    finally:
        wait_until(session.cancel, 30, "the round to be cancellable")
        worker.join(60)
    assert session.rounds[-1].state == "cancelled"


def test_a_rerun_says_which_earlier_variables_did_not_come_back(app_dir: Path) -> None:
    no_snapshots = TaskWeaverApp(app_dir=app_dir, config={"session.snapshot_max_mb": 0})
    try:
        session = no_snapshots.get_session()
        assert session.send_message(code("greeting = whoami('Hi')\na = 1")).state == "finished"
        session.send_message(code("print('greeting' in globals())"))
        again = session.rerun()
        assert "False" in again.reply_text, "a plugin call was run twice to bring its variable back"
        report = session.last_rerun
        assert report is not None and not report.complete
        assert report.note().startswith("The earlier variables did not all come back for this re-run:")
        assert "Skipped: step 1" in report.note(), report.note()
    finally:
        no_snapshots.stop()


def test_a_rerun_keeps_the_files_of_the_message(app: TaskWeaverApp, tmp_path: Path) -> None:
    csv = tmp_path / "sales.csv"
    csv.write_text("region,units\nnorth,3\nsouth,5\n")
    session = app.get_session()
    first = session.send_message("profile this file", files=[{"name": "sales.csv", "path": str(csv)}])
    assert "2 rows" in first.reply_text, first.reply_text
    edited = session.rerun(first.id, "profile it again")
    assert edited.user_query == "files added: sales.csv.\nprofile it again"
    assert "2 rows" in edited.reply_text, "the edited round did not get the message's file: " + edited.reply_text
