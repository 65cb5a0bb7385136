"""Small pieces of Chainlit's own chat flow that Weaver words differently.

* A reopened chat gets its "Files (N)" button under its last answer (``last_answer_id``): Chainlit
  keeps no actions in its history.
* A link to another user's chat opens a new chat with a "not found" note (``not_yours``), not a
  dead tab.
* Stop: Chainlit posts "Task manually stopped." before it calls ``on_stop``; when the round then
  says "Round cancelled…" itself, Chainlit's note is taken away (``remove_stop_notice``). Stopped
  before a round began (a chat's restore), Chainlit's note is the one that stays.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Mapping

import chainlit as cl
from chainlit.config import config
from chainlit.session import WebsocketSession

logger = logging.getLogger("weaver.ui.reopen")

AUTHORIZATION_FAILED = "authorization failed"  # chainlit/socket.py, connect (2.12)
CHAINLIT_STOP_NOTICE = "Task manually stopped."  # chainlit/socket.py, the "stop" event (2.12)


def last_answer_id(thread: Mapping[str, Any]) -> str | None:
    """The id of the chat's last assistant message, or None."""
    steps = thread.get("steps") or []
    answers = [s for s in steps if isinstance(s, Mapping) and s.get("type") == "assistant_message"]
    return str(answers[-1]["id"]) if answers and answers[-1].get("id") else None


def is_stop_notice(message: cl.Message) -> bool:
    """Chainlit's own note: an assistant message by the app's name (``config.ui.name``, the author a
    bare ``Message`` gets) with that text; a user who typed the same words is never taken for it."""
    return (
        message.content == CHAINLIT_STOP_NOTICE
        and message.type == "assistant_message"
        and message.author == config.ui.name
    )


async def remove_stop_notice() -> None:
    """Remove Chainlit's "Task manually stopped." just posted in this chat, if it is there."""
    for message in reversed(cl.chat_context.get()):
        if is_stop_notice(message):
            await message.remove()
            return


async def not_yours(connect: Callable[..., Awaitable[Any]], sid: str, environ: Any, auth: Any) -> Any:
    """Chainlit's socket ``connect``, for a page that opened a link to another user's chat: Chainlit
    refuses such a socket ("authorization failed"), and the page then shows "Could not reach the
    server" and sends nothing more. Here the socket is let in as a new chat of the user's own
    (Chainlit checks again who may connect), and the chat asked for is left to Chainlit's resume,
    which finds it is not the user's and tells the page "Thread not found": the page says the chat
    could not be opened and shows the new one."""
    try:
        return await connect(sid, environ, auth)
    except ConnectionRefusedError as refusal:  # the builtin, as Chainlit raises it
        thread_id = auth.get("threadId") if isinstance(auth, dict) else None
        if not thread_id or AUTHORIZATION_FAILED not in refusal.args:
            raise
    logger.info("socket %s asked for chat %s, which is not the user's: a new chat instead", sid, thread_id)
    accepted = await connect(sid, environ, {**auth, "threadId": ""})
    session = WebsocketSession.get(sid)
    if session is not None and not session.restored:  # a page coming back keeps its own chat, and no note
        session.thread_id_to_resume = thread_id  # refused by Chainlit's resume: its author is not this user
    return accepted
