"""The outputs panel: every file of a chat (uploads and what its code wrote), to look at and download.

Each answer carries a "Files" action; pressing it opens Chainlit's element sidebar with the chat's
files, newest first, their sizes and times, and the folder's use of its quota. The list is read
from the session's folder when the button is pressed, so it is always current. Files are read
through ``core.safe_files`` and handed to Chainlit as bytes (a link, FIFO or hard link is refused
and named under the table), at most ``MAX_ATTACHED`` of them as downloads and none over
``MAX_ARTIFACT_BYTES``; the table names every listed file either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import chainlit as cl

from core import Session
from core.files import FileListing
from core.safe_files import Refusal, UnsafeFile, read_file
from core.text import human_size
from ui.bridge import run_in_thread
from ui.files import MAX_ARTIFACT_BYTES, MAX_NAMES_LISTED
from ui.markdown import code_text

ACTION = "weaver_outputs"
MAX_LISTED = 200
MAX_ATTACHED = 50
MAX_OFFERED_BYTES = 100 * 2**20  # downloads are held in memory until Chainlit stored them


def files_action(count: int) -> cl.Action:
    """The button under an answer that opens the chat's files."""
    return cl.Action(
        name=ACTION, payload={}, label=f"Files ({count})", tooltip="Everything this chat has made or received"
    )


def listing_markdown(listing: FileListing) -> str:
    """The table of files and the quota line (pure text, so it tests without Chainlit)."""
    used = human_size(listing.used_bytes)
    quota = f" of {human_size(listing.quota_bytes)}" if listing.quota_bytes else ""
    lines = [f"**{listing.total_files} file(s), {used}{quota} used**", ""]
    if listing.entries:
        lines += ["| file | size | changed |", "| --- | --- | --- |"]
        for entry in listing.entries:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.modified))
            lines.append(f"| `{code_text(entry.path)}` | {human_size(entry.size)} | {when} |")
    if listing.total_files > len(listing.entries):
        lines += ["", f"_showing the newest {len(listing.entries)} of {listing.total_files} files_"]
    return "\n".join(lines)


def read_downloads(
    root: Path, listing: FileListing, max_total_bytes: int = MAX_OFFERED_BYTES
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The listed files to offer as downloads, as ``(name, bytes)`` read through ``core.safe_files``
    (at most ``MAX_ATTACHED``, none over ``MAX_ARTIFACT_BYTES``, ``max_total_bytes`` in all), and
    a sentence per file refused or left out. Blocking: call it off the event loop."""
    downloads: list[tuple[str, bytes]] = []
    refused: list[str] = []
    total = 0
    left_out = 0
    for entry in listing.entries:
        if len(downloads) >= MAX_ATTACHED:
            break
        if entry.size > MAX_ARTIFACT_BYTES or entry.size == 0:  # Chainlit cannot attach empty content
            continue
        if total + entry.size > max_total_bytes:
            left_out += 1
            continue
        try:
            downloads.append(
                (entry.path, read_file(root, entry.path, min(MAX_ARTIFACT_BYTES, max_total_bytes - total)))
            )
            total += len(downloads[-1][1])
        except UnsafeFile as exc:
            if exc.reason is Refusal.TOO_BIG:  # grew since it was listed
                left_out += 1
            elif exc.reason is not Refusal.MISSING:
                refused.append(f"`{code_text(exc.name)}` {exc.said}")
        except OSError:
            continue
    if left_out:
        refused.append(
            f"{left_out} more file(s), as one panel offers at most {human_size(max_total_bytes)}; "
            "they are in the session's working folder"
        )
    return downloads, refused


async def show_outputs(session: Session, max_total_bytes: int = MAX_OFFERED_BYTES) -> None:
    """Open the element sidebar with the session's files as downloads and the table of all of them."""
    listing = await run_in_thread(session.files, MAX_LISTED, name="weaver-list-files")
    root = Path(session.execution_cwd)
    downloads, refused = await run_in_thread(read_downloads, root, listing, max_total_bytes, name="weaver-read-files")
    table = listing_markdown(listing)
    if refused:
        table += "\n\n_Not offered for download: " + "; ".join(refused[:MAX_NAMES_LISTED]) + "._"
    elements: list[cl.Element] = [cl.Text(name="Files of this chat", content=table, display="side")]
    elements += [cl.File(name=name, content=content, display="side") for name, content in downloads]
    await cl.ElementSidebar.set_title("Files of this chat")
    await cl.ElementSidebar.set_elements(elements, key=f"outputs-{time.monotonic_ns()}")
