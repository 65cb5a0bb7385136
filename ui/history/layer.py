"""``WeaverDataLayer``: Chainlit's SQLAlchemy data layer, made to work the same on SQLite and
PostgreSQL and to keep each user's history to that user.

What it changes from ``SQLAlchemyDataLayer`` (Chainlit 2.12), and why:

* **One behaviour on both databases.** Values are adapted on the way in (dicts as JSON text;
  lists as JSON text on SQLite, arrays on PostgreSQL) and normalised on the way out (JSON
  columns decoded, SQLite's 0/1 read as booleans), so callers see the same dicts either way.
  Chainlit's own queries return JSON as a string on SQLite and as a dict on PostgreSQL, and its
  ``LIKE`` on a JSONB column (favourites) fails on PostgreSQL.
* **Bound parameters everywhere.** Chainlit builds ``IN ('<thread ids>')`` by string joining,
  and a signed-in user chooses the id of a new thread (the socket's ``threadId``): that is SQL
  injection. Thread loading here binds the ids; thread ids that are not canonical UUIDs (all
  Chainlit ever makes) are refused before any write.
* **Errors are not silent.** Chainlit's ``execute_sql`` logs and returns None on any error; the
  methods here raise for reads and deletions (the route answers 500), and log writes that run
  in Chainlit's background tasks.
* **A thread keeps its owner, and its steps.** ``update_thread`` never moves a thread that has
  an owner to another user; a step or element written with an id that another thread's row
  already has (ids come from the browser) changes nothing.
* **Listing** returns only the given user's threads, most recently active first (last step, else
  creation), searched by name (case-insensitive, Unicode-aware, the same on both databases), with
  Chainlit's cursor pagination; threads in the list carry no steps (as Chainlit's own layer).
* **Deleting a thread** removes its rows in one transaction, then its files from storage, then
  calls ``on_thread_deleted(thread_id, metadata)`` (sync or async) with the thread's metadata.
* **Files** are stored under keys we build (``<thread>/<element>/<safe name>``), never from the
  client's name alone; an element given only by URL is recorded, never fetched by the server
  (Chainlit would download any URL: server-side request forgery).
* Timestamps are UTC (Chainlit stamps threads with local time marked ``Z``).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.data.utils import queue_until_user_message
from chainlit.types import PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User
from chainlit.utils import utc_now
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ui.history.rows import (
    ELEMENT_COLUMNS,
    ELEMENT_ID,
    OCTET_STREAM,
    READ_ONLY,
    STEP_COLUMNS,
    is_thread_id,
    normalise,
    read_bytes,
    sqlite_transactions,
    step_dict,
    thread_dict,
)
from ui.history.schema import migrate
from ui.history.storage import LocalFileStorage, check_object_key, safe_file_name
from ui.history.write_behind import WriteBehind

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

logger = logging.getLogger("weaver.ui.history")
# A statement's text is parsed (bind parameters found, a cache key made) each time ``text()`` is
# called; the history sends the same few statements many times a second under a crowd.
_text = functools.lru_cache(maxsize=512)(text)
USER_CACHE_S = 5.0  # how long a user read from the database is used again
USER_CACHE_SIZE = 10_000
# How long a step's update may wait to be stored with others (ui/history/write_behind.py).
STEP_WRITE_DELAY_S = 0.5
THREAD_CHANGE = "thread:"  # queued beside steps, whose keys begin with their thread's UUID

_USER_BY_IDENTIFIER = 'SELECT "id", "identifier", "metadata", "createdAt" FROM users WHERE "identifier" = :identifier'


def _persisted_user(row: Mapping[str, Any]) -> PersistedUser:
    return PersistedUser(
        id=str(row["id"]),
        identifier=str(row["identifier"]),
        createdAt=str(row["createdAt"]),
        metadata=dict(row["metadata"] or {}),
    )


ThreadDeleted = Callable[[str, dict[str, Any]], Union[None, Awaitable[None]]]


def _merge_change(kept: dict[str, Any], new: dict[str, Any]) -> None:
    """Two pending changes of one thread as one, ending where the two applied in turn would: the
    first owner stays (a second is refused when stored), metadata merges key by key (a None still
    removes its key), otherwise the later value wins."""
    for key, value in new.items():
        if key == "userId" and kept.get("userId") is not None:
            continue
        if key == "metadata" and kept.get("metadata") is not None:
            kept["metadata"] = {**kept["metadata"], **value}
        else:
            kept[key] = value


class WeaverDataLayer(SQLAlchemyDataLayer):
    """Chainlit's data layer for Weaver's history. Call ``await open()`` once, in the server's
    event loop (``ui.history.open_history`` does), before Chainlit uses it."""

    def __init__(
        self,
        database_url: str,
        storage: BaseStorageClient | None,
        on_thread_deleted: ThreadDeleted | None = None,
        user_thread_limit: int = 1000,
        step_write_delay: float = STEP_WRITE_DELAY_S,
    ) -> None:
        is_sqlite = database_url.startswith("sqlite")
        super().__init__(
            conninfo=database_url,
            connect_args={"timeout": 30} if is_sqlite else None,
            storage_provider=storage,
            user_thread_limit=user_thread_limit,
        )
        self.on_thread_deleted = on_thread_deleted
        self.dialect = self.engine.dialect.name
        self._writes = WriteBehind(self._store_pending, step_write_delay)
        self._users: dict[str, tuple[float, PersistedUser]] = {}  # identifier -> (when read, user)
        self._user_writes = asyncio.Lock()  # users are written one at a time (see create_user)
        # SQLite has one writer at a time. Writers queue here, before taking a pooled connection,
        # so the ones waiting for the write lock do not hold every connection while a login or a
        # page of the chat list waits for one (PostgreSQL locks rows, not the database: no queue).
        self._one_writer: asyncio.Lock | None = asyncio.Lock() if is_sqlite else None
        if is_sqlite:
            sqlite_transactions(self.engine.sync_engine)

    async def open(self) -> tuple[int, int]:
        """Create or upgrade the schema; returns (version before, version after)."""
        return await migrate(self.engine)

    async def close(self) -> None:
        """Store the writes still pending (steps, thread changes), then let the connections go."""
        await self._writes.flush()
        await super().close()

    # -- SQL helpers -------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that may write (never nested: on SQLite, writers take turns)."""
        if self._one_writer is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._one_writer, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that only reads: on SQLite it does not wait for, nor hold, the write lock."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            async with conn.begin():
                yield conn

    def _param(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return list(value) if self.dialect == "postgresql" else json.dumps(list(value))
        return value

    def _json_param(self, value: Any) -> Any:
        return None if value is None else json.dumps(value)

    async def _rows(self, conn: AsyncConnection, sql: Any, params: Mapping[str, Any] | None = None) -> list[dict]:
        statement = _text(sql) if isinstance(sql, str) else sql
        result = await conn.execute(statement, dict(params or {}))
        return [normalise(dict(row._mapping)) for row in result.fetchall()]

    async def _upsert(self, conn: AsyncConnection, table: str, values: Mapping[str, Any]) -> None:
        await self._upsert_many(conn, table, [values])

    async def _upsert_many(self, conn: AsyncConnection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert each row, or update the given columns of the row with its id. A row that has a
        thread is only updated from the same thread: ids come from the browser, and a message
        sent with the id of another chat's step must not overwrite it, nor move it. Rows with the
        same columns go in one statement with many parameter sets."""
        by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for values in rows:
            by_columns.setdefault(tuple(values), []).append(values)
        for columns, group in by_columns.items():
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join(f":{c}" for c in columns)
            updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in columns if c != "id")
            conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            if updates and "threadId" in columns:
                conflict += f' WHERE {table}."threadId" = EXCLUDED."threadId"'
            sql = f'INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ("id") {conflict}'
            await conn.execute(_text(sql), [{c: self._param(values[c]) for c in columns} for values in group])

    def _limit(self) -> int:
        return int(self.user_thread_limit or 1_000_000)

    async def get_current_timestamp(self) -> str:
        return str(utc_now())

    # -- users -------------------------------------------------------------------------------
    # Chainlit's versions take an ORM session per statement and three statements per login (read,
    # write, read again), and two first logins of one name at once both insert; here a read, and a
    # write only when the user is new or its metadata changed (an upsert on the unique identifier).
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
                _text(
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

    # -- threads -----------------------------------------------------------------------------
    async def get_thread_author(self, thread_id: str) -> str:
        """The thread's owner, or "" when there is none (Chainlit's check then answers 404)."""
        async with self.reading() as conn:
            rows = await self._rows(conn, 'SELECT "userIdentifier" FROM threads WHERE "id" = :id', {"id": thread_id})
        return str(rows[0]["userIdentifier"] or "") if rows else ""

    async def update_thread(
        self,
        thread_id: str,
        name: Optional[str] = None,
        user_id: Optional[str] = None,
        metadata: Optional[dict] = None,
        tags: Optional[list[str]] = None,
    ) -> None:
        """Create the thread or change it. Metadata is merged (a None value removes its key); a
        ``name`` in metadata names the thread when no name is given; the owner is set once.

        Returns once the change is stored, in the transaction of whatever else is pending: changes
        from many chats at once share one (see ``write_behind``)."""
        if not is_thread_id(thread_id):
            logger.warning("refused to store a thread with id %.80r: not a UUID", thread_id)
            return
        if name is None and metadata:
            name = metadata.get("name")
        given = {"name": name, "userId": user_id, "metadata": metadata, "tags": tags}
        change = {k: v for k, v in given.items() if v is not None}
        self._writes.add(THREAD_CHANGE + thread_id, change, _merge_change)
        await self._writes.flush()

    async def _change_thread(self, conn: AsyncConnection, thread_id: str, change: dict[str, Any]) -> None:
        """Apply one pending ``update_thread`` change inside the store's transaction, under the
        row's lock (the row exists: ``_store_rows`` made it first), so two servers or tasks changing
        the same thread at once cannot overwrite each other's metadata."""
        if not change:
            return
        lock = " FOR UPDATE" if self.dialect == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE locked it
        (existing,) = await self._rows(
            conn, f'SELECT "metadata", "userId" FROM threads WHERE "id" = :id{lock}', {"id": thread_id}
        )
        values: dict[str, Any] = {}
        metadata, name, user_id = change.get("metadata"), change.get("name"), change.get("userId")
        if metadata is not None:
            merged = {k: v for k, v in (existing["metadata"] or {}).items() if metadata.get(k, v) is not None}
            merged.update({k: v for k, v in metadata.items() if v is not None})
            values["metadata"] = merged
        if name is not None:
            values["name"] = str(name)
        if user_id is not None:
            owner = existing["userId"]
            if owner and owner != user_id:
                logger.warning("refused to move thread %s from user %s to %s", thread_id, owner, user_id)
            else:
                users = await self._rows(conn, 'SELECT "identifier" FROM users WHERE "id" = :id', {"id": user_id})
                values["userId"] = user_id
                values["userIdentifier"] = users[0]["identifier"] if users else None
        if change.get("tags") is not None:
            values["tags"] = list(change["tags"])
        if values:
            assignments = ", ".join(f'"{column}" = :{column}' for column in values)
            await conn.execute(
                _text(f'UPDATE threads SET {assignments} WHERE "id" = :id'),
                {**{c: self._param(v) for c, v in values.items()}, "id": thread_id},
            )

    async def get_thread(self, thread_id: str) -> Optional[ThreadDict]:
        threads = await self.get_all_user_threads(thread_id=thread_id)
        return threads[0] if threads else None

    async def get_all_user_threads(
        self, user_id: Optional[str] = None, thread_id: Optional[str] = None
    ) -> Optional[list[ThreadDict]]:
        """One thread by id, or a user's threads (newest activity first), each with its steps,
        feedback and elements."""
        await self.flush_writes()
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": self._limit()}
        if thread_id is not None:
            clauses.append('t."id" = :thread_id')
            params["thread_id"] = thread_id
        if user_id is not None:
            clauses.append('t."userId" = :user_id')
            params["user_id"] = user_id
        if not clauses:
            return []
        async with self.reading() as conn:
            rows = await self._thread_rows(conn, " OR ".join(clauses), params)
            return await self._full_threads(conn, rows)

    async def _thread_rows(self, conn: AsyncConnection, where: str, params: Mapping[str, Any]) -> list[dict]:
        sql = f"""
            SELECT t."id", t."createdAt", t."name", t."userId", t."userIdentifier", t."tags", t."metadata",
                   COALESCE((SELECT MAX(s."createdAt") FROM steps s WHERE s."threadId" = t."id"), t."createdAt", '')
                       AS last_activity
            FROM threads t
            WHERE {where}
            ORDER BY last_activity DESC, t."id" DESC
            LIMIT :limit
        """
        return await self._rows(conn, sql, params)

    async def _full_threads(self, conn: AsyncConnection, rows: list[dict]) -> list[ThreadDict]:
        threads = {row["id"]: thread_dict(row) for row in rows}
        if not threads:
            return []
        ids = {"ids": list(threads)}
        columns = ", ".join(f's."{c}"' for c in STEP_COLUMNS)
        steps = await self._rows(
            conn,
            _text(
                f"""SELECT {columns}, f."id" AS feedback_id, f."value" AS feedback_value,
                           f."comment" AS feedback_comment
                    FROM steps s LEFT JOIN feedbacks f ON f."forId" = s."id"
                    WHERE s."threadId" IN :ids
                    ORDER BY s."createdAt" ASC NULLS FIRST"""
            ).bindparams(bindparam("ids", expanding=True)),
            ids,
        )
        for step in steps:
            threads[step["threadId"]]["steps"].append(step_dict(step))
        element_columns = ", ".join(f'"{c}"' for c in ELEMENT_COLUMNS)
        elements = await self._rows(
            conn,
            _text(f'SELECT {element_columns} FROM elements WHERE "threadId" IN :ids').bindparams(
                bindparam("ids", expanding=True)
            ),
            ids,
        )
        for element in elements:
            threads[element["threadId"]]["elements"].append(await self._element_dict(element))  # type: ignore[union-attr]
        return list(threads.values())

    async def _element_dict(self, row: Mapping[str, Any]) -> ElementDict:
        element: dict[str, Any] = {c: row.get(c) for c in ELEMENT_COLUMNS}
        key = element["objectKey"]
        if key and self.storage_provider is not None:
            try:
                element["url"] = await self.storage_provider.get_read_url(object_key=key)
            except Exception:
                logger.warning("no read URL for element %s (key %.120r)", element["id"], key, exc_info=True)
        element["props"] = element["props"] or {}
        return element  # type: ignore[return-value]

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        """The threads of ``filters.userId`` only, most recently active first; ``filters.search``
        matches the name (case-insensitive), ``filters.feedback`` keeps threads with such a vote."""
        await self.flush_writes()
        if not filters.userId:
            raise ValueError("list_threads needs filters.userId")
        where = 't."userId" = :user_id'
        params: dict[str, Any] = {"user_id": filters.userId, "limit": self._limit()}
        if filters.feedback is not None:
            where += """ AND EXISTS (SELECT 1 FROM feedbacks f JOIN steps s ON s."id" = f."forId"
                                     WHERE s."threadId" = t."id" AND f."value" = :feedback)"""
            params["feedback"] = int(filters.feedback)
        async with self.reading() as conn:
            rows = await self._thread_rows(conn, where, params)
        if filters.search:
            needle = filters.search.casefold()
            rows = [row for row in rows if needle in (row["name"] or "").casefold()]
        start = 0
        if pagination.cursor:
            start = next((i + 1 for i, row in enumerate(rows) if row["id"] == pagination.cursor), 0)
        page = rows[start : start + pagination.first]
        return PaginatedResponse(
            pageInfo=PageInfo(
                hasNextPage=len(rows) > start + pagination.first,
                startCursor=page[0]["id"] if page else None,
                endCursor=page[-1]["id"] if page else None,
            ),
            data=[thread_dict(row) for row in page],
        )

    async def delete_thread(self, thread_id: str) -> None:
        """Remove the thread, its steps, feedback and elements, then its files, then tell
        ``on_thread_deleted``. Rows go first: a file left by a failed removal is an orphan, never a
        row pointing at nothing."""
        await self.flush_writes()
        params = {"id": thread_id}
        async with self.transaction() as conn:
            found = await self._rows(conn, 'SELECT "metadata" FROM threads WHERE "id" = :id', params)
            keys = [
                row["objectKey"]
                for row in await self._rows(conn, 'SELECT "objectKey" FROM elements WHERE "threadId" = :id', params)
                if row["objectKey"]
            ]
            await conn.execute(
                _text(
                    """DELETE FROM feedbacks WHERE "threadId" = :id
                       OR "forId" IN (SELECT "id" FROM steps WHERE "threadId" = :id)"""
                ),
                params,
            )
            for table, column in (("elements", "threadId"), ("steps", "threadId"), ("threads", "id")):
                await conn.execute(_text(f'DELETE FROM {table} WHERE "{column}" = :id'), params)
        await self._delete_files(keys)
        if found and self.on_thread_deleted is not None:
            try:
                result = self.on_thread_deleted(thread_id, dict(found[0]["metadata"] or {}))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_thread_deleted failed for thread %s", thread_id)

    async def _delete_files(self, keys: Iterable[str]) -> None:
        if self.storage_provider is None:
            return
        for key in keys:
            try:
                await self.storage_provider.delete_file(object_key=key)
            except Exception:
                logger.warning("could not delete file %.120r from storage", key, exc_info=True)

    # -- steps -------------------------------------------------------------------------------
    @queue_until_user_message()
    async def create_step(self, step_dict: StepDict) -> None:
        await self._write_step(step_dict)

    @queue_until_user_message()
    async def update_step(self, step_dict: StepDict) -> None:
        await self._write_step(step_dict)

    async def _write_step(self, step_dict: StepDict) -> None:
        """Queue the step's state (see ``write_behind``); a user's own message is stored at once, in
        the background."""
        thread_id = step_dict.get("threadId")
        if not is_thread_id(thread_id):
            logger.warning("refused to store step %.80r: thread id %.80r is not a UUID", step_dict.get("id"), thread_id)
            return
        values: dict[str, Any] = {c: step_dict.get(c) for c in STEP_COLUMNS if step_dict.get(c) is not None}
        if "showInput" in values:
            values["showInput"] = str(values["showInput"]).lower()
        values.setdefault("metadata", {})
        for column in ("metadata", "modes", "generation"):
            if column in values:
                values[column] = self._json_param(values[column])
        # Queued by chat and id: step ids come from the browser, and a step sent with the id of
        # another chat's step must not merge into that step's queued state (the store then keeps
        # each row in its own chat, as for a step already stored).
        key = f"{thread_id}/{values['id']}"
        if step_dict.get("type") == "user_message":
            self._writes.write_soon(key, values)
        else:
            self._writes.add(key, values)

    async def _store_pending(self, rows: dict[str, dict[str, Any]]) -> None:
        """One transaction: thread changes, the threads the steps belong to (created if new), then
        every step."""
        try:
            await self._store_rows(rows)
        except Exception:
            logger.warning("storing %d rows together failed; storing them one by one", len(rows), exc_info=True)
            for key, values in rows.items():  # one bad row must not cost everyone else their history
                try:
                    await self._store_rows({key: values})
                except Exception:
                    logger.exception("could not store %s", key)

    async def _store_rows(self, rows: dict[str, dict[str, Any]]) -> None:
        changes = {k[len(THREAD_CHANGE) :]: v for k, v in rows.items() if k.startswith(THREAD_CHANGE)}
        steps = [v for k, v in rows.items() if not k.startswith(THREAD_CHANGE)]
        created = await self.get_current_timestamp()
        # Every thread row first (a no-op where it exists), in one lock order for every replica.
        threads = sorted({*changes, *(str(values["threadId"]) for values in steps)})
        async with self.transaction() as conn:
            await conn.execute(
                _text(
                    'INSERT INTO threads ("id", "createdAt", "metadata") VALUES (:id, :created, :metadata) '
                    'ON CONFLICT ("id") DO NOTHING'
                ),
                [{"id": thread_id, "created": created, "metadata": "{}"} for thread_id in threads],
            )
            for thread_id, change in sorted(changes.items()):
                await self._change_thread(conn, thread_id, change)
            if steps:
                await self._upsert_many(conn, "steps", steps)

    async def flush_writes(self) -> None:
        """Store the writes still pending (steps, thread changes); every read of the history calls it first."""
        await self._writes.flush()

    @queue_until_user_message()
    async def delete_step(self, step_id: str) -> None:
        await self.flush_writes()
        params = {"id": step_id}
        async with self.transaction() as conn:
            keys = [
                row["objectKey"]
                for row in await self._rows(conn, 'SELECT "objectKey" FROM elements WHERE "forId" = :id', params)
                if row["objectKey"]
            ]
            await conn.execute(_text('DELETE FROM feedbacks WHERE "forId" = :id'), params)
            await conn.execute(_text('DELETE FROM elements WHERE "forId" = :id'), params)
            await conn.execute(_text('DELETE FROM steps WHERE "id" = :id'), params)
        await self._delete_files(keys)

    async def get_step(self, step_id: str) -> Optional[StepDict]:
        await self.flush_writes()
        columns = ", ".join(f's."{c}"' for c in STEP_COLUMNS)
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f"""SELECT {columns}, f."id" AS feedback_id, f."value" AS feedback_value,
                           f."comment" AS feedback_comment
                    FROM steps s LEFT JOIN feedbacks f ON f."forId" = s."id" WHERE s."id" = :id""",
                {"id": step_id},
            )
        return step_dict(rows[0]) if rows else None

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        await self.flush_writes()
        columns = ", ".join(f's."{c}"' for c in STEP_COLUMNS)
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f"""SELECT {columns}, NULL AS feedback_id, NULL AS feedback_value, NULL AS feedback_comment
                    FROM steps s JOIN threads t ON t."id" = s."threadId"
                    WHERE t."userId" = :user_id ORDER BY s."createdAt" DESC NULLS LAST""",
                {"user_id": user_id},
            )
        return [step_dict(row) for row in rows if (row["metadata"] or {}).get("favorite") is True]

    # -- elements ----------------------------------------------------------------------------
    @queue_until_user_message()
    async def create_element(self, element: Element) -> None:
        try:
            await self._write_element(element)
        except Exception:
            logger.exception("could not store element %s", getattr(element, "id", "?"))

    async def _write_element(self, element: Element) -> None:
        storage = self.storage_provider
        if storage is None or not element.for_id:  # as Chainlit: only files attached to a step are kept
            return
        if not is_thread_id(element.thread_id) or not ELEMENT_ID.match(str(element.id)):
            logger.warning("refused element %.80r of thread %.80r: bad id", element.id, element.thread_id)
            return
        mime = element.mime or OCTET_STREAM
        name = safe_file_name(element.name)
        values: dict[str, Any] = {k: v for k, v in element.to_dict().items() if k in ELEMENT_COLUMNS and v is not None}
        values["mime"] = mime
        if element.path or element.content is not None:
            key = check_object_key(f"{element.thread_id}/{element.id}/{name}")
            if element.path and isinstance(storage, LocalFileStorage):
                stored = await storage.upload_path(key, element.path)
            else:
                if element.path:
                    data: bytes | str = await asyncio.to_thread(read_bytes, element.path)
                else:
                    data = element.content  # type: ignore[assignment]
                disposition = f"attachment; filename*=UTF-8''{quote(name)}"
                stored = await storage.upload_file(
                    object_key=key, data=data, mime=mime, overwrite=True, content_disposition=disposition
                )
            if not stored:
                raise RuntimeError(f"storage refused element {element.id}")
            values["objectKey"] = stored.get("object_key", key)
            values["url"] = stored.get("url")
        elif not element.url:
            return  # nothing to keep
        for column in ("props", "playerConfig"):
            if column in values:
                values[column] = self._json_param(values[column])
        async with self.transaction() as conn:
            await self._upsert(conn, "elements", values)

    async def get_element(self, thread_id: str, element_id: str) -> Optional[ElementDict]:
        columns = ", ".join(f'"{c}"' for c in ELEMENT_COLUMNS)
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f'SELECT {columns} FROM elements WHERE "threadId" = :thread_id AND "id" = :id',
                {"thread_id": thread_id, "id": element_id},
            )
        return await self._element_dict(rows[0]) if rows else None

    @queue_until_user_message()
    async def delete_element(self, element_id: str, thread_id: Optional[str] = None) -> None:
        where = '"id" = :id' + (' AND "threadId" = :thread_id' if thread_id else "")
        params = {"id": element_id, "thread_id": thread_id} if thread_id else {"id": element_id}
        async with self.transaction() as conn:
            rows = await self._rows(conn, f'SELECT "objectKey" FROM elements WHERE {where}', params)
            await conn.execute(_text(f"DELETE FROM elements WHERE {where}"), params)
        await self._delete_files(row["objectKey"] for row in rows if row["objectKey"])

    async def file_for(self, object_key: str, user_identifier: str) -> dict[str, Any] | None:
        """The element stored under ``object_key`` if ``user_identifier`` owns its thread:
        ``{"name", "mime", "thread_id"}``; None otherwise (not found and not yours look the same)."""
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                """SELECT e."name", e."mime", e."threadId" FROM elements e JOIN threads t ON t."id" = e."threadId"
                   WHERE e."objectKey" = :key AND t."userIdentifier" = :user""",
                {"key": object_key, "user": user_identifier},
            )
        if not rows:
            return None
        return {"name": rows[0]["name"], "mime": rows[0]["mime"] or OCTET_STREAM, "thread_id": rows[0]["threadId"]}
