"""Chainlit's socket.io ``connect`` handler (``chainlit.socket.connect``, found in python-socketio's
``sio.handlers["/"]["connect"]``), wrapped: a ``sessionId`` or ``threadId`` that is not a canonical
UUID is refused before Chainlit builds a folder path or a database key from it; the Host/Origin rules
are checked again (should the middleware ever be bypassed); a page whose replica died is
resumed into its chat (``ui.guards.failover``); and a link to a chat that is not the user's opens a
new chat instead (``ui.reopen.not_yours``), where Chainlit would refuse the socket and leave the tab
dead behind "Could not reach the server".
"""

from __future__ import annotations

import logging
from typing import Any

from ui.guards.failover import resume_elsewhere
from ui.guards.middleware import GuardPolicy
from ui.ids import is_canonical_uuid
from ui.reopen import not_yours

logger = logging.getLogger("weaver.ui.patches.socket_connect")


def install(sio: Any, policy: GuardPolicy) -> None:
    original = sio.handlers["/"]["connect"]
    if getattr(original, "weaver_patched", False):
        return

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> Any:
        session_id = auth.get("sessionId") if isinstance(auth, dict) else None
        if not is_canonical_uuid(session_id):
            logger.warning("refused socket %s: sessionId %.80r is not a UUID", sid, session_id)
            raise ConnectionRefusedError("invalid session id")
        thread_id = auth.get("threadId") if isinstance(auth, dict) else None
        if thread_id and not is_canonical_uuid(thread_id):  # the chat to resume becomes a database key
            logger.warning("refused socket %s: threadId %.80r is not a UUID", sid, thread_id)
            raise ConnectionRefusedError("invalid thread id")
        scope = environ.get("asgi.scope") or {}
        refusal = policy.host_origin.refusal(scope) if scope else None
        if refusal is not None:  # the middleware said no already; kept in case it is bypassed
            raise ConnectionRefusedError(refusal[1])
        if not thread_id:
            auth = await resume_elsewhere(policy.thread_of_chat, str(session_id), auth)
        return await not_yours(original, sid, environ, auth)

    connect.weaver_patched = True  # type: ignore[attr-defined]
    sio.handlers["/"]["connect"] = connect
