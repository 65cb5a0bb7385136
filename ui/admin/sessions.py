"""The live sessions of this server as the admin page shows them, and an admin's Stop.

A row per chat holding a live Weaver session here (``SessionOwner.live_chats``): its user, its chat
(the Chainlit thread), whether its page is connected, its kernel's memory and CPU (``processes``),
its age and how long since its last message. Stop ends the chat's session at once (its kernel
goes, as when its login ends: ``SessionOwner.end``) and tells its page why, in the chat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from ui.admin.processes import ProcessUsage, process_usage
from ui.lifecycle import LiveChat, SessionOwner

logger = logging.getLogger("weaver.ui.admin")

STOPPED_TEXT = (
    "An administrator stopped this chat's Python session: its kernel process is gone. "
    "Your next message starts a new one."
)


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    user: str
    chat_id: str
    chat_name: str
    connected: bool
    usage: ProcessUsage | None
    age_s: float
    idle_s: float


def _chat_of(key: str) -> tuple[str, bool]:
    """The Chainlit thread of a live chat and whether its page is connected now."""
    from chainlit.server import sio
    from chainlit.session import WebsocketSession

    ws = WebsocketSession.get_by_id(key)
    if ws is None:
        return "", False
    return str(getattr(ws, "thread_id", "") or ""), bool(sio.manager.is_connected(ws.socket_id, "/"))


def _kernel_pid(session: Any) -> int | None:
    pid = getattr(getattr(session, "executor", None), "kernel_pid", None)
    return pid if isinstance(pid, int) else None


def session_rows(owner: SessionOwner[Any], chat_names: dict[str, str]) -> list[SessionRow]:
    """Every live session here now (``chat_names``: thread id to its title, where known)."""
    now = time.time()
    rows = []
    for chat in owner.live_chats():
        chat_id, connected = _chat_of(chat.key)
        rows.append(
            SessionRow(
                session_id=str(chat.session.session_id),
                user=chat.user_name,
                chat_id=chat_id,
                chat_name=chat_names.get(chat_id, ""),
                connected=connected,
                usage=process_usage(_kernel_pid(chat.session)),
                age_s=max(0.0, now - chat.started_at),
                idle_s=max(0.0, now - chat.active_at),
            )
        )
    return rows


def find_chat(owner: SessionOwner[Any], session_id: str) -> LiveChat[Any] | None:
    return next((c for c in owner.live_chats() if str(c.session.session_id) == session_id), None)


async def stop_chat(owner: SessionOwner[Any], chat: LiveChat[Any]) -> None:
    """Stop the chat's session now and tell its page (when it has one) in the chat itself."""
    owner.end(chat.key)
    await asyncio.ensure_future(_tell(chat.key))  # a task: the chat's Chainlit context is set there only


async def _tell(key: str) -> None:
    import chainlit as cl
    from chainlit.config import config as chainlit_config
    from chainlit.context import init_ws_context
    from chainlit.session import WebsocketSession

    ws = WebsocketSession.get_by_id(key)
    if ws is None:
        return
    try:
        init_ws_context(ws)
        cl.user_session.set("weaver_session", None)
        await cl.ErrorMessage(content=STOPPED_TEXT, author=chainlit_config.ui.name).send()
    except Exception:
        logger.exception("could not tell chat %s that an administrator stopped its session", key)
