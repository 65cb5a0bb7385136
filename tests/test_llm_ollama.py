"""OllamaBackend against a real fake Ollama server (native NDJSON ``/api/chat``): streaming, usage,
the request body, errors, timeouts, cancel, and a whole round through the engine."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings, load_config
from core.llm.base import ChatRequest
from core.llm.factory import create_backend
from core.llm.ollama_backend import OllamaBackend
from tests.llm_cases import (
    assert_cancel_mid_stream,
    backends_fixture,  # noqa: F401  (fixture)
    error_of,
    run_squares_round,
    squares_answers,
)
from tests.ollama_server import Chat, Error, FakeOllama, Stall, ollama_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)

ANSWER = json.dumps({"thought": "add them", "send_to": "User", "message": "1 + 1 = 2"})
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]


@pytest.fixture(autouse=True)
def all_replies_used(ollama: FakeOllama) -> Iterator[None]:
    yield
    assert ollama.pending == 0, "a scripted reply was never asked for"


def _request(json_mode: bool = True) -> ChatRequest:
    return ChatRequest(role="Planner", messages=list(MESSAGES), json_mode=json_mode)


def _error(backend: OllamaBackend) -> tuple[str, float]:
    return error_of(backend, _request())


# ------------------------------------------------------------------------------------ happy path


def test_chunks_stream_in_order_and_usage_comes_from_the_eval_counts(ollama: FakeOllama, backends: Any) -> None:
    ollama.push(Chat(ANSWER, chunks=5, prompt_eval_count=42, eval_count=17, model="llama3.2:3b"))
    request = _request()
    chunks = list(backends(ollama.settings()).stream_chat(request, CancelToken()))

    assert len(chunks) == 5 and "".join(chunks) == ANSWER
    record = request.record
    assert record is not None
    assert (record.prompt_tokens, record.completion_tokens) == (42, 17)
    assert record.model == "llama3.2:3b"
    assert record.first_token_s is not None and record.attempts == 1


def test_request_body_has_format_json_and_sampling_options(ollama: FakeOllama, backends: Any) -> None:
    first = len(ollama.requests("/api/chat"))
    ollama.push(Chat(ANSWER), Chat("plain words"))
    backend = backends(
        ollama.settings(
            api_base=ollama.base + "/v1/",  # a config written for Ollama's OpenAI-compatible address still works
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
    list(backend.stream_chat(_request(json_mode=False), CancelToken()))

    json_call, text_call = ollama.wait_for("/api/chat", first + 2)[first:]
    body = json_call.body
    assert (body["model"], body["messages"], body["stream"], body["format"]) == ("llama3.2", MESSAGES, True, "json")
    assert body["options"] == {
        "temperature": 0.2,
        "num_predict": 64,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": ["<END>"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
    }
    assert "format" not in text_call.body
    assert "authorization" not in json_call.headers  # no key configured: none sent


def test_unset_sampling_keys_are_not_sent(ollama: FakeOllama, backends: Any) -> None:
    first = len(ollama.requests("/api/chat"))
    ollama.push(Chat(ANSWER))
    list(backends(ollama.settings(response_format="text", api_key="proxy-key")).stream_chat(_request(), CancelToken()))
    [seen] = ollama.wait_for("/api/chat", first + 1)[first:]
    assert seen.body["options"] == {"temperature": 0.0}
    assert "format" not in seen.body  # llm.response_format text
    assert seen.headers["authorization"] == "Bearer proxy-key"


# ------------------------------------------------------------------------------------ failures


def test_missing_model_says_to_pull_it(ollama: FakeOllama, backends: Any) -> None:
    ollama.push(Error(404, 'model "llama9" not found, try pulling it first'))
    message, _ = _error(backends(ollama.settings(model="llama9")))
    assert "no model 'llama9'" in message and "ollama pull llama9" in message and "llm.model" in message


def test_500_is_retried_then_the_answer_streams(ollama: FakeOllama, backends: Any) -> None:
    ollama.push(Error(500, "runner crashed"), Chat(ANSWER))
    request = _request()
    chunks = list(backends(ollama.settings()).stream_chat(request, CancelToken()))
    assert "".join(chunks) == ANSWER
    assert request.record is not None and request.record.attempts == 2


def test_500_until_retries_run_out(ollama: FakeOllama, backends: Any) -> None:
    ollama.push(*[Error(503, "busy")] * 2)
    message, _ = _error(backends(ollama.settings(max_retries=1)))
    assert "HTTP 503" in message and "busy" in message and "2 attempts" in message


def test_error_line_mid_stream_is_reported(ollama: FakeOllama, backends: Any) -> None:
    ollama.push(Chat(ANSWER, chunks=4, error_after=2))
    message, _ = _error(backends(ollama.settings()))
    assert "reported an error" in message and "scripted failure mid-stream" in message


def test_stall_times_out_with_the_setting_named(ollama: FakeOllama, backends: Any) -> None:
    ollama.push(Stall(10))
    message, elapsed = _error(backends(ollama.settings(timeout=1.0)))
    assert "llm.timeout" in message and "1 s" in message and "before answering" in message
    assert 0.9 <= elapsed < 4


def test_drop_mid_answer_is_an_error_not_a_retry(ollama: FakeOllama, backends: Any) -> None:
    first = len(ollama.requests("/api/chat"))
    ollama.push(Chat(ANSWER, chunks=4, drop_after=2))
    message, _ = _error(backends(ollama.settings()))
    assert "dropped mid-answer" in message
    assert len(ollama.requests("/api/chat")) == first + 1


def test_connection_refused_names_the_server(backends: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = LLMSettings(api_type="ollama", api_base=f"http://127.0.0.1:{port}", max_retries=1, retry_backoff=0.01)
    message, elapsed = _error(backends(settings))
    assert "could not connect to the Ollama server" in message and str(port) in message and "2 attempts" in message
    assert elapsed < 3


def test_cancel_while_blocked_mid_stream_is_immediate_and_drops_the_connection(
    ollama: FakeOllama, backends: Any
) -> None:
    ollama.push(Chat(ANSWER, chunks=3, delay=10))
    assert_cancel_mid_stream(ollama, "/api/chat", backends(ollama.settings(timeout=20)), _request())


def test_cancel_while_the_model_loads_returns_at_once(ollama: FakeOllama, backends: Any) -> None:
    """No byte yet (Ollama loading a model): the caller is released at once all the same."""
    first = len(ollama.requests("/api/chat"))
    ollama.push(Stall(10))
    backend = backends(ollama.settings(timeout=20))
    token = CancelToken()
    canceller = threading.Thread(target=lambda: ollama.wait_for("/api/chat", first + 1) and token.cancel())
    canceller.start()
    started = time.monotonic()
    with pytest.raises(RoundCancelled):
        list(backend.stream_chat(_request(), token))
    canceller.join()
    assert time.monotonic() - started < 2


# ------------------------------------------------------------------------------------ config


def test_taskweaver_ollama_config_selects_the_native_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        tmp_path,
        {"llm.api_type": "ollama", "llm.api_base": "http://127.0.0.1:11434", "llm.ollama.model": "llama3.2:13b"},
    )
    assert config.llm.resolved_api_type == "ollama"
    assert config.llm.model == "llama3.2:13b"
    backend = create_backend(config.llm)
    try:
        assert isinstance(backend, OllamaBackend) and backend.base == "http://127.0.0.1:11434"
    finally:
        backend.close()


# ------------------------------------------------------------------------------------ whole round


def test_a_whole_round_over_ollama_runs_real_code(ollama: FakeOllama, tmp_path: Path) -> None:
    first = len(ollama.requests("/api/chat"))
    ollama.push(*(Chat(text, chunks=8) for text in squares_answers()))
    run_squares_round(tmp_path, {"llm.api_type": "ollama", "llm.api_base": ollama.base, "llm.model": "llama3.2"})
    calls = ollama.wait_for("/api/chat", first + 3)[first:]
    assert all(c.body["format"] == "json" and c.body["stream"] is True for c in calls)
    assert "You are the Planner" in calls[0].body["messages"][0]["content"]
    assert "total=385" in json.dumps(calls[2].body["messages"])  # the Planner saw the kernel's output


# ------------------------------------------------------------------------------------ weaver check


def test_weaver_check_passes_against_ollama(ollama: FakeOllama) -> None:
    from ui.check import run_check

    first = len(ollama.requests("/api/chat"))
    ollama.push(Chat("OK"), Chat("OK, fine", chunks=3), Chat('{"ok": true}'))
    report = run_check(ollama.settings())
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
    whole, streamed, json_mode = ollama.wait_for("/api/chat", first + 3)[first:]
    assert whole.body["stream"] is False and streamed.body["stream"] is True
    assert json_mode.body["format"] == "json" and "format" not in streamed.body


def test_weaver_check_names_a_model_that_is_not_pulled(ollama: FakeOllama) -> None:
    from ui.check import run_check

    report = run_check(ollama.settings(model="llama9"))
    assert not report.ok
    failed = report.failure
    assert failed is not None and failed.name == "model exists" and failed.key == "model"
    assert "ollama pull llama9" in failed.detail
    assert [s.status for s in report.steps[-3:]] == ["--", "--", "--"]
