"""A chat of the history, exported: its rounds from its Weaver session's folder, its name and the
ratings people gave from the history database (``core.export`` makes the notebook or Markdown).

The source of truth for what was said and run is the session's ``rounds.jsonl`` (the chat's
``weaver_session_id`` metadata names the session): it holds every round with its code and
outputs, also after a restart, where the history's steps hold only what was drawn. The history
adds what only it knows: the chat's name, and the thumbs and comments on its messages, placed by
the round they were given in (the user message that started it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.export import (
    MAX_FILES_NAMED,
    MAX_IMAGE_BYTES,
    ChatRecord,
    ExportFormat,
    Rating,
    chat_files,
    export_chat,
)
from core.files import safe_file_name
from core.memory import Round
from core.resume import load_rounds
from core.workspace import Workspace
from ui.settings import UISettings, ui_settings

SESSION_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")  # as core.app: a folder name, never a path
ON_WORDS = 8  # words of a rated message other than the answer that name it


def session_of(thread: Mapping[str, Any]) -> str | None:
    """The Weaver session id a chat's metadata names, if it is one."""
    metadata: Any = thread.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata or "{}")
        except json.JSONDecodeError:
            return None
    found = metadata.get("weaver_session_id") if isinstance(metadata, dict) else None
    return found if isinstance(found, str) and SESSION_ID.match(found) else None


def _matches(message: str, rnd: Round) -> bool:
    text = message.strip()
    return bool(text) and (rnd.user_query.strip() == text or text in rnd.user_query)


def place_ratings(
    steps: Sequence[Mapping[str, Any]], rounds: Sequence[Round]
) -> tuple[dict[int, list[Rating]], list[Rating]]:
    """The ratings on the chat's steps, by the round of the user message before them (the last
    assistant message after it is that round's answer); ratings before the first user message, or
    after one that started no round, are "other"."""
    segments: list[tuple[int | None, list[Mapping[str, Any]]]] = [(None, [])]
    next_round = 0
    for step in sorted(steps, key=lambda s: str(s.get("createdAt") or "")):
        if step.get("type") != "user_message":
            segments[-1][1].append(step)
            continue
        text = str(step.get("output") or "")
        found = next((i for i in range(next_round, len(rounds)) if _matches(text, rounds[i])), None)
        if found is None and next_round < len(rounds) and not text.strip():
            found = next_round  # a message of files only: its round's query is the files' note
        if found is not None:
            next_round = found + 1
        segments.append((found, []))
    by_round: dict[int, list[Rating]] = {}
    other: list[Rating] = []
    for index, segment in segments:
        answers = [s for s in segment if s.get("type") == "assistant_message"]
        answer = answers[-1] if answers and index is not None else None
        for step in segment:
            feedback = step.get("feedback")
            if not isinstance(feedback, Mapping) or feedback.get("value") is None:
                continue
            words = str(step.get("output") or "").split()
            on = "answer" if step is answer else "message “" + " ".join(words[:ON_WORDS])
            on += "" if step is answer else ("…”" if len(words) > ON_WORDS else "”")
            rating = Rating(int(feedback["value"]), str(feedback.get("comment") or ""), on)
            (by_round.setdefault(index, []) if index is not None else other).append(rating)
    return by_round, other


@dataclass(frozen=True)
class ExportLimits:
    """``WEAVER_UI_EXPORT_MAX_IMAGE_MB`` and ``WEAVER_UI_EXPORT_MAX_FILES``."""

    max_image_bytes: int = MAX_IMAGE_BYTES
    max_files: int = MAX_FILES_NAMED

    @classmethod
    def from_settings(cls, settings: UISettings) -> ExportLimits:
        return cls(int(settings.export_max_image_mb * 2**20), settings.export_max_files)


def record_from_thread(
    thread: Mapping[str, Any], workspace: Workspace, limits: ExportLimits = ExportLimits()
) -> ChatRecord:
    """The export of a chat of the history (its dict as ``get_thread`` returns it). Reads files:
    call it off the event loop."""
    session_id = session_of(thread)
    rounds = load_rounds(workspace.session_dir(session_id) / "rounds.jsonl") if session_id else []
    steps = [s for s in thread.get("steps") or [] if isinstance(s, Mapping)]
    ratings, other = place_ratings(steps, rounds)
    cwd = workspace.execution_cwd(session_id) if session_id else None
    files, more = chat_files(cwd, limits.max_files) if cwd is not None else ([], 0)
    return ChatRecord(
        chat_id=str(thread.get("id") or ""),
        title=str(thread.get("name") or "Chat"),
        rounds=rounds,
        ratings=ratings,
        other_ratings=other,
        cwd=cwd,
        files=files,
        more_files=more,
        max_image_bytes=limits.max_image_bytes,
    )


async def read_thread(app_dir: Path, thread_id: str) -> Any | None:
    """The chat ``thread_id`` as the history of ``app_dir``'s server holds it (``WEAVER_DATABASE_URL``,
    else ``<app_dir>/weaver.db``), or None. Reads only: the schema is checked, no server's spool is
    touched."""
    from ui.history import database_url_for, history_settings, make_storage
    from ui.history.layer import WeaverDataLayer

    settings = history_settings()
    if settings.database_url is None and not (app_dir / "weaver.db").is_file():
        return None
    layer = WeaverDataLayer(
        database_url_for(app_dir, settings.database_url), make_storage(app_dir, settings.file_storage)
    )
    try:
        await layer.open()
        return await layer.get_thread(thread_id)
    finally:
        await layer.close()


async def export_from_history(app_dir: Path, thread_id: str, fmt: ExportFormat) -> tuple[ChatRecord, bytes] | None:
    """The chat ``thread_id`` of the history the server of ``app_dir`` uses (``WEAVER_DATABASE_URL``,
    else ``<app_dir>/weaver.db``), exported; None when there is no such chat. Reads only: the
    schema is checked, no server's spool is touched."""
    thread = await read_thread(app_dir, thread_id)
    if thread is None:
        return None
    limits = ExportLimits.from_settings(ui_settings())
    record = await asyncio.to_thread(record_from_thread, thread, Workspace(app_dir), limits)
    return record, await asyncio.to_thread(export_chat, record, fmt)


def run_export(chat_id: str, fmt: str, output: str | None, app_dir: str | None) -> int:
    """``weaver export CHAT_ID [--format ipynb|md] [-o FILE]``: write the export to FILE (default
    ``<chat name>.<format>`` in this folder; ``-`` for standard output)."""
    folder = Path(app_dir or os.environ.get("WEAVER_APP_DIR") or ".weaver").resolve()
    found = asyncio.run(export_from_history(folder, chat_id, ExportFormat(fmt)))
    if found is None:
        print(f"weaver export: no chat {chat_id!r} in the history of {folder}", file=sys.stderr)
        return 1
    record, body = found
    if output == "-":
        sys.stdout.buffer.write(body)
        return 0
    target = Path(output) if output else Path(safe_file_name(f"{record.title or 'chat'}.{fmt}"))
    target.write_bytes(body)
    print(f"wrote {target} ({len(record.rounds)} round{'s' if len(record.rounds) != 1 else ''})")
    return 0
