"""Logged-out logins, kept in the history database so a restart or another replica honours them.

A login is stored as the SHA-256 of its key (``tokens.login_key``: its signed claims, never the
token's text, which PyJWT accepts in more than one spelling) with the time it expires anyway; past
that the row is useless and is deleted. Checks read a copy in memory (``is_revoked``, no query per
request); ``refresh`` merges the database's rows into it, which the server does every few seconds
(``ui.logins.watch``): a logout on another replica holds here within that time, and on this replica
at once. Revocations are never undone, so merging cannot lose one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Callable

from sqlalchemy import text

if TYPE_CHECKING:
    from ui.history import WeaverDataLayer

logger = logging.getLogger("weaver.ui.auth")


def token_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class TokenRevocations:
    """Revoked tokens by hash, until their expiry; the history database is the record, memory the cache."""

    def __init__(self, history: Callable[[], "WeaverDataLayer | None"]) -> None:
        self._history = history  # opened at app start-up, after this object is made
        self._revoked: dict[str, float] = {}  # hash -> the token's own expiry (epoch seconds)
        self._writes = 0

    def is_revoked(self, token: str) -> bool:
        return token_hash(token) in self._revoked

    async def revoke(self, token: str, user: str, expires_at: float) -> None:
        """Refuse ``token`` from now on, here at once and on every replica after its next refresh.
        Waits until the row is stored: a logout answered is a logout a restart keeps."""
        digest = token_hash(token)
        self._revoked[digest] = expires_at
        history = self._history()
        if history is None:
            return
        async with history.transaction() as conn:
            await conn.execute(
                text(
                    'INSERT INTO weaver_revoked_tokens ("hash", "userIdentifier", "expiresAt", "revokedAt") '
                    'VALUES (:h, :u, :e, :now) ON CONFLICT ("hash") DO NOTHING'
                ),
                {"h": digest, "u": user, "e": expires_at, "now": time.time()},
            )
            self._writes += 1
            if self._writes % 50 == 0:  # now and then, forget tokens that have expired anyway
                await conn.execute(
                    text('DELETE FROM weaver_revoked_tokens WHERE "expiresAt" < :now'), {"now": time.time()}
                )

    async def refresh(self) -> None:
        """Merge the stored revocations of every replica into the copy in memory; drop expired ones."""
        now = time.time()
        history = self._history()
        if history is not None:
            async with history.reading() as conn:
                rows = (
                    await conn.execute(
                        text('SELECT "hash", "expiresAt" FROM weaver_revoked_tokens WHERE "expiresAt" > :now'),
                        {"now": now},
                    )
                ).all()
            self._revoked.update((str(h), float(e)) for h, e in rows)
        self._revoked = {h: e for h, e in self._revoked.items() if e > now}

    def __len__(self) -> int:
        return len(self._revoked)
