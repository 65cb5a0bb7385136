"""Whether a login token Chainlit would accept still holds: Weaver's own checks, asked on every
HTTP request and socket connect (``ui.patches.revocation``) and for every live chat now and then
(``ui.logins.watch``).

A token is refused when it was logged out (``TokenRevocations``), when it is older than
``WEAVER_UI_SESSION_HOURS`` by its issue time (even if it was signed with a longer lifetime, as
Chainlit's default of 15 days), or when its login mode says the user changed (password login: the
user was removed, or its password changed). Everything here reads memory and, for password login,
``stat``s ``users.json``: nothing waits for a database.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jwt

from ui import audit
from ui.logins.base import LoginMode, Refusal
from ui.logins.revocations import TokenRevocations

logger = logging.getLogger("weaver.ui.auth")

MAX_VERIFIED = 10_000  # tokens whose verified claims are kept; the oldest go first


def login_key(claims: Mapping[str, Any]) -> str:
    """What names one login, however its token is spelled: PyJWT accepts more than one text for one
    signed token (padding after the signature, say), so the text is no key; the signed claims are.
    ``login_id`` is random per login (``ui.patches.revocation``); ``iat`` tells apart logins made
    before it existed."""
    metadata = claims.get("metadata")
    login_id = metadata.get("login_id") if isinstance(metadata, Mapping) else None
    return json.dumps([claims.get("identifier"), login_id, claims.get("iat")], sort_keys=True, default=str)


@dataclass(frozen=True)
class Refused:
    """A token refused: why, and whose it was."""

    why: Refusal
    user: str

    def __str__(self) -> str:
        return f"{self.user}'s login: {self.why.value}"


class TokenGate:
    """Weaver's checks of login tokens on top of Chainlit's signature and expiry."""

    def __init__(
        self, secret: Callable[[], str | None], lifetime_s: float, revocations: TokenRevocations, mode: LoginMode
    ) -> None:
        self._secret = secret
        self.lifetime_s = lifetime_s
        self.revocations = revocations
        self.mode = mode
        # Checked tokens and their claims: every request and, every 2 s, every live chat asks
        # again about the same few tokens; a signature is verified once, not at each ask.
        self._verified: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def claims(self, token: str) -> dict[str, Any] | None:
        """The token's claims when its signature and expiry are good, else None (Chainlit refuses it)."""
        secret = self._secret()
        if not token or not secret:
            return None
        key = (secret, token)
        claims = self._verified.get(key)
        if claims is None:
            try:
                claims = dict(jwt.decode(token, secret, algorithms=["HS256"]))
            except jwt.InvalidTokenError:
                return None
            self._verified[key] = claims
            if len(self._verified) > MAX_VERIFIED:
                self._verified.popitem(last=False)
        expires = claims.get("exp")
        if isinstance(expires, (int, float)) and expires <= time.time():
            self._verified.pop(key, None)
            return None
        return claims

    def refusal(self, token: str) -> Refused | None:
        """Why this token no longer holds, or None (also for a token Chainlit will refuse itself)."""
        claims = self.claims(token)
        if claims is None:
            return None
        user = str(claims.get("identifier", ""))
        if self.revocations.is_revoked(login_key(claims)):
            return Refused(Refusal.SIGNED_OUT, user)
        issued = claims.get("iat")
        if not isinstance(issued, (int, float)) or time.time() - issued > self.lifetime_s:
            return Refused(Refusal.EXPIRED, user)
        metadata = claims.get("metadata")
        why = self.mode.refusal(user, metadata if isinstance(metadata, Mapping) else {})
        return Refused(why, user) if why is not None else None

    async def sign_out(self, token: str) -> bool:
        """Logout: refuse this token everywhere from now on; False when it was no valid token."""
        claims = self.claims(token)
        if claims is None:
            return False
        user = str(claims.get("identifier", ""))
        expires = claims.get("exp")
        until = float(expires) if isinstance(expires, (int, float)) else time.time() + self.lifetime_s
        await self.revocations.revoke(login_key(claims), user, until)
        logger.info("%s signed out: the login token is revoked", user)
        audit.record(audit.AuditEvent.LOGOUT, user=user)
        return True
