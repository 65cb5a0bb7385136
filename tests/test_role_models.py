"""Per-role models (TaskWeaver's ``ext_llms.llm_configs`` and ``<role>.llm_alias``) and round usage.

Two scripted model servers on 127.0.0.1: the primary model (the Planner's) is one, the model the
config names for the code generator is the other, so each server's request log shows which role
called which model. The code runs in a real kernel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import PostStarted, SessionEventHandler, TaskWeaverApp, TaskWeaverEvent
from core.errors import ConfigError
from core.usage import round_usage
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer

pytestmark = pytest.mark.timeout(120)


def _planner(send_to: str, message: str) -> str:
    return json.dumps(
        {"thought": "t", "plan": ["work"], "current_plan_step": "work", "send_to": send_to, "message": message}
    )


def _code(code: str) -> str:
    return json.dumps({"thought": "run it", "reply_type": "python", "reply_content": code})


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ScriptedLLMServer, ScriptedLLMServer]]:
    planner_side, coder_side = ScriptedLLMServer().start(), ScriptedLLMServer().start()
    try:
        yield planner_side, coder_side
    finally:
        planner_side.stop()
        coder_side.stop()


def _app(tmp_path: Path, primary: ScriptedLLMServer, coder: ScriptedLLMServer, **extra: Any) -> TaskWeaverApp:
    """An app configured the way a TaskWeaver user writes it: flat keys in taskweaver_config.json."""
    config = {
        "llm.api_type": "openai",
        "llm.api_base": primary.base_url,
        "llm.api_key": "primary-key",
        "llm.model": "planner-model",
        "llm.max_retries": 0,
        "llm.models": [{"name": "big", "model": "big-model"}],
        "ext_llms.llm_configs": {
            "coder": {
                "llm.api_type": "openai",
                "llm.api_base": coder.base_url,
                "llm.api_key": "coder-key",
                "llm.model": "coder-model",
                "llm.price_per_1k_prompt_tokens": 2.0,
                "llm.price_per_1k_completion_tokens": 10.0,
            }
        },
        "code_generator.llm_alias": "coder",
        "execution.timeout": 20,
        "execution.pool_size": 0,
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "taskweaver_config.json").write_text(json.dumps(config))
    return TaskWeaverApp(app_dir=tmp_path)


def _since(server: ScriptedLLMServer, start: int) -> list[RecordedRequest]:
    return server.requests[start:]


class _Starts(SessionEventHandler):
    """Who wrote each post, with which model, as the UI is told (``PostStarted``)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        if isinstance(event.payload, PostStarted):
            self.started.append((event.payload.role, event.payload.model))


def _one_round(
    app: TaskWeaverApp, primary: ScriptedLLMServer, coder: ScriptedLLMServer, pick: str | None = None
) -> Any:
    """A round Planner → CodeInterpreter → Planner → User, each answer queued on the server that
    should be asked (a request reaching the other one finds no answer there and fails the round)."""
    primary.push(Answer(_planner("CodeInterpreter", "Print 6*7.")), Answer(_planner("User", "It is 42.")))
    coder.push(Answer(_code("print(6 * 7)")))
    session = app.get_session()
    starts = _Starts()
    try:
        if pick is not None:
            session.set_llm(pick)
        assert session.role_models == {"CodeInterpreter": "coder-model"}
        rnd = session.send_message("What is 6*7?", event_handler=starts)
    finally:
        session.stop()
    assert rnd.state == "finished", rnd.error
    assert rnd.reply_text == "It is 42."
    planner_model = pick or "planner-model"
    # Each step of the UI names the model that wrote it.
    assert [s for s in starts.started if s[0] == "CodeInterpreter"] == [("CodeInterpreter", "coder-model")]
    assert {s for s in starts.started if s[0] == "Planner"} == {("Planner", planner_model)}
    return rnd


def test_each_role_calls_its_own_model_server(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, coder = servers
    a0, b0 = len(primary.requests), len(coder.requests)
    app = _app(tmp_path, primary, coder)
    try:
        rnd = _one_round(app, primary, coder)
        planner_calls, coder_calls = _since(primary, a0), _since(coder, b0)
        assert [r.body["model"] for r in planner_calls] == ["planner-model", "planner-model"]
        assert [r.body["model"] for r in coder_calls] == ["coder-model"]
        assert {r.headers["authorization"] for r in planner_calls} == {"Bearer primary-key"}
        assert {r.headers["authorization"] for r in coder_calls} == {"Bearer coder-key"}
        # The lookup issue 25's roles use: the alias's model, else the primary one.
        assert app.backend_for_role("code_generator").configured().model == "coder-model"  # type: ignore[union-attr]
        assert app.backend_for_role("round_compressor").configured().model == "planner-model"  # type: ignore[union-attr]
        # Tokens as the servers reported them (11 in, 7 out per call), per role and model; the
        # coder's model has prices, the primary none.
        usage = round_usage(rnd)
        lines = {(line.role, line.model): line for line in usage.lines}
        planner_line = lines[("Planner", "scripted-model")]
        coder_line = lines[("CodeInterpreter", "scripted-model")]
        assert (planner_line.calls, planner_line.prompt_tokens, planner_line.completion_tokens) == (2, 22, 14)
        assert (coder_line.calls, coder_line.prompt_tokens, coder_line.completion_tokens) == (1, 11, 7)
        assert planner_line.cost is None
        assert coder_line.cost == pytest.approx((11 * 2.0 + 7 * 10.0) / 1000)
        assert (usage.prompt_tokens, usage.completion_tokens) == (33, 21)
        assert usage.cost == pytest.approx(0.092)
    finally:
        app.stop()


def test_the_picker_overrides_only_roles_without_an_alias(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, coder = servers
    app = _app(tmp_path / "with-alias", primary, coder)
    try:
        a0, b0 = len(primary.requests), len(coder.requests)
        _one_round(app, primary, coder, pick="big")
        assert [r.body["model"] for r in _since(primary, a0)] == ["big-model", "big-model"]
        assert [r.body["model"] for r in _since(coder, b0)] == ["coder-model"]  # its own alias wins
    finally:
        app.stop()
    # Without an alias of its own, the CodeInterpreter follows the chat's pick too.
    app = _app(tmp_path / "no-alias", primary, coder, **{"code_generator.llm_alias": ""})
    try:
        a0, b0 = len(primary.requests), len(coder.requests)
        primary.push(
            Answer(_planner("CodeInterpreter", "Print 6*7.")),
            Answer(_code("print(6 * 7)")),
            Answer(_planner("User", "It is 42.")),
        )
        session = app.get_session()
        try:
            session.set_llm("big")
            rnd = session.send_message("What is 6*7?")
        finally:
            session.stop()
        assert rnd.state == "finished", rnd.error
        assert [r.body["model"] for r in _since(primary, a0)] == ["big-model"] * 3
        assert _since(coder, b0) == []
    finally:
        app.stop()


@pytest.mark.parametrize(
    "key", ["planner.llm_alias", "code_generator.llm_alias", "round_compressor.llm_alias", "experience.llm_alias"]
)
def test_an_unknown_alias_stops_the_app_naming_the_key(tmp_path: Path, key: str) -> None:
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps({"llm.api_type": "offline", "ext_llms.llm_configs": {"llm_A": {"llm.model": "m"}}, key: "llm_B"})
    )
    with pytest.raises(ConfigError) as caught:
        TaskWeaverApp(app_dir=tmp_path)
    said = str(caught.value)
    weaver_key = key.replace("code_generator", "code_interpreter")
    assert weaver_key in said and "'llm_B'" in said and "llm_A" in said


def test_a_bad_value_in_a_named_model_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps({"llm.api_type": "offline", "ext_llms.llm_configs": {"cold": {"llm.temperature": 9}}})
    )
    with pytest.raises(ConfigError, match=r"ext_llms\.llm_configs\.cold: temperature"):
        TaskWeaverApp(app_dir=tmp_path)


def test_a_role_on_ollama_counts_its_tokens_under_its_own_provider_and_model(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    """The Planner on an OpenAI-compatible server, the code generator on Ollama's native API: each
    call's tokens land in ``weaver_llm_tokens_total`` under its provider and configured model."""
    from prometheus_client import REGISTRY

    from tests.ollama_server import Chat, FakeOllama

    def tokens(direction: str, provider: str, model: str) -> float:
        labels = {"direction": direction, "provider": provider, "model": model}
        return REGISTRY.get_sample_value("weaver_llm_tokens_total", labels) or 0.0

    primary, _ = servers
    ollama = FakeOllama().start()
    app = _app(
        tmp_path,
        primary,
        primary,
        **{
            "ext_llms.llm_configs": {
                "local": {"llm.api_type": "ollama", "llm.api_base": ollama.base, "llm.model": "qwen"}
            }
        },
        **{"code_generator.llm_alias": "local"},
    )
    try:
        assert tokens("prompt", "ollama", "qwen") == 0  # configured models start at zero
        before = {
            key: tokens(*key) for key in [("prompt", "openai", "planner-model"), ("completion", "ollama", "qwen")]
        }
        primary.push(Answer(_planner("CodeInterpreter", "Print 6*7.")), Answer(_planner("User", "It is 42.")))
        ollama.push(Chat(_code("print(6 * 7)"), prompt_eval_count=40, eval_count=9))
        session = app.get_session()
        try:
            rnd = session.send_message("What is 6*7?")
        finally:
            session.stop()
        assert rnd.state == "finished", rnd.error
        assert [s.body["model"] for s in ollama.requests("/api/chat")] == ["qwen"]
        assert tokens("prompt", "openai", "planner-model") - before[("prompt", "openai", "planner-model")] == 22
        assert tokens("completion", "ollama", "qwen") - before[("completion", "ollama", "qwen")] == 9
        lines = {(line.role, line.model): line for line in round_usage(rnd).lines}
        assert (
            lines[("CodeInterpreter", "llama3.2:latest")].prompt_tokens,
            lines[("CodeInterpreter", "llama3.2:latest")].completion_tokens,
        ) == (40, 9)
    finally:
        app.stop()
        ollama.stop()


def test_the_model_picker_says_which_roles_it_changes(tmp_path: Path) -> None:
    from core.config import load_config
    from ui.view import model_picker_note

    base = {"llm.api_type": "offline", "ext_llms.llm_configs": {"coder": {"llm.model": "c"}}}
    assert model_picker_note(load_config(tmp_path, base)) is None  # no role has its own: it changes both
    config = load_config(tmp_path, {**base, "code_generator.llm_alias": "coder"})
    assert model_picker_note(config) == "Changes the Planner; the CodeInterpreter (coder) keeps its own model."
