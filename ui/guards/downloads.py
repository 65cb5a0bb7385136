"""Every file a user downloads is an audit line (``ui.audit``), whichever route served it.

Users' files are served by two routes (``FileServing.prefixes``): Chainlit's ``/project/file/<id>``
(a file of a live chat, named by the socket session it belongs to) and the history's
``/weaver/files/<key>`` (``ui.history.route``). The guard middleware watches the answer of both and
records a download when it starts (200, or 206 for a range). The history route leaves who and what
in the request's state (``DOWNLOAD_STATE``); for Chainlit's route they are read from its chat
session, which Chainlit has just checked belongs to the caller.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping
from urllib.parse import parse_qs

from ui import audit
from ui.audit_user import request_user
from ui.guards.asgi import Message, Scope, Send

logger = logging.getLogger("weaver.ui.guards")

DOWNLOAD_STATE = "weaver_download"  # scope["state"][...]: {"user", "file", "chat"} set by a route
SERVED = (200, 206)


def _from_chainlit(scope: Scope) -> dict[str, Any]:
    """Who and what for ``/project/file/<id>?session_id=``: the chat session's user and file."""
    from chainlit.session import WebsocketSession

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    session = WebsocketSession.get_by_id((query.get("session_id") or [""])[0])
    file_id = str(scope.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
    if session is None:
        return {"user": request_user(scope), "file": file_id}
    found = session.files.get(file_id) or {}
    return {
        "user": str(getattr(session.user, "identifier", "") or ""),
        "file": str(found.get("name") or file_id),
        "chat": str(session.thread_id or ""),
    }


def record_download(scope: Scope, status: int) -> None:
    """One ``file_downloaded`` audit line for the answer now starting."""
    state = scope.get("state")
    given = state.get(DOWNLOAD_STATE) if isinstance(state, Mapping) else None
    what = dict(given) if isinstance(given, Mapping) else _from_chainlit(scope)
    audit.record(
        audit.AuditEvent.FILE_DOWNLOADED,
        user=str(what.pop("user", "") or ""),
        client=audit.scope_client(scope),
        path=str(scope.get("path", "")),
        partial=status == 206,
        **{k: str(v) for k, v in what.items()},
    )


def watch_downloads(scope: Scope, send: Send) -> Send:
    """``send``, recording a download when a user's file starts to go out (GET only)."""
    if scope.get("method") != "GET":
        return send

    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") in SERVED:
            try:
                record_download(scope, int(message["status"]))
            except Exception:  # the download goes on; the server log says what was not recorded
                logger.exception("could not record the download of %s", scope.get("path"))
        await send(message)

    return watched
