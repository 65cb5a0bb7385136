"""Regenerate and code approval in Debian's Chromium (Playwright) against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.test_ui_browser import ARTIFACTS, CHROMIUM, _browser_page, _chat_started
from tests.ui_harness import UIServer, start_server, stop_server, ui_server

playwright_sync = pytest.importorskip("playwright.sync_api")

__all__ = ["ui_server"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def _open_chat(page: "playwright_sync.Page", url: str) -> None:
    with page.expect_websocket() as ws_info:
        page.goto(url)
    ws_info.value.wait_for_event("framereceived", predicate=_chat_started, timeout=60_000)
    playwright_sync.expect(page.locator("#chat-input")).to_be_visible()


def _send(page: "playwright_sync.Page", text: str) -> None:
    page.locator("#chat-input").fill(text)
    submit = page.locator("#chat-submit")
    playwright_sync.expect(submit).to_be_enabled()
    submit.click()


def test_regenerate_replaces_the_answer_without_the_old_variables(ui_server: UIServer) -> None:
    expect = playwright_sync.expect
    with _browser_page() as page:
        _open_chat(page, ui_server.base_url)
        _send(page, "```python\na = 41\n```")
        expect(page.get_by_text("Regenerate")).to_have_count(1, timeout=90_000)
        _send(page, "```python\nn = globals().get('n', 0) + 1\nprint('n is', n, 'a is', a)\n```")
        answers = page.get_by_text("n is 1 a is 41")
        expect(answers).to_have_count(1, timeout=90_000)
        expect(page.get_by_role("button", name="Regenerate", exact=True)).to_have_count(1)  # the last answer only
        old_answer = answers.element_handle()
        page.get_by_role("button", name="Regenerate", exact=True).click()
        # The old answer goes and the new one (same text: n starts again from before the round) comes.
        page.wait_for_function("el => !el.isConnected", arg=old_answer, timeout=90_000)
        ui_server.wait_log(r"re-runs from round 2 \(discarding round-", 90)
        expect(answers).to_have_count(1, timeout=90_000)
        expect(page.get_by_role("button", name="Regenerate", exact=True)).to_have_count(1)
        expect(page.get_by_text("n is 2")).to_have_count(0)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui_regenerate.png"))

        # The pencil on the sent message: its round runs again with the new text, from before it.
        sent = page.locator(".step").filter(has_text="globals().get('n', 0)").last
        sent.hover()
        page.locator(".edit-message").last.click()
        page.locator("#edit-chat-input").fill("```python\nprint('n' in globals(), a + 1)\n```")
        page.locator(".confirm-edit").click()
        expect(page.get_by_text("False 42").first).to_be_visible(timeout=90_000)
        expect(page.get_by_text("n is 1 a is 41")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "ui_edit.png"))


@pytest.fixture()
def approving_server(tmp_path: Path) -> Iterator[UIServer]:
    server = start_server(
        tmp_path / "app",
        tmp_path / "server.log",
        extra_env={"WEAVER_CODE_INTERPRETER__REQUIRE_CONFIRMATION": "true"},
    )
    try:
        yield server
    finally:
        stop_server(server)


def test_approval_cancel_runs_nothing_and_edit_runs_the_edited_cell(approving_server: UIServer) -> None:
    expect = playwright_sync.expect
    folder_files = approving_server.app_dir
    with _browser_page() as page:
        _open_chat(page, approving_server.base_url)
        _send(page, "```python\nopen('cancelled.txt', 'w').write('x')\nprint('model ran')\n```")
        expect(page.get_by_text("This code waits for your approval").first).to_be_visible(timeout=90_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui_approval_asked.png"))
        page.get_by_role("button", name="Cancel", exact=True).click()
        expect(page.get_by_text("You cancelled the code, so nothing was run.").first).to_be_visible(timeout=60_000)
        assert not list(folder_files.rglob("cancelled.txt")), "cancelled code ran"

        _send(page, "```python\nopen('model.txt', 'w').write('x')\nprint('model ran')\n```")
        expect(page.get_by_text("You cancelled this code:")).to_have_count(1)  # the first question, answered
        expect(page.get_by_text("This code waits for your approval")).to_have_count(1, timeout=90_000)
        page.get_by_role("button", name="Edit", exact=True).click()
        expect(page.get_by_text("Send the code to run instead").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("You chose to edit this code:")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "ui_approval_edit_prompt.png"))
        _send(page, "open('edited.txt', 'w').write('y')\nprint('ed' 'ited ran')")  # the output, not the input
        expect(page.get_by_text("edited ran").first).to_be_visible(timeout=90_000)
        assert list(folder_files.rglob("edited.txt")) and not list(folder_files.rglob("model.txt"))
        page.set_viewport_size({"width": 1280, "height": 2200})  # the chat scrolls inside the page: show it all
        page.screenshot(path=str(ARTIFACTS / "ui_approval_edited.png"))
