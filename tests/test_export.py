"""Exporting a chat (``core.export``): a real session on the offline model runs real code in a real
kernel; its rounds (as ``rounds.jsonl`` keeps them) become a notebook that ``nbformat`` validates and
``nbclient`` runs again in a fresh python3 kernel to the same outputs, and a Markdown document."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import nbformat
import pytest
from nbclient import NotebookClient
from pydantic import ValidationError

from core import TaskWeaverApp
from core.export import ChatRecord, ExportFormat, Rating, chat_files, export_chat, to_markdown, to_notebook
from core.memory import Round
from core.resume import load_rounds
from ui.settings import UISettings

FIXTURE_APP = Path(__file__).parent / "app_fixture"
CODES = [
    "x = 41\nprint('hello', x)\nx + 1",
    "import pandas as pd\ndf = pd.DataFrame({'region': ['north', 'south'], 'units': [3, 5]})\ndf",
    "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\ndf.to_csv('units.csv')\nprint('saved')",
    "1 / 0",
    "print('after the error', x * 2)",
]


def code(text: str) -> str:
    return f"```python\n{text}\n```"


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatRecord]:
    """A chat of five rounds, read back from its session folder as a restarted server would."""
    app_dir = tmp_path_factory.mktemp("export") / "app"
    shutil.copytree(FIXTURE_APP, app_dir)
    app = TaskWeaverApp(app_dir=app_dir, config={"execution.timeout": 120})  # matplotlib loads slowly on a busy box
    try:
        session = app.get_session()
        for text in CODES:
            assert session.send_message(code(text)).state == "finished"
        session_id = session.session_id
    finally:
        app.stop()
    rounds = load_rounds(app.workspace.session_dir(session_id) / "rounds.jsonl")
    assert len(rounds) == len(CODES)
    ratings = {0: [Rating(1, "exactly what I needed")], 3: [Rating(0, "it should have caught that")]}
    cwd = app.workspace.execution_cwd(session_id)
    files, more = chat_files(cwd)
    yield ChatRecord("chat-1", "Units by region", rounds, ratings, cwd=cwd, files=files, more_files=more)


def texts(cell: Any) -> dict[str, str]:
    """What a reader sees as text in a code cell's outputs, by kind."""
    seen: dict[str, str] = {}
    for output in cell.outputs:
        if output.output_type == "stream":
            seen[output.name] = seen.get(output.name, "") + output.text
        elif output.output_type == "execute_result":
            seen["result"] = output.data["text/plain"]
        elif output.output_type == "error":
            seen["error"] = f"{output.ename}: {output.evalue}"
    return seen


def images(cell: Any) -> list[bytes]:
    return [
        base64.b64decode(o.data["image/png"])
        for o in cell.outputs
        if o.output_type == "display_data" and "image/png" in o.data
    ]


def test_the_notebook_is_valid_and_reruns_in_jupyter_to_the_same_outputs(chat: ChatRecord, tmp_path: Path) -> None:
    notebook = nbformat.reads(export_chat(chat, ExportFormat.ipynb).decode("utf-8"), as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.source for c in cells] == CODES
    exported = [texts(c) for c in cells]
    assert exported[0] == {"stdout": "hello 41\n", "result": "42"}
    assert "north" in exported[1]["result"]
    html_result = [o for o in cells[1].outputs if o.output_type == "execute_result"][0]
    assert "<table" in html_result.data["text/html"]
    assert images(cells[2]) and images(cells[2])[0].startswith(b"\x89PNG")
    assert exported[3] == {"error": "ZeroDivisionError: division by zero"}
    assert cells[3].metadata.tags == ["raises-exception"]

    rerun = nbformat.reads(nbformat.writes(notebook), as_version=4)
    for cell in rerun.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(rerun, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    again = [c for c in rerun.cells if c.cell_type == "code"]
    assert [texts(c) for c in again] == exported
    assert len(images(again[2])) == len(images(cells[2])) == 1
    assert (tmp_path / "units.csv").read_text().startswith(",region,units")


def test_the_notebook_has_the_messages_plan_answers_feedback_and_files(chat: ChatRecord) -> None:
    notebook = to_notebook(chat)
    markdown = [c.source for c in notebook.cells if c.cell_type == "markdown"]
    assert markdown[0].startswith("# Units by region")
    assert any(m.startswith("## 1. User") and "print('hello', x)" in m for m in markdown)
    assert any(m.startswith("**Plan:**") for m in markdown)
    answers = [m for m in markdown if m.startswith("**Answer:**")]
    assert len(answers) == len(CODES) and "hello 41" in answers[0]
    feedback = [m for m in markdown if "**Feedback:**" in m]
    assert "👍 on the answer — exactly what I needed" in feedback[0]
    assert "👎 on the answer — it should have caught that" in feedback[1]
    # each rating sits right after its round's answer
    first = next(i for i, m in enumerate(markdown) if "exactly what I needed" in m)
    assert markdown[first - 1].startswith("**Answer:**") and "hello 41" in markdown[first - 1]
    assert any("**Files made:**" in m and "`figure.png`" in m for m in markdown)
    assert "- `units.csv`" in markdown[-1] and markdown[-1].startswith("## Files of this chat")


def test_the_markdown_export_fences_code_and_shows_outputs_as_text(chat: ChatRecord) -> None:
    text = to_markdown(chat)
    assert text.startswith("# Units by region\n")
    assert "## 1. User" in text and "## 5. User" in text
    assert "**Code:**\n\n```python\nx = 41\nprint('hello', x)\nx + 1\n```" in text
    assert "Output:\n\n```text\nhello 41\n```" in text
    assert "Result:\n\n```text\n42\n```" in text
    assert "![figure.png](figure.png)" in text and "among the chat's files" in text
    assert "**Code (it raised an error):**" in text and "ZeroDivisionError: division by zero" in text
    assert "👍 on the answer — exactly what I needed" in text
    assert text.index("exactly what I needed") < text.index("## 2. User")
    assert text.rstrip().endswith("- `figure.png`\n- `units.csv`")


def test_a_round_kept_before_outputs_were_recorded_exports_its_summary() -> None:
    line = {
        "id": "round-old",
        "user_query": "print 1",
        "state": "finished",
        "post_list": [
            {
                "send_from": "CodeInterpreter",
                "send_to": "Planner",
                "message": "done",
                "attachment_list": [
                    {"type": "reply_content", "content": "print(1)"},
                    {"type": "execution_status", "content": "success"},
                    {"type": "execution_result", "content": "The execution succeeded.\nStdout:\n1"},
                ],
            },
            {"send_from": "Planner", "send_to": "User", "message": "It printed 1.", "attachment_list": []},
        ],
    }
    record = ChatRecord("old", "Old chat", [Round.from_dict(json.loads(json.dumps(line)))])
    notebook = to_notebook(record)
    (cell,) = [c for c in notebook.cells if c.cell_type == "code"]
    assert texts(cell) == {"stdout": "The execution succeeded.\nStdout:\n1"}
    assert "It printed 1." in to_markdown(record)


def test_the_export_limits_name_what_they_leave_out(chat: ChatRecord) -> None:
    """``WEAVER_UI_EXPORT_MAX_IMAGE_MB`` and ``WEAVER_UI_EXPORT_MAX_FILES``: a figure over the limit
    is named with the reason, files past the limit are counted."""
    assert chat.cwd is not None
    files, more = chat_files(chat.cwd, limit=1)
    small = dataclasses.replace(chat, max_image_bytes=1000, files=files, more_files=more)
    figure_cell = [c for c in to_notebook(small).cells if c.cell_type == "code"][2]
    assert not images(figure_cell)
    assert "[figure figure.png not embedded: it is over the" in texts(figure_cell)["stdout"]
    text = to_markdown(small)
    assert files == ["figure.png"] and "- … and 1 more (past the export's limit of files named)" in text
    with pytest.raises(ValidationError):
        UISettings(export_max_files=0)
    with pytest.raises(ValidationError):
        UISettings(export_max_image_mb=0)
    assert UISettings().export_max_files == 200 and UISettings().sharing is False
