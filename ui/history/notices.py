"""A quiet notice in each chat whose changes the database has not taken for a while.

While the database fails, the write-behind keeps every change (``ui.history.write_behind``), and
the chat goes on as usual: without a word, its user would think it saved. Once a chat has had
changes waiting for ``after_s`` seconds, each page showing it live on this server gets one small
message saying so (once per outage per chat); when the database takes them, the same message
says the chat is saved again. The message is shown, not stored: it is about the server, not part
of the conversation (and storing it would need the database that is away).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from ui.history.threads import DELETED_THREAD, thread_of
from ui.history.write_behind import WriteBehind

logger = logging.getLogger("weaver.ui.history")

DEFAULT_EVERY_S = 1.0


def unsaved_text(seconds: float) -> str:
    return (
        f"This chat could not be saved for {seconds:.0f} s: the history database does not answer. "
        "Nothing is lost: it will be saved when the database is back."
    )


def saved_text(seconds: float) -> str:
    return f"This chat is saved again (the history database was away for {seconds:.0f} s)."


@dataclass
class _Notice:
    since: float  # monotonic: when this chat was first seen waiting
    message_id: str | None = None  # set once told


class OutageNotices:
    """Watches the write-behind every ``every_s`` seconds and tells the chats that wait."""

    def __init__(self, writes: WriteBehind, after_s: float, every_s: float = DEFAULT_EVERY_S) -> None:
        self.writes = writes
        self.after_s = after_s
        self.every_s = every_s
        self._waiting: dict[str, _Notice] = {}  # by chat, in this outage
        self._loop: asyncio.Task[None] | None = None
        self._telling: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        if self._telling:
            await asyncio.gather(*list(self._telling), return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                self.check()
            except Exception:
                logger.exception("checking which chats wait for the database failed")

    def check(self, now: float | None = None) -> None:
        """Tell the chats that have waited ``after_s``; tell the told ones when all is stored."""
        now = time.monotonic() if now is None else now
        if self.writes.failing_since is None:
            for thread_id, notice in self._waiting.items():
                if notice.message_id is not None:
                    self._tell(thread_id, notice.message_id, saved_text(now - notice.since), update=True)
            self._waiting.clear()
            return
        waiting = {thread_of(key) for key in self.writes.pending_keys() if not key.startswith(DELETED_THREAD)}
        for thread_id in waiting:
            notice = self._waiting.setdefault(thread_id, _Notice(since=now))
            if notice.message_id is None and now - notice.since >= self.after_s:
                notice.message_id = str(uuid.uuid4())
                self._tell(thread_id, notice.message_id, unsaved_text(now - notice.since), update=False)

    def _tell(self, thread_id: str, message_id: str, text: str, update: bool) -> None:
        from chainlit.session import ws_sessions_id

        for ws in list(ws_sessions_id.values()):
            if ws.thread_id == thread_id:
                task = asyncio.ensure_future(_show(ws, message_id, text, update))
                self._telling.add(task)
                task.add_done_callback(self._telling.discard)


async def _show(ws: object, message_id: str, text: str, update: bool) -> None:
    """In a task of its own, so Chainlit's context is that chat's (``init_ws_context``)."""
    import chainlit as cl
    from chainlit.config import config as chainlit_config
    from chainlit.context import init_ws_context

    try:
        context = init_ws_context(ws)  # type: ignore[arg-type]
        payload = cl.Message(content=text, author=chainlit_config.ui.name, id=message_id).to_dict()
        if update:
            await context.emitter.update_step(payload)
        else:
            await context.emitter.send_step(payload)
    except Exception:
        logger.exception("could not tell a chat that it waits for the database")
