"""GeminiBackend (``llm.api_type = google_genai``) against a real fake Gemini API
(tests/gemini_server.py): streaming over server-sent events, the request body (systemInstruction,
user/model roles, generationConfig with JSON and the sampling keys), usage, retries, errors,
timeouts, cancel, config, and a whole round through the engine."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest

from core.cancel import CancelToken
from core.config import LLMSettings, load_config
from core.errors import ConfigError
from core.llm.base import ChatRequest, LLMError
from core.llm.factory import create_backend
from core.llm.gemini_backend import GeminiBackend, gemini_base
from tests.gemini_server import Chat, Error, FakeGemini, Stall, gemini_fixture  # noqa: F401  (fixture)
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
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2"},
    {"role": "system", "content": "answer in JSON"},
    {"role": "user", "content": "and 2+2?"},
]
PATH = "/v1beta/models/gemini-test:streamGenerateContent"


@pytest.fixture(autouse=True)
def all_replies_used(gemini: FakeGemini) -> Iterator[None]:
    yield
    assert gemini.pending == 0, "a scripted reply was never asked for"


def _request(json_mode: bool = True) -> ChatRequest:
    return ChatRequest(role="Planner", messages=list(MESSAGES), json_mode=json_mode)


def _error(backend: GeminiBackend) -> tuple[str, float]:
    return error_of(backend, _request())


def _calls(gemini: FakeGemini, first: int, count: int) -> list[Any]:
    return gemini.wait_for(PATH, first + count)[first:]


# ------------------------------------------------------------------------------------ happy path


def test_chunks_stream_in_order_and_usage_comes_from_usage_metadata(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Chat(ANSWER, chunks=5, prompt_tokens=42, candidates_tokens=17))
    request = _request()
    backend = backends(gemini.settings())
    assert isinstance(backend, GeminiBackend)
    chunks = list(backend.stream_chat(request, CancelToken()))

    assert len(chunks) == 5 and json.loads("".join(chunks))["message"] == "1 + 1 = 2"
    record = request.record
    assert record is not None
    assert (record.prompt_tokens, record.completion_tokens) == (42, 17)
    assert record.model == "gemini-test-001" and record.attempts == 1  # modelVersion, as Google reports it
    assert record.first_token_s is not None


def test_thinking_tokens_count_as_completion_tokens(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Chat(ANSWER, candidates_tokens=10, thoughts_tokens=30))
    request = _request()
    list(backends(gemini.settings()).stream_chat(request, CancelToken()))
    assert request.record is not None and request.record.completion_tokens == 40


def test_request_body_has_system_instruction_roles_and_generation_config(gemini: FakeGemini, backends: Any) -> None:
    first = len(gemini.requests(PATH))
    gemini.push(Chat(ANSWER), Chat("plain words"))
    backend = backends(
        gemini.settings(
            temperature=0.2,
            max_tokens=64,
            top_p=0.9,
            top_k=40,
            seed=7,
            stop_token="<END>",
            frequency_penalty=0.5,
            presence_penalty=-0.5,
        )
    )
    list(backend.stream_chat(_request(), CancelToken()))
    text = "".join(backend.stream_chat(_request(json_mode=False), CancelToken()))

    json_call, text_call = _calls(gemini, first, 2)
    assert json_call.query == {"alt": "sse"} and json_call.headers["x-goog-api-key"] == gemini.key
    body = json_call.body
    assert body["systemInstruction"] == {"parts": [{"text": "be brief\n\nanswer in JSON"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "1+1?"}]},
        {"role": "model", "parts": [{"text": "2"}]},
        {"role": "user", "parts": [{"text": "and 2+2?"}]},
    ]
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "maxOutputTokens": 64,
        "topP": 0.9,
        "topK": 40,
        "seed": 7,
        "stopSequences": ["<END>"],
        "frequencyPenalty": 0.5,
        "presencePenalty": -0.5,
        "responseMimeType": "application/json",
    }
    assert "responseMimeType" not in text_call.body["generationConfig"] and text == "plain words"


def test_neighbouring_turns_of_one_role_are_merged_and_empty_ones_left_out(gemini: FakeGemini, backends: Any) -> None:
    first = len(gemini.requests(PATH))
    gemini.push(Chat(ANSWER))
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "second"},
        {"role": "system", "content": "  "},
    ]
    list(backends(gemini.settings()).stream_chat(ChatRequest("Planner", messages), CancelToken()))
    [call] = _calls(gemini, first, 1)
    assert call.body["contents"] == [{"role": "user", "parts": [{"text": "first\n\nsecond"}]}]
    assert "systemInstruction" not in call.body


def test_unset_sampling_keys_are_not_sent_and_none_is_warned(
    gemini: FakeGemini, backends: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first = len(gemini.requests(PATH))
    gemini.push(Chat(ANSWER))
    with caplog.at_level(logging.WARNING, logger="weaver.llm"):
        list(backends(gemini.settings(response_format="text")).stream_chat(_request(), CancelToken()))
    [call] = _calls(gemini, first, 1)
    assert call.body["generationConfig"] == {"temperature": 0.0}
    assert not [r for r in caplog.records if "is not sent" in r.getMessage()]


def test_api_base_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gemini_base(None) == "https://generativelanguage.googleapis.com/v1beta"
    assert gemini_base("http://127.0.0.1:9/") == "http://127.0.0.1:9/v1beta"
    assert gemini_base("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"  # a version given is kept


def test_a_model_given_as_models_slash_name_works(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Chat(ANSWER))
    assert json.loads(
        "".join(backends(gemini.settings(model="models/gemini-test")).stream_chat(_request(), CancelToken()))
    )


# ------------------------------------------------------------------------------------ failures


def test_429_then_success_honours_the_retry_delay(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Error(429, "RESOURCE_EXHAUSTED", "quota", retry_delay="0s"), Chat(ANSWER))
    request = _request()
    chunks = list(backends(gemini.settings(retry_backoff=20)).stream_chat(request, CancelToken()))
    assert json.loads("".join(chunks))["send_to"] == "User"
    assert request.record is not None and request.record.attempts == 2  # retryDelay 0 s, not the 20 s backoff


def test_503_until_retries_run_out(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(*[Error(503, "UNAVAILABLE", "The model is overloaded.")] * 2)
    message, _ = _error(backends(gemini.settings(max_retries=1)))
    assert "HTTP 503 UNAVAILABLE" in message and "overloaded" in message and "2 attempts" in message


def test_an_error_chunk_before_text_is_retried_after_text_it_is_an_error(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Chat(ANSWER, error_after=0), Chat(ANSWER))
    request = _request()
    assert json.loads("".join(backends(gemini.settings()).stream_chat(request, CancelToken())))
    assert request.record is not None and request.record.attempts == 2
    gemini.push(Chat(ANSWER, chunks=4, error_after=2))
    message, _ = _error(backends(gemini.settings()))
    assert "reported an error mid-answer" in message and "overloaded" in message


def test_a_wrong_key_is_a_clear_error_naming_the_setting(gemini: FakeGemini, backends: Any) -> None:
    first = len(gemini.requests(PATH))
    message, _ = _error(backends(gemini.settings(api_key="AIza-wrong")))
    assert "refused the key" in message and "HTTP 400" in message and "llm.api_key" in message
    assert len(gemini.requests(PATH)) == first + 1  # not retried


def test_an_unknown_model_names_llm_model(gemini: FakeGemini, backends: Any) -> None:
    message, _ = _error(backends(gemini.settings(model="gemini-9")))
    assert "no model 'gemini-9'" in message and "change llm.model" in message


def test_a_safety_stop_is_an_error(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Chat(ANSWER, finish_reason="SAFETY"))
    message, _ = _error(backends(gemini.settings()))
    assert "finishReason SAFETY" in message


def test_a_silent_server_times_out_with_the_setting_named(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Stall(10))
    message, elapsed = _error(backends(gemini.settings(timeout=1.0)))
    assert "llm.timeout" in message and "1 s" in message and "before answering" in message
    assert 0.9 <= elapsed < 4


def test_drop_mid_answer_is_an_error_not_a_retry(gemini: FakeGemini, backends: Any) -> None:
    first = len(gemini.requests(PATH))
    gemini.push(Chat(ANSWER, chunks=4, drop_after=2))
    message, _ = _error(backends(gemini.settings()))
    assert "dropped mid-answer" in message
    assert len(gemini.requests(PATH)) == first + 1


def test_cancel_mid_stream_is_immediate_and_drops_the_connection(gemini: FakeGemini, backends: Any) -> None:
    gemini.push(Chat(ANSWER, chunks=3, delay=10))
    assert_cancel_mid_stream(gemini, PATH, backends(gemini.settings(timeout=20)), _request())


# ------------------------------------------------------------------------------------ config


def test_taskweaver_google_genai_config_selects_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="weaver.config")
    config = load_config(
        tmp_path,
        {
            "llm.api_type": "google_genai",
            "llm.api_base": gemini.base,
            "llm.google_genai.api_key": "AIza-x",
            "llm.google_genai.model": "gemini-test",
            "llm.google_genai.max_output_tokens": 1000,
            "llm.google_genai.top_k": 1,
            "llm.google_genai.top_p": 0.5,
            "llm.google_genai.temperature": 0.9,
            "llm.google_genai.backup_model": "gemini-pro",
            "llm.google_genai.embedding_model": "embedding-001",
        },
    )
    llm = config.llm
    assert (llm.resolved_api_type, llm.model, llm.max_tokens, llm.top_k, llm.top_p, llm.temperature) == (
        "google_genai",
        "gemini-test",
        1000,
        1,
        0.5,
        0.9,
    )
    assert llm.embedding_model is None  # not Gemini's: Weaver has no Gemini embeddings
    warned = [r.getMessage() for r in caplog.records if r.name == "weaver.config"]
    assert "llm.google_genai.backup_model is ignored: Weaver has no backup model" in " ".join(warned)
    assert "llm.google_genai.embedding_model is ignored: Weaver has no Gemini embeddings" in " ".join(warned)
    create_backend(llm).close()


def test_no_model_is_a_config_error_and_no_key_names_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="llm.api_type google_genai needs llm.model"):
        load_config(tmp_path, {"llm.api_type": "google_genai", "llm.api_key": "k"})
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = LLMSettings(api_type="google_genai", model="gemini-test")
    with pytest.raises(LLMError, match="needs llm.api_key \\(or the GEMINI_API_KEY or GOOGLE_API_KEY variable\\)"):
        create_backend(settings)
    monkeypatch.setenv("GOOGLE_API_KEY", "from-env")
    create_backend(settings).close()


# ------------------------------------------------------------------------------------ whole round


def test_a_whole_round_over_gemini_runs_real_code(gemini: FakeGemini, tmp_path: Path) -> None:
    first = len(gemini.requests(PATH))
    gemini.push(*(Chat(text, chunks=8) for text in squares_answers()))
    llm = {"llm.api_type": "google_genai", "llm.api_base": gemini.base, "llm.api_key": gemini.key}
    rnd = run_squares_round(tmp_path, {**llm, "llm.model": "gemini-test"})
    calls = _calls(gemini, first, 3)
    assert all(c.body["generationConfig"]["responseMimeType"] == "application/json" for c in calls)
    assert "You are the Planner" in calls[0].body["systemInstruction"]["parts"][0]["text"]
    assert all(turn["role"] in ("user", "model") for c in calls for turn in c.body["contents"])
    assert "total=385" in json.dumps(calls[2].body["contents"])  # the Planner saw the kernel's output
    usage = [(c["model"], c["prompt_tokens"], c["completion_tokens"]) for c in rnd.llm_calls]
    assert usage == [("gemini-test-001", 31, 9)] * 3


# ------------------------------------------------------------------------------------ weaver check


def test_weaver_check_passes_against_the_gemini_api(gemini: FakeGemini) -> None:
    from ui.check import run_check

    first = len(gemini.requests())
    gemini.push(Chat("OK"), Chat("OK, fine", chunks=3), Chat('{"ok": true}'))
    report = run_check(gemini.settings())
    assert report.ok, report.lines()
    assert [s.name for s in report.steps] == [
        "config loads",
        "server reachable",
        "key accepted",
        "model exists",
        "chat completion",
        "streaming works",
        "JSON mode works",
    ]
    assert report.steps[3].detail == "gemini-test-001"
    whole, streamed, json_mode = gemini.requests()[first:]
    assert whole.path == "/v1beta/models/gemini-test:generateContent"
    assert streamed.path == json_mode.path == PATH
    assert "responseMimeType" not in streamed.body["generationConfig"]
    assert json_mode.body["generationConfig"]["responseMimeType"] == "application/json"


def test_weaver_check_names_a_refused_key_an_unknown_model_and_a_missing_key(
    gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ui.check import run_check

    report = run_check(gemini.settings(api_key="AIza-wrong"))
    failed = report.failure
    assert failed is not None and (failed.name, failed.key) == ("key accepted", "api_key")
    assert "HTTP 400" in failed.detail and "API key not valid" in failed.detail
    assert [s.status for s in report.steps[-4:]] == ["--"] * 4

    report = run_check(gemini.settings(model="gemini-9"))
    failed = report.failure
    assert failed is not None and (failed.name, failed.key) == ("model exists", "model")

    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    report = run_check(gemini.settings(api_key=None))
    failed = report.failure
    assert failed is not None and (failed.name, failed.key) == ("config loads", "api_key")
    assert "GEMINI_API_KEY" in failed.detail
