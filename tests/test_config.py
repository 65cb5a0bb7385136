"""Config precedence: argument > WEAVER_ env > .env > taskweaver_config.json > default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import load_config
from core.errors import ConfigError


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env from elsewhere
    for name in ("WEAVER_LLM__MODEL", "WEAVER_LLM__API_KEY", "WEAVER_EXECUTION__TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps({"llm.model": "from-json", "llm.api_key": "sk-json", "execution.timeout": 7, "planner.unknown": 1})
    )
    return tmp_path


def test_taskweaver_flat_keys_are_read(app_dir: Path) -> None:
    config = load_config(app_dir)
    assert config.llm.model == "from-json"
    assert config.llm.api_key.get_secret_value() == "sk-json"
    assert config.llm.resolved_api_type == "openai"  # a key and no explicit type means OpenAI
    assert config.execution.timeout == 7


def test_env_file_beats_json_and_env_beats_env_file(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (app_dir / ".env").write_text("WEAVER_LLM__MODEL=from-dotenv\n")
    assert load_config(app_dir).llm.model == "from-dotenv"
    monkeypatch.setenv("WEAVER_LLM__MODEL", "from-env")
    assert load_config(app_dir).llm.model == "from-env"
    assert load_config(app_dir, {"llm.model": "from-arg"}).llm.model == "from-arg"
    assert load_config(app_dir).llm.api_key.get_secret_value() == "sk-json"  # other keys still merge


def test_defaults_are_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path)
    assert config.llm.resolved_api_type == "offline"
    assert config.session.max_internal_chat_round_num == 10
    assert config.code_interpreter.max_retry_count == 3


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"llm.timeout": "soon"}, "llm.timeout"),
        ({"llm.api_type": "gpt"}, "llm.api_type"),
        ({"execution.timeout": -1}, "execution.timeout"),
    ],
)
def test_a_bad_value_fails_with_one_message_naming_the_key(app_dir: Path, overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(app_dir, overrides)


def test_a_broken_json_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taskweaver_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="taskweaver_config.json"):
        load_config(tmp_path)


def test_taskweaver_llm_values_are_understood(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        tmp_path,
        {"llm.api_type": "ollama", "llm.api_base": "http://127.0.0.1:11434", "llm.response_format": "json_schema"},
    )
    assert config.llm.resolved_api_type == "ollama"  # its native API (tests/test_llm_ollama.py)
    assert config.llm.api_base == "http://127.0.0.1:11434"
    assert config.llm.response_format == "json_object"


def test_the_openai_clients_own_key_variable_selects_openai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert load_config(tmp_path).llm.resolved_api_type == "openai"


# --------------------------------------------------------------------------- TaskWeaver's keys


def test_taskweaver_keys_are_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps(
            {
                "execution_service.kernel_mode": "container",
                "plugin.base_path": "${AppBaseDir}/my_plugins",
                "llm.api_type": "azure",
                "llm.azure.api_key": "sk-azure",
                "llm.azure.model": "deployment-1",
                "llm.response_format": None,
                "code_interpreter.allowed_modules": "pandas, numpy",
                "use_local_uri": False,
            }
        )
    )
    config = load_config(tmp_path)
    assert config.execution.sandbox == "bwrap"  # container mode isolates code: the sandbox is required
    assert config.plugin_dir == tmp_path / "my_plugins"
    assert config.llm.api_key.get_secret_value() == "sk-azure" and config.llm.model == "deployment-1"
    assert config.llm.response_format == "text"
    assert config.code_interpreter.allowed_modules == ["pandas", "numpy"]
    assert config.code_interpreter.use_local_uri is False
    assert load_config(tmp_path, {"execution_service.kernel_mode": "local"}).execution.sandbox == "auto"
    # Weaver's own key, where given, wins over the mapped one.
    assert load_config(tmp_path, {"execution.sandbox": "none"}).execution.sandbox == "none"
    with pytest.raises(ConfigError, match="kernel_mode"):
        load_config(tmp_path, {"execution_service.kernel_mode": "docker"})


def test_taskweaver_sampling_keys_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps(
            {
                "llm.api_type": "openai",
                "llm.top_p": 0.8,
                "llm.seed": 3,
                "llm.stop_token": "<|end|>",
                "llm.openai.frequency_penalty": 0.1,
                "llm.max_output_tokens": 512,
            }
        )
    )
    llm = load_config(tmp_path).llm
    assert (llm.top_p, llm.seed, llm.stop_token, llm.frequency_penalty) == (0.8, 3, ["<|end|>"], 0.1)
    assert llm.max_tokens == 512  # TaskWeaver's max_output_tokens
    with pytest.raises(ConfigError, match="top_p"):
        load_config(tmp_path, {"llm.top_p": 1.5})


def test_verification_defaults_are_taskweavers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_config(tmp_path).code_interpreter
    assert settings.code_verification_on is False
    assert settings.allowed_modules[:3] == ["pandas", "matplotlib", "numpy"]
    assert {"eval", "exec", "open", "__import__", "compile"} <= set(settings.blocked_functions)
    assert settings.use_local_uri is True


def test_an_ignored_key_is_warned_about_once_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps(
            {"llm.aad_token_cache_path": "cache/a.bin", "recepta.llm_alias": "fast", "session.roles": ["planner"]}
        )
    )
    with caplog.at_level("WARNING", logger="weaver.config"):
        load_config(tmp_path, {"llm.aad_token_cache_path": "again", "llm.azure.model": "x", "nonsense.key": 1})
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if line.startswith("llm.aad_token_cache_path")] == [
        "llm.aad_token_cache_path is ignored: azure-identity keeps the Azure AD token in memory for the life of "
        "the process (no token file)"
    ]
    assert any("recepta.llm_alias is ignored" in line and "not available" in line for line in lines)
    assert any("llm.azure.model is ignored: llm.api_type is 'openai'" in line for line in lines)
    assert any(line.startswith("nonsense.key is ignored") for line in lines)
    assert not any("session.roles" in line for line in lines)  # honoured: the Planner alone (tests/test_roles.py)
    assert len(lines) == 4


def test_logging_keys_write_the_app_log_to_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from core import TaskWeaverApp

    monkeypatch.chdir(tmp_path)
    app = TaskWeaverApp(tmp_path, use_local_uri=False, config={"logging.log_folder": "logs", "execution.pool_size": 0})
    try:
        assert app.config.code_interpreter.use_local_uri is False
        logging.getLogger("weaver.test").warning("written to the file")
    finally:
        app.stop()
    assert "written to the file" in (tmp_path / "logs" / "task_weaver.log").read_text()
    logging.getLogger("weaver.test").warning("after stop")
    assert "after stop" not in (tmp_path / "logs" / "task_weaver.log").read_text()
