"""TaskWeaver-format plugins: YAML specs, loading into real kernels, context and artifacts."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.execution.kernel import KernelExecutor
from core.plugins.api import PluginContext
from core.plugins.spec import PluginSpec, load_plugin_specs

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).parent / "plugin_fixtures"


@pytest.fixture(scope="module")
def specs() -> list[PluginSpec]:
    loaded, errors = load_plugin_specs(FIXTURES)
    assert errors == []
    return loaded


@pytest.fixture(scope="module")
def executor(specs: list[PluginSpec], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelExecutor]:
    ex = KernelExecutor(
        "plugin-tests", tmp_path_factory.mktemp("cwd"), plugins=specs, extra_env={"PLUGIN_greet_TOKEN": "t0k"}
    )
    ex.start()
    yield ex
    ex.stop()


def test_taskweaver_is_not_importable_here() -> None:
    """No real TaskWeaver on the path: what ``taskweaver`` names here is only Weaver's own alias
    (the plugin hook ``pip install`` adds), so these tests exercise Weaver's code."""
    from core.compat.autoload import real_taskweaver

    assert real_taskweaver() is None


def test_specs_parse_and_disabled_plugins_are_skipped(specs: list[PluginSpec]) -> None:
    by_name = {s.name: s for s in specs}
    assert set(by_name) == {"broken", "double", "greet", "save_table"}
    greet = by_name["greet"]
    assert [p.name for p in greet.parameters] == ["prefix", "punctuation"]
    assert greet.parameters[0].required and not greet.parameters[1].required
    assert greet.configurations == {"suffix_default": "!"}
    assert greet.code_path == (FIXTURES / "greet.py").resolve()
    assert by_name["double"].code_path == (FIXTURES / "double_impl.py").resolve()


def test_format_prompt_reads_like_a_signature(specs: list[PluginSpec]) -> None:
    text = next(s for s in specs if s.name == "save_table").format_prompt()
    assert text.startswith("def save_table(rows: int) -> tuple[pandas.DataFrame, str]:")
    assert "Builds a small sales table" in text
    assert "rows (int, required): how many rows to generate" in text
    greet = next(s for s in specs if s.name == "greet").format_prompt()
    assert "punctuation: str = None" in greet and 'greet("Good morning")' in greet


def test_bad_yaml_is_a_sentence_and_others_still_load(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "greet.yaml", tmp_path)
    shutil.copy(FIXTURES / "greet.py", tmp_path)
    (tmp_path / "nocode.yaml").write_text("name: nocode\nparameters: []\nreturns: []\n")
    (tmp_path / "noparams.yaml").write_text("name: noparams\ndescription: x\n")
    (tmp_path / "garbled.yaml").write_text("name: [unclosed\n")
    loaded, errors = load_plugin_specs(tmp_path)
    assert [s.name for s in loaded] == ["greet"]
    assert len(errors) == 3
    joined = "\n".join(errors)
    assert "nocode.py was not found" in joined
    assert "noparams.yaml is invalid" in joined and "parameters" in joined
    assert "garbled.yaml is not readable YAML" in joined


def test_missing_plugin_dir_is_reported(tmp_path: Path) -> None:
    assert load_plugin_specs(None) == ([], [])
    loaded, errors = load_plugin_specs(tmp_path / "nope")
    assert loaded == [] and "does not exist" in errors[0]


def test_broken_plugin_is_reported_and_others_load(executor: KernelExecutor) -> None:
    assert {s.name for s in executor.plugin_specs} == {"double", "greet", "save_table"}
    assert len(executor.plugin_errors) == 1
    error = executor.plugin_errors[0]
    assert "'broken'" in error and "SyntaxError" in error and "broken.py" in error


def test_plugin_is_callable_by_name(executor: KernelExecutor) -> None:
    res = executor.execute("greet('Hello', punctuation='?')")
    assert res.is_success, res.error
    assert res.result == "'Hello, anonymous?'"
    assert any("greeting anonymous" in line for line in res.logs)
    assert executor.execute("greet('Hi')").result == "'Hi, anonymous!'"  # configuration default


def test_function_plugin_is_wrapped(executor: KernelExecutor) -> None:
    assert executor.execute("double(21)").result == "42"


def test_plugin_env_lookup(executor: KernelExecutor) -> None:
    assert executor.execute("greet.get_env('TOKEN')").result == "'t0k'"
    res = executor.execute("greet.get_env('MISSING')")
    assert not res.is_success and "PLUGIN_greet_MISSING" in (res.error or "")


def test_session_vars_are_per_executor(executor: KernelExecutor, specs: list[PluginSpec], tmp_path: Path) -> None:
    other = KernelExecutor("plugin-tests-2", tmp_path, plugins=specs)
    try:
        mine = executor.execute("greet('Hi')", session_vars={"user_name": "alice"})
        theirs = other.execute("greet('Hi')", session_vars={"user_name": "bob"})
    finally:
        other.stop()
    assert mine.result == "'Hi, alice!'"
    assert theirs.result == "'Hi, bob!'"


def test_add_artifact_writes_csv_in_cwd(executor: KernelExecutor) -> None:
    res = executor.execute("df, note = save_table(3)\nnote")
    assert res.is_success, res.error
    assert res.result == "'saved 3 rows'"
    assert len(res.artifacts) == 1
    art = res.artifacts[0]
    assert art.type == "df" and art.name == "sales" and art.description == "generated sales table"
    assert art.path.parent == executor.cwd and art.path.suffix == ".csv"
    with art.path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["month", "sales"], ["m0", "0"], ["m1", "10"], ["m2", "20"]]
    assert art.path.name in res.summary()
    # artifacts belong to one execution only
    assert executor.execute("1").artifacts == []


def test_disabled_plugin_is_not_bound(executor: KernelExecutor) -> None:
    res = executor.execute("disabled_tool")
    assert not res.is_success and "NameError" in (res.error or "")


def test_plugin_context_never_writes_outside_cwd(tmp_path: Path) -> None:
    ctx = PluginContext("local", "s", tmp_path)
    ctx.begin_execution("e1", {})
    _, path = ctx.create_artifact_path("x", "../../etc/evil.txt", "txt")
    assert Path(path).parent == tmp_path.resolve()
    ctx.add_artifact("note", "note", "txt", "hello")
    ctx.add_artifact("note", "note", "txt", "again")
    assert (tmp_path / "note.txt").read_text() == "hello"
    assert (tmp_path / "note-2.txt").read_text() == "again"


def test_taskweaver_plugin_helpers_import_in_the_kernel(executor: KernelExecutor) -> None:
    code = (
        "from taskweaver.plugin.utils import make_api_call\n"
        "from taskweaver.plugin.context import TestPluginContext, temp_context\n"
        "with temp_context() as ctx:\n"
        '    found = (ctx.session_id, greet.__class__("greet", ctx, {})("Hi"))\n'
        "found"
    )
    res = executor.execute(code)
    assert res.is_success, res.error
    assert res.result == "('test', 'Hi, anonymous.')"  # no configuration: the plugin's own default
