"""A resumed chat's variables from its snapshot, without running its code again (real kernels and server).

Each cell that must not run again writes a line to ``runs.txt``: after a restore, the file says
which cells ran twice. The hostile test plants a pickle whose loading writes a canary into the
chat's own (temporary) folder saying which process loaded it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from core import TaskWeaverApp
from core.memory import Round
from core.replay_check import SkipKind
from core.resume import ReplayReport, RestoreOutcome, replay_plan
from core.snapshot import SNAPSHOT_PATH, LoadResult, LoadStatus, SaveStatus, load_snapshot, save_snapshot
from tests.test_resume import coder
from tests.ui_harness import (
    UIServer,
    ui_server,
    wait_until,
)
from ui.restore import TITLE

__all__ = ["ui_server"]
FIXTURE_APP = Path(__file__).parent / "app_fixture"
REPO_ROOT = Path(__file__).resolve().parents[1]


def code(text: str) -> str:
    return f"```python\n{text}\n```"


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE_APP, tmp_path / "app")
    return tmp_path / "app"


def saved(session: object) -> SaveStatus:
    """Wait for the background snapshot after the last round; its status."""
    snapshots = session.snapshots  # type: ignore[attr-defined]
    assert snapshots.wait(60), "the snapshot did not finish"
    assert snapshots.last is not None
    return snapshots.last.status


def test_variables_come_back_from_the_snapshot_and_only_later_code_runs_again(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir)
    session = first.get_session()
    session_id, folder = session.session_id, session.cwd
    one = (
        "counter = 0\ndef bump():\n    global counter\n    counter += 1\n    return counter\n"
        "data = [1, 2]\nsame = data\nf = whoami\ngreeting = whoami('Hi')\nopen('runs.txt', 'a').write('1')"
    )
    assert session.send_message(code(one)).state == "finished"
    assert saved(session) is SaveStatus.SAVED
    two = "import threading\nlock = threading.Lock()\nlater = len(data)\nopen('runs.txt', 'a').write('2')"
    assert session.send_message(code(two)).state == "finished"
    assert saved(session) is SaveStatus.UNPICKLABLE  # so the snapshot of the first round stays
    assert "lock" in session.snapshots.last.not_saved, session.snapshots.last
    first.stop()

    second = TaskWeaverApp(app_dir=app_dir)
    try:
        resumed = second.open_session(session_id)
        report = resumed.replay_code()
        assert report.from_snapshot and report.complete, report.summary()
        assert report.ran == 1 and report.rounds_after_snapshot == 1, report.summary()
        assert (folder / "runs.txt").read_text() == "122", "the first cell ran again, or the second did not"
        assert "Loaded" in report.summary() and "of the later rounds" in report.summary()
        assert "cannot be saved while these exist: `lock` (`_thread.lock`)" in report.summary(), report.summary()
        answer = resumed.send_message(
            code("counter = 10\nprint(bump(), counter, data is same, later, type(lock).__name__, greeting, f('yo'))")
        ).reply_text
        assert "11 11 True 2 lock Hi, anonymous! (from the config) yo, anonymous!" in answer, answer
        assert "core.snapshot_kernel" not in sys.modules, "the server imported the unpickling side"
        assert not [f.path for f in resumed.files().entries if f.path.startswith(".weaver")], "listed as a file"
    finally:
        second.stop()


def test_a_damaged_snapshot_falls_back_to_running_the_code_without_its_waits(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir)
    session = first.get_session()
    session_id, folder = session.session_id, session.cwd
    assert session.send_message(code("x = list(range(1000))\nopen('runs.txt', 'a').write('1')")).state == "finished"
    assert session.send_message(code("import time\ntime.sleep(0.01)\nprint('waited')\ny = 2")).state == "finished"
    assert session.send_message(code("time.sleep(0.01)")).state == "finished"
    assert saved(session) is SaveStatus.SAVED
    first.stop()
    snapshot = folder / SNAPSHOT_PATH
    snapshot.write_bytes(snapshot.read_bytes()[:-40])  # cut short: the header is fine, the pickle is not
    rounds = folder.parent / "rounds.jsonl"
    rounds.write_text(rounds.read_text().replace("time.sleep(0.01)", "time.sleep(3600)"))

    small = {"session.resume_replay_timeout": 60, "session.snapshot_max_mb": 0.001}  # 1 kB: x is bigger
    second = TaskWeaverApp(app_dir=app_dir, config=small)
    try:
        resumed = second.open_session(session_id)
        report = resumed.replay_code()
        assert report.snapshot is not None and report.snapshot.status is LoadStatus.CORRUPT, report.snapshot
        assert report.complete and report.ran == 2 and report.time_only == 1, report.summary()
        assert "could not be read" in report.summary() and "only waited" in report.summary()
        assert (folder / "runs.txt").read_text() == "11"
        answer = resumed.send_message(code("print(len(x), y)")).reply_text
        assert "1000 2" in answer, answer
        assert saved(resumed) is SaveStatus.TOO_BIG and resumed.snapshots.last.limit_bytes == 1048
    finally:
        second.stop()


def test_the_server_never_loads_a_snapshot_only_the_chats_own_kernel_does(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir)
    session = first.get_session()
    session_id, folder = session.session_id, session.cwd
    assert session.send_message(code("x = 1")).state == "finished"
    assert saved(session) is SaveStatus.SAVED
    snapshot = folder / SNAPSHOT_PATH
    snapshot.unlink()
    session.snapshots.round_ran_code(session.rounds[-1].id)  # as if the last round's save had not happened yet
    first.stop()
    assert snapshot.is_file(), "a session that stops saves what is due (server drain, idle timeout)"
    canary = folder / "canary.txt"
    magic, header = snapshot.read_bytes().split(b"\n")[:2]  # the header names the real round: it is loaded
    trap = (
        b"cbuiltins\nexec\n(V"
        + f"import sys; open({str(canary)!r}, 'a').write(str('_pytest' in sys.modules))".encode()
        + b"\ntR."
    )
    snapshot.write_bytes(magic + b"\n" + header + b"\n" + trap)

    second = TaskWeaverApp(app_dir=app_dir)
    try:
        report = second.open_session(session_id).replay_code()
        assert report.snapshot is not None and report.snapshot.status is LoadStatus.CORRUPT  # not a dict of variables
        assert report.complete and report.ran == 1, report.summary()
    finally:
        second.stop()
    assert canary.read_text() == "False", "the pickle was loaded by the server process"
    assert "core.snapshot_kernel" not in sys.modules
    unpickling = re.compile(r"\b(c?pickle|cloudpickle|dill|marshal)\s*\.\s*(loads?|Unpickler)\b")
    readers = [
        str(path.relative_to(REPO_ROOT))
        for top in ("core", "ui")
        for path in (REPO_ROOT / top).rglob("*.py")
        if unpickling.search(path.read_text(encoding="utf-8"))
    ]
    assert readers == ["core/snapshot_kernel.py"], readers


def test_waits_and_output_are_not_run_again_but_what_binds_names_is() -> None:
    rnd = Round(
        "q",
        post_list=[
            coder("import time\ntime.sleep(10)\nprint('done')"),
            coder("from time import sleep as nap\nnap(5)"),
            coder("df = [1]\nfor i in range(3):\n    time.sleep(1)\n    df.append(i)\ndf"),
            coder("print(df)\ndisplay(df)\ndf"),
            coder("time.sleep(len(df))"),
            coder("print(df.pop())"),  # calls something: it runs
        ],
    )
    plan = replay_plan([rnd], [])
    assert [s.code for s in plan[:3]] == [
        "import time",
        "from time import sleep as nap",
        "df = [1]\nfor i in range(3):\n    time.sleep(1)\n    df.append(i)",  # a wait in a loop may pace it
    ]
    assert [s.trimmed for s in plan[:3]] == [2, 1, 1]
    assert [s.skip_reason.kind if s.skip_reason else None for s in plan[3:]] == [
        SkipKind.TIME_ONLY,
        None,  # len(df) is a call: kept, conservatively
        None,
    ]


@pytest.mark.browser
def test_the_restore_step_in_the_browser_sits_above_the_answer_and_can_be_skipped(ui_server: UIServer) -> None:
    """A real page on a real server: the Skip restore button can be pressed while the restore runs
    (the page disables buttons while a message's task runs), the message then goes on, and the
    step, under the message and above its answer, names what did not come back."""
    from tests.test_ui_browser import ARTIFACTS, _browser_page, playwright_sync

    expect = playwright_sync.expect
    marker = f"browser-{uuid.uuid4().hex[:8]}"
    with _browser_page() as page:
        page.goto(ui_server.base_url)
        chat_input = page.locator("#chat-input")
        cell = f"open({marker!r}, 'w').write('1')\nn = 0\nwhile n < 10 ** 3:\n    n += 1\nmade = n\nprint('made', made)"
        chat_input.fill(f"```python\n{cell}\n```")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("made 1000").last).to_be_visible(timeout=90_000)
        folder = next((ui_server.app_dir / "workspace" / "sessions").glob(f"*/cwd/{marker}")).parent
        session_id = folder.parent.name
        page.wait_for_url(re.compile(r"/thread/[0-9a-f-]{36}$"), timeout=30_000)  # the chat's address
        page.reload()  # the old socket goes: the session stops after the grace period
        wait_until(lambda: f"session {session_id} stopped" in ui_server.log(), ui_server.grace_s + 60, "the stop")
        (folder / SNAPSHOT_PATH).unlink()  # an older chat without a snapshot, whose code now runs for days
        rounds = folder.parent / "rounds.jsonl"
        rounds.write_text(rounds.read_text().replace("10 ** 3", "10 ** 15"))
        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()
        chat_input.fill("```python\nprint('went on', 'made' in dir())\n```")
        page.locator("#chat-submit").click()
        skip_button = page.get_by_role("button", name="Skip restore")
        expect(skip_button).to_be_visible(timeout=90_000)
        expect(page.get_by_text("step 1 of 1").first).to_be_visible(timeout=60_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "resume_restoring.png"))
        skip_button.click()
        answer = page.get_by_text("went on False").last
        expect(answer).to_be_visible(timeout=90_000)
        title = page.get_by_text(f"{TITLE} · restore skipped").first
        expect(title).to_be_visible()
        expect(page.get_by_text("these variables are not back: made, n").first).to_be_visible()
        expect(skip_button).to_have_count(0)
        assert title.bounding_box()["y"] < answer.bounding_box()["y"], "the restore step is drawn below the answer"
        page.screenshot(path=str(ARTIFACTS / "resume_skipped.png"))


def test_after_a_snapshot_the_later_code_is_checked_with_what_the_earlier_code_made() -> None:
    earlier = Round("q", post_list=[coder("import sys as s\nrows = send_mail('x')")])  # restored by the snapshot
    later = Round("q", post_list=[coder("n = len(rows)"), coder("m = s.modules['_weaver' + '_plugin_x']")])
    plan = replay_plan([earlier, later], ["send_mail"], restored=1)
    assert [s.code for s in plan] == ["n = len(rows)", "m = s.modules['_weaver' + '_plugin_x']"]
    assert plan[0].skip_reason is None, "rows came back with the snapshot"
    assert plan[1].skip_reason is not None and plan[1].skip_reason.kind is SkipKind.DYNAMIC, "s is sys"


def header_round(folder: Path) -> str:
    """The round the snapshot in ``folder`` was taken after (its JSON header line; never unpickled)."""
    return json.loads((folder / SNAPSHOT_PATH).read_bytes().split(b"\n")[1])["round_id"]


def test_a_restore_that_failed_takes_no_snapshot_so_the_next_resume_tries_again(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir)
    session = first.get_session()
    session_id, folder = session.session_id, session.cwd
    assert session.send_message(code("x = 1\nopen('data.txt', 'w').write('41')")).state == "finished"
    assert saved(session) is SaveStatus.SAVED
    kept = session.rounds[-1].id
    two = "n = int(open('data.txt').read())\nimport threading\nlock = threading.Lock()"  # keeps that snapshot
    assert session.send_message(code(two)).state == "finished"
    assert saved(session) is SaveStatus.UNPICKLABLE
    first.stop()
    (folder / "data.txt").unlink()  # the second round now fails when it runs again

    second = TaskWeaverApp(app_dir=app_dir)
    try:
        resumed = second.open_session(session_id)
        report = resumed.replay_code()
        assert report.from_snapshot and report.outcome is RestoreOutcome.FAILED, report.summary()
        assert resumed.send_message(code("z = x + 2")).state == "finished"  # lock did not come back: all picklable
        assert resumed.snapshots.wait(60) and resumed.snapshots.last is None, resumed.snapshots.last
    finally:
        second.stop()  # a stop saves what is due: nothing is
    assert header_round(folder) == kept, "a snapshot without n passed for the whole chat"

    (folder / "data.txt").write_text("41")
    third = TaskWeaverApp(app_dir=app_dir)
    try:
        resumed = third.open_session(session_id)
        report = resumed.replay_code()
        assert report.from_snapshot and report.complete and report.rounds_after_snapshot == 2, report.summary()
        assert "42 3" in resumed.send_message(code("print(n + 1, z)")).reply_text
    finally:
        third.stop()


def test_the_snapshot_stays_in_the_session_folder_after_the_code_changes_directory(app_dir: Path) -> None:
    app = TaskWeaverApp(app_dir=app_dir)
    try:
        session = app.get_session()
        folder = session.cwd
        assert (
            session.send_message(code("import os\nos.makedirs('out', exist_ok=True)\nos.chdir('out')\nx = 1")).state
            == "finished"
        )
        assert saved(session) is SaveStatus.SAVED
        assert (folder / SNAPSHOT_PATH).is_file() and not (folder / "out" / ".weaver").exists()
    finally:
        app.stop()


def test_names_and_types_from_the_kernel_are_shown_as_code_and_bounded() -> None:
    hostile = "x`<img src=x onerror=alert(1)>\n# **title**"
    loaded = LoadResult(LoadStatus.LOADED, not_saved={hostile: "[link](http://127.0.0.1/)`"})
    shown = loaded.why_older()
    assert shown.count("`") == 6 and "\n" not in shown, shown  # two closed code spans and the ``del`` one
    report = ReplayReport(total=1, user_skipped=True, missing=[hostile])
    assert "`x'<img src=x onerror=alert(1)> # **title**`" in report.summary(), report.summary()

    class Answering:  # a kernel whose answer was changed by the code in it (the user's kernel is not trusted)
        def __init__(self, answer: str) -> None:
            self.answer = answer

        def call_helper(self, expression: str, *, start: bool = False, only_if: object = None) -> str:
            return self.answer

        def disk_room(self) -> None:
            return None

    many = [f"v{i}" + "x" * 300 for i in range(10_000)]
    big = Answering(json.dumps({"status": "loaded", "round_id": "r", "names": many[:300], "dropped": many[:300]}))
    result = load_snapshot(big, ["r"], Path("/tmp"))
    assert len(result.names) == 300 and max(map(len, result.names)) <= 100 and result.count == 300
    huge = Answering(json.dumps({"status": "loaded", "round_id": "r", "names": many, "count": 10_000}))
    assert load_snapshot(huge, ["r"], Path("/tmp")).status is LoadStatus.FAILED, "an answer too long to read"
    short = [f"v{i}" for i in range(600)]
    wide = Answering(json.dumps({"status": "saved", "names": short, "not_saved": dict.fromkeys(short, "t")}))
    saved_result = save_snapshot(wide, "r", 1, lambda: True, Path("/tmp"))
    assert len(saved_result.names) == 500 and len(saved_result.not_saved) == 500
