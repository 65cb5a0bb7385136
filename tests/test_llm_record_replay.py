"""Record and replay (``llm.use_mock``): a round recorded against a model server replays with that
server stopped, through the engine and through a real Chainlit server; the same answer, the same code
run again in a real kernel, the same output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import AttachmentType, TaskWeaverApp
from core.cancel import CancelToken
from core.config import load_config
from core.llm.base import ChatRequest, LLMError
from core.llm.factory import create_backend
from core.llm.mock import RecordReplayBackend, call_key
from core.memory import Round
from tests.llm_server import Answer, ScriptedLLMServer
from tests.ui_harness import answers, start_server, steps, stop_server
from ui.check import run_check

pytestmark = pytest.mark.timeout(180)

CODE = "values = [3, 4, 5]\nprint('squares', sum(v * v for v in values))"
QUESTION = "What is the sum of the squares of 3, 4 and 5?"
ANSWER = "The sum of the squares of 3, 4 and 5 is 50."


def _planner(send_to: str, message: str) -> str:
    return json.dumps(
        {
            "thought": f"Ask {send_to}.",
            "plan": ["compute", "report"],
            "current_plan_step": "compute",
            "send_to": send_to,
            "message": message,
        }
    )


def push_round(server: ScriptedLLMServer) -> None:
    """The three model answers of one round with code: Planner, CodeInterpreter, Planner."""
    server.push(
        Answer(_planner("CodeInterpreter", "Print the sum of the squares of 3, 4 and 5."), chunks=7),
        Answer(json.dumps({"thought": "Run it.", "reply_type": "python", "reply_content": CODE}), chunks=9),
        Answer(_planner("User", ANSWER), chunks=5),
    )


def model_config(server: ScriptedLLMServer, **extra: Any) -> dict[str, Any]:
    return {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test-key",
        "llm.model": "recorded-model",
        "llm.max_retries": 0,
        "llm.connect_timeout": 2,
        "llm.use_mock": True,
        **extra,
    }


def what_the_user_saw(rnd: Round) -> tuple[str, list[Any], list[Any]]:
    """The answer, the code that ran and what it printed."""
    code = [c for p in rnd.post_list for c in p.get_attachment(AttachmentType.reply_content)]
    output = [r for p in rnd.post_list for r in p.get_attachment(AttachmentType.execution_result)]
    return rnd.reply_text, [a.content for a in code], [a.content for a in output]


@pytest.fixture
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    try:
        yield scripted
    finally:
        scripted.stop()


def test_a_recorded_round_replays_with_the_model_server_stopped(server: ScriptedLLMServer, tmp_path: Path) -> None:
    recording = TaskWeaverApp(tmp_path / "record", config=model_config(server))
    try:
        push_round(server)
        session = recording.get_session()
        first = session.send_message(QUESTION)
        assert first.state == "finished", first.error
    finally:
        recording.stop()
    seen = what_the_user_saw(first)
    assert seen[0] == ANSWER and seen[1] == [CODE] and "squares 50" in seen[2][0], seen
    records = sorted((tmp_path / "record" / "cache" / "llm").glob("*.json"))
    assert len(records) == 3 and len(server.requests) == 3
    roles = sorted(json.loads(r.read_text())["role"] for r in records)
    assert roles == ["CodeInterpreter", "Planner", "Planner"]
    server.stop()

    # Another app folder holding only the recordings: the demo needs nothing else.
    shutil.copytree(tmp_path / "record" / "cache", tmp_path / "replay" / "cache")
    replaying = TaskWeaverApp(tmp_path / "replay", config=model_config(server, **{"llm.mock.mode": "playback_only"}))
    try:
        again = replaying.get_session().send_message(QUESTION)
        assert again.state == "finished", again.error
        assert what_the_user_saw(again) == seen  # the same code ran in the new kernel and printed the same
        assert [c["model"] for c in again.llm_calls] == [c["model"] for c in first.llm_calls]
        # A question never recorded is refused, saying so; nothing tries the stopped server.
        other = replaying.get_session().send_message("Something else entirely")
        assert other.state == "failed"
        assert other.error and "was not recorded" in other.error and "playback_only" in other.error
    finally:
        replaying.stop()
    assert len(server.requests) == 3


def test_record_only_calls_the_model_every_time_and_keeps_the_latest(server: ScriptedLLMServer, tmp_path: Path) -> None:
    settings = load_config(tmp_path, model_config(server, **{"llm.mock.mode": "record_only"})).llm
    backend = create_backend(settings)
    assert isinstance(backend, RecordReplayBackend)
    messages = [{"role": "user", "content": "hi"}]
    server.push(Answer('{"n": 1}', chunks=3), Answer('{"n": 2}', chunks=2))
    try:
        one = list(backend.stream_chat(ChatRequest("Planner", messages), CancelToken()))
        two = list(backend.stream_chat(ChatRequest("Planner", messages), CancelToken()))
    finally:
        backend.close()
    assert "".join(one) == '{"n": 1}' and "".join(two) == '{"n": 2}' and len(server.requests) == 2
    [record] = (tmp_path / "cache" / "llm").glob("*.json")
    assert "".join(json.loads(record.read_text())["chunks"]) == '{"n": 2}'
    # Replayed in the chunks it was streamed in, with a delay before each when asked.
    playback = settings.mock.model_copy(update={"mode": "playback_only", "playback_delay": 0.01})
    player = create_backend(settings.model_copy(update={"mock": playback}))
    assert list(player.stream_chat(ChatRequest("Planner", messages), CancelToken())) == two


def test_what_changes_the_answer_changes_the_key(tmp_path: Path) -> None:
    settings = load_config(tmp_path, {"llm.api_type": "openai", "llm.api_key": "k", "llm.use_mock": True}).llm
    request = ChatRequest("Planner", [{"role": "user", "content": "hi"}])
    base = call_key(settings, request)
    assert call_key(settings.model_copy(update={"api_base": "http://127.0.0.1:9/v1"}), request) == base
    assert call_key(settings.model_copy(update={"api_key": None}), request) == base
    for changed in ({"model": "other"}, {"temperature": 0.7}, {"top_p": 0.5}, {"max_tokens": 10}):
        assert call_key(settings.model_copy(update=changed), request) != base, changed
    assert call_key(settings, ChatRequest("CodeInterpreter", request.messages)) != base
    assert call_key(settings, ChatRequest("Planner", [{"role": "user", "content": "hi!"}])) != base


def test_taskweaver_mock_keys_are_read(tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        {
            "llm.use_mock": True,
            "llm.mock.mode": "playback_only",
            "llm.mock.cache_path": "${AppBaseDir}/cache/mock.yaml",
            "llm.mock.playback_delay": 0.05,
        },
    )
    mock = config.llm.mock
    assert config.llm.use_mock and mock.mode == "playback_only" and mock.playback_delay == 0.05
    assert mock.cache_path == tmp_path / "cache" / "mock"  # TaskWeaver's one file is Weaver's folder
    assert load_config(tmp_path).llm.mock.mode == "playback_or_record"  # TaskWeaver's default
    assert load_config(tmp_path).llm.mock.cache_path == tmp_path / "cache" / "llm"


def test_a_miss_in_playback_only_names_the_setting(tmp_path: Path) -> None:
    settings = load_config(
        tmp_path, {"llm.api_type": "openai", "llm.use_mock": True, "llm.mock.mode": "playback_only"}
    ).llm
    backend = create_backend(settings)  # no key, no server: playback never builds the model client
    with pytest.raises(LLMError, match="was not recorded"):
        list(backend.stream_chat(ChatRequest("Planner", [{"role": "user", "content": "x"}]), CancelToken()))


def test_a_recorded_demo_runs_offline_in_the_web_ui(server: ScriptedLLMServer, tmp_path: Path) -> None:
    env = {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": server.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MODEL": "recorded-model",
        "WEAVER_LLM__MAX_RETRIES": "0",
        "WEAVER_LLM__USE_MOCK": "true",
    }
    ui = start_server(tmp_path / "record", tmp_path / "record.log", extra_env=env)
    try:
        push_round(server)
        with ui.client() as client:
            turn = client.ask(QUESTION)
    finally:
        stop_server(ui)
    recorded = answers(turn), steps(turn, "CodeInterpreter")
    assert recorded[0] == [ANSWER], recorded
    assert any(CODE.splitlines()[1] in s for s in recorded[1]) and any("squares 50" in s for s in recorded[1])
    server.stop()

    shutil.copytree(tmp_path / "record" / "cache", tmp_path / "replay" / "cache")
    env["WEAVER_LLM__MOCK__MODE"] = "playback_only"
    env["WEAVER_UI_CHECK_MODEL_AT_START"] = "true"  # playback only: the check passes with no model
    ui = start_server(tmp_path / "replay", tmp_path / "replay.log", extra_env=env)
    try:
        with ui.client() as client:
            turn = client.ask(QUESTION)
        log = ui.log()
    finally:
        stop_server(ui)
    assert (answers(turn), steps(turn, "CodeInterpreter")) == recorded
    assert "could not connect" not in log and len(server.requests) == 3


def test_weaver_check_passes_in_playback_only_without_a_model(tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        {
            "llm.api_type": "openai",
            "llm.api_base": "http://127.0.0.1:9/v1",  # nothing listens there: it must not be asked
            "llm.use_mock": True,
            "llm.mock.mode": "playback_only",
        },
    )
    report = run_check(config)
    assert report.ok, report.lines()
    assert "playback only" in "\n".join(report.lines()) and str(tmp_path / "cache" / "llm") in "\n".join(report.lines())
