"""The Files panel: every file of a chat (uploads and what its code wrote), to look at and download.

Each answer carries a "Files" action; pressing it opens Chainlit's element sidebar, titled "Files of
this chat", with one table: each file once, newest first, its size and when it changed, and the
folder's use of its quota. A file's name is its download link (``public/weaver.js`` gives the
download the file's own name; its full name shows on hover when the column cuts it short). The list
is read from the session's folder when the button is pressed, so it is always current; a chat
reopened before its first new message is listed from its stored folder (``stored_folder``).

Files are read through ``core.safe_files`` and handed to Chainlit as bytes (a link, FIFO or hard link
is refused and named under the table), at most ``MAX_ATTACHED`` of them offered for download and
none over ``MAX_ARTIFACT_BYTES``; the table names every listed file either way.

The panel holds a single element, sent with the panel only: Chainlit's page opens a panel of its own
for every ``side`` element it receives, titled after the last one, and that would cover ours.
"""

from __future__ import annotations

import mimetypes
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import chainlit as cl
from chainlit.config import config as chainlit_config

from core import Session
from core.app import SESSION_ID
from core.execution.limits import MB
from core.files import FileListing, list_files
from core.safe_files import Refusal, UnsafeFile, read_file
from core.text import human_size
from ui.bridge import run_in_thread
from ui.files import MAX_ARTIFACT_BYTES, MAX_NAMES_LISTED
from ui.markdown import code_text

ACTION = "weaver_outputs"
TITLE = "Files of this chat"
MAX_LISTED = 200
MAX_ATTACHED = 50
MAX_OFFERED_BYTES = 100 * 2**20  # downloads are held in memory until Chainlit stored them
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~\"])")
Lister = Callable[[int], FileListing]


def files_action(count: int) -> cl.Action:
    """The button under an answer that opens the chat's files."""
    return cl.Action(
        name=ACTION, payload={}, label=f"Files ({count})", tooltip="Everything this chat has made or received"
    )


@dataclass(frozen=True)
class Folder:
    """Where a chat's files are, and how to list them (a live session, or its stored folder)."""

    root: Path
    list: Lister


def session_folder(session: Session) -> Folder:
    return Folder(Path(session.execution_cwd), session.files)


def stored_folder(workspace_cwd: Callable[[str], Path], session_id: str, quota_mb: float | None) -> Folder | None:
    """The folder of a chat's Weaver session that is not running (a chat reopened from the sidebar
    or after a reload, before its next message brings the session back); None for an id that is
    not a session's. ``workspace_cwd`` is ``Workspace.execution_cwd``."""
    if not SESSION_ID.match(session_id):
        return None
    root = workspace_cwd(session_id)
    if not root.is_dir():
        return None
    quota = int(quota_mb * MB) if quota_mb else None  # as Session.files counts it
    return Folder(root, lambda limit: list_files(root, limit, quota))


def when_text(modified: float, now: float | None = None) -> str:
    """A short local time: "14:02" today, "6 Dec 14:02" this year, "2025-12-06" before."""
    now = time.time() if now is None else now
    at, today = time.localtime(modified), time.localtime(now)
    if at[:3] == today[:3]:
        return time.strftime("%H:%M", at)
    if at.tm_year == today.tm_year:
        return f"{at.tm_mday} {time.strftime('%b %H:%M', at)}"
    return time.strftime("%Y-%m-%d", at)


def _link_text(text: str) -> str:
    """``text`` shown literally inside a Markdown link or table cell."""
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def listing_markdown(listing: FileListing, urls: Mapping[str, str] | None = None, now: float | None = None) -> str:
    """The quota line and the table of files, each file once; a name with a download URL in
    ``urls`` is its link, titled with the full name (pure text, so it tests without Chainlit)."""
    urls = urls or {}
    used = human_size(listing.used_bytes)
    quota = f" of {human_size(listing.quota_bytes)}" if listing.quota_bytes else ""
    count = f"{listing.total_files} file" + ("" if listing.total_files == 1 else "s")
    lines = [f"**{count}**, {used}{quota} used. Click a name to download the file.", ""]
    if listing.entries:
        lines += ["| file | size | changed |", "| --- | --: | --- |"]
        for entry in listing.entries:
            name = _link_text(entry.path)
            url = urls.get(entry.path)
            cell = f'[{name}]({url} "{name}")' if url else name
            lines.append(f"| {cell} | {human_size(entry.size)} | {when_text(entry.modified, now)} |")
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
        if entry.size > MAX_ARTIFACT_BYTES or entry.size == 0:  # Chainlit cannot store empty content
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


async def _store(name: str, content: bytes) -> str:
    """Hand one file to Chainlit's session store and return its id (served by Chainlit's own
    ``/project/file`` route, which checks the session and its user)."""
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    stored = await cl.context.session.persist_file(name=name, mime=mime, content=content)
    return str(stored["id"])


def _download_url(file_id: str) -> str:
    root = chainlit_config.run.root_path or ""
    return f"{root}/project/file/{file_id}?session_id={cl.context.session.id}"


async def show_outputs(folder: Folder, max_total_bytes: int = MAX_OFFERED_BYTES) -> None:
    """Open the side panel with the folder's files: one table, the names as downloads.

    The panel is sent as ``ElementSidebar`` sends it, but without first sending its element on its
    own: the page treats a lone element as one to show in a panel named after it."""
    listing = await run_in_thread(folder.list, MAX_LISTED, name="weaver-list-files")
    downloads, refused = await run_in_thread(
        read_downloads, folder.root, listing, max_total_bytes, name="weaver-read-files"
    )
    urls = {name: _download_url(await _store(name, content)) for name, content in downloads}
    table = listing_markdown(listing, urls)
    if refused:
        table += "\n\n_Not offered for download: " + "; ".join(refused[:MAX_NAMES_LISTED]) + "._"
    # Named like a text file so it is stored as one (ui.patches.upload_mime checks name and type).
    panel = cl.Text(name="files-of-this-chat.txt", content=table, display="inline", mime="text/plain")
    panel.chainlit_key = await _store(panel.name, table.encode())
    await cl.ElementSidebar.set_title(TITLE)
    await cl.context.emitter.emit(
        "set_sidebar_elements", {"elements": [panel.to_dict()], "key": f"outputs-{time.monotonic_ns()}"}
    )
