"""Project datasets: <app_dir>/data/ read-only in every kernel, described in the prompts, profiled offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core import TaskWeaverApp
from core.datasets import Dataset, DatasetCatalog, DatasetError
from core.execution import sandbox
from tests.llm_server import Answer, ScriptedLLMServer
from tests.test_llm_rounds import code_reply, new_app, planner, to_user

pytestmark = pytest.mark.timeout(90)

SALES = "region,revenue\nEMEA,10\nAPAC,20\nAMER,30\n"
INDEX = """\
datasets:
  - name: sales_2024
    file: sales.csv
    description: Revenue by region in 2024
    columns:
      region: EMEA, APAC or AMER
      revenue: thousands of EUR
"""


def make_data(app_dir: Path, index: str | None = INDEX) -> Path:
    data = app_dir / "data"
    (data / "more").mkdir(parents=True)
    (data / "sales.csv").write_text(SALES)
    (data / "more" / "Notes 2024.txt").write_text("hello\n")
    (data / ".hidden").write_text("x")
    if index is not None:
        (data / "datasets.yaml").write_text(index)
    return data


# --------------------------------------------------------------------------------------- catalog


def test_catalog_lists_described_and_undescribed_files(tmp_path: Path) -> None:
    catalog = DatasetCatalog.load(make_data(tmp_path), "/data")
    assert [(d.name, d.file, d.path) for d in catalog] == [
        ("sales_2024", "sales.csv", "/data/sales.csv"),
        ("notes_2024", "more/Notes 2024.txt", "/data/more/Notes 2024.txt"),
    ]
    sales = catalog.get("sales_2024")
    assert sales is not None and sales.size == len(SALES)
    assert sales.columns == {"region": "EMEA, APAC or AMER", "revenue": "thousands of EUR"}
    line = catalog.prompt(2000).splitlines()[0]
    assert line.startswith("- sales_2024: /data/sales.csv (") and "Revenue by region in 2024" in line
    assert "region: EMEA, APAC or AMER" in line


def test_prompt_is_bounded_and_says_how_many_more() -> None:
    many = [Dataset(f"d{i}", f"d{i}.csv", f"/data/d{i}.csv", "a table " * 5, {"a": "b"}, 10) for i in range(100)]
    text = DatasetCatalog(many, "/data").prompt(2000)
    assert len(text) <= 2000
    listed = [line for line in text.splitlines() if line.startswith("- d")]
    assert text.splitlines()[-1].startswith(f"- and {100 - len(listed)} more")
    assert DatasetCatalog(many, "/data").prompt(0) == ""


@pytest.mark.parametrize(
    ("index", "words"),
    [
        ("datasets:\n  - name: 2bad\n    file: sales.csv\n", ["datasets.0.name", "identifier"]),
        ("datasets:\n  - name: s\n    file: missing.csv\n", ["'missing.csv'", "is not in"]),
        ("datasets:\n  - name: s\n    file: ../x.csv\n", ["datasets.0.file", "inside the data folder"]),
        ("datasets:\n  - name: s\n    file: sales.csv\n    colour: red\n", ["colour", "Extra inputs"]),
        ("datasets: [unclosed\n", ["not valid YAML"]),
        (
            "datasets:\n  - {name: s, file: sales.csv}\n  - {name: s, file: more/Notes 2024.txt}\n",
            ["the name 's'", "more than one"],
        ),
    ],
)
def test_bad_index_stops_the_app_naming_the_file(tmp_path: Path, index: str, words: list[str]) -> None:
    make_data(tmp_path, index)
    with pytest.raises(DatasetError) as caught:
        TaskWeaverApp(app_dir=tmp_path, config={"execution.pool_size": 0})
    message = str(caught.value)
    assert str(tmp_path / "data" / "datasets.yaml") in message
    for word in words:
        assert word in message, message


# --------------------------------------------------------------------------------------- rounds


@pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason="needs a working bubblewrap")
def test_dataset_is_in_the_prompts_and_read_only_in_the_kernel(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    data = make_data(tmp_path)
    code = """
import os
import pandas as pd
print("rows", len(pd.read_csv("/data/sales.csv")))
def _try(label, action):
    try:
        action()
        print(label, "DONE")
    except OSError as exc:
        print(label, "refused", exc.errno)
_try("append", lambda: open("/data/sales.csv", "a").write("HACK,0\\n"))
_try("delete", lambda: os.remove("/data/sales.csv"))
_try("create", lambda: open("/data/new.csv", "w").write("x"))
_try("rename", lambda: os.rename("/data/sales.csv", "/data/gone.csv"))
"""
    llm_server.push(
        Answer(planner("CodeInterpreter", "Read the sales dataset.")),
        Answer(code_reply(code)),
        to_user("Read it."),
    )
    app = new_app(tmp_path, llm_server, **{"execution.pool_size": 0})
    try:
        assert [d.name for d in app.datasets] == ["sales_2024", "notes_2024"]
        rnd = app.get_session().send_message("What is in the sales data?")
        assert rnd.state == "finished", rnd.error
        plan_req, code_req, _ = llm_server.wait_for_requests(3)
        for request in (plan_req, code_req):
            system = request.body["messages"][0]["content"]
            assert "- sales_2024: /data/sales.csv" in system and "thousands of EUR" in system
            assert "/data/more/Notes 2024.txt" in system
        result = str(rnd.post_list[2].message)
        assert "rows 3" in result
        for label in ("append", "delete", "create", "rename"):
            assert f"{label} refused" in result, result
    finally:
        app.stop()
    assert (data / "sales.csv").read_text() == SALES
    assert sorted(p.name for p in data.iterdir()) == [".hidden", "datasets.yaml", "more", "sales.csv"]


def test_the_offline_backend_profiles_a_dataset_by_name(tmp_path: Path) -> None:
    make_data(tmp_path)
    app = TaskWeaverApp(app_dir=tmp_path, config={"llm.api_type": "offline", "execution.pool_size": 0})
    try:
        session = app.get_session()
        rnd = session.send_message("profile sales_2024")
        assert rnd.state == "finished", rnd.error
        assert "4 rows" not in rnd.reply_text and "3 rows x 2 columns, loaded as `sales_2024`" in rnd.reply_text
        helped = session.send_message("profile nothing_like_it")
        assert "`profile <name>`" in helped.reply_text and "`sales_2024`" in helped.reply_text
        rnd = session.send_message("```python\nprint(sales_2024.revenue.sum())\n```")
        assert "60" in rnd.reply_text
    finally:
        app.stop()


def test_unsandboxed_kernels_read_the_folder_where_it_is(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    assert sandbox.data_mount(data, sandboxed=False) == data.resolve()
    assert sandbox.data_mount(data, sandboxed=True) == Path("/data")
    config: dict[str, Any] = {"llm.api_type": "offline", "execution.pool_size": 0, "execution.sandbox": "none"}
    app = TaskWeaverApp(app_dir=tmp_path, config=config)
    try:
        assert app.datasets[0].path == f"{data.resolve()}/sales.csv"
    finally:
        app.stop()
