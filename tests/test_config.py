"""Config precedence: argument > WEAVER_ env > .env > taskweaver_config.json > default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ConfigError, load_config


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
    assert config.llm.resolved_api_type == "openai"
    assert config.llm.api_base == "http://127.0.0.1:11434/v1"
    assert config.llm.response_format == "json_object"


def test_the_openai_clients_own_key_variable_selects_openai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert load_config(tmp_path).llm.resolved_api_type == "openai"
