"""What several ``weaver ui`` replicas must agree on, kept in their shared PostgreSQL database.

Replicas behind a sticky load balancer share one database (``WEAVER_DATABASE_URL``) and one
app folder. Anything a user could otherwise multiply by hitting another replica lives here,
in the history database's own tables (``ui.history.schema``, versions 2 and 3), never only in one
process's memory:

* the **login secret** (``weaver_secrets``): made once by whichever replica starts first, so a
  login cookie signed by one replica is valid on all of them;
* **failed logins** (``weaver_login_failures``): one row per failure, per name and per address,
  so the throttle counts across replicas (``SharedLoginThrottle``);
* **live sessions** (``weaver_live_sessions``): one row per chat holding a kernel, with its
  client (user), its replica and an expiry that the replica's heartbeat pushes forward. A replica
  that dies stops renewing its rows, so they stop counting after ``3 × heartbeat`` seconds; its
  local kernels died with it (``bwrap --die-with-parent``). The row also remembers the chat's
  thread, so a page whose replica died reconnects into the same chat (``LiveSessions.thread_of``);
* **kernels that outlive their replica** (schema version 3: the row's ``sessionId`` and ``kernelId``),
  as a Jupyter gateway's do (``KernelBackend.kernels_outlive_server``). When the chat comes back
  on another replica, that replica adopts the kernel (``adopt_kernel``: the variables survive,
  nothing is replayed) once the dead replica's rows have expired; a kernel nobody adopts within
  ``adopt_window_s`` after that is deleted by whichever replica's heartbeat finds it first
  (``reap_orphans``). Row locks (``FOR UPDATE``, ``SKIP LOCKED``) keep two replicas from both
  adopting, or both deleting, one kernel, and from deleting one being adopted.

Times are epoch seconds from the database's clock, so replicas' clocks need not agree. Replicas
share PostgreSQL this way (``is_shared``). The workers of ``weaver ui --workers N`` (one machine)
share the history whatever it is, the default SQLite file included: there every transaction that
may write begins ``BEGIN IMMEDIATE`` (``ui.history.rows.sqlite_transactions``), so one process at a
time writes and the advisory and row locks PostgreSQL needs are left out (``_Sql``); the time is
SQLite's ``julianday('now')``. A server alone on a SQLite file keeps the throttle and caps in memory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from pathlib import Path
from typing import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ui.guards.login_throttle import Attempt, address_key, user_key
from ui.history import database_url_for, migrate

logger = logging.getLogger("weaver.ui.shared")

NOW = "extract(epoch from clock_timestamp())"  # PostgreSQL; SQLite's is ``_Sql.now``
SECRET_NAME = "chainlit_auth_secret"
EXPIRY_BEATS = 3  # a replica's rows live this many heartbeats past its last one
LOCK_CLASS = 0x57A7  # the advisory-lock class of the login throttle (claims lock on one key, class-less)
FORGET_AFTER_S = 86_400.0  # expired rows are kept this long: a page may still reconnect into its chat


class _Sql:
    """The few words that differ between PostgreSQL and SQLite in these tables' statements."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.pg = conn.dialect.name == "postgresql"
        self.now = NOW if self.pg else "((julianday('now') - 2440587.5) * 86400.0)"
        self.for_update = " FOR UPDATE" if self.pg else ""  # SQLite: BEGIN IMMEDIATE holds the file
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if self.pg else ""
        self.row = "ctid" if self.pg else "rowid"

    async def lock(self, conn: AsyncConnection, statement: str, params: dict[str, object]) -> None:
        """An advisory lock on PostgreSQL; nothing on SQLite, whose writers already take turns."""
        if self.pg:
            await conn.execute(text(statement), params)


def is_shared(database_url: str | None) -> bool:
    """True when the history database is one several servers can share (PostgreSQL)."""
    return bool(database_url) and database_url_for(Path("."), database_url).startswith("postgresql")


# ----------------------------------------------------------------------------------- secret


def shared_secret(database_url: str) -> str:
    """The login-signing secret kept in the shared database, made there by the first replica.

    Called once at start, before the server's event loop runs, so it uses its own short-lived
    connection on a thread of its own (safe whether or not a loop is running here).
    """
    found: list[str] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            found.append(asyncio.run(_secret(database_url_for(".", database_url))))  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=work, name="weaver-shared-secret")
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return found[0]


async def _secret(url: str) -> str:
    engine = create_async_engine(url)
    try:
        await migrate(engine)  # the table may not exist yet: replicas starting together migrate once
        async with engine.begin() as conn:
            await conn.execute(
                text('INSERT INTO weaver_secrets ("name", "value") VALUES (:n, :v) ON CONFLICT ("name") DO NOTHING'),
                {"n": SECRET_NAME, "v": secrets.token_urlsafe(48)},
            )
            value = (
                await conn.execute(text('SELECT "value" FROM weaver_secrets WHERE "name" = :n'), {"n": SECRET_NAME})
            ).scalar_one()
        return str(value)
    finally:
        await engine.dispose()


# ----------------------------------------------------------------------------------- throttle


class SharedLoginThrottle:
    """``ui.guards.LoginThrottle``'s rules, counted in the shared database across replicas.

    ``attempt`` checks and reserves in one transaction that first takes a transaction-scoped advisory
    lock on the name and on the address (in a fixed order, so two attempts cannot deadlock), so
    attempts arriving together at any replicas are counted one after another. ``engine`` is asked
    for at each call: the history (and its engine) opens at app start-up, after this object is built.
    """

    def __init__(
        self, engine: Callable[[], AsyncEngine | None], per_user: int, per_address: int, window_s: float
    ) -> None:
        self._engine = engine
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self._writes = 0

    def _db(self) -> AsyncEngine:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the shared login throttle is used before the history database is open")
        return engine

    async def attempt(self, user: str, address: str) -> Attempt:
        """Refuse (``retry_after`` > 0), or count one failure for the name and the address (the
        token: the time it was counted at, to refund it by)."""
        limits = {user_key(user): self.per_user, address_key(address): self.per_address}
        async with self._db().begin() as conn:
            sql = _Sql(conn)
            for key in sorted(limits):
                await sql.lock(conn, "SELECT pg_advisory_xact_lock(:c, hashtext(:k))", {"c": LOCK_CLASS, "k": key})
            wait = max([await self._wait(conn, key, limit) for key, limit in limits.items()])
            if wait > 0:
                return Attempt(user, address, wait)
            at = float((await conn.execute(text(f"SELECT CAST({sql.now} AS DOUBLE PRECISION)"))).scalar_one())
            for key in limits:
                await conn.execute(
                    text('INSERT INTO weaver_login_failures ("key", "at") VALUES (:k, :a)'), {"k": key, "a": at}
                )
            self._writes += 1
            if self._writes % 100 == 0:  # now and then, forget what has left every window
                await conn.execute(
                    text(f'DELETE FROM weaver_login_failures WHERE "at" < {sql.now} - :w'), {"w": self.window_s}
                )
        return Attempt(user, address, token=at)

    async def _wait(self, conn: AsyncConnection, key: str, limit: int) -> float:
        clock = _Sql(conn).now
        rows = (
            await conn.execute(
                text(
                    f'SELECT "at", {clock} AS now FROM weaver_login_failures '
                    f'WHERE "key" = :k AND "at" > {clock} - :w ORDER BY "at" DESC LIMIT :n'
                ),
                {"k": key, "w": self.window_s, "n": limit},
            )
        ).all()
        if len(rows) < limit:
            return 0.0
        oldest_counted, now = float(rows[-1][0]), float(rows[-1][1])
        return max(1.0, self.window_s - (now - oldest_counted))

    async def succeeded(self, attempt: Attempt) -> None:
        """Forget the name's failures, and refund the address's failure reserved for this attempt."""
        async with self._db().begin() as conn:
            await conn.execute(
                text('DELETE FROM weaver_login_failures WHERE "key" = :k'), {"k": user_key(attempt.user)}
            )
            row = _Sql(conn).row
            await conn.execute(
                text(
                    f"DELETE FROM weaver_login_failures WHERE {row} IN (SELECT {row} FROM weaver_login_failures "
                    'WHERE "key" = :k AND "at" = :a LIMIT 1)'
                ),
                {"k": address_key(attempt.address), "a": attempt.token},
            )


# ----------------------------------------------------------------------------------- live sessions


# Deletes one kernel a dead replica left (``KernelBackend.delete_kernel``, off the loop; a kernel
# already gone included); raises when the backend could not be asked.
KernelDeleter = Callable[[str], Awaitable[None]]


class LiveSessions:
    """Chats holding a kernel, per client, across replicas; this replica's rows kept alive by a heartbeat."""

    def __init__(
        self,
        engine: Callable[[], AsyncEngine | None],
        replica: str,
        heartbeat_s: float,
        adopt_window_s: float = 0.0,
    ) -> None:
        """``adopt_window_s``: how long past its expiry a dead replica's kernel waits to be adopted."""
        self._engine = engine
        self.replica = replica
        self.heartbeat_s = heartbeat_s
        self.adopt_window_s = adopt_window_s
        # Set at start when the kernel backend's kernels outlive their replica: the heartbeat then
        # deletes orphaned kernels.
        self.delete_kernel: KernelDeleter | None = None
        self._beat: asyncio.Task[None] | None = None

    @property
    def ttl_s(self) -> float:
        return self.heartbeat_s * EXPIRY_BEATS

    def _db(self) -> AsyncEngine:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("live sessions are counted before the history database is open")
        return engine

    async def start(self) -> None:
        """At start: rows of this replica's earlier life no longer count (its kernels died with it); then beat."""
        await self._retire_mine()
        self._beat = asyncio.ensure_future(self._heartbeat())

    async def stop(self, hand_over: bool = False) -> None:
        """At shutdown: stop beating; this replica's rows no longer count (its sessions were stopped).
        ``hand_over`` (a drain left its chats' kernels running): the rows expire now, so the replica a
        chat reconnects to adopts its kernel at once rather than after the rows' expiry."""
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        await self._retire_mine(expire=hand_over)

    async def _retire_mine(self, expire: bool = False) -> None:
        async with self._db().begin() as conn:
            expiry = f', "expiresAt" = {_Sql(conn).now}' if expire else ""
            await conn.execute(
                text(f'UPDATE weaver_live_sessions SET "live" = FALSE{expiry} WHERE "replica" = :r'),
                {"r": self.replica},
            )

    async def _heartbeat(self) -> None:
        while True:
            try:
                async with self._db().begin() as conn:
                    now = _Sql(conn).now
                    await conn.execute(
                        text(
                            f'UPDATE weaver_live_sessions SET "expiresAt" = {now} + :t WHERE "replica" = :r AND "live"'
                        ),
                        {"t": self.ttl_s, "r": self.replica},
                    )
                    await conn.execute(
                        text(f'DELETE FROM weaver_live_sessions WHERE "expiresAt" < {now} - :f'), {"f": FORGET_AFTER_S}
                    )
            except Exception:  # a database blip must not end the heartbeat; rows expire if it lasts
                logger.exception("live-session heartbeat failed")
            if self.delete_kernel is not None:
                try:
                    await self.reap_orphans()
                except Exception:
                    logger.exception("deleting orphaned gateway kernels failed")
            await asyncio.sleep(self.heartbeat_s)

    async def claim(self, chat: str, client: str, limit: int) -> bool:
        """Record ``chat`` as live for ``client`` on this replica if the client holds fewer than
        ``limit`` other live chats on any replica; False when it is at its cap. Claims of one client
        are serialised by an advisory lock, so two replicas cannot both take the last place."""
        async with self._db().begin() as conn:
            sql = _Sql(conn)
            await sql.lock(conn, "SELECT pg_advisory_xact_lock(hashtext(:c))", {"c": client})
            held = (
                await conn.execute(
                    text(
                        'SELECT COUNT(*) FROM weaver_live_sessions WHERE "client" = :c AND "chat" <> :k '
                        f'AND "live" AND "expiresAt" > {sql.now}'
                    ),
                    {"c": client, "k": chat},
                )
            ).scalar_one()
            if int(held) >= limit:
                return False
            await conn.execute(
                text(
                    'INSERT INTO weaver_live_sessions ("chat", "client", "replica", "live", "expiresAt") '
                    f'VALUES (:k, :c, :r, TRUE, {sql.now} + :t) ON CONFLICT ("chat") DO UPDATE SET '
                    '"client" = EXCLUDED."client", "replica" = EXCLUDED."replica", "live" = TRUE, '
                    '"expiresAt" = EXCLUDED."expiresAt", '
                    # A kernel noted by another replica is not ours unless ``adopt_kernel`` took it.
                    '"kernelId" = CASE WHEN weaver_live_sessions."replica" = EXCLUDED."replica" '
                    'THEN weaver_live_sessions."kernelId" END'
                ),
                {"k": chat, "c": client, "r": self.replica, "t": self.ttl_s},
            )
        return True

    async def note_thread(self, chat: str, thread_id: str) -> None:
        """Remember the chat's thread, so its page can reconnect into it on another replica."""
        async with self._db().begin() as conn:
            await conn.execute(
                text('UPDATE weaver_live_sessions SET "threadId" = :t WHERE "chat" = :k'), {"t": thread_id, "k": chat}
            )

    async def release(self, chat: str) -> None:
        """The chat's session stopped here (and its kernel with it): it no longer counts. The row stays
        (not renewed) for ``FORGET_AFTER_S``, so the chat's page can still reconnect into its thread elsewhere."""
        async with self._db().begin() as conn:
            await conn.execute(
                text(
                    'UPDATE weaver_live_sessions SET "live" = FALSE, "kernelId" = NULL '
                    'WHERE "chat" = :k AND "replica" = :r'
                ),
                {"k": chat, "r": self.replica},
            )

    # ----- gateway kernels ------------------------------------------------------------------------

    async def note_kernel(self, chat: str, session_id: str, kernel_id: str | None) -> None:
        """The chat's session on this replica now runs in gateway kernel ``kernel_id``."""
        async with self._db().begin() as conn:
            await conn.execute(
                text(
                    'UPDATE weaver_live_sessions SET "sessionId" = :s, "kernelId" = :g '
                    'WHERE "chat" = :k AND "replica" = :r'
                ),
                {"s": session_id, "g": kernel_id, "k": chat, "r": self.replica},
            )

    async def adopt_kernel(self, chat: str, session_id: str, client: str) -> str | None:
        """The gateway kernel that ``chat`` held for ``session_id`` on a replica that is gone, now
        this replica's; None when there is none to take. Only the client (user) whose chat it was
        may take it: a chat key and a session id are not proof of who is asking.

        A replica is gone when its rows expired; until the chat's row expires this waits, at most
        ``ttl_s`` plus a beat, and then gives up (that replica may be alive: the page only moved,
        and the kernel stays its own). The row is taken under its lock with a fresh expiry and stays
        uncounted (``live`` false) until ``claim``, so no other replica takes it meanwhile; if the
        claim never comes, the row expires again and ``reap_orphans`` deletes the kernel after the
        window, as for any orphan.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ttl_s + self.heartbeat_s
        while True:
            async with self._db().begin() as conn:
                sql = _Sql(conn)
                row = (
                    await conn.execute(
                        text(
                            f'SELECT "kernelId", "sessionId", "expiresAt" - {sql.now} '
                            f'FROM weaver_live_sessions WHERE "chat" = :k AND "client" = :c{sql.for_update}'
                        ),
                        {"k": chat, "c": client},
                    )
                ).first()
                if row is None or row[0] is None or row[1] != session_id:
                    return None
                kernel_id, left = str(row[0]), float(row[2])
                # Expired only: a row that is not live but fresh was just adopted by another replica
                # (not claimed yet) or retired by its restarted replica; both expire within ttl_s.
                if left < 0:
                    await conn.execute(
                        text(
                            'UPDATE weaver_live_sessions SET "replica" = :r, "live" = FALSE, '
                            f'"expiresAt" = {sql.now} + :t WHERE "chat" = :k'
                        ),
                        {"r": self.replica, "t": self.ttl_s, "k": chat},
                    )
                    logger.info("chat %s: adopting gateway kernel %s of a replica that is gone", chat, kernel_id)
                    return kernel_id
            wait = min(left, self.heartbeat_s) + 0.05
            if loop.time() + wait > deadline:
                logger.info("chat %s: its replica still beats; its kernel %s stays that replica's", chat, kernel_id)
                return None
            await asyncio.sleep(wait)  # until the row's expiry, read from the database's clock

    async def reap_orphans(self) -> list[str]:
        """Delete the gateway kernels of rows that expired over ``adopt_window_s`` ago and still name
        one (a dead replica's chats nobody came back to); returns their ids. One row at a time under
        its lock, skipping rows another replica is deleting or adopting; a kernel the gateway could
        not delete stays named, for the next beat."""
        assert self.delete_kernel is not None
        deleted: list[str] = []
        while True:
            async with self._db().begin() as conn:
                sql = _Sql(conn)
                row = (
                    await conn.execute(
                        text(
                            'SELECT "chat", "kernelId" FROM weaver_live_sessions WHERE "kernelId" IS NOT NULL '
                            f'AND "expiresAt" < {sql.now} - :w LIMIT 1{sql.skip_locked}'
                        ),
                        {"w": self.adopt_window_s},
                    )
                ).first()
                if row is None:
                    return deleted
                chat, kernel_id = str(row[0]), str(row[1])
                try:
                    await self.delete_kernel(kernel_id)
                except Exception as exc:  # the gateway is away: try again at the next beat
                    logger.warning("orphaned gateway kernel %s of chat %s not deleted: %s", kernel_id, chat, exc)
                    return deleted
                await conn.execute(
                    text('UPDATE weaver_live_sessions SET "kernelId" = NULL WHERE "chat" = :k'), {"k": chat}
                )
            logger.info(
                "deleted gateway kernel %s of chat %s: its replica is gone and nobody adopted it", kernel_id, chat
            )
            deleted.append(kernel_id)

    async def thread_of(self, chat: str) -> str | None:
        """The thread of a chat that lived on another replica (alive or dead), if one was noted."""
        async with self._db().connect() as conn:
            value = (
                await conn.execute(text('SELECT "threadId" FROM weaver_live_sessions WHERE "chat" = :k'), {"k": chat})
            ).scalar_one_or_none()
        return str(value) if value else None
