"""The server's log (``core.logs``, ``ui.log_setup``): one line per event, JSON when asked, and
nothing of what users write or print at the default level.

A real server with ``WEAVER_LOG_FORMAT=json`` runs a round whose code prints a marker and whose
message carries another: neither is in the log, and every line of the log parses as JSON. A page
load in a language without its own readme adds no warning.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from core.logs import FORMAT_ENV, LogFormat, LogFormatError, formatter, log_format
from tests.ui_harness import (
    REPO_ROOT,
    UIServer,
    answers,
    code_block,
    free_port,
    login_cookie,
    server_command,
    start_server,
    stop_server,
)

PRINTED = "MARKER-" + "printed-7f3a"  # built at run time: the code's text never holds it whole
MESSAGE = "MESSAGE-TEXT-c41d"


def test_the_format_is_text_by_default_json_when_asked_and_a_typo_is_named() -> None:
    assert log_format({}) is LogFormat.TEXT and log_format({FORMAT_ENV: " JSON "}) is LogFormat.JSON
    with pytest.raises(LogFormatError, match=r"WEAVER_LOG_FORMAT='xml' is not a log format: use text or json"):
        log_format({FORMAT_ENV: "xml"})


def test_a_json_line_is_one_line_even_with_a_traceback() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(LogFormat.JSON))
    log = logging.getLogger("weaver.test_logging")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.error("failed for %s", "é")
            log.exception("with its traceback")
    finally:
        log.removeHandler(handler)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "ERROR" and first["logger"] == "weaver.test_logging" and first["message"] == "failed for é"
    assert first["time"].endswith("+00:00")
    assert "ValueError: bad\nthing" in second["exc_info"]


def test_a_bad_log_format_stops_the_server_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "WEAVER_APP_DIR": str(tmp_path), FORMAT_ENV: "xml"}
    done = subprocess.run(
        server_command(free_port()), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "Weaver UI: WEAVER_LOG_FORMAT='xml' is not a log format: use text or json"
    ]


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-json-log")
    server = start_server(root / "app", root / "server.log", extra_env={FORMAT_ENV: "json"})
    try:
        yield server
    finally:
        stop_server(server)


def test_a_round_leaves_no_user_text_in_the_log_and_every_line_is_json(json_server: UIServer) -> None:
    cookie = login_cookie(json_server.base_url)
    settings = httpx.get(
        f"{json_server.base_url}/project/settings", params={"language": "de-DE"}, headers=cookie, timeout=30
    )
    assert settings.status_code == 200  # Chainlit looked for chainlit_de-DE.md (there is none)
    with json_server.client() as chat:
        code = (
            f"# {MESSAGE}\nimport os, subprocess, sys\nmarker = 'MARKER-' + 'printed-7f3a'\nprint(marker)\n"
            "print(marker, file=sys.stderr)\nos.write(1, (marker + '-fd1\\n').encode())\n"
            "os.write(2, (marker + '-fd2\\n').encode())\nsubprocess.run(['echo', marker + '-child'])"
        )
        turn = chat.ask(code_block(code))
        seen = "\n".join(answers(turn))
        assert PRINTED in seen and f"{PRINTED}-fd1" in seen and f"{PRINTED}-child" in seen  # the user saw it
    json_server.wait_log(r'"message": "round \S+ finished', 30)
    log = json_server.log()
    assert PRINTED not in log and MESSAGE not in log
    assert "Translated markdown file" not in log
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["logger"] == "chainlit" for e in entries)  # Chainlit's own lines too
