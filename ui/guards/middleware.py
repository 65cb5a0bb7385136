"""The one middleware in front of Chainlit, composing the guards in the order a request meets them.

Pure ASGI and outermost, so it sees websockets and the mounted socket.io app as well as HTTP routes,
and a refused request creates no session and runs no code: Host/Origin first (every request), then
the route's own guard (an upload, a password login), and the security headers on every answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ui import audit
from ui.guards.asgi import ASGIApp, Receive, Scope, Send
from ui.guards.downloads import watch_downloads
from ui.guards.failover import ThreadOf
from ui.guards.file_serving import FileServing
from ui.guards.headers import ResponseHeaders, refuse
from ui.guards.host_origin import HostOrigin
from ui.guards.login_throttle import LoginGuard
from ui.guards.uploads import UploadGuard, UploadLedger

logger = logging.getLogger("weaver.ui.guards")


@dataclass
class GuardPolicy:
    """Every guard's rules for this server; built by ``ui.server`` from ``WEAVER_UI_*`` and Chainlit's config."""

    host_origin: HostOrigin
    upload: UploadGuard
    files: FileServing
    headers: ResponseHeaders
    login: LoginGuard | None = None  # only with password login
    thread_of_chat: ThreadOf | None = None  # fail-over, with a shared database (``ui.guards.failover``)

    @property
    def allowed_hosts(self) -> frozenset[str]:
        return self.host_origin.allowed_hosts

    @property
    def allowed_origins(self) -> frozenset[str]:
        return self.host_origin.allowed_origins

    @property
    def uploads(self) -> UploadLedger:
        return self.upload.ledger


class GuardMiddleware:
    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy = self.policy
        # Whoever records an audit line while this request is handled names this client.
        audit.CLIENT.set(audit.scope_client(scope))
        audit.REQUEST.set(scope)
        refusal = policy.host_origin.refusal(scope)
        if refusal is not None:
            status, reason = refusal
            logger.warning("refused %s %s: %s", scope["type"], scope.get("path"), reason)
            await refuse(scope, send, status, reason)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        if policy.upload.applies(scope):
            await policy.upload(self.app, scope, receive, send, policy.headers)
            return
        if policy.login is not None and policy.login.applies(scope):
            await policy.login(self.app, scope, receive, send, policy.headers)
            return
        user_file = policy.files.is_user_file(scope.get("path", ""))
        out = policy.headers.wrap(send, user_file)
        await self.app(scope, receive, watch_downloads(scope, out) if user_file else out)
