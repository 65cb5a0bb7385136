"""AnthropicBackend against a real fake Messages API (tests/anthropic_server.py): streaming over
server-sent events, the request body (system field, prefill, max_tokens, sampling), JSON answers,
usage, retries, errors, timeouts, cancel, config, a whole round through the engine, weaver check."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest

from core.cancel import CancelToken
from core.config import LLMSettings, load_config
from core.errors import ConfigError
from core.llm import sampling
from core.llm.anthropic_backend import DEFAULT_MAX_TOKENS, JSON_ONLY, AnthropicBackend
from core.llm.base import ChatRequest, LLMError
from core.llm.factory import create_backend
from tests.anthropic_server import Chat, Error, FakeAnthropic, Stall, anthropic_fixture  # noqa: F401  (fixture)
from tests.llm_cases import (
    assert_cancel_mid_stream,
    backends_fixture,  # noqa: F401  (fixture)
    error_of,
    run_squares_round,
    squares_answers,
)

pytestmark = pytest.mark.timeout(60)

ANSWER = json.dumps({"thought": "add them", "send_to": "User", "message": "1 + 1 = 2"})
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "system", "content": "answer in JSON"},
    {"role": "user", "content": "1+1?"},
]


@pytest.fixture(autouse=True)
def all_replies_used(anthropic: FakeAnthropic) -> Iterator[None]:
    yield
    assert anthropic.pending == 0, "a scripted reply was never asked for"


def _request(json_mode: bool = True) -> ChatRequest:
    return ChatRequest(role="Planner", messages=list(MESSAGES), json_mode=json_mode)


def _error(backend: AnthropicBackend) -> tuple[str, float]:
    return error_of(backend, _request())


def _calls(anthropic: FakeAnthropic, first: int, count: int) -> list[Any]:
    return anthropic.wait_for("/v1/messages", first + count)[first:]


# ------------------------------------------------------------------------------------ happy path


def test_chunks_stream_in_order_and_usage_comes_from_message_start_and_delta(
    anthropic: FakeAnthropic, backends: Any
) -> None:
    anthropic.push(Chat(ANSWER, chunks=5, input_tokens=42, output_tokens=17))
    request = _request()
    chunks = list(backends(anthropic.settings()).stream_chat(request, CancelToken()))

    assert len(chunks) == 5 and "".join(chunks) == ANSWER  # the prefilled "{" put back in front
    assert json.loads("".join(chunks))["message"] == "1 + 1 = 2"
    record = request.record
    assert record is not None
    assert (record.prompt_tokens, record.completion_tokens) == (42, 17)
    assert record.model == "claude-test" and record.attempts == 1
    assert record.first_token_s is not None and record.latency_s >= record.first_token_s


def test_request_body_has_the_system_field_the_prefill_and_the_sampling_keys(
    anthropic: FakeAnthropic, backends: Any
) -> None:
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat(ANSWER), Chat("plain words"))
    backend = backends(
        anthropic.settings(
            api_base=anthropic.base + "/v1/",  # the SDK-style address with /v1 works too
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            stop_token="<END>",
        )
    )
    list(backend.stream_chat(_request(), CancelToken()))
    text = "".join(backend.stream_chat(_request(json_mode=False), CancelToken()))

    json_call, text_call = _calls(anthropic, first, 2)
    body = json_call.body
    assert body["system"] == "be brief\n\nanswer in JSON"
    assert body["messages"] == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "{"}]
    assert (body["model"], body["stream"], body["max_tokens"]) == ("claude-test", True, DEFAULT_MAX_TOKENS)
    assert (body["temperature"], body["top_p"], body["top_k"], body["stop_sequences"]) == (0.3, 0.9, 40, ["<END>"])
    assert not {"seed", "frequency_penalty", "presence_penalty", "response_format"} & body.keys()
    assert json_call.headers["x-api-key"] == anthropic.key and json_call.headers["anthropic-version"] == "2023-06-01"
    # Without JSON mode: no prefill, and the text comes as it is.
    assert text_call.body["messages"] == [{"role": "user", "content": "1+1?"}] and text == "plain words"


def test_max_output_tokens_and_a_high_temperature(anthropic: FakeAnthropic, backends: Any) -> None:
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat(ANSWER))
    list(backends(anthropic.settings(max_tokens=300, temperature=1.5)).stream_chat(_request(), CancelToken()))
    [call] = _calls(anthropic, first, 1)
    assert call.body["max_tokens"] == 300
    assert call.body["temperature"] == 1.0  # Anthropic's range ends at 1


def test_seed_and_penalties_are_warned_once_and_not_sent(
    anthropic: FakeAnthropic, backends: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sampling, "_warned", set())
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat(ANSWER), Chat(ANSWER))
    backend = backends(anthropic.settings(seed=7, frequency_penalty=0.5, presence_penalty=0.1, top_k=5))
    with caplog.at_level(logging.WARNING, logger="weaver.llm"):
        list(backend.stream_chat(_request(), CancelToken()))
        list(backend.stream_chat(_request(), CancelToken()))
    warned = [r.getMessage() for r in caplog.records if r.name == "weaver.llm"]
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        assert warned.count(f"llm.{key} is not sent: the anthropic API has no such setting") == 1, warned
    assert not any("top_k" in line for line in warned)
    for call in _calls(anthropic, first, 2):
        assert call.body["top_k"] == 5 and not {"seed", "frequency_penalty", "presence_penalty"} & call.body.keys()


def test_a_model_that_refuses_prefills_is_asked_in_the_system_prompt(anthropic: FakeAnthropic, backends: Any) -> None:
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat(ANSWER), Chat(ANSWER))
    backend = backends(anthropic.settings(model="claude-no-prefill"))
    answers = ["".join(backend.stream_chat(_request(), CancelToken())) for _ in range(2)]

    assert [json.loads(a)["send_to"] for a in answers] == ["User", "User"]
    refused, retried, second = _calls(anthropic, first, 3)  # the 400 once, then learned
    assert refused.body["messages"][-1] == {"role": "assistant", "content": "{"}
    for call in (retried, second):
        assert call.body["messages"][-1]["role"] == "user"
        assert call.body["system"] == f"be brief\n\nanswer in JSON\n\n{JSON_ONLY}"


def test_a_model_that_takes_temperature_or_top_p_gets_top_p_alone(anthropic: FakeAnthropic, backends: Any) -> None:
    """The newest models refuse both; llm.top_p, set on purpose, wins over the default temperature."""
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat(ANSWER), Chat(ANSWER))
    backend = backends(anthropic.settings(model="claude-one-sampler", top_p=0.8))
    answers = ["".join(backend.stream_chat(_request(), CancelToken())) for _ in range(2)]
    assert [json.loads(a)["send_to"] for a in answers] == ["User", "User"]
    calls = _calls(anthropic, first, 4)  # the two refusals, learned once each, then two answers
    assert [("temperature" in c.body, "{" == c.body["messages"][-1]["content"]) for c in calls] == [
        (True, True),
        (True, False),
        (False, False),
        (False, False),
    ]
    assert all(c.body["top_p"] == 0.8 for c in calls)


# ------------------------------------------------------------------------------------ failures


def test_429_then_success_honours_retry_after(anthropic: FakeAnthropic, backends: Any) -> None:
    anthropic.push(Error(429, "rate_limit_error", "slow down", {"retry-after": "0"}), Chat(ANSWER))
    request = _request()
    chunks = list(backends(anthropic.settings(retry_backoff=20)).stream_chat(request, CancelToken()))
    assert "".join(chunks) == ANSWER
    assert request.record is not None and request.record.attempts == 2  # Retry-After 0, not the 20 s backoff


def test_overloaded_529_until_retries_run_out(anthropic: FakeAnthropic, backends: Any) -> None:
    anthropic.push(*[Error(529, "overloaded_error", "Overloaded")] * 2)
    message, _ = _error(backends(anthropic.settings(max_retries=1)))
    assert "overloaded" in message and "2 attempts" in message


def test_an_overloaded_event_before_any_text_is_retried_after_text_it_is_an_error(
    anthropic: FakeAnthropic, backends: Any
) -> None:
    anthropic.push(Chat(ANSWER, error_after=0), Chat(ANSWER))
    request = _request()
    assert "".join(backends(anthropic.settings()).stream_chat(request, CancelToken())) == ANSWER
    assert request.record is not None and request.record.attempts == 2
    anthropic.push(Chat(ANSWER, chunks=4, error_after=2))
    message, _ = _error(backends(anthropic.settings()))
    assert "overloaded_error mid-answer" in message


def test_a_wrong_key_is_a_clear_error_naming_the_setting(anthropic: FakeAnthropic, backends: Any) -> None:
    first = len(anthropic.requests("/v1/messages"))
    message, _ = _error(backends(anthropic.settings(api_key="sk-wrong")))
    assert "HTTP 401" in message and "llm.api_key" in message and "ANTHROPIC_API_KEY" in message
    assert len(anthropic.requests("/v1/messages")) == first + 1  # not retried


def test_an_unknown_model_names_llm_model(anthropic: FakeAnthropic, backends: Any) -> None:
    message, _ = _error(backends(anthropic.settings(model="claude-9")))
    assert "no model 'claude-9'" in message and "change llm.model" in message


def test_a_silent_server_times_out_with_the_setting_named(anthropic: FakeAnthropic, backends: Any) -> None:
    anthropic.push(Stall(10))
    message, elapsed = _error(backends(anthropic.settings(timeout=1.0)))
    assert "llm.timeout" in message and "1 s" in message and "before answering" in message
    assert 0.9 <= elapsed < 4


def test_drop_mid_answer_is_an_error_not_a_retry(anthropic: FakeAnthropic, backends: Any) -> None:
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat(ANSWER, chunks=4, drop_after=2))
    message, _ = _error(backends(anthropic.settings()))
    assert "dropped mid-answer" in message
    assert len(anthropic.requests("/v1/messages")) == first + 1


def test_cancel_mid_stream_is_immediate_and_drops_the_connection(anthropic: FakeAnthropic, backends: Any) -> None:
    anthropic.push(Chat(ANSWER, chunks=3, delay=10))
    assert_cancel_mid_stream(anthropic, "/v1/messages", backends(anthropic.settings(timeout=20)), _request())


# ------------------------------------------------------------------------------------ config


def test_taskweaver_anthropic_config_selects_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anthropic: FakeAnthropic
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    config = load_config(
        tmp_path,
        {
            "llm.api_type": "anthropic",
            "llm.api_base": anthropic.base,
            "llm.anthropic.api_key": "sk-ant-x",
            "llm.anthropic.model": "claude-test",
            "llm.anthropic.max_tokens": 512,
            "llm.anthropic.stop_token": "<EOS>",
        },
    )
    assert (config.llm.resolved_api_type, config.llm.model, config.llm.max_tokens) == ("anthropic", "claude-test", 512)
    assert config.llm.api_key is not None and config.llm.api_key.get_secret_value() == "sk-ant-x"
    assert config.llm.stop_token == ["<EOS>"]
    backend = create_backend(config.llm)
    backend.close()


def test_no_model_is_a_config_error_and_no_key_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="llm.api_type anthropic needs llm.model"):
        load_config(tmp_path, {"llm.api_type": "anthropic", "llm.api_key": "k"})
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = LLMSettings(api_type="anthropic", model="claude-test")
    with pytest.raises(LLMError, match="needs llm.api_key \\(or the ANTHROPIC_API_KEY variable\\)"):
        create_backend(settings)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    create_backend(settings).close()
    # A model choice of another type must name its own model too.
    with pytest.raises(ConfigError, match="llm.models\\[0\\] \\(claude\\).*needs llm.model"):
        load_config(tmp_path, {"llm.api_key": "k", "llm.models": [{"name": "claude", "api_type": "anthropic"}]})
    config = load_config(
        tmp_path, {"llm.models": [{"name": "claude", "api_type": "anthropic", "model": "claude-test", "api_key": "k"}]}
    )
    assert config.llm.for_model("claude").model == "claude-test"


# ------------------------------------------------------------------------------------ whole round


def test_a_whole_round_over_anthropic_runs_real_code(anthropic: FakeAnthropic, tmp_path: Path) -> None:
    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(*(Chat(text, chunks=8) for text in squares_answers()))
    llm = {"llm.api_type": "anthropic", "llm.api_base": anthropic.base, "llm.api_key": anthropic.key}
    rnd = run_squares_round(tmp_path, {**llm, "llm.model": "claude-test"})
    calls = _calls(anthropic, first, 3)
    assert all(c.body["stream"] is True and c.body["messages"][-1]["content"] == "{" for c in calls)
    assert "You are the Planner" in calls[0].body["system"]
    assert all(m["role"] != "system" for c in calls for m in c.body["messages"])
    assert "total=385" in json.dumps(calls[2].body["messages"])  # the Planner saw the kernel's output
    # The round keeps each call's usage, from message_start and message_delta.
    assert [(c["model"], c["prompt_tokens"], c["completion_tokens"]) for c in rnd.llm_calls] == [
        ("claude-test", 21, 8)
    ] * 3


# ------------------------------------------------------------------------------------ weaver check

STEPS = [
    "config loads",
    "server reachable",
    "key accepted",
    "model exists",
    "chat completion",
    "streaming works",
    "JSON mode works",
]


def test_weaver_check_passes_against_the_messages_api(
    anthropic: FakeAnthropic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ui.cli import main

    first = len(anthropic.requests("/v1/messages"))
    anthropic.push(Chat("OK"), Chat("OK, fine", chunks=3), Chat('{"ok": true}'))
    config = {
        "llm.api_type": "anthropic",
        "llm.api_base": anthropic.base,
        "llm.api_key": anthropic.key,
        "llm.model": "claude-test",
    }
    (tmp_path / "taskweaver_config.json").write_text(json.dumps(config))
    code = main(["check", "--app-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    for step in STEPS:
        assert f"ok    {step}" in out, out
    assert "PASSED: Model connection OK (anthropic model 'claude-test'" in out
    whole, streamed, json_mode = _calls(anthropic, first, 3)
    assert "stream" not in whole.body and whole.body["max_tokens"] == 20
    assert streamed.body["stream"] is True and streamed.body["messages"][-1]["role"] == "user"
    assert json_mode.body["messages"][-1] == {"role": "assistant", "content": "{"}  # as a round asks for JSON


def test_weaver_check_names_a_refused_key_and_an_unknown_model(anthropic: FakeAnthropic) -> None:
    from ui.check import run_check

    report = run_check(anthropic.settings(api_key="sk-wrong"))
    failed = report.failure
    assert not report.ok and failed is not None
    assert (failed.name, failed.key) == ("key accepted", "api_key") and "ANTHROPIC_API_KEY" in failed.detail
    assert [s.status for s in report.steps[-4:]] == ["--"] * 4

    report = run_check(anthropic.settings(model="claude-9"))
    failed = report.failure
    assert failed is not None and (failed.name, failed.key) == ("model exists", "model")
    assert "'claude-9' not found" in failed.detail and "change llm.model" in failed.detail
    assert [s.status for s in report.steps[-3:]] == ["--"] * 3
