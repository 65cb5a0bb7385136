"""Through the real server: while user code swaps a file for links, the Files panel never serves
what a link points to (a root-only canary, the server's own environment). On the code before
``core.safe_files`` this test served both within a few presses."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.files_panel import panel_downloads
from tests.test_safe_files import REGULAR, swap_code
from tests.ui_harness import ChatClient, UIServer, code_block, start_server, stop_server

SWAP_SECONDS = 8.0


@pytest.fixture
def env_canary() -> str:
    return f"ENVCANARY{secrets.token_hex(12)}"


@pytest.fixture
def server(tmp_path: Path, env_canary: str) -> Iterator[UIServer]:
    # The kernel at the server's own CPU priority (execution.nice 0), as on a machine with cores to
    # spare: with the default nice the kernel barely runs while the server answers, and the race
    # that leaked files on the old code is too rare to see in a test's time.
    env = {"WEAVER_TEST_SECRET": env_canary, "WEAVER_EXECUTION__NICE": "0"}
    running = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        yield running
    finally:
        stop_server(running)


def _panels(client: ChatClient) -> list[dict[str, Any]]:
    """Every panel the server has shown this client so far."""
    return [d for n, d in client.events if n == "set_sidebar_elements"]


def _files_button(client: ChatClient, turn: list[dict[str, Any]]) -> dict[str, Any]:
    """The Files button shown under the round's answer."""
    answer_ids = {m["id"] for m in turn if m.get("type") == "assistant_message"}
    return client.wait_for(
        lambda: next(
            (
                d
                for n, d in client.events
                if n == "action" and d.get("forId") in answer_ids and d.get("name") == "weaver_outputs"
            ),
            None,
        ),
        30,
        "the Files button under the answer",
    )


def _press(server: UIServer, client: ChatClient, action: dict[str, Any]) -> list[dict[str, Any]]:
    """Press the Files button; the elements of the panel it opens."""
    before = len(_panels(client))
    pressed = httpx.post(
        f"{server.base_url}/project/action",
        json={"sessionId": client.session_id, "action": action},
        headers=client.headers,
        timeout=30,
    )
    assert pressed.status_code == 200, pressed.text
    return client.wait_for(lambda: _panels(client)[before:], 30, "the panel")[-1]["elements"]


def test_the_files_panel_never_serves_a_swapped_in_link(server: UIServer, tmp_path: Path, env_canary: str) -> None:
    canary = tmp_path / "canary.txt"
    secret = f"CANARY-{secrets.token_hex(16)}".encode()
    canary.write_bytes(secret)
    canary.chmod(0o600)
    with server.client() as client:
        # keep.csv: the chat has a file (and so its Files button) whatever x.csv is when the round ends
        turn = client.ask(code_block("open('keep.csv', 'wb').write(b'k')\n" + swap_code(canary, SWAP_SECONDS)))
        action = _files_button(client, turn)
        found = [p.parent for p in server.app_dir.glob("workspace/sessions/*/cwd/keep.csv")]
        assert len(found) == 1
        cwd = found[0]
        served: list[bytes] = []
        notes: list[str] = []
        deadline = time.monotonic() + SWAP_SECONDS + 90
        presses = 0
        while not (cwd / "swap-done").exists():
            assert time.monotonic() < deadline, "the kernel's swap loop did not finish"
            presses += 1
            for element in _press(server, client, action):
                fetched = client.fetch_element(element)
                assert fetched.status_code == 200
                notes.append(fetched.text)
                for name, url in panel_downloads(fetched.text).items():
                    download = httpx.get(f"{server.base_url}{url}", headers=client.headers, timeout=10)
                    assert download.status_code == 200
                    if name in ("x.csv", "y.csv", "z.csv"):
                        served.append(download.content)
    everything = b"".join(served) + "".join(notes).encode()
    assert secret not in everything and env_canary.encode() not in everything
    assert served and all(content == REGULAR for content in served), served[:3]
    assert presses >= 3


def test_the_files_panel_attaches_at_most_the_configured_total(tmp_path: Path) -> None:
    """``WEAVER_UI_MAX_ATTACHED_MB``: the panel reads its downloads into memory, so past the setting
    the rest are named ("one panel offers at most 1.0 MB"), not attached."""
    running = start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_UI_MAX_ATTACHED_MB": "1"})
    try:
        with running.client() as client:
            turn = client.ask(code_block("for n in 'ab': open(f'{n}.bin', 'wb').write(b'x' * 600_000)"))
            panel = _press(running, client, _files_button(client, turn))
            table = next(client.fetch_element(e).text for e in panel if e["type"] == "text")
            downloads = list(panel_downloads(table))
    finally:
        stop_server(running)
    assert len(downloads) == 1 and downloads[0] in ("a.bin", "b.bin"), downloads
    assert "at most 1.0 MB" in table, table
