"""What a newcomer sees first, in a real browser (Chromium + Playwright) against one real server in
password mode, with a project dataset and the offline model: the login page, the welcome, the Files
panel, a reopened chat, a link to another user's chat, Stop; and, without a browser, chat titles
and the order of the chat list. Each fixed screen is saved in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.files_panel import panel_downloads
from tests.test_ui_auth import add_user
from tests.test_ui_browser import ARTIFACTS, CHROMIUM, _browser_page
from tests.ui_harness import UIServer, gated_code, start_server, stop_server, wait_started, wait_until
from ui.titles import chat_title

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

DATASETS = """\
datasets:
  - name: sales_2024
    file: sales.csv
    description: Revenue by region in 2024
    columns:
      region: EMEA, APAC or AMER
      revenue: thousands of EUR
"""
# A tall picture shown by the code (made without matplotlib: its first import in a kernel is slow).
CHART = """```python
import struct, zlib
from IPython.display import Image, display
w, h = 400, 500
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
rows = b''.join(b'\\x00' + bytes([40, 90, 200]) * w for _ in range(h))
png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
png += chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')
display(Image(data=png))
```"""
LONG_NAME = "a-rather-long-file-name-written-by-the-code-of-this-chat-2024.csv"


def _shot(page: "playwright_sync.Page", name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui_polish_{name}.png"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    root = tmp_path_factory.mktemp("weaver-ui-polish")
    app = root / "app"
    (app / "data").mkdir(parents=True)
    (app / "data" / "sales.csv").write_text("region,revenue\nEMEA,10\nAPAC,20\n")
    (app / "data" / "datasets.yaml").write_text(DATASETS)
    add_user(app, "alice", "alice-password")
    add_user(app, "bob", "bob-password-2")
    running = start_server(app, root / "server.log", extra_env={"WEAVER_UI_AUTH": "password"})
    try:
        yield running
    finally:
        stop_server(running)


def _right_edge(locator: "playwright_sync.Locator") -> float:
    box = locator.bounding_box()
    return box["x"] + box["width"] if box else float("inf")


def _sign_in(page: "playwright_sync.Page", server: UIServer, name: str, password: str) -> None:
    page.goto(server.base_url)
    page.locator("#email").fill(name)
    page.locator("#password").fill(password)
    page.locator("#password").press("Enter")
    playwright_sync.expect(page.locator("#chat-input")).to_be_visible()


# -- alice: welcome, Files panel, a reopened chat, Stop ----------------------------------------------


def test_welcome_files_panel_and_a_reopened_chat(server: UIServer) -> None:
    expect = playwright_sync.expect
    with _browser_page() as page:
        _sign_in(page, server, "alice", "alice-password")
        expect(page.locator("#welcome-screen")).to_have_css("opacity", "1")  # faded in
        # The welcome keeps its logo and starters, says it is offline and lists the dataset with its notes.
        expect(page.locator("#welcome-screen img").first).to_be_visible()
        expect(page.get_by_role("button", name="Profile sales_2024")).to_be_visible()
        expect(page.get_by_text("Offline mode: no language model")).to_be_visible()
        expect(page.get_by_text("thousands of EUR")).to_be_visible()
        expect(page.get_by_text("profile sales_2024", exact=False).first).to_be_visible()
        expect(page.get_by_text("No chats yet")).to_be_visible()
        _shot(page, "welcome")

        code = (
            "```python\nimport os\nos.makedirs('out', exist_ok=True)\n"
            f"open('{LONG_NAME}', 'w').write('a,b\\n1,2\\n')\nopen('report.csv', 'w').write('x\\n1\\n')\n"
            "open('out/notes.txt', 'w').write('n' * 3000)\nprint('files written')\n```"
        )
        page.locator("#chat-input").fill(code)
        page.locator("#chat-submit").click()
        expect(page.get_by_text("files written").last).to_be_visible(timeout=120_000)
        # Step lines say what happened, without Chainlit's "Used".
        expect(page.get_by_text(re.compile(r"^\s*Planner · plan of")).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"Used (Planner|CodeInterpreter)"))).to_have_count(0)
        # The chat is named from its code, not its Markdown.
        history = page.locator("#thread-history")
        expect(history.get_by_text("Python: import os", exact=False)).to_be_visible()
        expect(history.get_by_text("```", exact=False)).to_have_count(0)

        files = page.get_by_role("button", name=re.compile(r"Files \(\d+\)")).last
        files.click()
        panel = page.locator("#side-view-content")
        # The panel slides in; then it ends inside the window.
        width = page.viewport_size["width"] if page.viewport_size else 0
        wait_until(lambda: _right_edge(panel) <= width, 10, "the panel to slide in")
        expect(page.locator("#side-view-title")).to_have_text("Files of this chat")
        expect(panel.locator("tbody tr")).to_have_count(3)
        for name in (LONG_NAME, "report.csv", "out/notes.txt"):
            expect(panel.locator(f"a[title='{name}']")).to_have_count(1)  # each file once
        expect(panel.locator(".inline-file, .side-file")).to_have_count(0)  # no second list of chips
        # Size and time sit inside the panel at the default width, even next to the long name.
        long_row = panel.locator("tbody tr").filter(has=page.locator(f"a[title='{LONG_NAME}']"))
        box = page.locator("#side-view-content").bounding_box()
        for cell in (long_row.locator("td").nth(1), long_row.locator("td").nth(2)):
            expect(cell).to_be_in_viewport()
            cell_box = cell.bounding_box()
            assert box and cell_box and cell_box["x"] + cell_box["width"] <= box["x"] + box["width"] + 1
        expect(long_row.locator("td").nth(1)).to_have_text(re.compile(r"\d+ B"))
        _shot(page, "files_panel")
        with page.expect_download() as download:
            panel.locator("a[title='report.csv']").click()
        assert download.value.suggested_filename == "report.csv"

        # A chart that loads after its answer: the view follows it to its end.
        page.locator("#side-view-title button").click()  # the panel's back arrow closes it
        page.locator("#chat-input").fill(CHART)
        page.locator("#chat-submit").click()
        chart = page.locator("img.inline-image").last
        expect(chart).to_be_visible(timeout=120_000)
        wait_until(lambda: chart.evaluate("i => i.complete && i.naturalHeight > 0"), 30, "the chart to load")
        expect(chart).to_be_in_viewport(ratio=0.95)
        _shot(page, "chart_followed")

        # Stop: one message says the round was cancelled (Chainlit's own note is taken away).
        page.locator("#chat-input").fill(gated_code("stop", "print('not reached')"))
        page.locator("#chat-submit").click()
        wait_started(server, "stop")
        page.locator("#stop-button").click()
        expect(page.get_by_text("Round cancelled", exact=False).last).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Task manually stopped.")).to_have_count(0)
        _shot(page, "after_stop")

        # Reopened after a reload: the Files button and the settings gear are there before any message.
        chat_url = page.url
        assert "/thread/" in chat_url
        page.goto(server.base_url)
        expect(page.locator("#chat-input")).to_be_visible()
        page.locator("#thread-history").get_by_text("Python: import os", exact=False).click()
        expect(page.get_by_text("files written").first).to_be_visible()
        reopened_files = page.get_by_role("button", name=re.compile(r"Files \(\d+\)"))
        expect(reopened_files).to_be_in_viewport()  # the chat opens at its end, its pictures loaded
        expect(page.locator("#chat-settings-open-modal")).to_be_visible()
        _shot(page, "reopened_chat")
        page.locator("#chat-settings-open-modal").click()  # the step switch says whose preference it is
        expect(page.get_by_text("Your preference for all your chats", exact=False)).to_be_visible()
        expect(page.get_by_role("dialog")).to_have_css("opacity", "1")
        _shot(page, "chat_settings")
        page.keyboard.press("Escape")
        reopened_files.click()
        expect(page.locator("#side-view-content a[title='report.csv']")).to_have_count(1)


# -- bob opens a link to alice's chat --------------------------------------------------------------


def _thread(server: UIServer, thread_id: str) -> dict[str, Any]:
    """A chat as the server stored it."""
    from ui.history import open_history

    async def read() -> dict[str, Any]:
        layer = await open_history(server.app_dir, None)
        try:
            return dict(await layer.get_thread(thread_id) or {})
        finally:
            await layer.close()

    return asyncio.run(read())


ALICE_ONLY = "a note for alice only"


@pytest.fixture(scope="module")
def alice_thread(server: UIServer) -> str:
    """A chat of alice's, made at the socket as the page would."""
    from tests.test_ui_auth import logged_in_with_password

    with logged_in_with_password(server, "alice", "alice-password") as client:
        client.ask(ALICE_ONLY)
        return client.wait_for(client.thread_id, 30, "alice's chat to be stored")


def test_bob_signs_in_and_a_link_to_alices_chat_says_not_found_and_the_tab_works(
    server: UIServer, alice_thread: str, tmp_path: Path
) -> None:
    expect = playwright_sync.expect
    with _browser_page() as page:
        # The login page asks for a name, shows a sharp picture, and says plainly what went wrong.
        page.goto(server.base_url)
        expect(page.get_by_text("Name", exact=True)).to_be_visible()
        expect(page.get_by_text("Email address")).to_have_count(0)
        assert "@" not in (page.locator("#email").get_attribute("placeholder") or "")
        expect(page.locator("img[src$='/public/login.svg']")).to_be_visible()  # a vector: sharp at any size
        page.locator("#email").fill("bob")
        page.locator("#password").fill("not-his-password")
        page.locator("#password").press("Enter")
        expect(page.get_by_text("Wrong name or password.")).to_be_visible()
        expect(page.get_by_text("credentialssignin", exact=False)).not_to_be_visible()
        _shot(page, "login_wrong_password")
        page.locator("#password").fill("bob-password-2")
        page.locator("#password").press("Enter")
        expect(page.locator("#chat-input")).to_be_visible()

        # A file the app does not read: the refusal names what can be added, in words.
        pdf = tmp_path / "report.pdf"
        pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
        page.set_input_files("#upload-button-input", str(pdf))
        refusal = page.get_by_text("This kind of file cannot be added here", exact=False)
        expect(refusal).to_be_visible()
        expect(page.locator("[data-sonner-toast]").first).to_have_css("opacity", "1")
        expect(refusal).to_contain_text(".csv")
        expect(page.get_by_text("application/vnd", exact=False)).to_have_count(0)
        _shot(page, "unsupported_file")
        # A link to alice's chat: a plain "not found", a new chat of bob's own, and the tab goes on.
        page.goto(f"{server.base_url}/thread/{alice_thread}")
        expect(page.get_by_text("That chat was not found", exact=False).first).to_be_visible()
        expect(page.get_by_text("Could not reach the server")).to_have_count(0)
        expect(page.get_by_text(ALICE_ONLY)).to_have_count(0)  # nothing of alice's chat
        expect(page.locator("#welcome-screen img").first).to_be_visible()
        expect(page.locator("#welcome-screen")).to_have_css("opacity", "1")  # faded in
        expect(page.locator("[data-sonner-toast]").first).to_have_css("opacity", "1")
        _shot(page, "link_to_another_users_chat")
        page.locator("#chat-input").fill("hello")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Profile a project dataset", exact=False).last).to_be_visible(timeout=120_000)
        expect(page.get_by_text("Could not reach the server")).to_have_count(0)


def test_a_socket_for_alices_chat_opened_by_bob_is_a_new_chat_of_his(server: UIServer, alice_thread: str) -> None:
    """What the page's link does, at the socket: bob is let in, told "not found", sees nothing of
    alice's chat, and what he sends goes to a chat of his own; alice's chat is unchanged."""
    from tests.test_ui_auth import logged_in_with_password

    thread_id = alice_thread
    before = _thread(server, thread_id)
    client = logged_in_with_password(server, "bob", "bob-password-2")
    client.resume_thread_id = thread_id
    with client:
        events = [name for name, _ in client.events]
        assert "resume_thread_error" in events and "resume_thread" not in events, events
        assert ALICE_ONLY not in str(client.events)
        client.ask("hello from bob")
        assert client.wait_for(client.thread_id, 30, "bob's chat to be stored") != thread_id
    after = _thread(server, thread_id)
    assert after["userIdentifier"] == "alice" and len(after["steps"]) == len(before["steps"])
    assert "hello from bob" not in str(after)


# -- without a browser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "title"),
    [
        ("Please profile this file: what columns, types?", "Please profile this file: what columns, types?"),
        ("```python\nimport matplotlib.pyplot as plt\nplt.plot([1])\n```", "Python: import matplotlib.pyplot as plt"),
        ("```\n\n  x = 41\n```", "Code: x = 41"),
        ("Plot **revenue** by `region`:\n\n```python\ndf.plot()\n```", "Plot revenue by region:"),
        ("# Sales\n\n- [the file](http://x/y) and *more*", "Sales the file and more"),
        ("", "New chat"),
    ],
)
def test_a_chat_is_titled_from_the_plain_text_of_its_first_message(message: str, title: str) -> None:
    assert chat_title(message) == title


def test_a_long_first_message_gives_a_short_title() -> None:
    title = chat_title("word " * 100)
    assert len(title) <= 80 and title.endswith("…") and "  " not in title


def test_the_chat_list_puts_the_chat_used_last_first_and_dates_it_by_that_use(tmp_path: Path) -> None:
    from chainlit.types import Pagination, ThreadFilter

    from tests.test_history import DB, new_chat, new_user, run

    async def scenario(layer: Any) -> None:
        import chainlit as cl
        from chainlit.utils import utc_now

        alice = await new_user(layer, "alice")
        older, _ = await new_chat(layer, alice, "```python\nx = 41\n```", tmp_path)
        newer, _ = await new_chat(layer, alice, "second chat", tmp_path)
        listed = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=alice.id))
        assert [t["id"] for t in listed.data] == [newer, older]
        assert [t["name"] for t in listed.data] == ["second chat", "Python: x = 41"]

        await asyncio.sleep(0.01)
        again = cl.Message(content="print(x)", author="alice", type="user_message", created_at=utc_now())
        again.thread_id = older
        await layer.create_step(again.to_dict())
        listed = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=alice.id))
        assert [t["id"] for t in listed.data] == [older, newer]  # used last, listed first
        assert listed.data[0]["createdAt"] == again.created_at  # the page sorts and groups by this date
        stored = await layer.get_thread(older)
        assert stored is not None and stored["createdAt"] != again.created_at  # the chat's own date is kept

        await layer.update_thread(older, name="**my** name")  # a rename is kept as given
        assert (await layer.get_thread(older))["name"] == "**my** name"

    run(DB("sqlite", tmp_path / "app", None), scenario)


def test_panel_downloads_reads_the_files_panel_links() -> None:
    from core.files import FileEntry, FileListing
    from ui.outputs import listing_markdown

    entries = [FileEntry("out/a_b [1].csv", 10, 0), FileEntry("big.bin", 10**9, 0)]
    table = listing_markdown(FileListing(entries, 2, 10**9 + 10, None), {"out/a_b [1].csv": "/project/file/k?s=1"})
    assert panel_downloads(table) == {"out/a_b [1].csv": "/project/file/k?s=1"}
    assert "| big.bin |" in table and "**2 files**" in table


def test_a_reopened_chats_files_are_listed_from_its_stored_folder_only(tmp_path: Path) -> None:
    from ui.outputs import stored_folder

    def cwd(session_id: str) -> Path:
        return tmp_path / session_id / "cwd"

    (cwd("s-1") / "out").mkdir(parents=True)
    (cwd("s-1") / "out" / "a.csv").write_text("a\n1\n")
    folder = stored_folder(cwd, "s-1", 2)
    assert folder is not None
    listing = folder.list(10)
    assert [e.path for e in listing.entries] == ["out/a.csv"] and listing.quota_bytes == 2 * 1024 * 1024
    assert stored_folder(cwd, "../s-1", 2) is None  # not a session id: never a path
    assert stored_folder(cwd, "s-2", 2) is None  # no folder (yet): "no files"


def test_a_files_time_is_short_and_says_the_day_only_when_needed() -> None:
    import time

    from ui.outputs import when_text

    now = time.mktime((2026, 12, 7, 15, 0, 0, 0, 0, -1))
    assert when_text(now - 3600, now) == "14:00"
    assert when_text(now - 86400, now) == "6 Dec 15:00"
    assert when_text(now - 400 * 86400, now) == "2025-11-02"
