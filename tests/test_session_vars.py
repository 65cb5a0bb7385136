"""Plugins write session state: ``self.ctx.set_session_var`` (a Weaver extension beyond TaskWeaver)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from core import TaskWeaverApp
from core.plugins.api import SessionVarError, temp_context
from core.session import Session

pytestmark = pytest.mark.timeout(90)

REMEMBER = """
from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class Remember(Plugin):
    def __call__(self, name: str, value):
        self.ctx.set_session_var(name, value)
        return "remembered"
"""

RECALL = """
from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class Recall(Plugin):
    def __call__(self, name: str):
        return self.ctx.get_session_var(name, "nothing")
"""


def spec(name: str) -> str:
    return (
        f"name: {name}\nenabled: true\ndescription: {name} a session variable\n"
        "parameters:\n  - name: name\n    type: str\n    required: true\n    description: the variable\n"
        "returns:\n  - name: text\n    type: str\n    description: what happened\n"
    )


def run(session: Session, code: str) -> str:
    rnd = session.send_message(f"```python\n{code}\n```")
    assert rnd.state == "finished", rnd.error
    return rnd.reply_text


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskWeaverApp]:
    app_dir = tmp_path_factory.mktemp("vars_app")
    plugins = app_dir / "plugins"
    plugins.mkdir()
    for name, code in (("remember", REMEMBER), ("recall", RECALL)):
        (plugins / f"{name}.py").write_text(code)
        (plugins / f"{name}.yaml").write_text(spec(name))
    config = {
        "llm.api_type": "offline",
        "execution.pool_size": 0,
        "session.max_session_vars": 3,
        "session.max_session_var_chars": 50,
    }
    application = TaskWeaverApp(app_dir=app_dir, config=config)
    yield application
    application.stop()


@pytest.fixture
def session(app: TaskWeaverApp) -> Iterator[Session]:
    s = app.get_session()
    s.update_session_var({"user_name": "alice"})
    yield s
    s.stop()


def test_a_plugin_sets_a_variable_a_second_plugin_reads_in_the_next_round(session: Session) -> None:
    assert "remembered" in run(session, "remember('city', 'Paris')")
    assert session.session_var == {"user_name": "alice", "city": "Paris"}  # what the UI reads
    assert "'Paris'" in run(session, "recall('city')")
    # In the same cell, a plugin sees what another one just set.
    assert "'Lyon'" in run(session, "remember('city', 'Lyon')\nrecall('city')")
    assert session.session_var["city"] == "Lyon"
    # The app's own update_session_var still wins for later executions.
    session.update_session_var({"city": "Nice"})
    assert "'Nice'" in run(session, "recall('city')")


def test_bounds_and_types_are_clear_errors(session: Session) -> None:
    too_long = run(session, "remember('note', 'x' * 51)")
    assert "SessionVarError" in too_long and "session.max_session_var_chars" in too_long
    not_str = run(session, "remember('count', 3)")
    assert "SessionVarError" in not_str and "needs a str value, not int" in not_str
    run(session, "remember('a', '1')\nremember('b', '2')")
    crowded = run(session, "remember('c', '3')")
    assert "session.max_session_vars" in crowded and "3 variables" in crowded
    run(session, "remember('a', 'changed')")  # changing one it holds is fine at the bound
    assert session.session_var == {"user_name": "alice", "a": "changed", "b": "2"}


def test_the_session_checks_again_what_the_kernel_reports(session: Session) -> None:
    """Code can reach the kernel's context directly; the session drops what is past its bounds."""
    run(
        session,
        "__import__('core.plugins.runtime', fromlist=['x'])._ctx.changed_session_vars.update("
        "{'big': 'y' * 500, 'x1': '1', 'x2': '2'})",
    )
    assert "big" not in session.session_var
    assert len(session.session_var) <= 3


def test_plugin_test_context_supports_it() -> None:
    with temp_context() as ctx:
        ctx.set_session_var("k", "v")
        assert ctx.get_session_var("k") == "v" and ctx.changed_session_vars == {"k": "v"}
        with pytest.raises(SessionVarError):
            ctx.set_session_var("", "v")


def test_sessions_do_not_share_variables(app: TaskWeaverApp, session: Session) -> None:
    run(session, "remember('secret', 's1')")
    other = app.get_session()
    try:
        assert "'nothing'" in run(other, "recall('secret')")
        assert "secret" not in other.session_var
    finally:
        other.stop()
    assert Path(session.execution_cwd).is_dir()
