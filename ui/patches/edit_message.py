"""Chainlit's socket.io ``edit_message`` handler (``chainlit.socket.edit_message``, found in
python-socketio's ``sio.handlers["/"]["edit_message"]``), replaced.

Chainlit's runs whatever ``features.edit_message`` says (the setting only hides the pencil in the
browser), and it calls ``on_message`` again with the edited text, in the same kernel: the variables
of the rounds it replaced stay. Here an edit is refused on the server while editing is off
(``enabled()``: ``edit_message`` in ``.chainlit/config.toml`` and ``WEAVER_UI_EDIT_MESSAGES``), and
otherwise handed to Weaver's own handler (``ui.rerun``), which re-runs that round from the kernel
state before it (``Session.rerun``). It runs as a task the session's Stop cancels, as a new message
does (``chainlit.socket.message``); it relies on ``init_ws_context`` as Chainlit's own handler does
(the handler sends ``task_start``/``task_end`` itself, around the round only: a refused edit must
not mark a round that is still running as ended).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

logger = logging.getLogger("weaver.ui.patches.edit_message")

EditHandler = Callable[[str, str], Awaitable[None]]
MAX_ID_CHARS = 100


def install(sio: Any, enabled: Callable[[], bool], handler: EditHandler) -> None:
    from chainlit.context import init_ws_context
    from chainlit.session import WebsocketSession

    original = sio.handlers["/"]["edit_message"]
    if getattr(original, "weaver_patched", False):
        return

    async def run(session: Any, message_id: str, text: str) -> None:
        init_ws_context(session)  # the handler marks the task running only once it runs the round
        try:
            await handler(message_id, text)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("editing message %s failed", message_id)

    async def edit_message(sid: str, payload: Any) -> dict[str, str] | None:
        if not enabled():
            logger.warning("refused an edit on socket %s: editing messages is off", sid)
            return {"refused": "Editing messages is turned off on this server."}
        message = payload.get("message") if isinstance(payload, dict) else None
        message_id = message.get("id") if isinstance(message, dict) else None
        text = message.get("output") if isinstance(message, dict) else None
        if not isinstance(message_id, str) or len(message_id) > MAX_ID_CHARS or not isinstance(text, str):
            logger.warning("refused an edit on socket %s: not a message edit", sid)
            return {"refused": "That is not an edit of a message."}
        session = WebsocketSession.require(sid)
        session.current_task = asyncio.create_task(run(session, message_id, text))
        return None

    edit_message.weaver_patched = True  # type: ignore[attr-defined]
    sio.handlers["/"]["edit_message"] = edit_message
