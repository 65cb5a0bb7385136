"""Groq, Qwen and ZhipuAI through their OpenAI-compatible endpoints, against the fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cancel import CancelToken
from core.config import load_config
from core.llm.base import ChatRequest, LLMError
from core.llm.compatible import PROVIDERS, CompatibleBackend
from core.llm.factory import create_backend
from tests.llm_server import Answer, ScriptedLLMServer  # llm_server: conftest

pytestmark = pytest.mark.timeout(30)

ANSWER = json.dumps({"thought": "t", "send_to": "User", "message": "hi"})
KEY_VARIABLES = {"groq": "GROQ_API_KEY", "qwen": "DASHSCOPE_API_KEY", "zhipuai": "ZHIPUAI_API_KEY"}


@pytest.mark.parametrize("provider", ["groq", "qwen", "zhipuai"])
def test_each_reaches_the_chat_route_with_its_own_key_variable(
    provider: str, llm_server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLES[provider], f"{provider}-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-leak")
    llm_server.push(Answer(ANSWER, chunks=4, prompt_tokens=9, completion_tokens=3))
    backend = create_backend(llm_server.openai_settings(api_type=provider, api_key=None, model=f"{provider}-model"))
    try:
        assert isinstance(backend, CompatibleBackend) and backend.name == provider
        request = ChatRequest(role="Planner", messages=[{"role": "user", "content": "hi"}])
        chunks = list(backend.stream_chat(request, CancelToken()))
    finally:
        backend.close()

    assert "".join(chunks) == ANSWER
    assert request.record is not None and (request.record.prompt_tokens, request.record.completion_tokens) == (9, 3)
    [seen] = llm_server.wait_for_requests(1)
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {provider}-secret"
    assert seen.body["model"] == f"{provider}-model" and seen.body["stream"] is True
    assert seen.body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("provider", "base"),
    [
        ("groq", "https://api.groq.com/openai/v1/"),
        ("qwen", "https://dashscope.aliyuncs.com/compatible-mode/v1/"),
        ("zhipuai", "https://open.bigmodel.cn/api/paas/v4/"),
    ],
)
def test_default_api_base_is_the_vendors(
    provider: str, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path, {"llm.api_type": provider, f"llm.{provider}.api_key": "k", "llm.model": "m"})
    backend = create_backend(config.llm)
    try:
        assert str(backend.client.base_url) == base  # type: ignore[attr-defined]
        assert backend.where() == base.rstrip("/")  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_a_missing_key_is_named_and_the_openai_key_is_never_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-leak")
    with pytest.raises(LLMError, match="llm.api_type groq needs llm.api_key \\(or the GROQ_API_KEY variable\\)"):
        create_backend(load_config(None, {"llm.api_type": "groq"}).llm)


def test_sampling_keys_follow_what_each_vendor_accepts(
    llm_server: ScriptedLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    tuned = dict(top_p=0.8, top_k=20, seed=3, stop_token=["<END>"], frequency_penalty=0.1, presence_penalty=0.2)
    bodies = {}
    for provider in ("qwen", "zhipuai"):
        llm_server.push(Answer(ANSWER))
        backend = create_backend(llm_server.openai_settings(api_type=provider, **tuned))
        try:
            with caplog.at_level("WARNING", logger="weaver.llm"):
                list(backend.stream_chat(ChatRequest(role="Planner", messages=[]), CancelToken()))
        finally:
            backend.close()
        bodies[provider] = llm_server.wait_for_requests(len(bodies) + 1)[-1].body

    assert bodies["qwen"]["top_k"] == 20 and bodies["qwen"]["seed"] == 3 and "frequency_penalty" not in bodies["qwen"]
    assert {k: bodies["zhipuai"].get(k) for k in ("top_p", "stop", "seed", "top_k")} == {
        "top_p": 0.8,
        "stop": ["<END>"],
        "seed": None,
        "top_k": None,
    }
    warned = {r.getMessage() for r in caplog.records}
    assert "llm.seed is not sent: the zhipuai API has no such setting" in warned
    assert "llm.frequency_penalty is not sent: the qwen API has no such setting" in warned
    assert set(PROVIDERS) == {"groq", "qwen", "zhipuai"}


def test_weaver_check_per_vendor(llm_server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_check import completion
    from ui.check import run_check

    monkeypatch.setenv("DASHSCOPE_API_KEY", "dash-key")
    llm_server.push(completion(), Answer("OK, fine", chunks=3), Answer('{"ok": true}', chunks=3))
    report = run_check(llm_server.openai_settings(api_type="qwen", api_key=None))
    assert report.ok, report.lines()
    assert report.target.startswith("qwen model 'test-model' at http://127.0.0.1:")
    assert {r.headers["authorization"] for r in llm_server.wait_for_requests(3)} == {"Bearer dash-key"}

    monkeypatch.delenv("ZHIPUAI_API_KEY", raising=False)
    missing = run_check(llm_server.openai_settings(api_type="zhipuai", api_key=None))
    assert missing.failure is not None and missing.failure.key == "api_key"
    assert "ZHIPUAI_API_KEY" in missing.failure.detail
