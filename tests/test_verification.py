"""Code verification (code_interpreter.code_verification_on): checked before any execution, the
model revises refused code, the user sees why. Rounds over the scripted OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from core import AttachmentType, RoleName, TaskWeaverApp
from core.roles.verification import DEFAULT_BLOCKED_FUNCTIONS, verify_code
from tests.llm_server import Answer, ScriptedLLMServer
from tests.test_llm_rounds import Recorder, all_text, code_reply, new_app, planner, to_user

pytestmark = pytest.mark.timeout(90)


def test_blocked_function_and_disallowed_import_are_errors() -> None:
    [error] = verify_code("x = eval('1')", None, ["eval"])
    assert "line 1" in error and "eval" in error
    [error] = verify_code("import pandas as pd\nimport os\n", ["pandas"], [])
    assert "line 2" in error and "'os'" in error
    assert verify_code("import pandas.io\nfrom pandas import DataFrame\nDataFrame()", ["pandas"], []) == []
    assert verify_code("from os import path", ["pandas"], []) != []
    assert verify_code("import numpy", [], []) != []  # an empty list allows no module (TaskWeaver's reading)


def test_obvious_ways_around_the_rules_are_caught() -> None:
    blocked = list(DEFAULT_BLOCKED_FUNCTIONS)
    assert verify_code("run = exec\nrun('1')", None, blocked)  # handed on, not called by name
    assert verify_code("from builtins import open", None, blocked)
    assert verify_code("().__class__.__bases__[0].__subclasses__()", None, blocked)
    assert verify_code("!ls /", None, blocked)
    assert verify_code("%run x.py", None, blocked)
    assert verify_code("def f(:\n", None, blocked)[0].startswith("line 1: syntax error")
    assert verify_code("import pandas as pd\npd.DataFrame({'a': [1]}).sum()", ["pandas"], blocked) == []


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


@pytest.fixture(scope="module")
def weaver(server: ScriptedLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskWeaverApp]:
    application = new_app(
        tmp_path_factory.mktemp("verify_app"),
        server,
        **{
            "code_interpreter.code_verification_on": True,
            "code_interpreter.blocked_functions": ["eval"],
            "code_interpreter.allowed_modules": ["pandas"],
            "execution.pool_size": 0,
        },
    )
    yield application
    application.stop()


def test_blocked_eval_is_not_run_and_the_revised_code_is(server: ScriptedLLMServer, weaver: TaskWeaverApp) -> None:
    session = weaver.get_session()
    first = len(server.requests)
    blocked = "open('ran.txt', 'w').write('x')\nprint(eval('1'))"
    server.push(
        Answer(planner(RoleName.CodeInterpreter, "Print 1.")),
        Answer(code_reply(blocked)),
        Answer(code_reply("print(1)")),
        to_user("It printed 1."),
    )
    recorder = Recorder()
    try:
        rnd = session.send_message("Print one", event_handler=recorder)
        assert rnd.state == "finished", rnd.error
        assert rnd.reply_text == "It printed 1."
        refused, ran = [p for p in rnd.post_list if p.send_from == RoleName.CodeInterpreter]
        assert refused.first(AttachmentType.verification) == "INCORRECT"
        assert "function 'eval' is not allowed" in refused.first(AttachmentType.code_error)
        assert refused.send_to == RoleName.CodeInterpreter  # revised within max_retry_count
        assert not (session.cwd / "ran.txt").exists()  # nothing of it ran
        assert ran.first(AttachmentType.verification) == "CORRECT"
        assert ran.first(AttachmentType.execution_status) == "success" and "1" in ran.message
        # The user sees why: the verification attachments went out as events.
        assert recorder.attachment_updates(AttachmentType.code_error, refused.id)
        # The model was told the rules, and then the error.
        ci_requests = server.requests[first + 1 : first + 3]
        assert "Code verification is on" in ci_requests[0].body["messages"][0]["content"]
        assert "function 'eval' is not allowed" in all_text(ci_requests[1])
    finally:
        session.stop()


def test_a_disallowed_import_is_refused_until_retries_run_out(server: ScriptedLLMServer, weaver: TaskWeaverApp) -> None:
    session = weaver.get_session()
    retries = weaver.config.code_interpreter.max_retry_count
    server.push(
        Answer(planner(RoleName.CodeInterpreter, "List the folder.")),
        *[Answer(code_reply("import os\nprint(os.listdir('.'))")) for _ in range(retries + 1)],
        to_user("I may not import os here."),
    )
    try:
        rnd = session.send_message("What files are there?")
        assert rnd.state == "finished", rnd.error
        posts = [p for p in rnd.post_list if p.send_from == RoleName.CodeInterpreter]
        assert len(posts) == retries + 1
        assert all("importing module 'os' is not allowed" in p.first(AttachmentType.code_error) for p in posts)
        assert posts[-1].send_to == RoleName.Planner  # out of retries: back to the Planner
    finally:
        session.stop()


def test_taskweaver_llm_keys_reach_the_model(server: ScriptedLLMServer, tmp_path: Path) -> None:
    """llm.openai.model is TaskWeaver's llm.model for api_type openai; response_format null is text."""
    app = new_app(
        tmp_path, server, **{"llm.openai.model": "from-section", "llm.response_format": None, "execution.pool_size": 0}
    )
    first = len(server.requests)
    server.push(to_user("Hello."))
    try:
        assert app.get_session().send_message("Hi").reply_text == "Hello."
    finally:
        app.stop()
    body = server.requests[first].body
    assert body["model"] == "from-section"
    assert "response_format" not in body
