"""The security headers on every response, and the guards' own refusals.

Chainlit sets none of them. Only response headers are read and written, so this works on
compressed bodies too. A user's file is never a page: even opened directly, nothing in it may run
or load (``FILE_CSP``, and ``Content-Disposition: attachment``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable

from ui.guards.asgi import Message, Scope, Send, header
from ui.guards.failover import REPLICA_HEADER

COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)
FILE_CSP = b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_OWNED = frozenset(name for name, _ in COMMON_HEADERS) | {
    b"content-security-policy",
    b"content-disposition",
    REPLICA_HEADER,
}


def page_csp(inline_scripts: Iterable[str]) -> str:
    """The Content-Security-Policy of Chainlit's page: scripts and connections from this origin only.

    Chainlit's ``index.html`` holds two small inline scripts (``const global = globalThis`` and the
    theme/transport settings); they are allowed by their SHA-256 hash, nothing else inline is.
    Styles may be inline (the React UI sets style attributes); images may be ``data:``/``blob:``
    (charts, previews). Google Fonts and the KaTeX stylesheet that the page links are not loaded:
    the page falls back to system fonts, and LaTeX is off.
    """
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline_scripts
    )
    return (
        "default-src 'self'; "
        f"script-src 'self' {hashes}; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; "
        "font-src 'self' data:; "
        "connect-src 'self'; "
        "media-src 'self' blob:; "
        "worker-src 'self' blob:; "
        "object-src 'none'; "
        "base-uri 'self'; "
        "form-action 'self'; "
        "frame-ancestors 'none'"
    )


def inline_scripts_of(html: str) -> list[str]:
    """The bodies of the attribute-less ``<script>`` tags of a page, to hash for the CSP."""
    return _INLINE_SCRIPT.findall(html)


@dataclass(frozen=True)
class ResponseHeaders:
    """What every answer carries: the common headers, the page CSP on HTML, the strict file CSP on a
    user's file and, when ``WEAVER_UI_REPLICA_ID`` is set, which replica answered."""

    page_csp: str
    replica_id: str | None = None

    def wrap(self, send: Send, user_file: bool) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OWNED]
                headers.extend(COMMON_HEADERS)
                if self.replica_id:
                    headers.append((REPLICA_HEADER, self.replica_id.encode("latin-1", "replace")))
                if user_file:
                    headers.append((b"content-security-policy", FILE_CSP))
                    headers.append((b"content-disposition", b"attachment"))
                elif (header(headers, b"content-type") or "").startswith("text/html"):
                    headers.append((b"content-security-policy", self.page_csp.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return wrapped


async def refuse(scope: Scope, send: Send, status: int, reason: str) -> None:
    """Answer without calling Chainlit: a JSON error (``detail``, as FastAPI's) or a closed socket."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        return
    body = json.dumps({"detail": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *COMMON_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
