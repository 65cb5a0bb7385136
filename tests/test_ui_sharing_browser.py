"""Export and sharing in a real browser (Debian's Chromium via Playwright) against a real server:
alice downloads her chat as a notebook with Export, presses Share under her answer, and bob signs
in in his own browser and opens the link, read-only."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import nbformat
import pytest

from tests.test_ui_auth import PLUGINS, add_user
from tests.test_ui_browser import ARTIFACTS, CHROMIUM, _browser_page, _local_only
from tests.ui_harness import UIServer, start_server, stop_server

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

FIGURE_CODE = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\nprint('plotted', 3)"
FIGURE = f"```python\n{FIGURE_CODE}\n```"


@pytest.fixture()
def sharing_server(tmp_path: Path) -> Iterator[UIServer]:
    shutil.copytree(PLUGINS, tmp_path / "app" / "plugins")
    add_user(tmp_path / "app", "alice", "alice-password")
    add_user(tmp_path / "app", "bob", "bob-password-2")
    env = {"WEAVER_UI_AUTH": "password", "WEAVER_UI_SHARING": "1"}
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        yield server
    finally:
        stop_server(server)


def _sign_in(page: "playwright_sync.Page", base_url: str, name: str, password: str) -> None:
    page.goto(base_url)
    page.locator("#email").fill(name)
    page.locator("#password").fill(password)
    page.locator("#password").press("Enter")
    playwright_sync.expect(page.locator("#chat-input")).to_be_visible()


def test_bob_opens_the_link_alice_shared_and_reads_her_chat(sharing_server: UIServer) -> None:
    expect = playwright_sync.expect
    with _browser_page() as page:
        _sign_in(page, sharing_server.base_url, "alice", "alice-password")
        page.locator("#chat-input").fill(FIGURE)
        page.locator("#chat-submit").click()
        expect(page.get_by_text("plotted 3").last).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Export").last.click()
        notebook_link = page.get_by_role("link", name="Jupyter notebook (.ipynb)").last
        expect(notebook_link).to_be_visible()
        with page.context.expect_event("download") as download_info:  # the link may open a new tab
            notebook_link.click()
        saved = download_info.value
        assert saved.suggested_filename.endswith(".ipynb")
        notebook = nbformat.reads(Path(saved.path()).read_text(), as_version=4)
        assert [c.source for c in notebook.cells if c.cell_type == "code"] == [FIGURE_CODE]

        page.get_by_role("button", name="Share").last.click()
        link = page.locator("a[href*='/weaver/shared/']").last
        expect(link).to_be_visible()
        href = link.get_attribute("href")
        assert href and href.startswith("/weaver/shared/")

        bob_context = page.context.browser.new_context(viewport={"width": 1100, "height": 900})  # type: ignore[union-attr]
        bob_context.route("**/*", _local_only)
        bob = bob_context.new_page()
        bob.set_default_timeout(60_000)
        _sign_in(bob, sharing_server.base_url, "bob", "bob-password-2")
        bob.goto(sharing_server.base_url + href)
        expect(bob.get_by_text("Read-only").first).to_be_visible()
        expect(bob.locator(".assistant_message").get_by_text("plotted 3").first).to_be_visible()
        figure = bob.locator("img[src*='/weaver/shared-files/']").first
        expect(figure).to_be_visible()
        assert figure.evaluate("img => img.complete && img.naturalWidth > 100")
        assert bob.locator("#chat-input, textarea, form").count() == 0  # nothing to send with
        ARTIFACTS.mkdir(exist_ok=True)
        bob.screenshot(path=str(ARTIFACTS / "ui_shared_chat.png"), full_page=True)

        page.get_by_role("button", name="Stop sharing").last.click()
        expect(page.get_by_text("no longer shared").last).to_be_visible()
        bob.reload()
        expect(bob.get_by_role("heading", name="Link revoked")).to_be_visible()
        bob_context.close()
