"""What offline mode answers when code fails and when a table is profiled, as a user reads it.

Answers are rendered with markdown-it (CommonMark, as the chat's Markdown): program output must
never turn into headings or live Markdown, and a failed step must not promise a revision that
offline mode never makes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from core import AttachmentType, RoleName, SessionEventHandler, TaskWeaverApp, TaskWeaverEvent
from core.llm.offline import OfflineBackend
from core.session import Session
from ui.markdown import table_markdown
from ui.view import RoundView

pytestmark = pytest.mark.timeout(120)

# Output a user's code may print: a table, a rule of dashes (a setext heading underline), a line
# that would be an ATX heading, and a run of backticks that would close a plain fence.
TRICKY_OUTPUT = "  region  revenue\n0   East    65636\nTotal\n----------\n# not a heading\n```\nafter the backticks"


def code(source: str) -> str:
    return f"Please run:\n```python\n{source}\n```"


def parse(markdown: str) -> list[Token]:
    return MarkdownIt("commonmark").parse(markdown)


def assert_output_fenced(markdown: str, *inside: str) -> None:
    tokens = parse(markdown)
    headings = [t for t in tokens if t.type == "heading_open"]
    assert not headings, markdown
    fences = "\n".join(t.content for t in tokens if t.type == "fence")
    for text in inside:
        assert text in fences, (text, markdown)


@pytest.fixture(scope="module")
def session(app_dir: Path) -> Iterator[Session]:
    """Offline, with cells that may run 30 s (the fixture app's 4 s is short for a busy machine)."""
    app = TaskWeaverApp(app_dir=app_dir, config={"execution.timeout": 30, "execution.pool_size": 0})
    try:
        yield app.get_session()
    finally:
        app.stop()


def test_a_failed_execution_is_answered_with_its_output_and_traceback_fenced(session: Session) -> None:
    view = RoundView(Path(session.execution_cwd))

    class Follow(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            view.apply(event)

    head, _, tail = TRICKY_OUTPUT.partition("```")  # backticks in the message would end its code block
    source = f"print({head!r} + chr(96) * 3 + {tail!r})\nprint(undefined_name)"
    rnd = session.send_message(code(source), event_handler=Follow())
    assert rnd.state == "finished", rnd.error
    answer = rnd.reply_text
    assert answer.startswith("The code did not succeed.")
    assert_output_fenced(answer, "Total\n----------\n# not a heading\n```\nafter", "NameError", "---->")
    assert "Offline mode runs code as written and cannot fix it" in answer
    paragraphs = [t.content for t in parse(answer) if t.type == "inline"]
    assert any("edit the code and send it again" in p for p in paragraphs)  # outside the fence
    # No revision is promised or attempted: the failure goes straight back, once.
    workers = [p for p in rnd.post_list if p.send_from == RoleName.CodeInterpreter]
    assert len(workers) == 1 and workers[0].send_to == RoleName.Planner
    assert workers[0].get_attachment(AttachmentType.revise_message) == []
    step = view.posts[workers[0].id].markdown()
    assert "will be revised" not in step
    assert "**Revision:** none; the error goes to the Planner as it is." in step


def test_the_code_interpreters_own_words_about_a_failure_are_fenced_too() -> None:
    """The Planner's report when the CodeInterpreter answered in words (no execution status)."""
    hints = {"stage": "worker_reply", "worker_message": f"It failed:\n{TRICKY_OUTPUT}", "execution_status": None}
    answer = OfflineBackend.planner_answer(hints)
    assert answer["send_to"] == "User"
    assert_output_fenced(answer["message"], "It failed:", "----------\n# not a heading\n```\nafter the backticks")


def test_a_profiled_table_tells_its_true_shape_missing_values_and_statistics(session: Session, tmp_path: Path) -> None:
    rows = ["city,units,price,note"]
    for i in range(200):
        units = "" if i % 10 == 0 else str(i % 37)  # 20 missing
        note = "" if i % 40 == 0 else f"n{i % 3}"  # 5 missing
        rows.append(f"c{i % 7},{units},{1.5 + i % 5},{note}")
    csv = tmp_path / "shop.csv"
    csv.write_text("\n".join(rows) + "\n")
    rnd = session.send_message("profile this file", files=[{"name": "shop.csv", "path": str(csv)}])
    assert rnd.state == "finished", rnd.error
    answer = rnd.reply_text
    assert "shop.csv: 200 rows x 4 columns, loaded as `shop`" in answer
    assert "missing values: 25 in all" in answer
    assert_output_fenced(answer, "summary of the numeric columns")
    overview, statistics = answer.split("summary of the numeric columns")
    columns = {line.split()[0]: line.split()[1:] for line in overview.splitlines() if line.split()}
    assert columns["units"][:2] == ["float64", "20"] and columns["note"][1] == "5"  # type, missing values
    assert columns["city"][1:3] == ["0", "7"]  # missing, distinct
    stats = {line.split()[0]: line.split()[1:] for line in statistics.splitlines() if line.split()}
    assert stats["count"] == ["180.00", "200.00"] and "mean" in stats and "50%" in stats
    # The first rows come once, as a table that knows the whole table's shape (not a text copy).
    assert "c0" not in answer
    worker = next(p for p in rnd.post_list if p.send_from == RoleName.CodeInterpreter)
    (table,) = (a.content for a in worker.get_attachment(AttachmentType.table))
    assert table["shape"] == [200, 4] and len(table["rows"]) == 5
    assert "shape: 200 rows × 4 columns; showing 5 of 200 rows" in table_markdown(table)


def test_a_table_with_lists_and_objects_in_its_cells_is_profiled(session: Session, tmp_path: Path) -> None:
    """Nested JSON (lists and objects in the cells) is still a table: the distinct values are
    counted by their text instead of the profile saying the file could not be read."""
    records = [{"id": i, "tags": ["a", "b"][: i % 3], "meta": {"k": i % 2}} for i in range(6)]
    path = tmp_path / "orders.json"
    path.write_text(json.dumps(records))
    rnd = session.send_message("profile this file", files=[{"name": "orders.json", "path": str(path)}])
    assert rnd.state == "finished", rnd.error
    answer = rnd.reply_text
    assert "could not be read" not in answer, answer
    assert "orders.json: 6 rows x 3 columns, loaded as `orders`" in answer
    columns = {line.split()[0]: line.split()[1:] for line in answer.splitlines() if line.split()}
    assert columns["tags"][1:3] == ["0", "3"] and columns["meta"][1:3] == ["0", "2"]  # missing, distinct
