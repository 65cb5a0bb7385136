"""Who asks for an admin or account page, and whether a form really comes from our own page.

The caller is read from Chainlit's own login (cookie or Bearer token) through
``ui.history.route.request_user``: the check every Chainlit route makes, with Weaver's ends of
logins around it, so a signed-out, removed or disabled user is nobody here either. Whether they
are an admin is asked of the login mode at every request (``LoginMode.is_admin``): a role taken
away holds at the next click.

A form post must (1) come from our own origin: its ``Origin`` (or, without one, its ``Referer``)
names the host it was sent to (the guards have already refused other sites' origins), and (2)
carry the CSRF token of this login: an HMAC of the login token under the cookie secret, so it is
different for every login and useless once that login ends.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from ui.audit_user import login_token
from ui.history.route import request_user
from ui.logins import SECRET_ENV, LoginMode

CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Caller:
    """A signed-in user asking: their name, their login token and whether they are an admin."""

    name: str
    token: str
    admin: bool

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


def csrf_token(login: str) -> str:
    secret = os.environ.get(SECRET_ENV, "")
    return hmac.new(secret.encode(), b"weaver-form\0" + login.encode(), hashlib.sha256).hexdigest()


async def caller(request: Request, mode: LoginMode) -> Caller | None:
    """The signed-in user of this request, or None (no login, or one that no longer holds)."""
    token = login_token(request)
    if not token:
        return None
    name = await request_user(request)
    if name is None:
        return None
    return Caller(name, token, mode.is_admin(name))


def same_origin(request: Request) -> bool:
    """Whether the request says it comes from a page of the host it was sent to."""
    host = request.headers.get("host", "").lower()
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    if not host or not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host


def form_allowed(request: Request, who: Caller, form_token: str) -> bool:
    """A state-changing form: from our own origin, carrying this login's CSRF token."""
    return same_origin(request) and bool(form_token) and hmac.compare_digest(form_token, who.csrf)
