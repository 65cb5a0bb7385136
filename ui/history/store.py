"""The SQL plumbing every part of ``WeaverDataLayer`` shares: transactions, bound statements,
values adapted to the database, and the upsert that keeps a row in its own thread.

``HistoryStore`` is the common base of the layer's parts (``users``, ``threads``, ``steps``,
``elements``, ``feedback``); it names the attributes the layer sets up in ``__init__`` and the
few methods one part calls in another, so each part type-checks on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncContextManager, AsyncIterator, Iterable, Mapping, Sequence

from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.utils import utc_now
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ui.history.rows import ELEMENT_COLUMNS, READ_ONLY, normalise
from ui.history.write_behind import WriteBehind

if TYPE_CHECKING:
    from chainlit.element import ElementDict

logger = logging.getLogger("weaver.ui.history")

# A statement's text is parsed (bind parameters found, a cache key made) each time ``text()`` is
# called; the history sends the same few statements many times a second under a crowd.
sql_text = functools.lru_cache(maxsize=512)(text)

PROBE_TIMEOUT_S = 5.0  # a database that takes longer to answer SELECT 1 counts as away


def lost_connection(exc: BaseException) -> bool:
    """True when ``exc`` says the connection to the database failed, not the statement: the
    database went away, restarted (a pooled connection from before), or is locked or unreachable."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.DisconnectionError,
            sa_exc.TimeoutError,
            OSError,
            asyncio.TimeoutError,
        ),
    )


class HistoryStore:
    """Transactions and statements over the layer's engine (set up by ``WeaverDataLayer``)."""

    engine: AsyncEngine
    dialect: str
    storage_provider: BaseStorageClient | None
    user_thread_limit: int | None
    _writes: WriteBehind
    _one_writer: asyncio.Lock | None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that may write (never nested: on SQLite, writers take turns)."""
        async with self.writer_turn(), self.engine.begin() as conn:
            yield conn

    def writer_turn(self) -> AsyncContextManager[object]:
        """This process's turn to write: SQLite's one writer (``_one_writer``); on PostgreSQL, now.
        ``transaction`` takes it; a caller that holds it begins with ``engine.begin()`` itself."""
        return self._one_writer if self._one_writer is not None else contextlib.nullcontext()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that only reads: on SQLite it does not wait for, nor hold, the write lock."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            async with conn.begin():
                yield conn

    async def database_answers(self) -> bool:
        """True when the database answers a trivial query (within ``PROBE_TIMEOUT_S``)."""

        async def probe() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(sql_text("SELECT 1"))

        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
        except Exception:
            return False
        return True

    def _param(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return list(value) if self.dialect == "postgresql" else json.dumps(list(value))
        return value

    def _json_param(self, value: Any) -> Any:
        return None if value is None else json.dumps(value)

    async def _rows(self, conn: AsyncConnection, sql: Any, params: Mapping[str, Any] | None = None) -> list[dict]:
        statement = sql_text(sql) if isinstance(sql, str) else sql
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
            await conn.execute(sql_text(sql), [{c: self._param(values[c]) for c in columns} for values in group])

    def _limit(self) -> int:
        return int(self.user_thread_limit or 1_000_000)

    async def get_current_timestamp(self) -> str:
        return str(utc_now())

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

    async def _delete_files(self, keys: Iterable[str]) -> None:
        if self.storage_provider is None:
            return
        for key in keys:
            try:
                await self.storage_provider.delete_file(object_key=key)
            except Exception:
                logger.warning("could not delete file %.120r from storage", key, exc_info=True)

    # Parts call each other through these (each is defined by the part named).
    async def flush_writes(self, now: bool = False) -> bool:  # steps
        raise NotImplementedError

    async def _change_thread(self, conn: AsyncConnection, thread_id: str, change: dict[str, Any]) -> None:  # threads
        raise NotImplementedError

    def _stored_threads(self, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:  # threads
        raise NotImplementedError
