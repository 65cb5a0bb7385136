"""TaskWeaver-format example conversations (``<role>.use_example``) reach the right role's prompt.

Each test writes its own small example YAMLs into a temporary app folder, in TaskWeaver's format,
and runs real rounds: against the scripted OpenAI-compatible server (tests/llm_server.py), which
records every request, or the offline backend. The code runs in a real kernel.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import TaskWeaverApp
from core.compat.config_keys import translate
from core.config import known_keys
from core.errors import ConfigError
from core.memory import Attachment, AttachmentType, Post, Round
from core.roles.examples import named_sub_path, read_example
from core.startup_check import check_app_files
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer
from tests.ui_harness import REPO_ROOT, free_port

pytestmark = pytest.mark.timeout(120)

PLANNER_MARK = "count the rows of planner-example.csv"
CODE_MARK = "sum the code-example numbers"
DISABLED_MARK = "a disabled example never shown"
ECHO_MARK = "an example for the Echo role"

PLANNER_EXAMPLE = f"""\
enabled: True
rounds:
  - user_query: {PLANNER_MARK}
    state: created
    post_list:
      - message: {PLANNER_MARK}
        send_from: User
        send_to: Planner
        attachment_list:
      - message: Please load planner-example.csv and count its rows
        send_from: Planner
        send_to: CodeInterpreter
        attachment_list:
          - type: plan_reasoning
            content: The user wants a row count.
          - type: init_plan
            content: |-
              1. load the file
              2. count the rows <sequentially depends on 1>
          - type: plan
            content: |-
              1. instruct CodeInterpreter to load the file and count the rows
              2. report the result to the user
          - type: current_plan_step
            content: 1. instruct CodeInterpreter to load the file and count the rows
          - type: stop
            content: InProcess
      - message: The file has 100 rows
        send_from: CodeInterpreter
        send_to: Planner
        attachment_list:
      - message: planner-example.csv has 100 rows
        send_from: Planner
        send_to: User
        attachment_list:
          - type: plan
            content: |-
              1. instruct CodeInterpreter to load the file and count the rows
              2. report the result to the user
          - type: current_plan_step
            content: 2. report the result to the user
"""

CODE_EXAMPLE = f"""\
enabled: True
plugin_only: False
rounds:
  - user_query: {CODE_MARK}
    state: finished
    post_list:
      - message: {CODE_MARK}
        send_from: Planner
        send_to: CodeInterpreter
        attachment_list: []
      - message: The sum is 6
        send_from: CodeInterpreter
        send_to: Planner
        attachment_list:
          - type: thought
            content: "{{ROLE_NAME}} adds the numbers with sum()."
          - type: reply_type
            content: python
          - type: reply_content
            content: |-
              total = sum([1, 2, 3])
              total
          - type: verification
            content: CORRECT
          - type: code_error
            content: No error is detected.
          - type: execution_status
            content: SUCCESS
          - type: execution_result
            content: "6"
"""

DISABLED_EXAMPLE = f"""\
enabled: false
rounds:
  - user_query: {DISABLED_MARK}
    state: created
    post_list:
      - message: {DISABLED_MARK}
        send_from: User
        send_to: Planner
        attachment_list: []
"""

ECHO_EXAMPLE = f"""\
enabled: true
rounds:
  - user_query: {ECHO_MARK}
    state: created
    post_list:
      - message: {ECHO_MARK}
        send_from: User
        send_to: Planner
        attachment_list: []
      - message: {ECHO_MARK}
        send_from: Planner
        send_to: Echo
        attachment_list: []
"""

# Line 12 holds the bad recipient.
BAD_ROLE_EXAMPLE = """\
enabled: true
rounds:
  - user_query: hi
    state: created
    post_list:
      - message: hi
        send_from: User
        send_to: Planner
        attachment_list: []
      - message: hello
        send_from: Planner
        send_to: Nobody
        attachment_list: []
"""


def make_app_dir(root: Path) -> Path:
    """An app folder with TaskWeaver's two example folders, as a TaskWeaver project has them."""
    app = root / "app"
    (app / "planner_examples").mkdir(parents=True)
    (app / "codeinterpreter_examples").mkdir()
    (app / "planner_examples" / "example-planner.yaml").write_text(PLANNER_EXAMPLE)
    (app / "planner_examples" / "example-disabled.yaml").write_text(DISABLED_EXAMPLE)
    (app / "planner_examples" / "example-echo.yaml").write_text(ECHO_EXAMPLE)
    (app / "codeinterpreter_examples" / "example-code.yaml").write_text(CODE_EXAMPLE)
    return app


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["work", "report"], "current_plan_step": "work", "send_to": send_to}
    return Answer(json.dumps({**body, "message": message}))


def code(source: str) -> Answer:
    return Answer(json.dumps({"thought": "run", "reply_type": "python", "reply_content": source}))


def text_of(request: RecordedRequest) -> str:
    return "\n".join(m["content"] for m in request.body["messages"])


def scripted_app(app_dir: Path, server: ScriptedLLMServer, **overrides: Any) -> TaskWeaverApp:
    config: dict[str, Any] = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test",
        "llm.model": "scripted",
        "llm.timeout": 5,
        "llm.max_retries": 0,
        "execution.timeout": 20,
        **overrides,
    }
    return TaskWeaverApp(app_dir=app_dir, config=config)


def run_delegating_round(app: TaskWeaverApp, server: ScriptedLLMServer) -> tuple[Round, list[RecordedRequest]]:
    """User → Planner → CodeInterpreter (runs code) → Planner → User; the three requests it made."""
    start = len(server.requests)
    server.push(planner("CodeInterpreter", "print forty-two"), code("print(42)"), planner("User", "It printed 42."))
    session = app.get_session()
    try:
        rnd = session.send_message("print forty-two please")
    finally:
        session.stop()
    assert rnd.state == "finished", rnd.error
    assert rnd.reply_text == "It printed 42."
    requests = server.wait_for_requests(start + 3)[start:]
    return rnd, requests


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def test_each_roles_examples_are_in_its_own_request_only(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app = scripted_app(make_app_dir(tmp_path), server)
    try:
        rnd, (to_planner, to_code, back_to_planner) = run_delegating_round(app, server)
    finally:
        app.stop()
    for request in (to_planner, back_to_planner):
        prompt = text_of(request)
        assert PLANNER_MARK in prompt and CODE_MARK not in prompt
        assert DISABLED_MARK not in prompt  # enabled: false is skipped
        assert ECHO_MARK not in prompt  # names a role this session does not have, as TaskWeaver skips it
    code_prompt = text_of(to_code)
    assert CODE_MARK in code_prompt and PLANNER_MARK not in code_prompt

    # The Planner's example: earlier turns in the Planner's own JSON reply format, before the chat.
    messages = to_planner.body["messages"]
    assert messages[0]["role"] == "system"
    assert messages[1] == {"role": "user", "content": f"Let's start a new conversation.\nFrom User: {PLANNER_MARK}"}
    first_answer = json.loads(messages[2]["content"])
    assert messages[2]["role"] == "assistant"
    assert first_answer == {
        "thought": "The user wants a row count.",  # TaskWeaver's plan_reasoning
        "plan": ["instruct CodeInterpreter to load the file and count the rows", "report the result to the user"],
        "current_plan_step": "1. instruct CodeInterpreter to load the file and count the rows",
        "send_to": "CodeInterpreter",
        "message": "Please load planner-example.csv and count its rows",
    }
    assert messages[3] == {"role": "user", "content": "From CodeInterpreter: The file has 100 rows"}
    assert json.loads(messages[4]["content"])["send_to"] == "User"
    assert messages[5]["content"] == "Let's start a new conversation.\nFrom User: print forty-two please"
    assert len(messages) == 6

    # The CodeInterpreter's example: its JSON reply, then the result of the run, before the task.
    code_messages = to_code.body["messages"]
    assert code_messages[1]["content"].endswith(f"From Planner: {CODE_MARK}")
    assert json.loads(code_messages[2]["content"]) == {
        "thought": "CodeInterpreter adds the numbers with sum().",  # {ROLE_NAME} filled in
        "reply_type": "python",
        "reply_content": "total = sum([1, 2, 3])\ntotal",
    }
    assert code_messages[3]["role"] == "user" and code_messages[3]["content"].startswith("Execution result:")
    assert code_messages[-1]["content"].endswith("From Planner: print forty-two")

    # Which examples each call's prompt held, in the round's record of its model calls.
    used = [(call["role"], call.get("examples")) for call in rnd.llm_calls]
    assert used == [
        ("Planner", ["planner_examples/example-planner.yaml"]),
        ("CodeInterpreter", ["codeinterpreter_examples/example-code.yaml"]),
        ("Planner", ["planner_examples/example-planner.yaml"]),
    ]


def test_use_example_false_sends_none(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """``planner.use_example`` and TaskWeaver's ``code_generator.use_example`` turn them off."""
    app = scripted_app(
        make_app_dir(tmp_path), server, **{"planner.use_example": False, "code_generator.use_example": False}
    )
    try:
        rnd, requests = run_delegating_round(app, server)
    finally:
        app.stop()
    for request in requests:
        prompt = text_of(request)
        assert PLANNER_MARK not in prompt and CODE_MARK not in prompt
        assert "new conversation" not in prompt
    assert all("examples" not in call for call in rnd.llm_calls)


def test_a_dynamic_sub_path_picks_the_folder_the_chat_names(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app_dir = tmp_path / "app"
    sub = app_dir / "my_examples" / "sales"
    sub.mkdir(parents=True)
    (sub / "example.yaml").write_text(PLANNER_EXAMPLE)
    app = scripted_app(
        app_dir,
        server,
        **{"planner.example_base_path": "${AppBaseDir}/my_examples", "planner.dynamic_example_sub_path": True},
    )
    session = app.get_session()
    try:
        start = len(server.requests)
        server.push(planner("User", "no sub-path yet"))
        assert session.send_message("first").state == "finished"
        session.update_session_var({"example_sub_path": "sales"})
        server.push(planner("User", "now with examples"))
        assert session.send_message("second").state == "finished"
        session.update_session_var({"example_sub_path": "../../outside"})  # may not leave the folder
        server.push(planner("User", "none again"))
        assert session.send_message("third").state == "finished"
        first, second, third = server.wait_for_requests(start + 3)[start:]
    finally:
        session.stop()
        app.stop()
    assert PLANNER_MARK not in text_of(first)
    assert PLANNER_MARK in text_of(second)
    assert PLANNER_MARK not in text_of(third)


def test_the_offline_backend_records_the_examples_it_was_given(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Which examples each call held is in the round's record of its calls and in the log, with the
    offline backend too; what was skipped or ignored is logged, naming the file."""
    caplog.set_level(logging.INFO, logger="weaver.examples")
    app = TaskWeaverApp(app_dir=make_app_dir(tmp_path), config={"llm.api_type": "offline"})
    session = app.get_session()
    try:
        rnd = session.send_message("```python\nprint('offline ok')\n```")
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    assert "offline ok" in str([p.message for p in rnd.post_list])
    by_role = {call["role"]: call.get("examples") for call in rnd.llm_calls}
    assert by_role == {
        "Planner": ["planner_examples/example-planner.yaml"],
        "CodeInterpreter": ["codeinterpreter_examples/example-code.yaml"],
    }
    thoughts = {str(p.send_from): p.first(AttachmentType.thought, "") for p in rnd.post_list if p.send_from != "User"}
    assert thoughts["Planner"].endswith("(Examples in my prompt: planner_examples/example-planner.yaml.)")
    assert thoughts["CodeInterpreter"].endswith("(Examples in my prompt: codeinterpreter_examples/example-code.yaml.)")
    said = [r.getMessage() for r in caplog.records if r.name == "weaver.examples"]
    assert "planner_examples/example-planner.yaml: attachment types init_plan, stop are ignored" in "\n".join(said)
    assert "planner_examples/example-disabled.yaml: skipped for Planner (enabled: false)" in said
    assert "planner_examples/example-echo.yaml: skipped for Planner (names Echo, not in this session)" in said
    assert "Planner's prompt holds 1 example(s): planner_examples/example-planner.yaml" in said


# ------------------------------------------------------------------------------------ bad files


def test_a_bad_recipient_is_a_config_error_naming_the_file_and_line(tmp_path: Path) -> None:
    app = make_app_dir(tmp_path)
    bad = app / "planner_examples" / "example-1.yaml"
    bad.write_text(BAD_ROLE_EXAMPLE)
    with pytest.raises(ConfigError) as raised:
        read_example(bad, app_dir=app)
    assert str(raised.value).startswith("planner_examples/example-1.yaml line 12: send_to 'Nobody' is not a role")
    with pytest.raises(ConfigError) as at_start:
        check_app_files(app)
    assert str(at_start.value).startswith("planner_examples/example-1.yaml line 12: send_to 'Nobody'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("enabled: true\nrounds:\n  - user_query: hi\n    post_list: [\n", "line 5: not valid YAML"),
        (
            "enabled: true\nrounds:\n  - state: created\n    post_list: []\n",
            "line 3: rounds.0.user_query: Field required",
        ),
        ("enabled: maybe\nrounds: []\n", "line 1: enabled: Input should be a valid boolean"),
        (
            "enabled: true\nrounds:\n  - user_query: q\n    post_list:\n      - message: m\n",
            "line 5: rounds.0.post_list.0",
        ),
    ],
    ids=["yaml", "missing-field", "wrong-type", "post-without-roles"],
)
def test_each_kind_of_broken_file_names_its_line(tmp_path: Path, text: str, expected: str) -> None:
    app = make_app_dir(tmp_path)
    (app / "codeinterpreter_examples" / "broken.yaml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        check_app_files(app)
    message = str(raised.value)
    assert message.startswith(f"codeinterpreter_examples/broken.yaml {expected}"), message
    assert "\n" not in message


def test_a_missing_example_folder_that_was_set_stops_the_app(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"planner.example_base_path: .*nowhere is not a folder"):
        TaskWeaverApp(app_dir=make_app_dir(tmp_path), config={"planner.example_base_path": "nowhere"})


def test_weaver_ui_refuses_a_broken_example_in_one_line(tmp_path: Path) -> None:
    app = make_app_dir(tmp_path)
    (app / "planner_examples" / "example-1.yaml").write_text(BAD_ROLE_EXAMPLE)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("WEAVER_", "CHAINLIT_"))}
    env.pop("OPENAI_API_KEY", None)
    env.update({"PYTHONPATH": str(REPO_ROOT), "WEAVER_LLM__API_TYPE": "offline"})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "ui", "--port", str(free_port()), "--app-dir", str(app)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 15
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("Weaver UI: ")
    assert "planner_examples/example-1.yaml line 12: send_to 'Nobody' is not a role" in lines[0]


def test_taskweavers_newer_layout_and_its_config_keys(tmp_path: Path) -> None:
    """``examples/planner_examples`` (TaskWeaver's newer default) is found; ``code_generator.example_base_path``
    in ``taskweaver_config.json`` (with ``${AppBaseDir}``) is the CodeInterpreter's folder. Examples are
    named from their folder on."""
    app = tmp_path / "app"
    (app / "examples" / "planner_examples").mkdir(parents=True)
    (app / "examples" / "planner_examples" / "one.yaml").write_text(PLANNER_EXAMPLE)
    (app / "ci").mkdir()
    (app / "ci" / "two.yaml").write_text(CODE_EXAMPLE)
    config = {"llm.api_type": "offline", "code_generator.example_base_path": "${AppBaseDir}/ci"}
    (app / "taskweaver_config.json").write_text(json.dumps(config))
    weaver = TaskWeaverApp(app_dir=app)
    session = weaver.get_session()
    try:
        rnd = session.send_message("```python\nprint(1)\n```")
    finally:
        session.stop()
        weaver.stop()
    assert rnd.state == "finished", rnd.error
    by_role = {call["role"]: call.get("examples") for call in rnd.llm_calls}
    assert by_role == {"Planner": ["planner_examples/one.yaml"], "CodeInterpreter": ["ci/two.yaml"]}


def test_a_roles_shared_memory_entry_names_the_sub_path_before_the_session_variable() -> None:
    """TaskWeaver's way: a role posts a ``shared_memory_entry`` of type ``example_sub_path``; the last wins."""

    def entry(content: str) -> Post:
        extra = {"type": "example_sub_path", "content": content, "scope": "conversation", "id": "sme-1"}
        memo = Attachment(AttachmentType.shared_memory_entry, "Add example sub path", extra=extra)
        return Post(send_from="TaskTypeIdentifier", send_to="Planner", attachment_list=[memo])

    assert named_sub_path([], {"example_sub_path": "from_var"}) == "from_var"
    assert named_sub_path([entry("first"), entry("second")], {"example_sub_path": "from_var"}) == "second"
    assert named_sub_path([Post(send_from="User", send_to="Planner")], {}) == ""


def test_a_file_broken_after_the_start_fails_the_round_naming_it(tmp_path: Path) -> None:
    """The start-up check passed; a file edited into a broken one later stops that role's round with
    the file and line named, and the chat works again once it is fixed."""
    app_dir = make_app_dir(tmp_path)
    app = TaskWeaverApp(app_dir=app_dir, config={"llm.api_type": "offline"})
    session = app.get_session()
    example = app_dir / "planner_examples" / "example-planner.yaml"
    try:
        example.write_text(BAD_ROLE_EXAMPLE)
        broken = session.send_message("hello")
        example.write_text(PLANNER_EXAMPLE)
        fixed = session.send_message("hello again")
    finally:
        session.stop()
        app.stop()
    assert broken.state == "failed"
    assert broken.error is not None
    assert "planner_examples/example-planner.yaml line 12: send_to 'Nobody' is not a role" in broken.error
    assert fixed.state == "finished", fixed.error


def test_taskweavers_example_keys_are_honoured_not_warned(tmp_path: Path) -> None:
    given = {
        "planner.use_example": False,
        "planner.example_base_path": "p",
        "planner.dynamic_example_sub_path": True,
        "code_generator.use_example": False,
        "code_generator.example_base_path": "${AppBaseDir}/ci",
        "code_generator.dynamic_example_sub_path": True,
        "echo.use_example": True,
    }
    keys, notes = translate(given, known_keys(), tmp_path)
    assert keys["code_interpreter.use_example"] is False
    assert keys["code_interpreter.example_base_path"] == str(tmp_path / "ci")
    assert keys["code_interpreter.dynamic_example_sub_path"] is True
    assert keys["planner.example_base_path"] == "p"
    assert notes == [
        "echo.use_example is ignored: only the Planner (planner.*) and the CodeInterpreter "
        "(code_generator.* or code_interpreter.*) read example conversations in Weaver"
    ]
