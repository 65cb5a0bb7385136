"""``weaver check`` against the scripted OpenAI-compatible server: the verdict, the key named, the exit code."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.llm_server import Answer, Raw, ScriptedLLMServer, Status
from ui.check import run_check, run_check_async
from ui.cli import main

pytestmark = pytest.mark.timeout(60)


def completion(text: str = "OK", model: str = "scripted-model") -> Raw:
    """A non-streamed chat completion, as the check's first request expects."""
    body = {
        "id": "chatcmpl-check",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    return Raw(json.dumps(body), content_type="application/json")


def app_dir(tmp_path: Path, **config: Any) -> str:
    values = {"llm.api_type": "openai", "llm.api_key": "test-key", "llm.model": "scripted", "llm.timeout": 5}
    values.update(config)
    (tmp_path / "taskweaver_config.json").write_text(json.dumps(values))
    return str(tmp_path)


def check(folder: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--app-dir", folder])
    return code, capsys.readouterr().out


def test_a_working_server_passes(tmp_path: Path, llm_server: ScriptedLLMServer, capsys: Any) -> None:
    llm_server.push(completion(), Answer("OK, fine", chunks=3), Answer('{"ok": true}', chunks=3))
    code, out = check(app_dir(tmp_path, **{"llm.api_base": llm_server.base_url}), capsys)
    assert code == 0, out
    for step in ("server reachable", "key accepted", "model exists", "chat completion", "streaming works"):
        assert f"ok    {step}" in out, out
    assert "ok    JSON mode works" in out and "PASSED: Model connection OK" in out
    plain, streamed, json_mode = llm_server.wait_for_requests(3)
    assert plain.body["model"] == "scripted" and "stream" not in plain.body
    assert streamed.body["stream"] is True and "response_format" not in streamed.body
    assert json_mode.body["response_format"] == {"type": "json_object"}


def test_unreachable_server_names_api_base(tmp_path: Path, capsys: Any) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out = check(app_dir(tmp_path, **{"llm.api_base": f"http://127.0.0.1:{port}/v1"}), capsys)
    assert code == 1
    assert f"FAIL  server reachable: cannot connect to 127.0.0.1:{port}" in out and "llm.api_base" in out
    assert "--    key accepted: not checked" in out and out.strip().splitlines()[-1].startswith("FAILED:")


def test_a_refused_key_names_api_key(tmp_path: Path, llm_server: ScriptedLLMServer, capsys: Any) -> None:
    llm_server.push(Status(401, "Incorrect API key provided"))
    code, out = check(app_dir(tmp_path, **{"llm.api_base": llm_server.base_url}), capsys)
    assert code == 1
    assert "FAIL  key accepted: the server refused the key (HTTP 401" in out and "change llm.api_key" in out
    assert "--    streaming works: not checked" in out
    assert len(llm_server.requests) == 1


def test_an_unknown_model_names_llm_model(tmp_path: Path, llm_server: ScriptedLLMServer, capsys: Any) -> None:
    llm_server.push(Status(404, "The model `scripted` does not exist or you do not have access to it."))
    code, out = check(app_dir(tmp_path, **{"llm.api_base": llm_server.base_url}), capsys)
    assert code == 1
    assert "ok    key accepted" in out
    assert "FAIL  model exists: model 'scripted' not found (HTTP 404" in out and "change llm.model" in out


def test_no_json_mode_names_response_format(tmp_path: Path, llm_server: ScriptedLLMServer, capsys: Any) -> None:
    llm_server.push(completion(), Answer("OK", chunks=2), Status(400, "response_format is not supported"))
    code, out = check(app_dir(tmp_path, **{"llm.api_base": llm_server.base_url}), capsys)
    assert code == 1
    assert "ok    streaming works" in out
    assert "FAIL  JSON mode works: the server refused JSON mode (HTTP 400" in out
    assert 'set llm.response_format to "text"' in out


def test_json_mode_not_used_is_not_checked(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    from core.config import load_config

    llm_server.push(completion(), Answer("OK", chunks=2))
    folder = app_dir(tmp_path, **{"llm.api_base": llm_server.base_url, "llm.response_format": "text"})
    report = run_check(load_config(Path(folder)))
    assert report.ok and "--    JSON mode works: not used" in "\n".join(report.lines())
    assert report.summary.startswith("Model connection OK") and report.latency_s is not None


def test_offline_says_so_and_passes(tmp_path: Path, capsys: Any) -> None:
    code, out = check(app_dir(tmp_path, **{"llm.api_type": "offline"}), capsys)
    assert code == 0 and "Offline mode" in out


def test_a_bad_config_fails_naming_the_key(tmp_path: Path, capsys: Any) -> None:
    code, out = check(app_dir(tmp_path, **{"llm.temperature": 9}), capsys)
    assert code == 1 and "config loads" in out and "llm.temperature" in out


def test_async_form_for_the_web_ui(tmp_path: Path) -> None:
    import asyncio

    from core.config import load_config

    report = asyncio.run(run_check_async(load_config(Path(app_dir(tmp_path, **{"llm.api_type": "offline"})))))
    assert report.ok and report.offline


def test_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "check", "--app-dir", app_dir(tmp_path, **{"llm.api_type": "offline"})],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0 and "PASSED" in done.stdout
    probe = "import sys, ui.check; assert 'chainlit' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1]).returncode == 0


def test_each_role_model_is_checked_on_its_own_server(
    tmp_path: Path, llm_server: ScriptedLLMServer, capsys: Any
) -> None:
    """A role with its own model (``code_generator.llm_alias``) gets its own verdict, from its server;
    the run fails when that model fails, even though the primary one passes."""
    other = ScriptedLLMServer().start()
    try:
        llm_server.push(completion(), Answer("OK, fine", chunks=3), Answer('{"ok": true}', chunks=3))
        other.push(Status(401, "bad key"))
        folder = app_dir(
            tmp_path,
            **{
                "llm.api_base": llm_server.base_url,
                "ext_llms.llm_configs": {
                    "coder": {"llm.api_base": other.base_url, "llm.model": "coder-model", "llm.api_key": "other"},
                    "same": {"llm.model": "scripted"},  # the primary model again: checked once
                },
                "code_generator.llm_alias": "coder",
            },
        )
        code, out = check(folder, capsys)
        assert code == 1, out
        assert "PASSED: Model connection OK" in out
        assert "ext_llms.llm_configs.coder (used by code_interpreter):" in out
        assert "openai model 'coder-model' at " + other.base_url in out
        assert "FAIL  key accepted" in out and "llm.api_key" in out
        assert "ext_llms.llm_configs.same" not in out
        [request] = other.wait_for_requests(1)
        assert request.body["model"] == "coder-model" and request.headers["authorization"] == "Bearer other"
    finally:
        other.stop()
