"""Read-only share links of chats: an unguessable token per link, made and revoked by the chat's
owner, kept in ``weaver_shares`` (schema v5) so every replica answers the same.

A revoked link keeps its row (``revokedAt``) so its page can say "revoked" rather than "no such
link"; deleting the chat deletes its links.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from chainlit.utils import utc_now

from ui.history.store import HistoryStore, sql_text

TOKEN_BYTES = 24  # 192 bits: 32 URL-safe characters


@dataclass(frozen=True)
class ShareLink:
    """One link: the token in its URL, the chat it shows, its owner, and whether it was revoked."""

    token: str
    thread_id: str
    owner: str
    created_at: str
    revoked: bool


def _link(row: dict) -> ShareLink:
    return ShareLink(
        token=str(row["token"]),
        thread_id=str(row["threadId"]),
        owner=str(row["userIdentifier"]),
        created_at=str(row["createdAt"]),
        revoked=row["revokedAt"] is not None,
    )


class Shares(HistoryStore):
    """The share links of the history's chats."""

    async def create_share(self, thread_id: str, owner: str) -> ShareLink:
        """A new link to ``thread_id`` (the caller checked that ``owner`` owns it); an existing live
        link of the chat is handed back instead, so one chat has one link at a time."""
        async with self.transaction() as conn:
            rows = await self._rows(
                conn,
                'SELECT * FROM weaver_shares WHERE "threadId" = :thread AND "revokedAt" IS NULL',
                {"thread": thread_id},
            )
            if rows:
                return _link(rows[0])
            row = {
                "token": secrets.token_urlsafe(TOKEN_BYTES),
                "threadId": thread_id,
                "userIdentifier": owner,
                "createdAt": utc_now(),
                "revokedAt": None,
            }
            await conn.execute(
                sql_text(
                    'INSERT INTO weaver_shares ("token", "threadId", "userIdentifier", "createdAt", "revokedAt") '
                    "VALUES (:token, :threadId, :userIdentifier, :createdAt, :revokedAt)"
                ),
                row,
            )
        return _link(row)

    async def revoke_shares(self, thread_id: str) -> list[str]:
        """Revoke every live link of ``thread_id``; returns the tokens revoked."""
        async with self.transaction() as conn:
            rows = await self._rows(
                conn,
                'SELECT "token" FROM weaver_shares WHERE "threadId" = :thread AND "revokedAt" IS NULL',
                {"thread": thread_id},
            )
            await conn.execute(
                sql_text(
                    'UPDATE weaver_shares SET "revokedAt" = :now WHERE "threadId" = :thread AND "revokedAt" IS NULL'
                ),
                {"thread": thread_id, "now": utc_now()},
            )
        return [str(r["token"]) for r in rows]

    async def share_link(self, token: str) -> ShareLink | None:
        """The link with this token (live or revoked), or None."""
        async with self.reading() as conn:
            rows = await self._rows(conn, 'SELECT * FROM weaver_shares WHERE "token" = :token', {"token": token})
        return _link(rows[0]) if rows else None

    async def live_share(self, thread_id: str) -> ShareLink | None:
        """The chat's live link, if it has one."""
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                'SELECT * FROM weaver_shares WHERE "threadId" = :thread AND "revokedAt" IS NULL',
                {"thread": thread_id},
            )
        return _link(rows[0]) if rows else None
