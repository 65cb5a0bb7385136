"""The web UI in a real browser: Debian's Chromium driven by Playwright against a real server.

Requests that would leave 127.0.0.1 (Chainlit's index.html still links a font and a KaTeX
stylesheet from CDNs) are aborted, so the page renders from this machine alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

from tests.ui_harness import REPO_ROOT, UIServer, pid_alive, ui_server, wait_until

playwright_sync = pytest.importorskip("playwright.sync_api")

__all__ = ["ui_server"]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture()
def page(ui_server: UIServer) -> Iterator["playwright_sync.Page"]:
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.route("**/*", _local_only)
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _local_only(route: "playwright_sync.Route") -> None:
    host = urlparse(route.request.url).hostname or ""
    if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
        route.continue_()
    else:
        route.abort()


def _chat_started(payload: str | bytes) -> bool:
    text = payload if isinstance(payload, str) else payload.decode(errors="replace")
    return '"update_message"' in text and '"on_chat_start"' in text


def test_upload_csv_and_see_steps_and_answer(page: "playwright_sync.Page", ui_server: UIServer, tmp_path: Path) -> None:
    expect = playwright_sync.expect
    csv = tmp_path / "sales.csv"
    csv.write_text("region,units,price\nnorth,3,2.5\nsouth,5,1.0\neast,7,4.25\n")

    with page.expect_websocket() as ws_info:
        page.goto(ui_server.base_url)
    # The page is usable once the server has run on_chat_start for this browser session.
    ws_info.value.wait_for_event("framereceived", predicate=_chat_started, timeout=60_000)
    chat_input = page.locator("#chat-input")
    expect(chat_input).to_be_visible()

    page.set_input_files("#upload-button-input", str(csv))
    expect(page.get_by_text("sales.csv").first).to_be_visible()
    chat_input.fill("profile this file")
    submit = page.locator("#chat-submit")
    expect(submit).to_be_enabled()
    submit.click()

    expect(page.get_by_text("Done. Here is what the code produced").first).to_be_visible(timeout=90_000)
    expect(page.get_by_text("CodeInterpreter").first).to_be_visible()
    expect(page.get_by_text("shape: 3 rows × 3 columns").first).to_be_visible()
    expect(page.locator("table").filter(has_text="region").first).to_be_visible()
    expect(page.get_by_text("pd.read_csv").first).to_be_visible()

    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 2600})  # the chat scrolls inside the page: show it all
    expect(page.get_by_text("profile this file").first).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "ui_browser_csv.png"))


def test_new_chat_button_stops_the_old_kernel(page: "playwright_sync.Page", ui_server: UIServer) -> None:
    expect = playwright_sync.expect
    with page.expect_websocket() as ws_info:
        page.goto(ui_server.base_url)
    ws_info.value.wait_for_event("framereceived", predicate=_chat_started, timeout=60_000)

    page.locator("#chat-input").fill("```python\nimport os\nprint('PID', os.getpid())\n```")
    page.locator("#chat-submit").click()
    answer = page.get_by_text(re.compile(r"PID \d+")).last
    expect(answer).to_be_visible(timeout=90_000)
    match = re.search(r"PID (\d+)", answer.inner_text())
    assert match
    pid = int(match.group(1))
    assert pid_alive(pid)

    mark = ui_server.log_size()
    page.locator("#new-chat-button").click()
    page.locator("#confirm").click()
    # Stopped by the "new chat" path, well before the disconnect grace period would end.
    ui_server.wait_log(r"stopping weaver session now", ui_server.grace_s - 0.5, mark)
    wait_until(lambda: not pid_alive(pid), 20, f"kernel {pid} to exit")
    expect(page.locator("#chat-input")).to_be_visible()
