"""Users of the history: read at every connect and authenticated request, written at login.

Chainlit's versions take an ORM session per statement and three statements per login (read,
write, read again), and two first logins of one name at once both insert. Here a login costs one
transaction at most, and logins of different names never wait for each other:

* a user read or written in the last ``USER_CACHE_S`` with the same metadata costs nothing;
* a name this process has seen stored (``_known_users``, filled at open and by every read and
  write) is read (a transaction that only reads: on SQLite it does not queue for the write lock);
  only changed metadata writes. Reads that miss the cache at once are one query
  (``_user_reads``: every name asked meanwhile, ``WHERE "identifier" IN (…)``), so a rush of
  returning users, and Chainlit's ``get_user`` at each connect, cost a few reads, not one each,
  and do not take a pooled connection each;
* any other name, a first login, is one upsert that returns the stored row
  (``INSERT … ON CONFLICT ("identifier") DO UPDATE … WHERE changed … RETURNING``) and, when it
  changed nothing (the user exists: another replica made it, or this server restarted), a read of
  the row in the same transaction. First logins queued meanwhile go in the same statement
  (``_user_batches``: many rows of ``VALUES``; ``ui.history.batches``), so a rush of new users
  costs a few transactions, as a rush of returning ones does, and none waits behind a queue of
  single writes (on PostgreSQL batches run side by side; SQLite has one writer, and the logins
  queued while it writes go together in its next transaction);
* logins of one name at once share one read or write (``_user_writes``: the name's login in
  flight; its entry goes when it ends), so a class opening the app together writes its user once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import time
import uuid
from typing import Any, Mapping, Optional

from chainlit.user import PersistedUser, User
from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncConnection

from ui.history.batches import Batches
from ui.history.store import HistoryStore, sql_text

USER_CACHE_S = 5.0  # how long a user read from the database is used again
USER_CACHE_SIZE = 10_000
KNOWN_USERS_MAX = 200_000  # names known to be stored; past that the set starts again (a hint only)
USER_READ_BATCH = 500  # names read by one query at most
USER_WRITE_BATCH = 200  # users written by one statement at most (4 values each: under SQLite's 999)

_COLUMNS = '"id", "identifier", "metadata", "createdAt"'
_USERS_BY_IDENTIFIERS = sql_text(f'SELECT {_COLUMNS} FROM users WHERE "identifier" IN :names').bindparams(
    bindparam("names", expanding=True)
)
# SQLite has RETURNING from 3.35 (2021); older ones read the row back in the same transaction.
SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


def _persisted_user(row: Mapping[str, Any]) -> PersistedUser:
    return PersistedUser(
        id=str(row["id"]),
        identifier=str(row["identifier"]),
        createdAt=str(row["createdAt"]),
        metadata=dict(row["metadata"] or {}),
    )


def upsert_users_sql(dialect: str, count: int) -> tuple[str, bool]:
    """The upsert of ``count`` users (distinct names), and whether it returns their rows. It writes
    only a user that is new or whose metadata changed (a returning user after a restart rewrites nothing)."""
    changed = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    returning = dialect == "postgresql" or SQLITE_RETURNING
    values = ", ".join(f"(:id{i}, :identifier{i}, :metadata{i}, :created{i})" for i in range(count))
    sql = (
        f"INSERT INTO users ({_COLUMNS}) VALUES {values} "
        'ON CONFLICT ("identifier") DO UPDATE SET "metadata" = EXCLUDED."metadata" '
        f'WHERE users."metadata" {changed} EXCLUDED."metadata"'
    )
    return (sql + f" RETURNING {_COLUMNS}", True) if returning else (sql, False)


class Users(HistoryStore):
    """``get_user`` (cached briefly) and ``create_user`` (one transaction; one write per name at once)."""

    _users: dict[str, tuple[float, PersistedUser]]  # identifier -> (when read, user)
    _known_users: set[str]  # identifiers seen stored (the hint that picks a read over a write)
    _user_writes: dict[str, asyncio.Future[None]]  # identifier -> its login in flight (a read or a write)
    _user_reads: Batches[str, None, PersistedUser]  # reads of names asked together: one query
    _user_batches: Batches[str, dict[str, Any], PersistedUser]  # first logins together: one upsert

    def _cached_user(self, identifier: str) -> Optional[PersistedUser]:
        cached = self._users.get(identifier)
        if cached is not None and time.monotonic() - cached[0] < USER_CACHE_S:
            return copy.copy(cached[1])  # callers set display_name on what they get
        return None

    def _remember(self, user: PersistedUser) -> PersistedUser:
        if len(self._users) >= USER_CACHE_SIZE:
            self._users.clear()
        if len(self._known_users) >= KNOWN_USERS_MAX:
            self._known_users.clear()
        self._users[user.identifier] = (time.monotonic(), copy.copy(user))
        self._known_users.add(user.identifier)
        return user

    async def load_known_users(self) -> int:
        """Note the names already stored (at open), so their logins read instead of write."""
        async with self.reading() as conn:
            rows = await self._rows(conn, 'SELECT "identifier" FROM users LIMIT :limit', {"limit": KNOWN_USERS_MAX})
        self._known_users.update(str(row["identifier"]) for row in rows)
        return len(rows)

    async def get_user(self, identifier: str) -> Optional[PersistedUser]:
        """The stored user; Chainlit asks at every socket connect and authenticated request, so a
        found user is remembered for ``USER_CACHE_S`` (users change only at their own login)."""
        cached = self._cached_user(identifier)
        if cached is not None:
            return cached
        return await self._read_user(identifier)

    async def _read_user(self, identifier: str) -> Optional[PersistedUser]:
        """The stored user, read with every other name asked meanwhile (one query for them all)."""
        found = await self._user_reads.ask(identifier, None)
        return copy.copy(found) if found is not None else None

    async def _read_users(self, names: Mapping[str, None]) -> dict[str, PersistedUser]:
        """One batch of ``_user_reads``: every name asked, one query."""
        async with self.reading() as conn:
            rows = await self._rows(conn, _USERS_BY_IDENTIFIERS, {"names": list(names)})
        return {str(row["identifier"]): self._remember(_persisted_user(row)) for row in rows}

    async def known_identifiers(self, limit: int = 1000) -> list[str]:
        """Everyone who has signed in (the admin page lists them where users come from outside)."""
        async with self.reading() as conn:
            rows = await self._rows(
                conn, 'SELECT "identifier" FROM users ORDER BY "identifier" LIMIT :limit', {"limit": limit}
            )
        return [str(row["identifier"]) for row in rows]

    async def create_user(self, user: User) -> Optional[PersistedUser]:
        """Create the user, or update its metadata if the identifier exists; returns the stored
        user. One transaction at most; logins of the same name at once wait for one write (theirs
        to share), logins of other names never wait here."""
        identifier, metadata = str(user.identifier), dict(user.metadata or {})
        while True:
            cached = self._cached_user(identifier)
            if cached is not None and cached.metadata == metadata:
                return cached  # the usual login: nothing to read, nothing to write
            pending = self._user_writes.get(identifier)
            if pending is None:
                break
            await asyncio.wait([pending])  # this name's write ends (stored or failed), then look again
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._user_writes[identifier] = done
        try:
            return await self._store_user(identifier, metadata)
        finally:
            del self._user_writes[identifier]
            done.set_result(None)

    async def _store_user(self, identifier: str, metadata: dict[str, Any]) -> Optional[PersistedUser]:
        if identifier in self._known_users:  # a returning user: read; write only what changed
            known = await self._read_user(identifier)
            if known is not None and known.metadata == metadata:
                return known
        stored = await self._user_batches.ask(identifier, metadata)  # one per name: the caller holds the name
        if stored is None:
            self._users.pop(identifier, None)
            return None
        return copy.copy(stored)

    async def _write_users(self, users: Mapping[str, dict[str, Any]]) -> dict[str, PersistedUser]:
        """One batch of ``_user_batches``, in one transaction (its ``Batches`` holds the writer's turn)."""
        async with self.engine.begin() as conn:
            stored = await self._upsert_users(conn, users)
        return {name: self._remember(user) for name, user in stored.items()}

    async def _upsert_users(
        self, conn: AsyncConnection, users: Mapping[str, dict[str, Any]]
    ) -> dict[str, PersistedUser]:
        """The users' rows after one upsert of them all; those it did not return (unchanged, or no
        RETURNING here) are read in the same transaction."""
        sql, returns = upsert_users_sql(self.dialect, len(users))
        created = await self.get_current_timestamp()
        params: dict[str, Any] = {}
        for i, (identifier, metadata) in enumerate(users.items()):
            params.update(
                {f"id{i}": str(uuid.uuid4()), f"identifier{i}": identifier, f"metadata{i}": json.dumps(metadata)}
            )
            params[f"created{i}"] = created
        if returns:
            rows = await self._rows(conn, sql, params)
        else:
            await conn.execute(sql_text(sql), params)
            rows = []
        stored = {str(row["identifier"]): _persisted_user(row) for row in rows}
        missing = [name for name in users if name not in stored]
        if missing:
            rows = await self._rows(conn, _USERS_BY_IDENTIFIERS, {"names": missing})
            stored.update((str(row["identifier"]), _persisted_user(row)) for row in rows)
        return stored
