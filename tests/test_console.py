"""``weaver chat``: a real terminal session fed from stdin prints the streamed steps and the answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_terminal_chat_runs_code_and_prints_the_answer(tmp_path: Path) -> None:
    script = "```python\nvalue = 6 * 7\nprint(f'value={value}')\n```\n\n"
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path)],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "── Planner" in out and "── CodeInterpreter" in out
    assert "code:\n    value = 6 * 7" in out
    assert "weaver>" in out and "value=42" in out.split("weaver>")[-1]
    assert "[round finished]" in out


class _Output:
    """Reads a child's stdout on a thread, so a test can wait for text as it arrives."""

    def __init__(self, stream: "subprocess.IO[str]") -> None:
        self.text = ""
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: "subprocess.IO[str]") -> None:
        for chunk in iter(lambda: stream.read(1), ""):
            with self._cond:
                self.text += chunk
                self._cond.notify_all()

    def wait_for(self, needle: str, after: int = 0, timeout: float = 60) -> int:
        """Wait until ``needle`` appears at or after offset ``after``; returns the offset past it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (at := self.text.find(needle, after)) < 0:
                left = deadline - time.monotonic()
                assert left > 0, f"no {needle!r} in output:\n{self.text[-2000:]}"
                self._cond.wait(left)
            return at + len(needle)


def test_ctrl_c_cancels_the_round_and_the_chat_goes_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "WEAVER_LLM__API_TYPE": "offline"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = _Output(proc.stdout)

    def say(text: str) -> None:
        proc.stdin.write(text + "\n\n")
        proc.stdin.flush()

    try:
        say("```python\nkept = 41\nprint('set', kept)\n```")
        mark = out.wait_for("[round finished]")
        say("```python\nimport time\nwhile True:\n    time.sleep(0.05)\n```")
        mark = out.wait_for("executing code", mark)
        proc.send_signal(signal.SIGINT)
        mark = out.wait_for("[round cancelled]", mark)
        say("```python\nprint('after', kept + 1)\n```")
        mark = out.wait_for("after 42", mark)
        mark = out.wait_for("[round finished]", mark)
        out.wait_for("you> ", mark)
        proc.send_signal(signal.SIGINT)  # at the prompt: quits
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_files_after_the_first_message_help_and_a_goodbye(tmp_path: Path) -> None:
    """In-chat commands: ``/file`` adds a file to the next message (here after a first round),
    ``/help`` lists the commands; offline, no step claims to call a language model; Ctrl-D (end of
    input) says goodbye."""
    table = tmp_path / "sales.csv"
    table.write_text("region,revenue\nEast,10\nWest,\nNorth,30\n")
    script = (
        "What can you do?\n\n"  # the first message: offline, the help
        "/help\n"
        f"/file {tmp_path / 'missing.csv'}\n"
        f"/file {table}\n"
        "\n"  # an empty line sends the waiting file alone: offline, it is profiled
    )
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path / "app")],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "WEAVER_LLM__API_TYPE": "offline", "WEAVER_EXECUTION__POOL_SIZE": "0"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "/file PATH" in out and "/quit" in out  # the help
    assert "no file" in out and "missing.csv" in out
    second = out.split("sales.csv goes with your next message", 1)[1]
    assert "sales.csv" in second.split("[round finished]")[0] and "East" in second  # the file reached the round
    assert out.count("[round finished]") == 2
    assert "calling the language model" not in out and "offline rules" in out
    assert "`/file PATH` in `weaver chat`" in out  # the offline help names the terminal's way
    assert out.rstrip().endswith("Goodbye.")


def test_a_bad_app_file_stops_the_terminal_chat_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ui.console import main

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "lookup.yaml").write_text("name: lookup\ndescription: [unclosed\n")
    assert main(["--app-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("weaver chat: ") and "lookup.yaml" in err and "\n" not in err


def test_the_terminal_chat_prints_each_rounds_tokens(tmp_path: Path) -> None:
    """With a model server that reports usage (the scripted one: 11 in, 7 out per answer), the
    round's end line carries its tokens and, with prices set, its cost."""
    import json

    from tests.llm_server import Answer, ScriptedLLMServer

    llm = ScriptedLLMServer().start()
    try:
        answer = {
            "thought": "t",
            "plan": ["say hi"],
            "current_plan_step": "say hi",
            "send_to": "User",
            "message": "Hi!",
        }
        llm.push(Answer(json.dumps(answer)))
        env = {
            **os.environ,
            "WEAVER_LLM__API_TYPE": "openai",
            "WEAVER_LLM__API_BASE": llm.base_url,
            "WEAVER_LLM__API_KEY": "test-key",
            "WEAVER_LLM__MAX_RETRIES": "0",
            "WEAVER_LLM__PRICE_PER_1K_PROMPT_TOKENS": "1",
            "WEAVER_LLM__PRICE_PER_1K_COMPLETION_TOKENS": "3",
            "WEAVER_EXECUTION__POOL_SIZE": "0",
        }
        done = subprocess.run(
            [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path)],
            input="Hello\n\n",
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=120,
        )
    finally:
        llm.stop()
    assert done.returncode == 0, done.stderr
    assert "weaver>" in done.stdout and "Hi!" in done.stdout
    assert "[round finished · 11 tokens in · 7 out · $0.0320]" in done.stdout, done.stdout


def test_terminal_chat_asks_before_code_runs_when_approval_is_on(tmp_path: Path) -> None:
    script = (
        "```python\nopen('cancelled.txt', 'w').write('x')\n```\n\nc\n"
        "```python\nopen('model.txt', 'w').write('x')\n```\n\ne\n"
        "open('edited.txt', 'w').write('y')\nprint('ed' 'ited ran')\n\n"
    )
    env = {**os.environ, "WEAVER_CODE_INTERPRETER__REQUIRE_CONFIRMATION": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path)],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("waits for your approval") == 2, out
    assert "You cancelled the code, so nothing was run." in out
    assert "code (your edit):\n    open('edited.txt', 'w').write('y')" in out, out
    assert "edited ran" in out.split("weaver>")[-1]
    written = {p.name for p in tmp_path.rglob("*.txt")}
    assert "edited.txt" in written and not {"cancelled.txt", "model.txt"} & written, written


def test_again_regenerates_the_last_answer_from_the_variables_before_it(tmp_path: Path) -> None:
    script = "```python\nn = globals().get('n', 0) + 1\nprint('n' ' is', n)\n```\n\n/again\n"
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path)],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answers = [part for part in done.stdout.split("weaver>")[1:]]
    assert len(answers) == 2 and all("n is 1" in a for a in answers), done.stdout
    assert "n is 2" not in done.stdout
