"""Replica fail-over: a page whose replica died comes back into its own chat on another replica.

Behind a sticky proxy (``deploy/haproxy.cfg``) every answer names its replica (``X-Weaver-Replica``,
only when ``WEAVER_UI_REPLICA_ID`` is set). When a replica dies, its pages reconnect elsewhere with
their old ``sessionId``; ``resume_elsewhere`` turns that into a resume of the chat's thread, which
the shared database remembers (``ui.shared.LiveSessions.thread_of``). The socket ``connect`` patch
(``ui.patches.socket_connect``) calls it.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from ui.ids import is_canonical_uuid

logger = logging.getLogger("weaver.ui.guards.failover")

REPLICA_HEADER = b"x-weaver-replica"
ThreadOf = Callable[[str], Awaitable[str | None]]


async def resume_elsewhere(thread_of_chat: ThreadOf | None, session_id: str, auth: dict[str, Any]) -> dict[str, Any]:
    """The socket's ``auth``, asking Chainlit to resume the chat's thread when the chat lived on another
    replica: without a ``threadId`` Chainlit would open an empty chat. Chainlit itself still refuses a
    thread that is not the signed-in user's."""
    if thread_of_chat is None:
        return auth
    from chainlit.session import WebsocketSession

    if WebsocketSession.get_by_id(session_id) is not None:
        return auth  # live here: Chainlit restores it as usual
    try:
        thread_id = await thread_of_chat(session_id)
    except Exception:
        logger.exception("could not look up the thread of chat %s", session_id)
        return auth
    if thread_id and is_canonical_uuid(thread_id):
        logger.info("chat %s reconnects from another replica: resuming its thread %s", session_id, thread_id)
        return {**auth, "threadId": thread_id}
    return auth
