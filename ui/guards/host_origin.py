"""Host and Origin: only our own names are answered, and only our own pages may drive the server.

Nothing in Chainlit checks ``Host`` (DNS rebinding) or the ``Origin`` of its socket.io server. A
browser sends each of these headers once; two could disagree, so a repeated one is refused, and so
is a repeated login header of the proxy (``WEAVER_UI_USER_HEADER``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ui.guards.asgi import Scope, count, header

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(host_header: str | None) -> str:
    """The host part of a ``Host`` header, lowercased, without the port (IPv6 keeps its brackets)."""
    if not host_header:
        return ""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else ""
    return host.rsplit(":", 1)[0] if ":" in host else host


@dataclass(frozen=True)
class HostOrigin:
    """The allowlists, from ``WEAVER_UI_ALLOWED_HOSTS``/``_ORIGINS`` (``ui.settings``)."""

    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]
    socket_path: str
    user_header: str | None = None

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """Why this request may not reach Chainlit (status, reason), or None when it may."""
        headers = scope.get("headers") or []
        for name in (b"host", b"origin"):
            if count(headers, name) > 1:
                return 400, f"the {name.decode()} header arrived more than once"
        if host_name(header(headers, b"host")) not in self.allowed_hosts:
            return 400, "this server does not answer to that host name (see WEAVER_UI_ALLOWED_HOSTS)"
        if self.user_header and count(headers, self.user_header.lower().encode("latin-1")) > 1:
            return 400, f"the {self.user_header} login header arrived more than once"
        if self._needs_origin(scope):
            origin = header(headers, b"origin")
            if origin is not None and origin.rstrip("/").lower() not in self.allowed_origins:
                return 403, "requests from other web sites are refused (see WEAVER_UI_ALLOWED_ORIGINS)"
        return None

    def _needs_origin(self, scope: Scope) -> bool:
        """Socket.io (both transports) and every state-changing request must come from our pages."""
        if scope["type"] == "websocket" or scope.get("path", "").startswith(self.socket_path):
            return True
        return scope.get("method", "GET") not in SAFE_METHODS
