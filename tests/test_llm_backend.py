"""OpenAIBackend against a real scripted HTTP server: streaming, retries, timeouts, cancel."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMError
from core.llm.factory import create_backend
from core.llm.openai_backend import OpenAIBackend
from tests.llm_server import Answer, Drop, Raw, ScriptedLLMServer, Stall, Status  # llm_server: conftest

pytestmark = pytest.mark.timeout(30)

ANSWER = json.dumps({"thought": "add them", "send_to": "User", "message": "1 + 1 = 2 ✓"})
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]


def _request(json_mode: bool = True) -> ChatRequest:
    return ChatRequest(role="Planner", messages=list(MESSAGES), json_mode=json_mode)


def _run(backend: OpenAIBackend, request: ChatRequest | None = None) -> tuple[list[str], ChatRequest]:
    request = request or _request()
    chunks = list(backend.stream_chat(request, CancelToken()))
    return chunks, request


def _error(backend: OpenAIBackend) -> tuple[str, float]:
    """The LLMError message of a failing call, and how long the failure took."""
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        _run(backend)
    return str(info.value), time.monotonic() - started


@pytest.fixture
def backends() -> Any:
    """Backends made by a test, closed at teardown."""
    made: list[OpenAIBackend] = []

    def make(settings: LLMSettings) -> OpenAIBackend:
        made.append(OpenAIBackend(settings))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


# ------------------------------------------------------------------------------------ happy path


def test_chunks_arrive_in_order_and_usage_is_recorded(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER, chunks=6, prompt_tokens=42, completion_tokens=17))
    chunks, request = _run(backends(llm_server.openai_settings()))

    assert len(chunks) == 6
    assert "".join(chunks) == ANSWER
    record = request.record
    assert record is not None
    assert (record.prompt_tokens, record.completion_tokens) == (42, 17)
    assert record.model == "scripted-model"
    assert record.attempts == 1
    assert record.first_token_s is not None and 0 <= record.first_token_s <= record.latency_s


def test_request_carries_model_messages_stream_and_json_format(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER), Answer(ANSWER))
    backend = backends(llm_server.openai_settings(temperature=0.3, max_tokens=99))
    _run(backend)
    _run(backend, _request(json_mode=False))

    first, second = llm_server.wait_for_requests(2)
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer test-key"
    assert first.body["model"] == "test-model"
    assert first.body["messages"] == MESSAGES
    assert first.body["stream"] is True
    assert first.body["stream_options"] == {"include_usage": True}
    assert first.body["response_format"] == {"type": "json_object"}
    assert (first.body["temperature"], first.body["max_tokens"]) == (0.3, 99)
    assert "response_format" not in second.body


def test_sampling_keys_reach_the_request_and_unset_ones_are_not_sent(
    llm_server: ScriptedLLMServer, backends: Any, caplog: pytest.LogCaptureFixture
) -> None:
    llm_server.push(Answer(ANSWER), Answer(ANSWER), Answer(ANSWER))
    tuned = llm_server.openai_settings(
        top_p=0.9, top_k=5, seed=7, stop_token="<END>", frequency_penalty=0.5, presence_penalty=-0.25
    )
    with caplog.at_level("WARNING", logger="weaver.llm"):
        _run(backends(tuned))
        _run(backends(tuned))
    _run(backends(llm_server.openai_settings()))

    first, _, plain = llm_server.wait_for_requests(3)
    assert first.body["top_p"] == 0.9
    assert first.body["seed"] == 7
    assert first.body["stop"] == ["<END>"]
    assert (first.body["frequency_penalty"], first.body["presence_penalty"]) == (0.5, -0.25)
    assert "top_k" not in first.body  # the chat completions API has none: warned, not sent
    top_k_warnings = [r for r in caplog.records if "llm.top_k is not sent" in r.getMessage()]
    assert len(top_k_warnings) == 1, "warned once, not at every call"
    for key in ("top_p", "seed", "stop", "frequency_penalty", "presence_penalty", "top_k"):
        assert key not in plain.body


def test_text_response_format_setting_sends_no_response_format(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER))
    _run(backends(llm_server.openai_settings(response_format="text")))
    [req] = llm_server.wait_for_requests(1)
    assert "response_format" not in req.body


def test_azure_uses_deployment_path_api_version_and_api_key_header(
    llm_server: ScriptedLLMServer, backends: Any
) -> None:
    llm_server.push(Answer(ANSWER), Answer(ANSWER))
    chunks, _ = _run(backends(llm_server.azure_settings()))
    assert "".join(chunks) == ANSWER
    _run(backends(llm_server.azure_settings(azure_deployment=None, model="gpt-4o")))

    first, second = llm_server.wait_for_requests(2)
    assert first.path == "/openai/deployments/my-deployment/chat/completions"
    assert first.query == {"api-version": "2024-06-01"}
    assert first.headers["api-key"] == "azure-key"
    assert first.body["stream"] is True
    assert second.path == "/openai/deployments/gpt-4o/chat/completions"  # deployment defaults to model


def test_rejected_optional_parameter_is_dropped_and_remembered(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(
        Status(400, "Unrecognized request argument supplied: stream_options"),
        Answer(ANSWER),
        Answer(ANSWER),
    )
    backend = backends(llm_server.openai_settings(max_retries=0))
    chunks, request = _run(backend)
    assert "".join(chunks) == ANSWER
    assert request.record is not None and request.record.attempts == 2
    _run(backend)

    first, retried, later = llm_server.wait_for_requests(3)
    assert "stream_options" in first.body
    assert "stream_options" not in retried.body and "stream_options" not in later.body
    assert later.body["response_format"] == {"type": "json_object"}


# ------------------------------------------------------------------------------------ failures


def test_429_is_retried_after_retry_after(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Status(429, "slow down", headers={"Retry-After": "1"}), Answer(ANSWER))
    started = time.monotonic()
    chunks, request = _run(backends(llm_server.openai_settings(retry_backoff=0.01)))
    elapsed = time.monotonic() - started

    assert "".join(chunks) == ANSWER
    assert request.record is not None and request.record.attempts == 2
    assert 0.9 <= elapsed < 5, "Retry-After: 1 must be waited for, not the 0.01 s backoff"


def test_500_until_retries_run_out(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(*[Status(500, "upstream exploded")] * 3)
    message, elapsed = _error(backends(llm_server.openai_settings(max_retries=2, retry_backoff=0.05)))

    assert "HTTP 500" in message and "upstream exploded" in message
    assert "3 attempts" in message
    assert "Traceback" not in message
    assert len(llm_server.requests) == 3
    assert elapsed < 5


def test_401_is_not_retried(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Status(401, "Incorrect API key provided"), Answer(ANSWER))
    message, _ = _error(backends(llm_server.openai_settings()))
    assert "HTTP 401" in message and "llm.api_key" in message
    assert len(llm_server.requests) == 1


def test_stall_before_answer_times_out(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Stall(10))
    message, elapsed = _error(backends(llm_server.openai_settings(timeout=1.0)))

    assert "timeout" in message and "1 s" in message
    assert 0.9 <= elapsed < 4
    assert len(llm_server.requests) == 1, "a read timeout is not retried"


def test_stall_mid_answer_times_out(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER, chunks=3, delay=10))
    backend = backends(llm_server.openai_settings(timeout=1.0))
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(LLMError, match="mid-answer") as info:
        for chunk in backend.stream_chat(_request(), CancelToken()):
            received.append(chunk)
    assert "timeout" in str(info.value)
    assert len(received) == 1
    assert time.monotonic() - started < 4


def test_connection_dropped_before_first_chunk_is_retried(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Drop(), Answer(ANSWER, drop_after=0), Answer(ANSWER, chunks=2))
    chunks, request = _run(backends(llm_server.openai_settings(max_retries=2)))

    assert "".join(chunks) == ANSWER
    assert request.record is not None and request.record.attempts == 3


def test_connection_dropped_mid_answer_is_an_error(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER, chunks=4, drop_after=2), Answer(ANSWER))
    backend = backends(llm_server.openai_settings())
    received: list[str] = []
    with pytest.raises(LLMError, match="dropped mid-answer"):
        for chunk in backend.stream_chat(_request(), CancelToken()):
            received.append(chunk)
    assert len(received) == 2
    assert len(llm_server.requests) == 1, "chunks were already yielded: no transparent retry"


def test_connection_refused_fails_quickly(backends: Any) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = LLMSettings(
        api_type="openai",
        api_base=f"http://127.0.0.1:{port}/v1",
        api_key="k",
        max_retries=2,
        retry_backoff=0.01,
        connect_timeout=1.0,
    )
    message, elapsed = _error(backends(settings))
    assert "could not connect" in message and str(port) in message
    assert "3 attempts" in message
    assert elapsed < 3


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<html>not an API</html>", "no completion data"),
        ("data: {this is not json\n\n", "malformed stream"),
    ],
)
def test_garbage_reply_is_a_clear_error(llm_server: ScriptedLLMServer, backends: Any, body: str, expected: str) -> None:
    llm_server.push(Raw(body, content_type="text/html"))
    message, _ = _error(backends(llm_server.openai_settings()))
    assert expected in message


# ------------------------------------------------------------------------------------ cancel


def test_cancel_from_consuming_loop_drops_the_connection(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER, chunks=20, delay=0.3))
    backend = backends(llm_server.openai_settings())
    token = CancelToken()
    received: list[str] = []
    with pytest.raises(RoundCancelled):
        for chunk in backend.stream_chat(_request(), token):
            received.append(chunk)
            cancelled_at = time.monotonic()
            token.cancel()
    assert time.monotonic() - cancelled_at < 0.2
    assert len(received) == 1
    [req] = llm_server.wait_for_requests(1)
    assert req.disconnected.wait(2), "the server should see the client hang up"


def test_cancel_from_another_thread_while_blocked_mid_stream(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Answer(ANSWER, chunks=3, delay=10))
    backend = backends(llm_server.openai_settings(timeout=20))
    token = CancelToken()
    first_chunk = threading.Event()
    canceller = threading.Thread(target=lambda: first_chunk.wait(5) and token.cancel())
    canceller.start()
    started = time.monotonic()
    with pytest.raises(RoundCancelled):
        for _ in backend.stream_chat(_request(), token):
            first_chunk.set()  # the next read blocks for 10 s unless cancel unblocks it
    canceller.join()
    assert time.monotonic() - started < 2
    [req] = llm_server.wait_for_requests(1)
    assert req.disconnected.wait(2), "the blocked read's connection should be dropped"


def test_cancel_while_waiting_for_headers(llm_server: ScriptedLLMServer, backends: Any) -> None:
    llm_server.push(Stall(10))
    backend = backends(llm_server.openai_settings(timeout=20))
    token = CancelToken()
    canceller = threading.Thread(target=lambda: llm_server.wait_for_requests(1) and token.cancel())
    canceller.start()
    started = time.monotonic()
    with pytest.raises(RoundCancelled):
        list(backend.stream_chat(_request(), token))
    canceller.join()
    assert time.monotonic() - started < 2


def test_already_cancelled_token_sends_nothing(llm_server: ScriptedLLMServer, backends: Any) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(RoundCancelled):
        list(backends(llm_server.openai_settings()).stream_chat(_request(), token))
    assert llm_server.requests == []


# ------------------------------------------------------------------------------------ factory


def test_factory_picks_backend_by_api_type(llm_server: ScriptedLLMServer) -> None:
    openai_backend = create_backend(llm_server.openai_settings())
    azure_backend = create_backend(llm_server.azure_settings())
    implicit = create_backend(LLMSettings(api_base=llm_server.base_url))
    try:
        assert isinstance(openai_backend, OpenAIBackend) and openai_backend.name == "openai"
        assert isinstance(azure_backend, OpenAIBackend) and azure_backend.name == "azure"
        assert isinstance(implicit, OpenAIBackend)
    finally:
        for backend in (openai_backend, azure_backend, implicit):
            backend.close()


def test_factory_offline() -> None:
    from core.llm.offline import OfflineBackend  # a broken module fails here, it is not skipped

    assert isinstance(create_backend(LLMSettings(api_type="offline")), OfflineBackend)
