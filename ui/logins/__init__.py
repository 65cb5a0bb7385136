"""Who is using Weaver: the login modes, written once as a registry (``MODES``).

``WEAVER_UI_AUTH`` names a mode of ``MODES``; unset, it is ``header`` when ``WEAVER_UI_USER_HEADER``
is set, else ``local`` on a loopback address (elsewhere a login must be chosen). Each mode is one
small class (``ui.logins.modes``): ``check_safe`` refuses what cannot be served safely, ``install``
registers its Chainlit callback. Login cookies are signed with ``CHAINLIT_AUTH_SECRET``
(``ui.logins.secret``); ``header`` and ``oauth`` want an explicit one, shared by every replica.

A login lasts ``WEAVER_UI_SESSION_HOURS`` and ends at once on logout, on ``weaver user remove``, on
a password change and when its user is disabled (``weaver user disable``, the admin page):
``ui.logins.tokens`` says whether a token still holds, ``ui.patches.revocation`` asks it on every
request, ``ui.logins.watch`` stops the live chats of logins that ended.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from ui.logins.base import SECRET_ENV, AuthSetupError, LoginContext, LoginMode, Refusal
from ui.logins.modes import HeaderLogin, LocalLogin, OAuthLogin, PasswordLogin, allowed_by, local_user_name
from ui.logins.revocations import TokenRevocations
from ui.logins.secret import SECRET_FILE, ensure_secret
from ui.logins.tokens import Refused, TokenGate
from ui.logins.users import USERS_FILE, NoSuchUser, UserStore

if TYPE_CHECKING:
    from ui.guards.login_throttle import LoginLimiter

__all__ = [
    "MODES",
    "SECRET_ENV",
    "SECRET_FILE",
    "USERS_FILE",
    "AuthMode",
    "AuthSetupError",
    "Login",
    "LoginContext",
    "LoginMode",
    "NoSuchUser",
    "Refusal",
    "Refused",
    "TokenGate",
    "TokenRevocations",
    "UserStore",
    "allowed_by",
    "choose_mode",
    "ensure_secret",
    "install_login",
    "local_user_name",
    "make_login",
]

logger = logging.getLogger("weaver.ui.auth")

# Every login mode, by the name WEAVER_UI_AUTH gives it: the one list (settings and errors read it).
MODES: dict[str, type[LoginMode]] = {mode.name: mode for mode in (LocalLogin, PasswordLogin, HeaderLogin, OAuthLogin)}
AuthMode: TypeAlias = str  # a key of MODES


def choose_mode(requested: str | None, user_header: str | None, loopback: bool) -> AuthMode:
    """The login mode's name: as asked, else ``header`` when a proxy header is set, else ``local`` on
    loopback. On an address other machines can reach, no login at all is refused."""
    mode = (requested or ("header" if user_header else "local" if loopback else "")).strip().lower()
    if not mode:
        raise AuthSetupError(
            "Weaver listens on an address other machines can reach, so it needs a login: set WEAVER_UI_AUTH "
            f"to {', '.join(m for m in MODES if m != 'local')} (local login is for 127.0.0.1 only)."
        )
    if mode not in MODES:
        raise AuthSetupError(f"WEAVER_UI_AUTH={requested!r} is not one of {', '.join(MODES)}.")
    return mode


def make_login(requested: str | None, context: LoginContext) -> LoginMode:
    """The login mode in force, checked: ``AuthSetupError`` when it cannot be served safely."""
    mode = MODES[choose_mode(requested, context.user_header, context.loopback)](context)
    mode.check_safe()
    return mode


@dataclass
class Login:
    """The login in force: its mode, the token checks, and the throttle ``ui.guard`` applies."""

    mode: LoginMode
    description: str
    tokens: TokenGate
    throttle: "LoginLimiter | None" = None


def install_login(
    mode: LoginMode, *, revocations: TokenRevocations, session_hours: float, throttle: "LoginLimiter"
) -> Login:
    """Sign cookies with the secret, make them last ``session_hours``, register the mode's callback and
    the logout that revokes the token. ``AuthSetupError`` when the secret cannot be had."""
    import chainlit as cl
    from chainlit.auth import get_token_from_cookies
    from chainlit.config import config as chainlit_config
    from fastapi import Request, Response

    os.environ[SECRET_ENV] = ensure_secret(mode.context.app_dir, mode.context.database_url)
    lifetime_s = session_hours * 3600
    chainlit_config.project.user_session_timeout = max(1, int(lifetime_s))  # the token's exp and the cookie's age
    tokens = TokenGate(lambda: os.environ.get(SECRET_ENV), lifetime_s, revocations, mode)

    @cl.on_logout
    async def revoke_on_logout(request: Request, response: Response) -> dict[str, bool]:
        token = get_token_from_cookies(dict(request.cookies))
        if token:
            await tokens.sign_out(token)
        return {"success": True}

    description = mode.install()
    return Login(mode, description, tokens, throttle if mode.throttled else None)
