"""Uploads: refused by size before they are read, and by count per message.

Chainlit reads an upload whole before checking its size, and only the browser limits the files of
one message. Here a body whose ``Content-Length`` is over the limit gets 413 at once; one that lies
about its length is cut off as soon as it passes the limit (Chainlit is told the client left, so it
stores nothing); and a chat holding ``max_files`` uploads since its last message gets 429.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs

from ui.guards.asgi import ASGIApp, Message, Receive, Scope, Send, header
from ui.guards.headers import ResponseHeaders, refuse

MULTIPART_SLACK_BYTES = 64 * 1024  # multipart boundaries and part headers around one file


@dataclass
class UploadLedger:
    """How many files each chat has uploaded since its last message (Chainlit counts none)."""

    counts: dict[str, int] = field(default_factory=dict)

    def pending(self, chat_id: str) -> int:
        return self.counts.get(chat_id, 0)

    def add(self, chat_id: str) -> None:
        self.counts[chat_id] = self.counts.get(chat_id, 0) + 1

    def message_sent(self, chat_id: str) -> None:
        """The chat sent its message: the files it held went with it."""
        self.counts.pop(chat_id, None)


@dataclass
class UploadGuard:
    """``POST {path}``: one file into a chat. The limits are read per request (they follow config)."""

    path: str
    max_bytes: Callable[[], int]
    max_files: Callable[[], int]
    ledger: UploadLedger = field(default_factory=UploadLedger)

    def applies(self, scope: Scope) -> bool:
        return scope.get("method") == "POST" and scope.get("path") == self.path

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, out: ResponseHeaders) -> None:
        limit = self.max_bytes()
        length = header(scope.get("headers") or [], b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await refuse(scope, send, 413, f"the file is larger than the limit of {_mb(limit)}")
            return
        named = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get("session_id")
        if named is not None and len(named) > 1:
            # Chainlit stores the file in the chat named last; the count must be that chat's too.
            await refuse(scope, send, 400, "an upload names its chat once")
            return
        chat_id = (named or [""])[0]
        max_files = self.max_files()
        if self.ledger.pending(chat_id) >= max_files:
            await refuse(scope, send, 429, f"at most {max_files} files can be attached to one message; send it first")
            return
        received = 0
        too_large = False
        status = 0

        async def counted_receive() -> Message:
            # Past the limit the app is told the client left, so it stops reading and stores nothing.
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status
            if too_large:
                return  # whatever the app makes of the "disconnect", the answer is ours
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, counted_receive, out.wrap(watched_send, False))
        except Exception:
            if not too_large:
                raise
        if too_large:
            await refuse(scope, send, 413, f"the file is larger than the limit of {_mb(limit)}")
            return
        if 200 <= status < 300:
            self.ledger.add(chat_id)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MB"
