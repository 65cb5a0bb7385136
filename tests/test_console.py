"""``weaver chat``: a real terminal session fed from stdin prints the streamed steps and the answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
