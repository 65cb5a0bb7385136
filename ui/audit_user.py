"""Who sent a request: the login token it carries (Chainlit's cookie, or a Bearer header) and, for
the audit log, the name in it. Not in ``ui.audit``, which every login mode imports to write its
lines, and not among the logins, whose package imports the guards that call this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ui.audit import REQUEST

if TYPE_CHECKING:
    from starlette.requests import Request


def login_token(request: Request) -> str | None:
    """The login token the request carries: Chainlit's cookie, else an ``Authorization: Bearer``."""
    from chainlit.auth import get_token_from_cookies

    token = get_token_from_cookies(dict(request.cookies))
    if not token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    return token or None


def request_user(scope: Mapping[str, Any] | None = None) -> str:
    """Who sent the current request, read from its login token (Chainlit's cookie, or a Bearer
    header). Only for requests Chainlit has already let through; "" when there is no token."""
    import jwt
    from chainlit.auth import get_jwt_secret
    from starlette.requests import Request

    scope = scope if scope is not None else REQUEST.get()
    if scope is None or scope.get("type") not in ("http", "websocket"):
        return ""
    token = login_token(Request(dict(scope)))
    secret = get_jwt_secret()  # the secret Weaver's login set-up put in place
    if not token or not secret:
        return ""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return ""
    return str(claims.get("identifier", ""))
