"""First logins without a queue: logins of different names never wait for each other, logins of one
name at once make one user, and a login costs one database transaction at most.

Everything is real: the history layer on SQLite and on a throwaway PostgreSQL cluster
(``tests/pg_cluster.py``), its transactions counted by SQLAlchemy's own engine events; and a real
``weaver ui`` with header login behind a trusted proxy (the test plays the proxy), on SQLite and
on PostgreSQL. Holding one name's first login inside its transaction is done with a real database
lock: another connection inserts that name's row and does not commit, so PostgreSQL makes the
login's upsert wait on the unique index until that connection ends.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import httpx
import pytest
from sqlalchemy import event, text

from tests.pg_cluster import PgCluster, start_cluster
from tests.ui_harness import UIServer, start_server, stop_server, wait_until
from ui.history import WeaverDataLayer, open_history

pytestmark = pytest.mark.timeout(240)

HEADER = "X-Forwarded-User"


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class DB:
    kind: str
    app_dir: Path
    url: str | None  # None: the default SQLite file in app_dir


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> DB:
    if request.param == "sqlite":
        return DB("sqlite", tmp_path / "app", None)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return DB("postgresql", tmp_path / "app", cluster.create_database())


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


class Counted:
    """The transactions and the user-row writes a layer's engine runs, from its own events."""

    def __init__(self, layer: WeaverDataLayer) -> None:
        self.engine = layer.engine.sync_engine
        self.transactions = 0
        self.user_writes = 0  # statements that write users (one may write many)
        self.names_written: list[str] = []  # every value those statements sent
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "before_cursor_execute", self._statement)

    def _begin(self, conn: Any) -> None:
        self.transactions += 1

    def _statement(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        words = statement.lstrip().upper()
        if words.startswith("INSERT INTO USERS") or words.startswith("UPDATE USERS"):
            self.user_writes += 1
            values = parameters.values() if isinstance(parameters, dict) else parameters
            self.names_written.extend(str(v) for v in values)

    def reset(self) -> tuple[int, int]:
        seen = (self.transactions, self.user_writes)
        self.transactions = self.user_writes = 0
        return seen

    def close(self) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "before_cursor_execute", self._statement)


def _user(name: str, **metadata: Any) -> Any:
    import chainlit as cl

    return cl.User(identifier=name, metadata={"provider": "header", **metadata})


def test_a_login_costs_one_transaction_at_most(db: DB) -> None:
    """A first login: one transaction, one write. The same login again soon: none. A returning user
    after a restart: one transaction that only reads. A user another replica stored, unknown here:
    one transaction that writes nothing and finds that user."""

    async def scenario() -> None:
        layer = await open_history(db.app_dir, db.url)
        other = await open_history(db.app_dir, db.url)  # another replica, open before anyone signed in
        counted = Counted(layer)
        try:
            made = await layer.create_user(_user("ada"))
            assert made is not None and made.identifier == "ada"
            assert counted.reset() == (1, 1), "a first login is one transaction with one write"
            again = await layer.create_user(_user("ada"))
            assert again is not None and again.id == made.id and counted.reset() == (0, 0)
            changed = await layer.create_user(_user("ada", team="blue"))
            assert changed is not None and changed.id == made.id and changed.metadata["team"] == "blue"
            counted.reset()

            seen_elsewhere = Counted(other)
            try:
                found = await other.create_user(_user("ada", team="blue"))
                assert found is not None and found.id == made.id
                assert seen_elsewhere.transactions == 1, "a name unknown here is one transaction"
                assert seen_elsewhere.user_writes == 1  # the upsert, which found the row unchanged
            finally:
                seen_elsewhere.close()
        finally:
            counted.close()
            await layer.close()
            await other.close()

        restarted = await open_history(db.app_dir, db.url)
        counted = Counted(restarted)
        try:
            back = await restarted.create_user(_user("ada", team="blue"))
            assert back is not None and back.id == made.id
            assert counted.reset() == (1, 0), "a returning user is one transaction that only reads"
            async with restarted.reading() as conn:
                rows = (await conn.execute(text("SELECT COUNT(*) FROM users"))).scalar()
            assert rows == 1
        finally:
            counted.close()
            await restarted.close()

    run(scenario)


def test_a_rush_of_new_names_costs_no_more_transactions_than_returning_ones(db: DB) -> None:
    """A hundred first logins at once: written together, a few transactions in all, every name
    stored once. Then (after a restart, nothing cached) the same hundred: reads only, as few."""

    async def scenario() -> None:
        names = [f"new-{i:03d}" for i in range(100)]
        layer = await open_history(db.app_dir, db.url)
        counted = Counted(layer)
        try:
            made = await asyncio.gather(*(layer.create_user(_user(n)) for n in names))
            first = counted.reset()
        finally:
            counted.close()
            await layer.close()
        layer = await open_history(db.app_dir, db.url)
        counted = Counted(layer)
        try:
            back = await asyncio.gather(*(layer.create_user(_user(n)) for n in names))
            returning = counted.reset()
            async with layer.reading() as conn:
                stored = (await conn.execute(text('SELECT COUNT(DISTINCT "identifier"), COUNT(*) FROM users'))).one()
        finally:
            counted.close()
            await layer.close()
        assert [u.id for u in made if u] == [u.id for u in back if u] and len(made) == 100
        assert first[0] <= 10 and first[1] <= 10 and returning[1] == 0 and returning[0] <= 10, (first, returning)
        assert tuple(stored) == (100, 100)

    run(scenario)


def test_logins_of_one_name_at_once_share_one_write_and_other_names_go_on(db: DB) -> None:
    """Thirty logins of one new name and thirty of other new names, all at once: one row for the
    name, one for each other name; the name's logins share one write (it is sent once)."""

    async def scenario() -> None:
        layer = await open_history(db.app_dir, db.url)
        counted = Counted(layer)
        try:
            same = [layer.create_user(_user("class")) for _ in range(30)]
            others = [layer.create_user(_user(f"pupil-{i}")) for i in range(30)]
            made = await asyncio.gather(*same, *others)
            assert len({u.id for u in made[:30] if u}) == 1 and len({u.id for u in made[30:] if u}) == 30
            assert counted.names_written.count("class") == 1
            assert all(counted.names_written.count(f"pupil-{i}") == 1 for i in range(30))
            async with layer.reading() as conn:
                rows = (await conn.execute(text("SELECT COUNT(*) FROM users"))).scalar()
            assert rows == 31 and not layer._user_writes, "every name's write ended and was forgotten"
        finally:
            counted.close()
            await layer.close()

    run(scenario)


# -- a real server behind a (simulated) proxy --------------------------------------------------


def _header_server(root: Path, database_url: str | None = None) -> UIServer:
    env = {
        "WEAVER_UI_USER_HEADER": HEADER,
        "CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(32),
        "WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1",
        "WEAVER_EXECUTION__POOL_SIZE": "0",
    }
    if database_url:
        env["WEAVER_DATABASE_URL"] = database_url
    return start_server(root / "app", root / "server.log", extra_env=env)


def _login(server: UIServer, name: str) -> tuple[int, str]:
    """``POST /auth/header`` as the proxy sends it, then ``GET /user`` with the cookie: who it says."""
    response = httpx.post(f"{server.base_url}/auth/header", headers={HEADER: name}, timeout=60)
    if response.status_code != 200:
        return response.status_code, ""
    cookie = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
    me = httpx.get(f"{server.base_url}/user", headers={"Cookie": cookie}, timeout=60)
    return me.status_code, str(me.json().get("identifier", "")) if me.status_code == 200 else ""


def test_a_crowd_of_first_logins_on_a_real_server_each_gets_its_own_user(tmp_path: Path) -> None:
    """Forty browsers at once through the proxy: twenty new names, and one more name twenty times.
    Each is signed in as itself, and the history holds each name once."""
    server = _header_server(tmp_path)
    try:
        names = [f"person-{i}" for i in range(20)] + ["team"] * 20
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda n: _login(server, n), names))
        assert results == [(200, n) for n in names], results
        assert "Error creating user" not in server.log()
    finally:
        stop_server(server)
    with sqlite3.connect(server.app_dir / "weaver.db") as conn:
        rows = dict(conn.execute('SELECT "identifier", COUNT(*) FROM users GROUP BY "identifier"').fetchall())
    assert rows == {**{f"person-{i}": 1 for i in range(20)}, "team": 1}


def test_password_logins_of_different_users_at_once_all_go_through(tmp_path: Path) -> None:
    """Twelve people of a password login sign in at once (each a first login), two with a wrong
    password; then one gets a new password (``UserStore.add``, as ``weaver user passwd`` does):
    the old password no longer works and the new one does, though logins read the user list from
    the copy kept since the file last changed."""
    from ui.logins import UserStore

    store = UserStore(tmp_path / "app")
    for i in range(12):
        store.add(f"member-{i}", f"password-{i}-long")
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_UI_AUTH": "password"})

    def login(name: str, password: str) -> tuple[int, str]:
        response = httpx.post(f"{server.base_url}/login", data={"username": name, "password": password}, timeout=60)
        if response.status_code != 200:
            return response.status_code, ""
        cookie = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
        me = httpx.get(f"{server.base_url}/user", headers={"Cookie": cookie}, timeout=60)
        return me.status_code, str(me.json().get("identifier", "")) if me.status_code == 200 else ""

    try:
        tries = [(f"member-{i}", f"password-{i}-long" if i < 10 else "wrong-password") for i in range(12)]
        with ThreadPoolExecutor(len(tries)) as pool:
            results = list(pool.map(lambda t: login(*t), tries))
        assert results[:10] == [(200, f"member-{i}") for i in range(10)], results
        assert [code for code, _ in results[10:]] == [401, 401], results
        store.add("member-0", "a-new-password", must_exist=True)
        assert login("member-0", "password-0-long")[0] == 401
        assert login("member-0", "a-new-password") == (200, "member-0")
    finally:
        stop_server(server)


class HeldName:
    """Another connection that inserts ``name``'s user row and keeps its transaction open: a login
    of that name waits on PostgreSQL's unique index until ``release`` (a rollback)."""

    def __init__(self, cluster: PgCluster, database: str, name: str) -> None:
        self.cluster, self.database, self.name = cluster, database, name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: Any = self._call(self._hold())

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(
            user="postgres", database=self.database, host=str(self.cluster.socket_dir), port=5432
        )

    async def _hold(self) -> Any:
        conn = await self._connect()
        await conn.execute("BEGIN")
        await conn.execute(
            'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES ($1, $2, $3, $4)',
            str(uuid.uuid4()),
            self.name,
            "{}",
            "2026-01-01",
        )
        return conn

    def waiting(self) -> bool:
        """True when a session of the database waits for a lock (the held name's login)."""

        async def ask() -> bool:
            conn = await self._connect()
            try:
                found = await conn.fetchval(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                    self.database,
                )
            finally:
                await conn.close()
            return bool(found)

        return bool(self._call(ask()))

    def release(self) -> None:
        async def end() -> None:
            await self._conn.execute("ROLLBACK")
            await self._conn.close()

        if self._conn is not None:
            self._call(end())
            self._conn = None

    def close(self) -> None:
        try:
            self.release()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


def test_a_first_login_held_in_its_transaction_does_not_hold_another_name(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """One name's first login waits inside its transaction (a real row lock held by another
    connection); first logins of other names go through meanwhile. When the lock goes, the held
    login ends signed in, with one row for its name."""
    url = pg_cluster.create_database()
    database = url.split("@/", 1)[1].split("?", 1)[0]
    server = _header_server(tmp_path, url)
    held: HeldName | None = None
    try:
        assert _login(server, "warm-up") == (200, "warm-up")  # the schema exists, the server is warm
        held = HeldName(pg_cluster, database, "held")
        with ThreadPoolExecutor(4) as pool:
            blocked = pool.submit(_login, server, "held")
            wait_until(held.waiting, 30, "the held name's login to wait on its row lock", every=0.1)
            others = list(pool.map(lambda n: _login(server, n), ["free-1", "free-2", "free-3"]))
            assert others == [(200, "free-1"), (200, "free-2"), (200, "free-3")]
            assert not blocked.done(), "the held login went through while its row was locked"
            held.release()
            assert blocked.result(60) == (200, "held")
        assert "Error creating user" not in server.log()  # Chainlit signs in even when storing the user failed
    finally:
        if held is not None:
            held.close()
        stop_server(server)

    async def count() -> dict[str, int]:
        import asyncpg

        conn = await asyncpg.connect(user="postgres", database=database, host=str(pg_cluster.socket_dir), port=5432)
        try:
            rows = await conn.fetch('SELECT "identifier", COUNT(*) AS n FROM users GROUP BY "identifier"')
        finally:
            await conn.close()
        return {str(r["identifier"]): int(r["n"]) for r in rows}

    assert asyncio.run(count()) == {"warm-up": 1, "held": 1, "free-1": 1, "free-2": 1, "free-3": 1}
