"""Starting Weaver as a newcomer does: a bad file stops the start in one line, colleagues are answered
at the address given with ``--public-url``, and ``weaver --version`` / ``weaver ui --help`` say what
one needs to know.

The servers here listen on 127.0.0.1 only; a colleague's address is played by the ``Host`` and
``Origin`` headers of requests sent to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from tests.conftest import FIXTURE_APP
from tests.processes import stop_process
from tests.ui_harness import REPO_ROOT, free_port, wait_until
from ui.cli import build_parser, main
from ui.public_url import PublicUrlError, parse_public_url, public_url_env, wildcard_advice
from ui.settings import ui_settings
from ui.startup import StartupRefused, check_before_serving

pytestmark = pytest.mark.timeout(120)

BAD_NAME = 'datasets: [{name: "sales 2024", file: sales.csv}]\n'  # the newcomer's own file (H1)
START_LIMIT_S = 15.0  # "within a few seconds", with room for a machine busy with other tests


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEAVER_", "CHAINLIT_"))}
    env.pop("OPENAI_API_KEY", None)
    return {**env, "PYTHONPATH": str(REPO_ROOT), "WEAVER_LLM__API_TYPE": "offline", **extra}


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _bad_datasets(app_dir: Path) -> Path:
    (app_dir / "data").mkdir(parents=True)
    (app_dir / "data" / "sales.csv").write_text("month,revenue\n1,2\n")
    index = app_dir / "data" / "datasets.yaml"
    index.write_text(BAD_NAME)
    return index


def _assert_one_line_refusal(stderr: str, names: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("Weaver UI: ") and names in lines[-1], stderr


# ------------------------------------------------------------------------ a bad file stops the start


def test_the_server_itself_stops_when_its_start_fails_instead_of_serving(tmp_path: Path) -> None:
    """Started without ``weaver ui``'s check (as ``chainlit run`` would), the start-up hook refuses."""
    index = _bad_datasets(tmp_path / "app")
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ui.chainlit_main", "run", "ui/app.py", "--headless", "--port", str(port)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_env(WEAVER_APP_DIR=str(tmp_path / "app")),
        timeout=90,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    _assert_one_line_refusal(done.stderr, str(index))
    assert "Traceback" not in done.stdout and "Your app is available" not in done.stdout + done.stderr
    assert not _listening(port)
    print(f"refused in {time.monotonic() - started:.1f} s")


@pytest.fixture
def clean_ui_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``WEAVER_UI_*`` as a test sets them (the settings are read once per process)."""
    for key in [k for k in os.environ if k.startswith("WEAVER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WEAVER_LLM__API_TYPE", "offline")
    ui_settings.cache_clear()
    yield monkeypatch
    ui_settings.cache_clear()


def _config(app: Path) -> str:
    (app / "taskweaver_config.json").write_text('{"llm.model": "x",\n')
    return "taskweaver_config.json"


def _prompt(app: Path) -> str:
    (app / "taskweaver_config.json").write_text(json.dumps({"planner.prompt_file_path": "planner.yaml"}))
    (app / "planner.yaml").write_text("system: 'Hello {{ no_such_variable }}'\n")
    return "planner.yaml"


def _datasets(app: Path) -> str:
    _bad_datasets(app)
    return "datasets.yaml"


def _plugin(app: Path) -> str:
    (app / "plugins").mkdir()
    (app / "plugins" / "lookup.yaml").write_text("name: lookup\ndescription: [unclosed\n")
    return "lookup.yaml"


def _users(app: Path) -> str:
    (app / "users.json").write_text('{"alice": ')
    return "users.json"


NOT_UTF8 = b"\xff\xfe not UTF-8 \xe9\n"  # what a file saved in another encoding looks like
DEEP_YAML = "description: " + "[" * 5000 + "]" * 5000 + "\n"  # parses only by recursing past Python's limit


def _config_not_utf8(app: Path) -> str:
    (app / "taskweaver_config.json").write_bytes(b'{"llm.model": "caf' + NOT_UTF8 + b'"}')
    return "taskweaver_config.json"


def _plugin_not_utf8(app: Path) -> str:
    (app / "plugins").mkdir()
    (app / "plugins" / "lookup.yaml").write_bytes(b"name: lookup\ndescription: " + NOT_UTF8)
    return "lookup.yaml"


def _plugin_nested_deeply(app: Path) -> str:
    (app / "plugins").mkdir()
    (app / "plugins" / "lookup.yaml").write_text("name: lookup\n" + DEEP_YAML)
    return "lookup.yaml"


def _users_not_an_object(app: Path) -> str:
    (app / "users.json").write_text("[]")
    return "users.json"


BROKEN = [_config, _prompt, _datasets, _plugin, _users]
BROKEN += [_config_not_utf8, _plugin_not_utf8, _plugin_nested_deeply, _users_not_an_object]


@pytest.mark.parametrize("break_file", BROKEN, ids=lambda f: f.__name__[1:])
def test_weaver_ui_with_a_bad_file_stops_at_once_in_one_line(tmp_path: Path, break_file: Callable[[Path], str]) -> None:
    """Each file read at start, broken: ``weaver ui`` exits non-zero within seconds, with one line on
    stderr naming the file and no traceback, and nothing listens on its port."""
    app = tmp_path / "app"
    app.mkdir()
    name = break_file(app)
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "ui", "--port", str(port), "--app-dir", str(app)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(WEAVER_UI_AUTH="password"),  # the mode that reads users.json
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode != 0
    assert took < START_LIMIT_S, f"took {took:.1f} s"
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr  # exactly one line
    _assert_one_line_refusal(done.stderr, name)
    assert "open http" not in done.stdout and not _listening(port)


def _prompt_not_utf8(app: Path) -> str:
    (app / "taskweaver_config.json").write_text(json.dumps({"planner.prompt_file_path": "planner.yaml"}))
    (app / "planner.yaml").write_bytes(b"system: " + NOT_UTF8)
    return "planner.yaml"


def _prompt_nested_deeply(app: Path) -> str:
    (app / "taskweaver_config.json").write_text(json.dumps({"planner.prompt_file_path": "planner.yaml"}))
    (app / "planner.yaml").write_text(DEEP_YAML.replace("description", "system"))
    return "planner.yaml"


def _config_nested_deeply(app: Path) -> str:
    (app / "taskweaver_config.json").write_text('{"llm.model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return "taskweaver_config.json"


def _datasets_not_utf8(app: Path) -> str:
    (app / "data").mkdir()
    (app / "data" / "datasets.yaml").write_bytes(b"datasets: " + NOT_UTF8)
    return "datasets.yaml"


def _datasets_nested_deeply(app: Path) -> str:
    (app / "data").mkdir()
    (app / "data" / "datasets.yaml").write_text(DEEP_YAML.replace("description", "datasets"))
    return "datasets.yaml"


UNREADABLE = [_prompt_not_utf8, _prompt_nested_deeply, _config_nested_deeply, _datasets_not_utf8]
UNREADABLE += [_datasets_nested_deeply, _config_not_utf8, _plugin_not_utf8, _plugin_nested_deeply]


@pytest.mark.parametrize("break_file", UNREADABLE, ids=lambda f: f.__name__[1:])
def test_a_file_that_is_not_text_or_nests_too_deeply_is_refused_in_one_line(
    tmp_path: Path, clean_ui_settings: pytest.MonkeyPatch, break_file: Callable[[Path], str]
) -> None:
    """The same check in-process, for every file it reads: one ``StartupRefused`` line naming the
    file (``weaver check`` and ``weaver chat`` print the same ``ConfigError``), never another error."""
    name = break_file(tmp_path)
    with pytest.raises(StartupRefused) as refused:
        check_before_serving(tmp_path)
    assert name in str(refused.value) and "\n" not in str(refused.value)


def test_the_check_names_the_file_when_a_reader_fails_unforeseen(
    tmp_path: Path, clean_ui_settings: pytest.MonkeyPatch
) -> None:
    """The catch-all in ``check_app_files``: an error no reader foresaw still names the file. Every
    real one found is caught by its reader now, so the surprise is injected into the plugin reader."""
    import core.plugins.spec

    def surprise(path: Path) -> None:
        raise LookupError(f"unforeseen, reading {path.name}")

    clean_ui_settings.setattr(core.plugins.spec, "parse_plugin_yaml", surprise)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "lookup.yaml").write_text("name: lookup\n")
    with pytest.raises(StartupRefused) as refused:
        check_before_serving(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path / 'plugins'} (a plugin file): cannot be read (LookupError")


def test_weaver_check_and_chat_refuse_a_file_that_is_not_text_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ui.console import main as chat_main

    _config_not_utf8(tmp_path)
    assert main(["check", "--app-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "taskweaver_config.json" in out and "Traceback" not in out
    assert chat_main(["--app-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("weaver chat: ") and "taskweaver_config.json" in err and "\n" not in err


def test_the_same_app_folder_unbroken_passes_the_check(tmp_path: Path, clean_ui_settings: pytest.MonkeyPatch) -> None:
    clean_ui_settings.setenv("WEAVER_UI_AUTH", "password")
    shutil.copytree(FIXTURE_APP, tmp_path / "app")  # a plugin, a config
    check_before_serving(tmp_path / "app")


def test_a_bad_web_ui_setting_is_refused_before_serving(tmp_path: Path, clean_ui_settings: pytest.MonkeyPatch) -> None:
    clean_ui_settings.setenv("WEAVER_UI_AUTH", "passwrod")
    with pytest.raises(StartupRefused, match="WEAVER_UI_AUTH"):
        check_before_serving(tmp_path)


# ------------------------------------------------------------------------ colleagues: --public-url


def test_a_public_url_gives_its_host_and_origin() -> None:
    assert parse_public_url("http://TeamBox:8000") == ("teambox", "http://teambox:8000")
    assert parse_public_url("https://weaver.example.com:443/") == ("weaver.example.com", "https://weaver.example.com")
    assert parse_public_url("http://[fd00::5]:8000") == ("[fd00::5]", "http://[fd00::5]:8000")
    for bad in ("teambox:8000", "ftp://teambox", "https://example.com/weaver", "http://a:b@host", "http://host:99999"):
        with pytest.raises(PublicUrlError, match="--public-url"):
            parse_public_url(bad)


def test_a_public_url_must_name_a_host_a_browser_can_open() -> None:
    """Wildcards, spaces, commas (which would split ``WEAVER_UI_ALLOWED_HOSTS``) and other non-names
    are refused; DNS names (IDNA in the ``xn--`` form browsers send) and IP literals are taken."""
    for wildcard in ("http://0.0.0.0:8000", "http://[::]:8000"):
        with pytest.raises(PublicUrlError, match="listen-everywhere"):
            parse_public_url(wildcard)
    for bad in ("http://*:8000", "http://a b", "http://a,b:8000", "http://[fe80::1%25eth0]:8000", "http://a%20b"):
        with pytest.raises(PublicUrlError, match="not a host name"):
            parse_public_url(bad)
    for bad in ("http://user@teambox:8000", "http://teambox:8000/chat", "http://-teambox", "http://team_box"):
        with pytest.raises(PublicUrlError, match="--public-url"):
            parse_public_url(bad)
    assert parse_public_url("http://10.0.0.7:8000/") == ("10.0.0.7", "http://10.0.0.7:8000")
    assert parse_public_url("https://team-box.internal.example") == (
        "team-box.internal.example",
        "https://team-box.internal.example",
    )
    assert parse_public_url("http://Bücher.example:8000") == (
        "xn--bcher-kva.example",
        "http://xn--bcher-kva.example:8000",
    )


def test_a_public_url_adds_to_the_defaults(clean_ui_settings: pytest.MonkeyPatch) -> None:
    env = public_url_env("http://teambox:8000", "0.0.0.0", 8000)
    hosts = env["WEAVER_UI_ALLOWED_HOSTS"].split(",")
    origins = env["WEAVER_UI_ALLOWED_ORIGINS"].split(",")
    assert "teambox" in hosts and "127.0.0.1" in hosts and "localhost" in hosts
    assert "http://teambox:8000" in origins and "http://127.0.0.1:8000" in origins
    clean_ui_settings.setenv("WEAVER_UI_ALLOWED_HOSTS", "proxy.internal")
    ui_settings.cache_clear()
    assert public_url_env("https://weaver.example.com", "127.0.0.1", 8000)["WEAVER_UI_ALLOWED_HOSTS"] == (
        "proxy.internal,weaver.example.com"
    )


def test_listening_everywhere_without_a_public_url_says_what_to_add() -> None:
    advice = wildcard_advice(8000, "teambox")
    assert "--public-url http://teambox:8000" in advice and "WEAVER_UI_ALLOWED_HOSTS=teambox" in advice


def test_weaver_ui_answers_colleagues_at_its_public_url(tmp_path: Path) -> None:
    port = free_port()
    public = f"http://teambox.example:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "ui", "--port", str(port), "--app-dir", str(tmp_path / "app")]
            + ["--public-url", public],
            cwd=tmp_path,
            env=_env(WEAVER_UI_CHECK_MODEL_AT_START="false"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "the server to answer", every=0.2)
        assert f"open {public}" in log.read_text()
        colleague = httpx.get(base, headers={"Host": f"teambox.example:{port}"}, timeout=10)
        assert colleague.status_code == 200, colleague.text
        assert httpx.get(base, headers={"Host": f"other.example:{port}"}, timeout=10).status_code == 400
        socket_path = f"{base}/ws/socket.io/?EIO=4&transport=polling"
        ours = httpx.get(socket_path, headers={"Host": f"teambox.example:{port}", "Origin": public}, timeout=10)
        assert "other web sites" not in ours.text
        foreign = httpx.get(socket_path, headers={"Host": f"teambox.example:{port}", "Origin": "http://evil.example"})
        assert foreign.status_code == 403 and "other web sites" in foreign.text
        assert httpx.get(base, timeout=10).status_code == 200  # the machine's own browser still works
    finally:
        stop_process(proc)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ what the command says


def test_weaver_version_comes_from_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"weaver {version('weaver-chat')}"


def test_weaver_ui_help_names_every_login_mode_and_where_settings_are() -> None:
    from ui.logins import MODES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["ui"].format_help()  # type: ignore[attr-defined]
    assert "WEAVER_UI_AUTH" in text and "--public-url" in text
    for mode in MODES:
        assert f"\n  {mode} " in text, mode
    assert str(REPO_ROOT / "README.md") in text
