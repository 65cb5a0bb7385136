"""The web UI in a real browser: Debian's Chromium driven by Playwright against a real server.

Requests that would leave 127.0.0.1 (Chainlit's index.html still links a font and a KaTeX
stylesheet from CDNs) are aborted, so the page renders from this machine alone.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

from tests.ui_harness import KERNEL_ID_CODE, REPO_ROOT, UIServer, kernel_pid_in, pid_alive, ui_server, wait_until

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


@contextlib.contextmanager
def _browser_page() -> Iterator["playwright_sync.Page"]:
    """A Chromium page that reaches 127.0.0.1 only and fails the test if the page's Content-Security-
    Policy blocked a script or connection of the app (the CDN stylesheets the page links may be)."""
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.route("**/*", _local_only)
            page = context.new_page()
            page.set_default_timeout(60_000)
            violations: list[str] = []
            page.on(
                "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
            )
            yield page
            blocked = [v for v in violations if "script-src" in v or "connect-src" in v or "worker-src" in v]
            assert not blocked, blocked
        finally:
            browser.close()


@pytest.fixture()
def page(ui_server: UIServer) -> Iterator["playwright_sync.Page"]:
    with _browser_page() as browser_page:
        yield browser_page


def _local_only(route: "playwright_sync.Route") -> None:
    host = urlparse(route.request.url).hostname or ""
    if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
        route.continue_()
    else:
        route.abort()


def _open_again(page: "playwright_sync.Page", url: str) -> None:
    """Load ``url`` as a user pressing reload would. The page may already be on its way to the login
    form by itself (its socket was refused): that navigation aborts ours, and either way the next
    assertion sees where the user ends up."""
    try:
        page.goto(url)
    except playwright_sync.Error as exc:
        if "ERR_ABORTED" not in str(exc) and "frame was detached" not in str(exc):
            raise


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

    # Answer first: the answer and its table are shown in full; the work is folded into one line a step.
    expect(page.get_by_text("Done. Here is what the code produced").first).to_be_visible(timeout=90_000)
    expect(page.get_by_text("shape: 3 rows × 3 columns").first).to_be_visible()
    expect(page.locator("table").filter(has_text="region").first).to_be_visible()
    folded = page.get_by_text("CodeInterpreter · ran", exact=False).first
    expect(folded).to_be_visible()
    expect(page.get_by_text("Planner · plan of 2 steps", exact=False).first).to_be_visible()
    expect(page.get_by_text("pd.read_csv")).to_have_count(0)  # the code waits behind its step
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui_browser_answer_first.png"))

    folded.click()  # unfold the work on demand
    expect(page.get_by_text("pd.read_csv").first).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 2600})  # the chat scrolls inside the page: show it all
    expect(page.get_by_text("profile this file").first).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "ui_browser_csv.png"))


def test_new_chat_button_stops_the_old_kernel(page: "playwright_sync.Page", ui_server: UIServer) -> None:
    expect = playwright_sync.expect
    with page.expect_websocket() as ws_info:
        page.goto(ui_server.base_url)
    ws_info.value.wait_for_event("framereceived", predicate=_chat_started, timeout=60_000)

    page.locator("#chat-input").fill(f"```python\n{KERNEL_ID_CODE}\n```")
    page.locator("#chat-submit").click()
    answer = page.get_by_text(re.compile(r"KERNEL \S+\.json")).last
    expect(answer).to_be_visible(timeout=90_000)
    pid = kernel_pid_in(answer.inner_text())
    assert pid_alive(pid)

    # With history on, the page moves to the chat's own address after its first message; a click
    # during that move is lost, so wait for it first.
    page.wait_for_url(re.compile(r"/thread/[0-9a-f-]{36}$"))
    mark = ui_server.log_size()
    page.locator("#new-chat-button").click()
    page.locator("#confirm").click()
    # Stopped by the "new chat" path, well before the disconnect grace period would end.
    ui_server.wait_log(r"stopping weaver session now", ui_server.grace_s - 0.5, mark)
    wait_until(lambda: not pid_alive(pid), 20, f"kernel {pid} to exit")
    expect(page.locator("#chat-input")).to_be_visible()


EVIL_PAGE = """<!doctype html><title>evil</title><script>
const target = "TARGET";
const ws = new WebSocket(target.replace("http", "ws") + "/ws/socket.io/?EIO=4&transport=websocket");
ws.onopen = () => { document.title = "opened"; };
ws.onerror = ws.onclose = () => { if (document.title !== "opened") document.title = "refused"; };
</script>"""


def test_a_page_on_another_origin_cannot_open_a_socket(page: "playwright_sync.Page", ui_server: UIServer) -> None:
    """A site the user visits (here one on another local port) tries to drive Weaver from the browser."""
    import http.server
    import threading

    body = EVIL_PAGE.replace("TARGET", ui_server.base_url).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        mark = ui_server.log_size()
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("document.title !== 'evil'", timeout=30_000)
        assert page.title() == "refused"
        ui_server.wait_log(r"refused websocket /ws/socket.io/: requests from other web sites", 10, mark)
    finally:
        evil.shutdown()
        evil.server_close()


@pytest.fixture()
def password_server(tmp_path: Path) -> Iterator[UIServer]:
    from tests.test_ui_auth import add_user
    from tests.ui_harness import start_server, stop_server

    add_user(tmp_path / "app", "alice", "alice-password")
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_UI_AUTH": "password"})
    try:
        yield server
    finally:
        stop_server(server)


def test_log_in_chat_reload_and_continue_from_the_sidebar(password_server: UIServer) -> None:
    expect = playwright_sync.expect
    with _browser_page() as page:
        page.goto(password_server.base_url)
        page.locator("#email").fill("alice")
        page.locator("#password").fill("wrong-password")
        page.locator("#password").press("Enter")
        expect(page.get_by_text(re.compile("Wrong name or password")).first).to_be_visible()
        page.locator("#password").fill("alice-password")
        page.locator("#password").press("Enter")

        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()
        chat_input.fill("```python\nremembered = 6 * 7\nprint('stored', remembered)\n```")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("stored 42").last).to_be_visible(timeout=90_000)

        page.reload()
        expect(page.locator("#chat-input")).to_be_visible()
        history = page.locator("#thread-history")  # the sidebar is open from the start (config.toml)
        old_chat = history.get_by_text("remembered", exact=False).first
        expect(old_chat).to_be_in_viewport()
        old_chat.click()
        expect(page.get_by_text("stored 42").first).to_be_visible()  # the old conversation is shown again

        chat_input = page.locator("#chat-input")
        chat_input.fill("```python\nprint('still', remembered + 1)\n```")
        page.locator("#chat-submit").click()
        # The reloaded page's chat shares the still-live session, so its variables are simply there
        # (a restore after a server restart is tested in test_ui_history).
        expect(page.get_by_text("still 43").last).to_be_visible(timeout=120_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui_browser_resume.png"))


def test_a_new_password_sends_the_page_to_the_login_and_the_chat_says_why(password_server: UIServer) -> None:
    """``weaver user passwd`` while alice's chat is open: the page shows the login form (its cookie is
    refused), her kernel is gone, and once she signs in with the new password the old chat says why."""
    from tests.test_ui_auth import weaver_user

    expect = playwright_sync.expect
    with _browser_page() as page:
        page.goto(password_server.base_url)
        page.locator("#email").fill("alice")
        page.locator("#password").fill("alice-password")
        page.locator("#password").press("Enter")
        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()
        chat_input.fill(f"```python\n{KERNEL_ID_CODE}\n```")
        page.locator("#chat-submit").click()
        printed = page.get_by_text(re.compile(r"KERNEL \S+\.json")).last
        expect(printed).to_be_visible(timeout=90_000)
        pid = kernel_pid_in(printed.inner_text())

        changed = weaver_user(password_server.app_dir, "passwd", "alice", password="alice-password-2")
        assert changed.returncode == 0, changed.stderr
        wait_until(lambda: not pid_alive(pid), 30, f"alice's kernel {pid} to exit")
        _open_again(page, password_server.base_url)
        expect(page.locator("#email")).to_be_visible()  # the login form, not the chat
        expect(page.locator("#chat-input")).to_have_count(0)

        page.locator("#email").fill("alice")
        page.locator("#password").fill("alice-password-2")
        page.locator("#password").press("Enter")
        expect(page.locator("#chat-input")).to_be_visible()
        page.locator("#thread-history").get_by_text("KERNEL", exact=False).first.click()
        expect(page.get_by_text("Your password was changed", exact=False).first).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui_browser_password_changed.png"))
