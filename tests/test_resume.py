"""Resuming a chat after its kernel stopped or the server restarted (real kernels, offline model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core import SessionNotFound, TaskWeaverApp
from core.memory import Attachment, AttachmentType, ExecutionStatus, Post, Round
from core.replay_check import ReplayChecker, SkipKind
from core.resume import replay_plan

FIXTURE_APP = Path(__file__).parent / "app_fixture"
REPLAY_ONLY = {"session.snapshot_max_mb": 0}  # these tests are about running code again: no snapshots


def code(text: str) -> str:
    return f"```python\n{text}\n```"


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE_APP, tmp_path / "app")
    return tmp_path / "app"


def test_a_resumed_chat_has_its_rounds_files_and_variables_back(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    session = first.get_session()
    session_id = session.session_id
    assert session.send_message(code("x = 41\nopen('notes.txt', 'w').write('kept')")).state == "finished"
    assert session.send_message(code("greeting = whoami('Hi')")).state == "finished"  # calls a plugin
    assert session.send_message(code("1 / 0")).state == "finished"  # fails: not replayed
    assert session.send_message(code("y = x + 1")).state == "finished"
    first.stop()  # the server goes away, and every kernel with it

    second = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    try:
        resumed = second.open_session(session_id)
        assert [r.user_query for r in resumed.rounds][0].endswith(code("x = 41\nopen('notes.txt', 'w').write('kept')"))
        assert len(resumed.rounds) == 4
        seen: list[tuple[int, int]] = []
        report = resumed.replay_code(lambda done, total: seen.append((done, total)))
        assert report.complete and report.total == 3 and report.ran == 2, report.summary()
        assert seen == [(1, 3), (2, 3), (3, 3)]
        assert "calls the plugin whoami" in report.summary()
        answer = resumed.send_message(code("print(x, y, open('notes.txt').read())")).reply_text
        assert "41 42 kept" in answer, answer
        assert (
            "greeting"
            not in resumed.send_message(code("print(sorted(k for k in dir() if not k.startswith('_')))")).reply_text
        )
        assert second.open_session(session_id) is resumed  # a second tab gets the same session, no second kernel
    finally:
        second.stop()


def test_a_step_that_fails_now_stops_the_replay_and_says_so(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    session = first.get_session()
    session.send_message(code("open('data.txt', 'w').write('1')"))
    session.send_message(code("n = int(open('data.txt').read())"))
    session.send_message(code("m = n + 1"))
    session_id, folder = session.session_id, session.cwd
    first.stop()
    (folder / "data.txt").unlink()  # the first step now recreates it, so remove the code's input instead
    rounds_file = folder.parent / "rounds.jsonl"
    rounds_file.write_text(rounds_file.read_text().replace("open('data.txt', 'w').write('1')", "pass"))

    second = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    try:
        resumed = second.open_session(session_id)
        report = resumed.replay_code()
        assert not report.complete and report.ran == 1 and report.failed and "step 2" in report.failed
        assert "FileNotFoundError" in report.summary()
        assert resumed.send_message(code("print('still usable')")).state == "finished"
    finally:
        second.stop()


def test_replay_is_bounded_in_time(app_dir: Path) -> None:
    first = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    session = first.get_session()
    session.send_message(code("import time\nend = time.time() + 0.5\nwhile time.time() < end:\n    pass\nslow = True"))
    session_id = session.session_id
    first.stop()
    second = TaskWeaverApp(app_dir=app_dir, config={**REPLAY_ONLY, "session.resume_replay_timeout": 0.2})
    try:
        report = second.open_session(session_id).replay_code()
        assert report.timed_out and "took too long" in report.summary()
    finally:
        second.stop()


def test_only_existing_session_folders_can_be_opened(app_dir: Path) -> None:
    app = TaskWeaverApp(app_dir=app_dir)
    try:
        for bad in ("../app", "/tmp", "", "no-such-session", "x" * 200):
            with pytest.raises(SessionNotFound):
                app.open_session(bad)
    finally:
        app.stop()


def coder(text: str, status: ExecutionStatus = ExecutionStatus.success) -> Post:
    post = Post(send_from="CodeInterpreter", send_to="Planner")
    post.add_attachment(Attachment(AttachmentType.reply_content, text))
    post.add_attachment(Attachment(AttachmentType.execution_status, status))
    return post


def test_replay_plan_skips_plugins_and_failures() -> None:
    rnd = Round("q", post_list=[coder("a = 1", ExecutionStatus.success), coder("b = 1/0", ExecutionStatus.failure)])
    rnd.add_post(coder("send_mail(to='x')", ExecutionStatus.success))
    plan = replay_plan([rnd], ["send_mail"])
    assert [(s.code, s.skip_reason is None) for s in plan] == [("a = 1", True), ("send_mail(to='x')", False)]


# -- what trimming may drop: only waits and output that change nothing ----------------------------


def trimmed(*cells: str) -> list[str | None]:
    """Each cell as a replay would run it (None: not at all), read in the chat's order."""
    checker = ReplayChecker(frozenset())
    out: list[str | None] = []
    for cell in cells:
        assert checker.check(cell) is None
        out.append(checker.trim(cell)[0])
    return out


@pytest.mark.parametrize(
    "cell",
    [
        'with open("out.txt", "w") as f:\n    print("a,b", file=f)',  # dropped, the file would be left empty
        'import sys\nprint("a", file=sys.stderr)',
        "print('a', 'b', sep=',', end='')",
        "args = [1]\nprint(*args)",
        "kw = {}\nprint(1, **kw)",
    ],
)
def test_print_with_keywords_or_unpacking_is_run_again(cell: str) -> None:
    assert trimmed(cell) == [cell]


def test_a_wait_in_a_loop_is_kept_so_the_loop_does_not_spin() -> None:
    cell = "import time\nn = 0\nwhile n < 3:\n    time.sleep(0.01)\n    n += 1\nfor i in range(2):\n    time.sleep(1)"
    assert trimmed(cell) == [cell]
    assert trimmed("import time\nif True:\n    time.sleep(1)\n    x = 1\nwith open('f') as f:\n    print(f)") == [
        "import time\nif True:\n    x = 1\nwith open('f') as f:\n    pass"
    ]


def test_a_trimmed_step_that_does_not_compile_runs_as_written() -> None:
    cell = "import time\ntime.sleep(1)\nx = 1\nreturn x"  # ``return`` outside a function: kept as the user wrote it
    assert trimmed(cell) == [cell]


@pytest.mark.parametrize(
    "cells",
    [
        ("log = []\ndef print(*a):\n    log.append(a)", "print(1)"),
        ("def display(x):\n    return x", "display(1)"),
        ("from time import sleep\ndef sleep(n):\n    return n", "sleep(3)"),
        ("def sleep(n):\n    return n", "sleep(3)"),
        ("import time as t\nt = []", "t.sleep(1)"),
        ("class time:\n    sleep = print", "time.sleep(1)"),  # never imported: not the module
        ("asyncio = object()", "await asyncio.sleep(1)"),
    ],
)
def test_the_users_own_print_sleep_or_time_is_run_again(cells: tuple[str, ...]) -> None:
    assert trimmed(*cells) == list(cells)


def test_the_real_sleep_and_print_are_still_left_out() -> None:
    assert trimmed("import time as t", "t.sleep(1)", "from time import sleep as nap\nnap(1)\nprint(1)") == [
        "import time as t",
        None,
        "from time import sleep as nap",
    ]


# -- code that reaches a plugin without calling it by name ---------------------------------------

SEND_MAIL_PY = """
from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class SendMail(Plugin):
    def __call__(self, tag: str):
        with open("outbox.txt", "a") as outbox:  # the side effect: one line per mail sent
            outbox.write(tag + "\\n")
        return "sent " + tag
"""
SEND_MAIL_YAML = """
name: send_mail
enabled: true
required: false
description: Sends a mail (here, a line in outbox.txt).
parameters:
  - name: tag
    type: str
    required: true
    description: what the mail says
returns:
  - name: status
    type: str
    description: what was sent
"""
# Each reaches send_mail once, and says which way it went.
INDIRECT = {
    "globals": "globals()['send_' + 'mail']('globals')",
    "eval": "eval('send_' + \"mail('eval')\")",
    "exec": "exec('send_' + \"mail('exec')\")",
    "getattr": "import sys as system\ngetattr(system.modules[__name__], 'send_' + 'mail')('getattr')",
    "__import__": "__import__('__m' + 'ain__').__dict__['send_' + 'mail']('__import__')",
    "importlib": "import importlib\nimportlib.import_module('__main__').__dict__['send_' + 'mail']('importlib')",
    "vars": "vars()['send_' + 'mail']('vars')",
    "locals": "locals()['send_' + 'mail']('locals')",
    "magic": "%time send_mail('magic')",
    "pkgutil": "import pkgutil\npkgutil.resolve_name('__main__:' + 'send_' + 'mail')('pkgutil')",
    "pydoc": "import pydoc\npydoc.locate('__main__.' + 'send_' + 'mail')('pydoc')",
}
ALIAS = ("f = send_mail", "f('alias')")  # the second reaches the plugin through a name the first made


@pytest.mark.parametrize("form", [*INDIRECT, "alias"])
def test_each_indirect_way_to_a_plugin_is_skipped_and_data_code_is_not(form: str) -> None:
    cells = list(ALIAS) if form == "alias" else [INDIRECT[form]]
    rnd = Round("q", post_list=[coder("x = 41"), *(coder(c) for c in cells), coder("y = x + 1")])
    plan = replay_plan([rnd], ["send_mail"])
    assert [s.skip_reason is None for s in plan] == [True, *(False for _ in cells), True]
    kinds = {s.skip_reason.kind for s in plan if s.skip_reason is not None}
    assert kinds <= {SkipKind.PLUGIN, SkipKind.DYNAMIC, SkipKind.FROM_SKIPPED, SkipKind.NOT_PYTHON}


def test_names_made_by_skipped_or_failed_steps_are_tracked_until_made_again() -> None:
    rnd = Round(
        "q",
        post_list=[
            coder("rows = send_mail('x')"),  # skipped: rows is missing in the replay
            coder("n = len(rows)"),  # skipped too: it uses rows
            coder("half = 1 / 0", ExecutionStatus.failure),  # failed: half is missing too
            coder("print(half)"),
            coder("rows = [1, 2]\nn = len(rows)"),  # makes rows again before using it
            coder("total = sum(rows) + n"),
            coder("import operator\nkey = operator.itemgetter(0)"),
        ],
    )
    plan = replay_plan([rnd], ["send_mail"])
    assert [s.skip_reason is None for s in plan] == [False, False, False, True, True, True]
    assert "it uses rows, made by an earlier step" in str(plan[1].skip_reason)
    assert "it uses half" in str(plan[2].skip_reason)


def test_a_resumed_chat_does_not_repeat_a_plugin_reached_indirectly(app_dir: Path) -> None:
    (app_dir / "plugins" / "send_mail.py").write_text(SEND_MAIL_PY)
    (app_dir / "plugins" / "send_mail.yaml").write_text(SEND_MAIL_YAML)
    first = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    session = first.get_session()
    session_id, outbox = session.session_id, session.cwd / "outbox.txt"
    cells = ["x = 41", *INDIRECT.values(), *ALIAS, "y = x + 1"]
    for cell in cells:
        assert session.send_message(code(cell)).state == "finished"
    sent = sorted(outbox.read_text().split())
    assert sent == sorted([*INDIRECT, "alias"]), "every way reached the plugin once"
    first.stop()

    second = TaskWeaverApp(app_dir=app_dir, config=REPLAY_ONLY)
    try:
        resumed = second.open_session(session_id)
        report = resumed.replay_code()
        again = sorted(outbox.read_text().split())
        assert again == sent, f"sent again at resume: {sorted({tag for tag in again if again.count(tag) > 1})}"
        assert report.complete and report.ran == 2 and report.total == len(cells), report.summary()
        assert "looks names up at run time" in report.summary()
        answer = resumed.send_message(code("print(x, y)")).reply_text
        assert "41 42" in answer, answer
    finally:
        second.stop()
