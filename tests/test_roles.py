"""Registered roles: ``session.roles`` picks the Planner's workers from the shipped role folders
(``core/roles/<name>/``) and the app's (``<app_dir>/roles/<name>/``); the Planner is told about
them and may address only them. Real rounds against the scripted OpenAI-compatible server
(tests/llm_server.py, which records every request), real sandboxed kernels, and one round through
a real Chainlit server."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import SessionEventHandler, TaskWeaverApp, TaskWeaverEvent
from core.approval import Decision
from core.errors import ConfigError
from core.events import ApprovalRequested, PostEventType
from core.memory import AttachmentType, Round
from core.startup_check import check_app_files
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer

FIXTURES = Path(__file__).parent / "plugin_fixtures"

APP_ROLE_YAML = """\
alias: Shouter
module: taskweaver.ext_role.shout.shout.Shout
intro: |-
  - Shouter says the message back in capitals.
"""
APP_ROLE_PY = """\
from core.memory import Post
from core.roles.ext import ExtRole


class Shout(ExtRole):
    def reply(self, ctx):
        proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
        proxy.update_message(ctx.last_post.message.upper() + self.setting("suffix", "!"), is_end=True)
        proxy.update_send_to(str(ctx.last_post.send_from))
        return proxy.end()
"""


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["work", "report"], "current_plan_step": "work", "send_to": send_to}
    return Answer(json.dumps({**body, "message": message}))


def system_of(request: RecordedRequest) -> str:
    return str(request.body["messages"][0]["content"])


def last_of(request: RecordedRequest) -> str:
    return str(request.body["messages"][-1]["content"])


def scripted_app(app_dir: Path, server: ScriptedLLMServer, **overrides: Any) -> TaskWeaverApp:
    config: dict[str, Any] = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test",
        "llm.model": "scripted",
        "llm.timeout": 5,
        "llm.max_retries": 0,
        "execution.timeout": 20,
        "execution.prewarm": False,
        **overrides,
    }
    return TaskWeaverApp(app_dir=app_dir, config=config)


def one_round(app: TaskWeaverApp, message: str) -> Round:
    session = app.get_session()
    try:
        return session.send_message(message)
    finally:
        session.stop()


def post_from(rnd: Round, alias: str) -> Any:
    return next(p for p in rnd.post_list if p.send_from == alias)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def test_a_registered_echo_role_is_offered_to_the_planner_and_answers(
    tmp_path: Path, server: ScriptedLLMServer
) -> None:
    """Its alias and intro are in the Planner's system prompt and among the allowed send_to values;
    addressed, it answers with the message, ``echo.decorator`` (from taskweaver_config.json) around it."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    config = {"session.roles": ["planner", "code_interpreter", "echo"], "echo.decorator": "~"}
    (app_dir / "taskweaver_config.json").write_text(json.dumps(config))
    app = scripted_app(app_dir, server)
    start = len(server.requests)
    server.push(planner("Echo", "say hi"), planner("User", "Echo said ~say hi~"))
    rnd = one_round(app, "have it echoed")
    assert rnd.state == "finished", rnd.error
    first, second = server.wait_for_requests(start + 2)[start:]
    assert "- Echo: Echo repeats the message it is sent, word for word." in system_of(first)
    assert "send_to is one of CodeInterpreter, Echo, User" in system_of(first)
    assert '"send_to": "CodeInterpreter" or "Echo" or "User"' in system_of(first)
    echo = post_from(rnd, "Echo")
    assert echo.message == "~say hi~" and echo.send_to == "Planner"
    assert last_of(second) == "From Echo: ~say hi~"
    assert rnd.reply_text == "Echo said ~say hi~"


def test_a_role_not_in_session_roles_is_not_offered(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """With the default roles, Echo is not in the prompt, and a Planner answer addressing it is not
    accepted: the model is asked again with the allowed recipients named."""
    app = scripted_app(tmp_path / "app", server)
    start = len(server.requests)
    server.push(planner("Echo", "say hi"), planner("User", "fine"))
    rnd = one_round(app, "have it echoed")
    assert rnd.state == "finished", rnd.error
    first, second = server.wait_for_requests(start + 2)[start:]
    assert "Echo" not in system_of(first)
    assert "send_to is one of CodeInterpreter, User" in system_of(first)
    assert "send_to must be one of ['CodeInterpreter', 'User'], got 'Echo'" in last_of(second)
    assert not [p for p in rnd.post_list if p.send_from == "Echo"]


def test_the_planner_alone_answers_the_user(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """``session.roles: ["planner"]`` is honoured: no worker is offered, only the User."""
    app = scripted_app(tmp_path / "app", server, **{"session.roles": ["planner"]})
    start = len(server.requests)
    server.push(planner("User", "just me"))
    rnd = one_round(app, "hello")
    assert rnd.state == "finished" and rnd.reply_text == "just me"
    [request] = server.wait_for_requests(start + 1)[start:]
    assert "send_to is one of User" in system_of(request) and "CodeInterpreter" not in system_of(request)


def test_plugin_only_refuses_free_code_and_runs_plugin_calls(tmp_path: Path, server: ScriptedLLMServer) -> None:
    plugins = tmp_path / "app" / "plugins"
    plugins.mkdir(parents=True)
    for name in ("greet.py", "greet.yaml"):
        shutil.copy(FIXTURES / name, plugins / name)
    roles = ["planner", "code_interpreter_plugin_only"]
    app = scripted_app(tmp_path / "app", server, **{"session.roles": roles})
    worker = "CodeInterpreterPluginOnly"

    def code(source: str) -> Answer:
        return Answer(json.dumps({"thought": "t", "reply_type": "python", "reply_content": source}))

    session = app.get_session()
    try:
        start = len(server.requests)
        server.push(planner(worker, "show the folder"), code("import os\nprint(os.getcwd())"), planner("User", "no"))
        refused = session.send_message("where am I?")
        server.push(planner(worker, "greet"), code('r1 = greet(prefix="Hello")\nr1'), planner("User", "greeted"))
        greeted = session.send_message("greet me")
    finally:
        session.stop()
    assert refused.state == "finished", refused.error
    requests = server.wait_for_requests(start + 6)[start:]
    assert "- CodeInterpreterPluginOnly: CodeInterpreterPluginOnly calls the app's plugins only" in system_of(
        requests[0]
    )
    assert "calling\nthe plugins below and nothing else" in system_of(requests[1])
    assert "greet" in system_of(requests[1]), system_of(requests[1])
    post = post_from(refused, worker)
    assert post.message.startswith(
        "The code was not run: CodeInterpreterPluginOnly runs plugin calls only, and free code is refused."
    )
    assert "line 1: 'import os' is not a plugin call" in post.message
    assert "line 2: 'print' is not a plugin of this app" in post.message
    assert not post.get_attachment(AttachmentType.execution_status)  # nothing ran
    assert last_of(requests[2]).startswith("From CodeInterpreterPluginOnly: The code was not run")
    assert greeted.state == "finished", greeted.error
    ran = post_from(greeted, worker)
    assert ran.first(AttachmentType.execution_status) == "success"
    assert "Hello, " in ran.message


def test_cli_only_runs_a_command_inside_the_sandbox(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """The command runs with /bin/sh in the session's kernel sandbox: its output comes back, its
    file lands in the session's folder, and it sees neither the app's config nor the server."""
    app = scripted_app(tmp_path / "app", server, **{"session.roles": ["planner", "code_interpreter_cli_only"]})
    secret = app.app_dir / "taskweaver_config.json"
    secret.write_text("{}")
    command = (
        "echo from-the-shell > made.txt; cat made.txt; "
        f"test -e {secret} && echo CONFIG-VISIBLE || echo config-hidden; "
        f"kill -0 {os.getpid()} 2>/dev/null && echo SERVER-VISIBLE || echo server-hidden"
    )
    worker = "CodeInterpreterCLIOnly"
    start = len(server.requests)
    server.push(
        planner(worker, "make a file"),
        Answer(json.dumps({"thought": "t", "command": command})),
        planner("User", "done"),
    )
    session = app.get_session()
    try:
        rnd = session.send_message("make a file with the shell")
        cwd = session.cwd
        assert (cwd / "made.txt").read_text() == "from-the-shell\n"
    finally:
        session.stop()
    assert rnd.state == "finished", rnd.error
    requests = server.wait_for_requests(start + 3)[start:]
    assert "one shell command line" in system_of(requests[1])
    post = post_from(rnd, worker)
    assert post.first(AttachmentType.execution_status) == "success"
    assert post.first(AttachmentType.reply_content) == command
    assert "from-the-shell" in post.message and "config-hidden" in post.message and "server-hidden" in post.message
    assert "VISIBLE" not in post.message
    assert "from-the-shell" in last_of(requests[2])


def test_a_role_from_the_app_roles_folder_loads(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """A TaskWeaver-style folder (its module path names the file in the folder) with its config section."""
    app_dir = tmp_path / "app"
    folder = app_dir / "roles" / "shout"
    folder.mkdir(parents=True)
    (folder / "shout.role.yaml").write_text(APP_ROLE_YAML)
    (folder / "shout.py").write_text(APP_ROLE_PY)
    app = scripted_app(app_dir, server, **{"session.roles": ["planner", "shout"], "shout.suffix": "!!"})
    start = len(server.requests)
    server.push(planner("Shouter", "hello there"), planner("User", "it shouted"))
    rnd = one_round(app, "shout it")
    assert rnd.state == "finished", rnd.error
    first, second = server.wait_for_requests(start + 2)[start:]
    assert "- Shouter: Shouter says the message back in capitals." in system_of(first)
    assert post_from(rnd, "Shouter").message == "HELLO THERE!!"
    assert last_of(second) == "From Shouter: HELLO THERE!!"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alias: [unclosed\n", "not valid YAML"),
        ("alias: Bad\nintro: x\n", "module missing or not text"),
        ("alias: Bad\nmodule: bad.bad.Missing\nintro: x\n", "bad.bad.Missing is not a class derived from"),
        ("alias: two words\nmodule: bad.bad.Bad\nintro: x\n", "alias 'two words' must be a word"),
    ],
)
def test_a_broken_role_yaml_stops_start_up_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    app_dir = tmp_path / "app"
    folder = app_dir / "roles" / "bad"
    folder.mkdir(parents=True)
    (folder / "bad.role.yaml").write_text(text)
    (folder / "bad.py").write_text("X = 1\n")
    role_file = str(folder / "bad.role.yaml")
    with pytest.raises(ConfigError) as started:
        TaskWeaverApp(app_dir=app_dir, config={"llm.api_type": "offline"})
    assert role_file in str(started.value) and expected in str(started.value)
    with pytest.raises(ConfigError) as checked:  # what `weaver ui` and `weaver chat` check before they start
        check_app_files(app_dir)
    assert role_file in str(checked.value)


def test_an_unknown_role_in_session_roles_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as started:
        TaskWeaverApp(app_dir=tmp_path, config={"llm.api_type": "offline", "session.roles": ["planner", "nobody"]})
    assert "session.roles: no role named 'nobody'" in str(started.value)
    assert "code_interpreter_cli_only" in str(started.value) and "echo" in str(started.value)


def test_the_offline_backend_echoes(tmp_path: Path) -> None:
    """With no model: "echo <text>" goes to Echo when it is registered, and its words come back."""
    roles = "planner,code_interpreter,echo"  # TaskWeaver's comma-separated form
    app = TaskWeaverApp(
        app_dir=tmp_path, config={"llm.api_type": "offline", "session.roles": roles, "execution.prewarm": False}
    )
    rnd = one_round(app, "echo hello offline")
    assert rnd.state == "finished", rnd.error
    assert post_from(rnd, "Echo").message == "hello offline"
    assert "hello offline" in rnd.reply_text and rnd.reply_text.startswith("Echo answered")


def test_the_echo_role_gets_its_own_step_in_the_web_ui(tmp_path: Path) -> None:
    """One round through a real Chainlit server: the Echo post is a step named Echo, like the
    Planner's, with no UI code for it."""
    from tests.ui_harness import answers, start_server, steps, stop_server

    env = {"WEAVER_SESSION__ROLES": '["planner", "code_interpreter", "echo"]'}
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        with server.client() as client:
            turn = client.ask("echo hello from the browser")
        echo_steps = steps(turn, "Echo")
        assert echo_steps and "hello from the browser" in echo_steps[0], turn
        assert steps(turn, "Planner")
        assert any("Echo answered" in a and "hello from the browser" in a for a in answers(turn)), answers(turn)
    finally:
        stop_server(server)


def test_role_keys_go_to_their_role_and_a_model_alias_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listed role's section is its own (no warning); its llm_alias is not read, so it is warned."""
    from core.config import load_config

    given = {"session.roles": ["planner", "shout"], "shout.suffix": "?", "echo.llm_alias": "fast"}
    with caplog.at_level("WARNING", logger="weaver.config"):
        config = load_config(tmp_path, given)
    assert config.session.roles == ["planner", "shout"]
    assert config.role_settings == {"shout": {"suffix": "?"}}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "echo.llm_alias is ignored: only the Planner, the CodeInterpreter and image_reader call a model of their own"
    ]


class _Asked(SessionEventHandler):
    """Wakes the test when a post's code waits for approval."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, ApprovalRequested]] = []
        self.asked = threading.Event()

    def handle(self, event: TaskWeaverEvent) -> None:
        if event.t is PostEventType.post_approval_request and isinstance(event.payload, ApprovalRequested):
            assert event.post_id is not None
            self.requests.append((event.post_id, event.payload))
            self.asked.set()


def _answered(session: Any, message: str, decision: Decision, code: str | None = None) -> tuple[Round, str]:
    asked = _Asked()
    result: list[Round] = []
    worker = threading.Thread(target=lambda: result.append(session.send_message(message, event_handler=asked)))
    worker.start()
    assert asked.asked.wait(60), "no approval was asked"
    post_id, request = asked.requests[0]
    assert session.approve(post_id, decision, code)
    worker.join(120)
    return result[0], request.code


def test_the_new_roles_wait_for_code_approval_and_check_an_edit(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """With code_interpreter.require_confirmation on, a command waits for the user: cancelled, it
    never runs. A plugin-only edit that is free code is refused like the model's."""
    plugins = tmp_path / "app" / "plugins"
    plugins.mkdir(parents=True)
    for name in ("greet.py", "greet.yaml"):
        shutil.copy(FIXTURES / name, plugins / name)
    roles = ["planner", "code_interpreter_cli_only", "code_interpreter_plugin_only"]
    app = scripted_app(
        tmp_path / "app",
        server,
        **{"session.roles": roles, "code_interpreter.require_confirmation": True},
    )
    session = app.get_session()
    try:
        server.push(
            planner("CodeInterpreterCLIOnly", "make a file"),
            Answer(json.dumps({"thought": "t", "command": "touch ran.txt"})),
        )
        cancelled, asked_code = _answered(session, "make it", Decision.CANCEL)
        assert "touch ran.txt" in asked_code
        assert not (session.cwd / "ran.txt").exists()
        assert cancelled.reply_text == "You cancelled the code, so nothing was run."
        server.push(
            planner("CodeInterpreterPluginOnly", "greet"),
            Answer(json.dumps({"thought": "t", "reply_type": "python", "reply_content": 'r1 = greet(prefix="Hi")'})),
            planner("User", "refused"),
        )
        edited, _ = _answered(session, "greet me", Decision.EDIT, "open('ran.txt', 'w').write('x')")
    finally:
        session.stop()
    post = post_from(edited, "CodeInterpreterPluginOnly")
    assert post.message.startswith("Your edited code was not run:") and "is not a plugin of this app" in post.message
    assert not (session.cwd / "ran.txt").exists()


def test_a_failing_command_reports_its_error_output(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app = scripted_app(tmp_path / "app", server, **{"session.roles": ["planner", "code_interpreter_cli_only"]})
    server.push(
        planner("CodeInterpreterCLIOnly", "fail"),
        Answer(json.dumps({"thought": "t", "command": "echo oops >&2; exit 3"})),
        planner("User", "it failed"),
    )
    rnd = one_round(app, "fail please")
    post = post_from(rnd, "CodeInterpreterCLIOnly")
    assert post.first(AttachmentType.execution_status) == "failure"
    assert "oops" in post.message and "the command exited with status 3" in post.message


def test_an_app_role_may_not_take_a_built_in_alias(tmp_path: Path) -> None:
    folder = tmp_path / "roles" / "shout"
    folder.mkdir(parents=True)
    (folder / "shout.role.yaml").write_text(APP_ROLE_YAML.replace("alias: Shouter", "alias: Planner"))
    (folder / "shout.py").write_text(APP_ROLE_PY)
    with pytest.raises(ConfigError) as started:
        TaskWeaverApp(app_dir=tmp_path, config={"llm.api_type": "offline", "session.roles": ["planner", "shout"]})
    assert f"role file {folder / 'shout.role.yaml'}: the alias 'Planner' is taken" in str(started.value)
