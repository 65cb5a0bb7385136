"""The outputs panel: a chat's files, listed with their sizes and its quota, each downloadable."""

from __future__ import annotations

import time

import httpx

from core.files import FileEntry, FileListing
from tests.ui_harness import UIServer, code_block, ui_server
from ui.outputs import listing_markdown

__all__ = ["ui_server"]

REPORT = b"region,units\nnorth,3\nsouth,5\n"


def test_the_files_button_lists_a_written_file_and_it_downloads(ui_server: UIServer) -> None:
    code = f"open('report.csv', 'wb').write({REPORT!r})\nprint('written')"
    with ui_server.client() as client:
        turn = client.ask(code_block(code))
        answer_ids = {m["id"] for m in turn if m.get("type") == "assistant_message"}
        action = client.wait_for(
            lambda: next((d for n, d in client.events if n == "action" and d.get("forId") in answer_ids), None),
            30,
            "the Files button under the answer",
        )
        assert action["name"] == "weaver_outputs" and action["label"] == "Files (1)"
        pressed = httpx.post(
            f"{ui_server.base_url}/project/action",
            json={"sessionId": client.session_id, "action": action},
            headers=client.headers,
            timeout=30,
        )
        assert pressed.status_code == 200, pressed.text
        shown = client.wait_for(
            lambda: [d for n, d in client.events if n == "set_sidebar_elements" and d.get("elements")], 30, "the panel"
        )
        elements = shown[-1]["elements"]
        table = next(e for e in elements if e["type"] == "text")
        report = next(e for e in elements if e["name"] == "report.csv")

        def fetch(element: dict) -> httpx.Response:
            return httpx.get(
                f"{ui_server.base_url}/project/file/{element['chainlitKey']}",
                params={"session_id": client.session_id},
                headers=client.headers,
                timeout=10,
            )

        served, listed = fetch(report), fetch(table).text
    assert served.status_code == 200 and served.content == REPORT
    assert served.headers["content-disposition"] == "attachment"
    size = f"{len(REPORT)} B"
    assert f"| `report.csv` | {size} |" in listed and f"**1 file(s), {size} of 1.0 GB used**" in listed, listed


def test_the_listing_says_sizes_quota_and_what_it_left_out() -> None:
    now = time.time()
    entries = [FileEntry("out/chart.png", 2048, now), FileEntry("a`b.csv", 10, now - 60)]
    text = listing_markdown(FileListing(entries, total_files=5, used_bytes=3 * 1024 * 1024, quota_bytes=1024**3))
    assert "**5 file(s), 3.0 MB of 1.0 GB used**" in text
    assert "| `out/chart.png` | 2.0 KB |" in text and "`a'b.csv`" in text  # a name cannot break the table
    assert "showing the newest 2 of 5 files" in text
