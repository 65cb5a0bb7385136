"""The guards around Chainlit: the one module that overrides Chainlit's own request handling.

Chainlit 2.x trusts its callers more than a multi-user server may (see README, "Security model"):
its socket.io server checks no ``Origin``, nothing checks ``Host``, the client's ``sessionId``
becomes a folder name that is later deleted, uploads are read whole before their size is checked,
the file limit per message is only the browser's, an upload's MIME type is taken from the client
and served back as is, and no page carries security headers. Everything here runs *before* any
Chainlit handler, so a refused request creates no session and runs no code.

``install(app, sio, policy)`` puts it in place, once, when ``ui/server.py`` sets the server up:

* ``GuardMiddleware``, the outermost ASGI middleware, for HTTP and websockets: the ``Host``
  allowlist (DNS rebinding), the ``Origin`` allowlist for socket.io (both transports) and every
  state-changing request, a refusal of a repeated login header, the upload body cap (413 before
  reading) and the per-chat upload count, and the security headers on every response.
* a wrapper around Chainlit's socket.io ``connect`` handler that refuses a ``sessionId`` which is
  not a canonical UUID, before Chainlit builds a path from it.
* a wrapper around ``WebsocketSession.persist_file`` that stores an upload whose MIME type and
  file extension disagree as ``application/octet-stream``.
* a wrapper around the thread routes' authorship check: another user's chat is 403, not 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import parse_qs

from ui.auth import LoginLimiter
from ui.ids import is_canonical_uuid

logger = logging.getLogger("weaver.ui.guard")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OCTET_STREAM = "application/octet-stream"
MULTIPART_SLACK_BYTES = 64 * 1024  # multipart boundaries and part headers around one file
MAX_LOGIN_BODY = 8 * 1024
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)
REPLICA_HEADER = b"x-weaver-replica"
# A user's file is never a page: even opened directly, nothing in it may run or load.
FILE_CSP = b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"


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
class GuardPolicy:
    """What the guard allows; built by ``ui.server`` from ``WEAVER_UI_*`` and Chainlit's config."""

    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]
    socket_path: str
    upload_path: str
    file_path_prefix: str
    max_upload_bytes: Callable[[], int]
    max_files: Callable[[], int]
    page_csp: str
    user_header: str | None = None
    uploads: UploadLedger = field(default_factory=UploadLedger)
    login_path: str = "/login"
    history_file_prefix: str = "/weaver/files/"
    throttle: LoginLimiter | None = None
    replica_id: str | None = None  # sent as X-Weaver-Replica, only when set by name
    # The thread of a chat that lived on another replica (``ui.shared.LiveSessions.thread_of``).
    thread_of_chat: Callable[[str], Awaitable[str | None]] | None = None

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """Why this request may not reach Chainlit (status, reason), or None when it may."""
        headers = scope.get("headers") or []
        for name in (b"host", b"origin"):  # a browser sends each at most once; two could disagree
            if _count(headers, name) > 1:
                return 400, f"the {name.decode()} header arrived more than once"
        host = host_name(_header(headers, b"host"))
        if host not in self.allowed_hosts:
            return 400, "this server does not answer to that host name (see WEAVER_UI_ALLOWED_HOSTS)"
        if self.user_header and _count(headers, self.user_header.lower().encode("latin-1")) > 1:
            return 400, f"the {self.user_header} login header arrived more than once"
        if self._needs_origin(scope):
            origin = _header(headers, b"origin")
            if origin is not None and origin.rstrip("/").lower() not in self.allowed_origins:
                return 403, "requests from other web sites are refused (see WEAVER_UI_ALLOWED_ORIGINS)"
        return None

    def _needs_origin(self, scope: Scope) -> bool:
        """Socket.io (both transports) and every state-changing request must come from our pages."""
        if scope["type"] == "websocket" or scope.get("path", "").startswith(self.socket_path):
            return True
        return scope.get("method", "GET") not in SAFE_METHODS


def host_name(host_header: str | None) -> str:
    """The host part of a ``Host`` header, lowercased, without the port (IPv6 keeps its brackets)."""
    if not host_header:
        return ""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else ""
    return host.rsplit(":", 1)[0] if ":" in host else host


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _count(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> int:
    return sum(1 for key, _ in headers if key.lower() == name)


class GuardMiddleware:
    """Pure ASGI, so it sees websockets and the mounted socket.io app as well as HTTP routes."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.policy.refusal(scope)
        if refusal is not None:
            status, reason = refusal
            logger.warning("refused %s %s: %s", scope["type"], scope.get("path"), reason)
            await _refuse(scope, send, status, reason)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "POST" and scope.get("path") == self.policy.upload_path:
            await self._upload(scope, receive, send)
            return
        if scope.get("method") == "POST" and scope.get("path") == self.policy.login_path and self.policy.throttle:
            await self._login(scope, receive, send, self.policy.throttle)
            return
        path = scope.get("path", "")
        user_file = path.startswith(self.policy.file_path_prefix) or path.startswith(self.policy.history_file_prefix)
        await self.app(scope, receive, _with_headers(send, self.policy, user_file))

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One file into a chat: refused by size before it is read, and by count per message."""
        limit = self.policy.max_upload_bytes()
        length = _header(scope.get("headers") or [], b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _refuse(scope, send, 413, f"the file is larger than the limit of {_mb(limit)}")
            return
        chat_id = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_id") or [""])[0]
        max_files = self.policy.max_files()
        if self.policy.uploads.pending(chat_id) >= max_files:
            await _refuse(scope, send, 429, f"at most {max_files} files can be attached to one message; send it first")
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
            await self.app(scope, counted_receive, _with_headers(watched_send, self.policy, False))
        except Exception:
            if not too_large:
                raise
        if too_large:
            await _refuse(scope, send, 413, f"the file is larger than the limit of {_mb(limit)}")
            return
        if 200 <= status < 300:
            self.policy.uploads.add(chat_id)

    async def _login(self, scope: Scope, receive: Receive, send: Send, throttle: LoginLimiter) -> None:
        """A password login: refused while its user or address is throttled; its outcome counted."""
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > MAX_LOGIN_BODY:
                await _refuse(scope, send, 413, "the login form is too large")
                return
            if not message.get("more_body"):
                break
        form = parse_qs(body.decode("utf-8", "replace"))
        user = (form.get("username") or [""])[0][:200]
        address = str((scope.get("client") or ("unknown",))[0])
        wait = await throttle.wait(user, address)
        if wait > 0:
            logger.warning("login for %.80r from %s refused: too many failed attempts", user, address)
            await _refuse(scope, send, 429, f"Too many failed logins; try again in {wait:.0f} s.")
            return
        status = 0
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, replay, _with_headers(watched_send, self.policy, False))
        if status == 401:
            await throttle.failure(user, address)
        elif 200 <= status < 300:
            await throttle.success(user)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MB"


def _with_headers(send: Send, policy: GuardPolicy, user_file: bool) -> Send:
    """Add the security headers to every response: the page CSP to HTML, a strict one to user files;
    and, when ``WEAVER_UI_REPLICA_ID`` is set, which replica answered (``X-Weaver-Replica``).

    Only headers are read and written, so it works on compressed bodies too.
    """
    page_csp = policy.page_csp

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OWNED]
            headers.extend(COMMON_HEADERS)
            if policy.replica_id:
                headers.append((REPLICA_HEADER, policy.replica_id.encode("latin-1", "replace")))
            if user_file:
                headers.append((b"content-security-policy", FILE_CSP))
                headers.append((b"content-disposition", b"attachment"))
            elif (_header(headers, b"content-type") or "").startswith("text/html"):
                headers.append((b"content-security-policy", page_csp.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


_OWNED = frozenset(name for name, _ in COMMON_HEADERS) | {
    b"content-security-policy",
    b"content-disposition",
    REPLICA_HEADER,
}


async def _refuse(scope: Scope, send: Send, status: int, reason: str) -> None:
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


def mime_agrees(name: str, mime: str, accept: Mapping[str, Iterable[str]] | None) -> bool:
    """True when ``mime`` is what a file called ``name`` should be (or is plain bytes).

    A wildcard entry of Chainlit's accept table (``text/*``) says what may be uploaded, not what a
    ``.csv`` is: ``text/html`` with a ``.csv`` name is accepted but does not agree.
    """
    mime = mime.split(";", 1)[0].strip().lower()
    if mime == OCTET_STREAM:
        return True
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix and mimetypes.guess_type(f"x{suffix}")[0] == mime:
        return True
    listed = (accept or {}).get(mime)
    return bool(suffix) and "*" not in mime and listed is not None and suffix in {e.lower() for e in listed}


def install(app: Any, sio: Any, policy: GuardPolicy, accept: Callable[[], Mapping[str, Iterable[str]] | None]) -> None:
    """Put every guard in place; safe to call once per process, before the server starts."""
    if getattr(app.state, "weaver_guard", None) is not None:
        return
    app.state.weaver_guard = policy
    app.add_middleware(GuardMiddleware, policy=policy)  # added last: the outermost
    _guard_connect(sio, policy)
    _guard_persist_file(accept)
    _guard_thread_author()


def _guard_connect(sio: Any, policy: GuardPolicy) -> None:
    """Refuse a socket whose ``sessionId`` could be anything but a Chainlit session id."""
    original = sio.handlers["/"]["connect"]

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
        refusal = policy.refusal(scope) if scope else None
        if refusal is not None:  # the middleware said no already; kept in case it is bypassed
            raise ConnectionRefusedError(refusal[1])
        if not thread_id:
            auth = await _resume_elsewhere(policy, str(session_id), auth)
        return await original(sid, environ, auth)

    sio.handlers["/"]["connect"] = connect


async def _resume_elsewhere(policy: GuardPolicy, session_id: str, auth: dict[str, Any]) -> dict[str, Any]:
    """A page whose replica died reconnects here with its old ``sessionId`` and, for a chat begun in
    that page, no ``threadId``: Chainlit would open an empty chat. If the chat is unknown here but
    its thread was noted in the shared database, ask Chainlit to resume that thread instead
    (Chainlit itself refuses a thread that is not the signed-in user's)."""
    if policy.thread_of_chat is None:
        return auth
    from chainlit.session import WebsocketSession

    if WebsocketSession.get_by_id(session_id) is not None:
        return auth  # live here: Chainlit restores it as usual
    try:
        thread_id = await policy.thread_of_chat(session_id)
    except Exception:
        logger.exception("could not look up the thread of chat %s", session_id)
        return auth
    if thread_id and is_canonical_uuid(thread_id):
        logger.info("chat %s reconnects from another replica: resuming its thread %s", session_id, thread_id)
        return {**auth, "threadId": thread_id}
    return auth


def _guard_persist_file(accept: Callable[[], Mapping[str, Iterable[str]] | None]) -> None:
    """Store an upload whose declared type disagrees with its name as plain bytes."""
    from chainlit.session import BaseSession

    original = BaseSession.persist_file
    if getattr(original, "weaver_guarded", False):
        return

    async def persist_file(self: Any, name: str, mime: str, path: str | None = None, content: Any = None) -> Any:
        if not mime_agrees(name, mime or "", accept()):
            logger.warning("upload %.80r declared as %.80r: stored as %s", name, mime, OCTET_STREAM)
            mime = OCTET_STREAM
        return await original(self, name=name, mime=mime, path=path, content=content)

    persist_file.weaver_guarded = True  # type: ignore[attr-defined]
    BaseSession.persist_file = persist_file  # type: ignore[method-assign]


def _guard_thread_author() -> None:
    """Another user's chat is forbidden (403), not "unauthorized" (401, which tells a signed-in
    user to sign in again): Chainlit's thread routes check authorship through this one function."""
    import chainlit.server as server
    from fastapi import HTTPException

    original = server.is_thread_author
    if getattr(original, "weaver_guarded", False):
        return

    async def is_thread_author(username: str, thread_id: str) -> bool:
        try:
            return bool(await original(username, thread_id))
        except HTTPException as exc:
            if exc.status_code == 401:
                raise HTTPException(status_code=403, detail="This chat belongs to someone else.") from None
            raise

    is_thread_author.weaver_guarded = True  # type: ignore[attr-defined]
    server.is_thread_author = is_thread_author  # type: ignore[assignment]


def client_address(environ: Mapping[str, Any] | None) -> str:
    """The peer address of a socket (engine.io's ``REMOTE_ADDR`` is always 127.0.0.1 under ASGI)."""
    scope = (environ or {}).get("asgi.scope") or {}
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
