"""A model and temperature per chat: ``llm.models`` and ``Session.set_llm``, against the scripted server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core import PostEventType, RoundEventType, TaskWeaverApp
from core.config import load_config
from core.errors import ConfigError
from tests.llm_server import ScriptedLLMServer
from tests.test_llm_rounds import Recorder, new_app, to_user

pytestmark = pytest.mark.timeout(60)

MODELS: list[dict[str, Any]] = [
    {"name": "Big", "model": "big-model", "temperature": 0.7},
    {"name": "Other server", "api_base": "http://127.0.0.1:9/v1", "model": "elsewhere"},
]


def ask(app_session: Any, server: ScriptedLLMServer) -> tuple[dict[str, Any], Recorder]:
    """One round answered at once; the request the server got and the events."""
    before = len(server.requests)
    server.push(to_user("Hello."))
    recorder = Recorder()
    rnd = app_session.send_message("Hi", event_handler=recorder)
    assert rnd.state == "finished", rnd.error
    return server.wait_for_requests(before + 1)[before].body, recorder


def test_switching_changes_the_next_requests_model(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    app: TaskWeaverApp = new_app(tmp_path, llm_server, **{"llm.models": MODELS, "execution.pool_size": 0})
    try:
        assert app.models == ["scripted", "Big", "Other server"]
        session, bystander = app.get_session(), app.get_session()
        assert session.llm_models == app.models and session.llm_name == "scripted"

        body, events = ask(session, llm_server)
        assert body["model"] == "scripted" and body["temperature"] == 0.0
        starts = [e for e in events.events if e.t == PostEventType.post_start]
        assert starts and all(e.extra["model"] == "scripted" for e in starts)

        session.set_llm("Big")
        assert session.llm_name == "Big"
        body, events = ask(session, llm_server)
        assert body["model"] == "big-model" and body["temperature"] == 0.7
        [round_start] = [e for e in events.events if e.t == RoundEventType.round_start]
        assert round_start.extra == {"model": "Big"}
        planner_start = next(e for e in events.events if e.t == PostEventType.post_start)
        assert planner_start.extra == {"role": "Planner", "model": "Big"}

        body, _ = ask(bystander, llm_server)  # another chat keeps the default
        assert body["model"] == "scripted"

        session.set_llm(None, temperature=0.3)
        body, _ = ask(session, llm_server)
        assert body["model"] == "scripted" and body["temperature"] == 0.3

        with pytest.raises(ConfigError, match="no model named 'nope'.*scripted, Big, Other server"):
            session.set_llm("nope")
        with pytest.raises(ConfigError, match="outside 0..2"):
            session.set_llm("Big", temperature=5)
        assert session.llm_name == "scripted"
    finally:
        app.stop()


def test_one_model_changes_nothing(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    app = new_app(tmp_path, llm_server, **{"execution.pool_size": 0})
    try:
        assert app.models == ["scripted"]
        body, events = ask(app.get_session(), llm_server)
        assert body["model"] == "scripted"
        assert next(e for e in events.events if e.t == PostEventType.post_start).extra["model"] == "scripted"
    finally:
        app.stop()


@pytest.mark.parametrize(
    ("models", "words"),
    [
        ([{"model": "x"}], "llm.models[0] needs a non-empty 'name'"),
        ([{"name": "a"}, {"name": "a"}], "the name 'a' is used twice"),
        ([{"name": "hot", "temperature": 3}], "llm.models[0] (hot): temperature"),
        ([{"name": "odd", "api_type": "nonsense"}], "llm.models[0] (odd): api_type"),
    ],
)
def test_bad_choices_stop_the_app(models: list[dict[str, Any]], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"llm.models": models})
    assert words in str(caught.value)


def test_choices_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAVER_LLM__MODELS", '[{"name": "fast", "model": "m-fast", "max_tokens": 100}]')
    config = load_config(None, {"llm.api_key": "k"})
    assert config.llm.model_names == ["gpt-4o-mini", "fast"]
    fast = config.llm.for_model("fast")
    assert (fast.model, fast.max_tokens, fast.api_key) == ("m-fast", 100, config.llm.api_key)
