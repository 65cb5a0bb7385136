"""The admin page in a real browser (Debian's Chromium through Playwright) against a real server
with password login: an admin signs in through the login form, is pointed to the admin page, adds
a user with its form and stops another user's live session with its Stop button; the added user
signs in, and the stopped user's page says what happened. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_ui_admin import add_admin
from tests.test_ui_auth import add_user
from tests.test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _local_only
from tests.ui_harness import KERNEL_ID_CODE, UIServer, kernel_pid_in, pid_alive, start_server, stop_server, wait_until

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[UIServer]:
    add_admin(tmp_path / "app", "root", "root-password")
    add_user(tmp_path / "app", "bob", "bob-password-2")
    srv = start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_UI_AUTH": "password"})
    try:
        yield srv
    finally:
        stop_server(srv)


def _sign_in(browser: "playwright_sync.Browser", url: str, name: str, password: str) -> "playwright_sync.Page":
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.route("**/*", _local_only)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#email").fill(name)
    page.locator("#password").fill(password)
    page.locator("#password").press("Enter")
    expect(page.locator("#chat-input")).to_be_visible()
    return page


def test_an_admin_adds_a_user_and_stops_a_session_in_the_browser(server: UIServer) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            bob = _sign_in(browser, server.base_url, "bob", "bob-password-2")
            expect(bob.get_by_text("You are an administrator")).to_have_count(0)
            bob.locator("#chat-input").fill(f"```python\n{KERNEL_ID_CODE}\n```")
            bob.locator("#chat-submit").click()
            answer = bob.get_by_text(re.compile(r"KERNEL \S+\.json")).last
            expect(answer).to_be_visible(timeout=90_000)
            pid = kernel_pid_in(answer.inner_text())
            assert pid_alive(pid)

            admin = _sign_in(browser, server.base_url, "root", "root-password")
            expect(admin.get_by_text("You are an administrator").first).to_be_visible()
            admin.goto(f"{server.base_url}/admin")
            expect(admin.get_by_role("heading", name="Weaver admin")).to_be_visible()
            admin.get_by_label("new user name").fill("gus")
            admin.get_by_label("new user password").fill("gus-password")
            admin.get_by_role("button", name="Add user").click()
            expect(admin.get_by_text("User gus added.")).to_be_visible()
            expect(admin.locator('#users tr[data-user="gus"]')).to_contain_text("user")
            row = admin.locator("#sessions tr").filter(has_text="bob")
            expect(row).to_contain_text("MiB")
            admin.screenshot(path=str(ARTIFACTS / "ui_admin_page.png"), full_page=True)
            row.get_by_role("button", name="Stop").click()
            expect(admin.get_by_text("The session of bob was stopped")).to_be_visible()
            wait_until(lambda: not pid_alive(pid), 30, f"bob's kernel {pid} to exit")
            expect(bob.get_by_text("An administrator stopped this chat's Python session").first).to_be_visible()
            bob.screenshot(path=str(ARTIFACTS / "ui_admin_stopped_chat.png"))

            gus = _sign_in(browser, server.base_url, "gus", "gus-password")
            expect(gus.locator("#chat-input")).to_be_visible()
        finally:
            browser.close()
