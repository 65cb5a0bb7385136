"""Prompts as data: the YAML beside the roles, what the model receives, and an app's own prompt file.

Rounds go through the scripted OpenAI-compatible server, so every assertion is on a request a real
model would have received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core import TaskWeaverApp
from core.errors import ConfigError
from core.memory import Post, Round
from core.roles.base import Role
from core.roles.context import RoundContext
from core.roles.registry import RoleRegistry, default_role_registry
from tests.llm_server import Answer, ScriptedLLMServer
from tests.test_llm_rounds import new_app, planner, to_user

pytestmark = pytest.mark.timeout(60)

NO_PREWARM = {"execution.prewarm": False}  # these rounds run no code


class Accountant(Role):
    """A worker of the test's own, registered beside the CodeInterpreter: it always balances."""

    alias = "Accountant"

    def reply(self, ctx: RoundContext) -> Post:
        return Post(send_from=self.alias, send_to="Planner", message="The books balance.")


def system_prompt(server: ScriptedLLMServer, index: int = 0) -> str:
    message = server.requests[index].body["messages"][0]
    assert message["role"] == "system"
    return message["content"]


def test_default_planner_prompt_names_the_registry_workers_and_accepts_them(
    llm_server: ScriptedLLMServer, tmp_path: Path
) -> None:
    registry: RoleRegistry = default_role_registry()
    registry.register("Accountant", lambda deps: Accountant(deps.llm, deps.config))
    app = new_app(tmp_path, llm_server, **NO_PREWARM)
    app.injector.binder.bind(RoleRegistry, to=registry)
    try:
        llm_server.push(Answer(planner("Accountant", "Check the books.")), to_user("All balanced."))
        rnd = app.get_session().send_message("Are my books balanced?")
        assert rnd.state == "finished", rnd.error
        assert rnd.reply_text == "All balanced."
        assert [p.send_from for p in rnd.post_list] == ["User", "Planner", "Accountant", "Planner"]
        # Asked once each time: "Accountant" was accepted as a recipient without a corrective re-ask.
        assert len(llm_server.requests) == 2
        prompt = system_prompt(llm_server)
        assert "- CodeInterpreter: writes Python" in prompt and "- Accountant" in prompt
        assert '"send_to": "CodeInterpreter" or "Accountant" or "User"' in prompt
        # The reply format lists the fields in the reply model's order, with its descriptions.
        fields = [
            '"thought": "<your reasoning',
            '"plan": [',
            '"current_plan_step": "<the step being worked on now>"',
            '"send_to": ',
            '"message": "<the message to that recipient>"',
        ]
        positions = [prompt.index(f) for f in fields]
        assert positions == sorted(positions)
        last = llm_server.requests[1].body["messages"][-1]
        assert last == {"role": "user", "content": "From Accountant: The books balance."}
    finally:
        app.stop()


def test_a_recipient_outside_the_registry_is_refused_with_the_registry_choices(
    llm_server: ScriptedLLMServer, tmp_path: Path
) -> None:
    app = new_app(tmp_path, llm_server, **NO_PREWARM)
    try:
        llm_server.push(Answer(planner("Accountant", "Check the books.")), to_user("Done."))
        rnd = app.get_session().send_message("Are my books balanced?")
        assert rnd.state == "finished", rnd.error
        correction = llm_server.requests[1].body["messages"][-1]["content"]
        assert "send_to must be one of ['CodeInterpreter', 'User'], got 'Accountant'" in correction
        assert '"send_to": "CodeInterpreter" or "User"' in correction  # the same format as the system prompt
        assert '"send_to": "CodeInterpreter" or "User"' in system_prompt(llm_server)
    finally:
        app.stop()


def test_a_planner_prompt_file_replaces_the_system_prompt_the_model_sees(
    llm_server: ScriptedLLMServer, tmp_path: Path
) -> None:
    (tmp_path / "my_planner.yaml").write_text(
        "system: |-\n"
        "  You are Ledger, the planner of ACME's books.\n"
        "  Workers: {% for w in workers %}{{ w.name }} {% endfor %}| files: {{ files }}\n"
        "  Reply as {{ reply_format }}\n"
    )
    # A relative path is found in the app folder, where taskweaver_config.json lives.
    app = new_app(tmp_path, llm_server, **NO_PREWARM, **{"planner.prompt_file_path": "my_planner.yaml"})
    try:
        llm_server.push(to_user("Hello."))
        assert app.get_session().send_message("Hi").state == "finished"
        prompt = system_prompt(llm_server)
        assert prompt.startswith("You are Ledger, the planner of ACME's books.")
        assert "Workers: CodeInterpreter | files: (none)" in prompt
        assert '"send_to": "CodeInterpreter" or "User"' in prompt
        assert "You are the Planner of Weaver" not in prompt
        # Keys the file leaves out keep their defaults.
        assert llm_server.requests[0].body["messages"][-1] == {"role": "user", "content": "From User: Hi"}
    finally:
        app.stop()


@pytest.mark.parametrize(
    "content, problem",
    [
        ("system: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping of prompt keys"),
        ("sytem: Hello\n", "unknown key 'sytem'"),
        ("system: 42\n", "'system' must be text"),
        ("system: 'Hello {{ name'\n", "'system' is not a valid template"),
        ("system: 'Hello {{ user_name }}'\n", "'system' uses user_name, not among its variables"),
        (None, "cannot be read"),
    ],
)
def test_a_bad_prompt_file_stops_the_app_with_one_clear_error(tmp_path: Path, content: Any, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        TaskWeaverApp(app_dir=tmp_path, config={"planner.prompt_file_path": str(path), **NO_PREWARM})
    message = str(info.value)
    assert message.startswith(f"planner.prompt_file_path: {path}: ")
    assert problem in message and "Traceback" not in message


def test_a_code_interpreter_prompt_file_is_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "ci.yaml"
    path.write_text("execution_result: 'Output: {{ output }}'\n")
    expected = r"^code_interpreter\.prompt_file_path: .*ci\.yaml: 'execution_result' uses output"
    with pytest.raises(ConfigError, match=expected):
        TaskWeaverApp(app_dir=tmp_path, config={"code_interpreter.prompt_file_path": str(path), **NO_PREWARM})


def test_earlier_turns_rendered_once_still_follow_a_changed_post(llm_server: ScriptedLLMServer, tmp_path: Path) -> None:
    """Each earlier round's turns are made once per role (every request re-sends them); a post
    that changed (here by hand: nothing in Weaver edits a finished post) is rendered again, and a
    caller changing a message it was given changes no later prompt."""
    app = new_app(tmp_path, llm_server, **NO_PREWARM)
    try:
        session = app.get_session()
        llm_server.push(to_user("First answer."), to_user("Second answer."))
        for text in ("first question", "second question"):
            assert session.send_message(text).state == "finished"
        prompt = session.roles["Planner"].prompt
        current = Round(user_query="third question")
        current.add_post(Post(send_from="User", send_to="Planner", message="third question"))

        def chat() -> list[str]:
            return [m["content"] for m in prompt.messages(session.rounds, current, [], "")[1:]]

        before = chat()
        assert any("First answer." in c for c in before) and any("second question" in c for c in before)
        assert chat() == before  # from the kept turns
        answer = session.rounds[0].post_list[-1]
        answer.message = "First answer, corrected."
        assert any("First answer, corrected." in c for c in chat())
        session.rounds[1].post_list[0] = Post(send_from="User", send_to="Planner", message="second, asked again")
        after = chat()
        assert any("second, asked again" in c for c in after) and not any("second question" in c for c in after)
        prompt.messages(session.rounds, current, [], "")[1]["content"] = "changed by a caller"
        assert chat() == after
    finally:
        app.stop()
