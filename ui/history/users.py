"""Users of the history: read at every connect and authenticated request, written at login.

Chainlit's versions take an ORM session per statement and three statements per login (read,
write, read again), and two first logins of one name at once both insert; here a read, and a
write only when the user is new or its metadata changed (an upsert on the unique identifier).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from typing import Any, Mapping, Optional

from chainlit.user import PersistedUser, User

from ui.history.store import HistoryStore, sql_text

USER_CACHE_S = 5.0  # how long a user read from the database is used again
USER_CACHE_SIZE = 10_000

_USER_BY_IDENTIFIER = 'SELECT "id", "identifier", "metadata", "createdAt" FROM users WHERE "identifier" = :identifier'


def _persisted_user(row: Mapping[str, Any]) -> PersistedUser:
    return PersistedUser(
        id=str(row["id"]),
        identifier=str(row["identifier"]),
        createdAt=str(row["createdAt"]),
        metadata=dict(row["metadata"] or {}),
    )


class Users(HistoryStore):
    """``get_user`` (cached briefly) and ``create_user`` (one write per new name at once)."""

    _users: dict[str, tuple[float, PersistedUser]]  # identifier -> (when read, user)
    _user_writes: asyncio.Lock  # users are written one at a time (see create_user)

    async def get_user(self, identifier: str) -> Optional[PersistedUser]:
        """The stored user; Chainlit asks at every socket connect and authenticated request, so a
        found user is remembered for ``USER_CACHE_S`` (users change only at their own login)."""
        now = time.monotonic()
        cached = self._users.get(identifier)
        if cached is not None and now - cached[0] < USER_CACHE_S:
            return copy.copy(cached[1])  # callers set display_name on what they get
        async with self.reading() as conn:
            rows = await self._rows(conn, _USER_BY_IDENTIFIER, {"identifier": identifier})
        if not rows:
            return None
        user = _persisted_user(rows[0])
        if len(self._users) >= USER_CACHE_SIZE:
            self._users.clear()
        self._users[identifier] = (now, copy.copy(user))
        return user

    async def known_identifiers(self, limit: int = 1000) -> list[str]:
        """Everyone who has signed in (the admin page lists them where users come from outside)."""
        async with self.reading() as conn:
            rows = await self._rows(
                conn, 'SELECT "identifier" FROM users ORDER BY "identifier" LIMIT :limit', {"limit": limit}
            )
        return [str(row["identifier"]) for row in rows]

    async def create_user(self, user: User) -> Optional[PersistedUser]:
        """Create the user, or update its metadata if the identifier exists; returns the stored user.

        Logins that find the same user missing at once (a class opening the app together) write it
        once: the others wait for that write and then find it, instead of queueing a write each."""
        known = await self.get_user(str(user.identifier))
        if known is not None and known.metadata == (user.metadata or {}):
            return known  # the usual login: nothing to write, no write lock to wait for
        async with self._user_writes:
            known = await self.get_user(str(user.identifier))
            if known is not None and known.metadata == (user.metadata or {}):
                return known
            return await self._write_user(user)

    async def _write_user(self, user: User) -> Optional[PersistedUser]:
        params = {
            "id": str(uuid.uuid4()),
            "identifier": str(user.identifier),
            "metadata": json.dumps(user.metadata or {}),
            "created": await self.get_current_timestamp(),
        }
        async with self.transaction() as conn:
            await conn.execute(
                sql_text(
                    'INSERT INTO users ("id", "identifier", "metadata", "createdAt") '
                    "VALUES (:id, :identifier, :metadata, :created) "
                    'ON CONFLICT ("identifier") DO UPDATE SET "metadata" = EXCLUDED."metadata"'
                ),
                params,
            )
            rows = await self._rows(conn, _USER_BY_IDENTIFIER, {"identifier": params["identifier"]})
        if not rows:
            self._users.pop(params["identifier"], None)
            return None
        stored = _persisted_user(rows[0])
        self._users[params["identifier"]] = (time.monotonic(), copy.copy(stored))
        return stored
