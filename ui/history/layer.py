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
  an owner to another user; a step, element or feedback written with an id that another thread's
  row already has (ids come from the browser) changes nothing; a step is deleted only from the
  chat that asks.
* Timestamps are UTC (Chainlit stamps threads with local time marked ``Z``).

The methods live in one module per kind of row, each a part of this class: ``users``,
``threads``, ``steps``, ``elements``, ``feedback``, over the shared SQL of ``store``. Chainlit's
HTTP routes that write feedback and elements by id are checked for ownership by ``ownership``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable, Iterator

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient

from ui.history.batches import Batches
from ui.history.elements import Elements
from ui.history.feedback import Feedbacks
from ui.history.rows import SQLITE_BUSY_TIMEOUT_S, is_thread_id, sqlite_transactions
from ui.history.schema import migrate
from ui.history.shares import Shares
from ui.history.spool import Rows, Spool, orphans
from ui.history.steps import Steps
from ui.history.threads import THREAD_CHANGE, ThreadDeleted, Threads, merge_change, thread_of
from ui.history.users import USER_READ_BATCH, USER_WRITE_BATCH, Users
from ui.history.write_behind import DEFAULT_OUTAGE, Merge, OutagePolicy, WriteBehind, register, unregister

logger = logging.getLogger("weaver.ui.history")

__all__ = ["STEP_WRITE_DELAY_S", "ThreadDeleted", "WeaverDataLayer", "is_thread_id"]

# How long a step's update may wait to be stored with others (ui/history/write_behind.py).
STEP_WRITE_DELAY_S = 0.5
# PostgreSQL (asyncpg): the longest a new connection, and any statement, may take. A database that
# stops answering would otherwise hold a read, or a pooled connection, for minutes; the write-behind
# gives up on a store sooner (``OutagePolicy.store_timeout_s``), these bound what it leaves running.
PG_CONNECT_TIMEOUT_S = 10.0
PG_COMMAND_TIMEOUT_S = 60.0


def _merge_for(key: str) -> Merge:
    """How a later change of a pending row goes over an earlier one (as ``update_thread`` and
    ``_write_step`` merge them): a thread change merges its own way; a step's columns are replaced."""
    return merge_change if key.startswith(THREAD_CHANGE) else dict.update


class WeaverDataLayer(Users, Threads, Steps, Elements, Feedbacks, Shares, SQLAlchemyDataLayer):
    """Chainlit's data layer for Weaver's history. Call ``await open()`` once, in the server's
    event loop (``ui.history.open_history`` does), before Chainlit uses it."""

    def __init__(
        self,
        database_url: str,
        storage: BaseStorageClient | None,
        on_thread_deleted: ThreadDeleted | None = None,
        user_thread_limit: int = 1000,
        step_write_delay: float = STEP_WRITE_DELAY_S,
        outage: OutagePolicy = DEFAULT_OUTAGE,
        spool: Spool | None = None,
    ) -> None:
        is_sqlite = database_url.startswith("sqlite")
        asyncpg = {"timeout": PG_CONNECT_TIMEOUT_S, "command_timeout": PG_COMMAND_TIMEOUT_S}
        sqlite = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        super().__init__(
            conninfo=database_url,
            connect_args=sqlite if is_sqlite else asyncpg if "+asyncpg" in database_url else None,
            storage_provider=storage,
            user_thread_limit=user_thread_limit,
        )
        self.on_thread_deleted = on_thread_deleted
        self.dialect = self.engine.dialect.name
        self._writes = WriteBehind(
            self._store_pending, step_write_delay, merge_for=_merge_for, outage=outage, spool=spool
        )
        self._users = {}
        self._known_users = set()
        self._user_writes = {}
        self._deleted_threads = {}
        self._adopted_threads = set()
        # SQLite has one writer at a time. Writers queue here, before taking a pooled connection,
        # so the ones waiting for the write lock do not hold every connection while a login or a
        # page of the chat list waits for one (PostgreSQL locks rows, not the database: no queue).
        self._one_writer = asyncio.Lock() if is_sqlite else None
        if is_sqlite:
            sqlite_transactions(self.engine.sync_engine)
        self._user_reads = Batches(self._read_users, USER_READ_BATCH)
        self._user_batches = Batches(self._write_users, USER_WRITE_BATCH, turn=self.writer_turn)

    async def open(self) -> tuple[int, int]:
        """Create or upgrade the schema; returns (version before, version after)."""
        versions = await migrate(self.engine)
        await self.load_known_users()  # their logins read; only new names write
        register(self._writes)
        return versions

    @property
    def writes(self) -> WriteBehind:
        """The write-behind: what waits to be stored (``pending``, ``failed_writes``, ``failing_since``)."""
        return self._writes

    async def take_over_spools(self) -> int:
        """Store the rows that servers which died left in the spool folder (none that a live
        server holds); returns how many rows. Called once at start, before anything is served."""
        spool = self._writes.spool
        if spool is None:
            return 0
        taken = 0
        for orphan in await asyncio.to_thread(orphans, spool.folder, spool.name):
            try:
                rows = await self._writes.take_over(self._adopting(orphan.batches()))
            except BaseException:
                orphan.release()
                raise
            orphan.remove()
            logger.warning("history: %d row(s) left by a server that stopped in %s are being stored", rows, orphan.path)
            taken += rows
        if taken:
            await self._writes.flush(now=True)
        return taken

    def _adopting(self, batches: Iterable[Rows]) -> Iterator[Rows]:
        """``batches``, their threads noted: the store checks they still exist (``Steps._store_rows``)."""
        for rows in batches:
            self._adopted_threads.update(thread_of(key) for key in rows)
            yield rows

    async def close(self) -> None:
        """Store the writes still pending (steps, thread changes), then let the connections go;
        what the database does not take stays in the spool for the next start."""
        unregister(self._writes)
        await self._writes.close()
        await super().close()
