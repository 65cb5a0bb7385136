"""Chat history (``ui.history``) against real databases: SQLite and a throwaway PostgreSQL cluster.

Every data-layer test runs on both (``db`` is parametrized); the PostgreSQL cluster is started
once for the module by ``tests/pg_cluster.py`` (as a non-root user, on a unix socket in a temp
folder) and each test gets a fresh database in it. Steps, messages and files are made with
Chainlit's own classes in an HTTP-session context, the way the server makes them. The file
route is mounted on a FastAPI app with a catch-all route like Chainlit's, and called with
Chainlit's own JWTs (``create_jwt``, ``CHAINLIT_AUTH_SECRET``) over ASGI.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.pg_cluster import PgCluster, start_cluster
from ui.history import (
    MIGRATIONS,
    SCHEMA_VERSION,
    HistoryConfigError,
    LocalFileStorage,
    Migration,
    SchemaError,
    UnsafeObjectKey,
    WeaverDataLayer,
    check_object_key,
    database_url_for,
    history_settings,
    install_file_route,
    migrate,
    open_history,
    safe_file_name,
    schema_version,
)

pytestmark = pytest.mark.timeout(120)


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

    async def open(self, on_thread_deleted: Any = None) -> WeaverDataLayer:
        return await open_history(self.app_dir, self.url, on_thread_deleted=on_thread_deleted)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> DB:
    app_dir = tmp_path / "app"
    if request.param == "sqlite":
        return DB("sqlite", app_dir, None)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return DB("postgresql", app_dir, cluster.create_database())


def run(db: DB, scenario: Callable[[WeaverDataLayer], Awaitable[None]], on_thread_deleted: Any = None) -> None:
    """Open the history in a fresh event loop, run ``scenario`` in a Chainlit HTTP context, close."""

    async def main() -> None:
        from chainlit.context import ChainlitContext, context_var
        from chainlit.session import HTTPSession

        context_var.set(ChainlitContext(HTTPSession(id=str(uuid.uuid4()), client_type="webapp")))
        layer = await db.open(on_thread_deleted)
        try:
            await scenario(layer)
        finally:
            await layer.close()

    asyncio.run(main())


# -- building a chat the way Chainlit does --------------------------------------------------------


async def new_user(layer: WeaverDataLayer, name: str) -> Any:
    import chainlit as cl

    user = await layer.create_user(cl.User(identifier=name, metadata={"provider": "credentials"}))
    assert user is not None and user.identifier == name
    return user


async def new_chat(
    layer: WeaverDataLayer, user: Any, first: str, tmp: Path, session_id: str = "", file_name: str = "data.csv"
) -> tuple[str, str]:
    """A thread owned by ``user``: a user message with an uploaded file, a step, an answer.
    Returns (thread id, the element's object key)."""
    import chainlit as cl
    from chainlit.utils import utc_now

    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name=first, user_id=user.id, metadata={"weaver_session_id": session_id})
    question = cl.Message(content=first, author=user.identifier, type="user_message", created_at=utc_now())
    question.thread_id = thread_id
    await layer.create_step(question.to_dict())
    upload = tmp / f"upload-{thread_id}"
    upload.write_bytes(b"a,b\n1,2\n")
    element = cl.File(path=str(upload), name=file_name, mime="text/csv", thread_id=thread_id, for_id=question.id)
    await layer.create_element(element)
    step = cl.Step(name="CodeInterpreter", type="tool", show_input="python")
    step.thread_id, step.parent_id = thread_id, question.id
    step.input, step.output, step.metadata = "print(1)", "1", {"round": 1, "favorite": True}
    await layer.create_step(step.to_dict())
    answer = cl.Message(content=f"answer to {first}", author="Weaver", parent_id=question.id, created_at=utc_now())
    answer.thread_id = thread_id
    await layer.create_step(answer.to_dict())
    key = (await layer.get_thread(thread_id) or {"elements": [{}]})["elements"][0].get("objectKey")
    assert key, "the upload was not stored"
    return thread_id, str(key)


async def count(layer: WeaverDataLayer, table: str, where: str = "1 = 1", **params: Any) -> int:
    async with layer.transaction() as conn:
        return int((await conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE {where}"), params)).scalar() or 0)


# -- schema ---------------------------------------------------------------------------------------


def test_schema_created_on_first_open_and_migrated(db: DB) -> None:
    async def scenario(layer: WeaverDataLayer) -> None:
        n = SCHEMA_VERSION
        assert await schema_version(layer.engine) == n == len(MIGRATIONS)
        for table in ("users", "threads", "steps", "elements", "feedbacks"):
            assert await count(layer, table) == 0
        assert await layer.open() == (n, n)  # opening again changes nothing

        alice = await new_user(layer, "alice")
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name="kept", user_id=alice.id)

        archived = Migration(
            n + 1,
            "threads can be archived",
            lambda dialect: [
                'ALTER TABLE threads ADD COLUMN "archived" BOOLEAN NOT NULL DEFAULT FALSE',
                'CREATE INDEX threads_archived ON threads ("archived")',
            ],
        )
        assert await migrate(layer.engine, (*MIGRATIONS, archived)) == (n, n + 1)
        assert await migrate(layer.engine, (*MIGRATIONS, archived)) == (n + 1, n + 1)
        async with layer.transaction() as conn:
            row = (await conn.execute(text('SELECT "name", "archived" FROM threads'))).one()
        assert row[0] == "kept" and not row[1]
        thread = await layer.get_thread(thread_id)
        assert thread is not None and thread["name"] == "kept"

        with pytest.raises(SchemaError, match="newer"):
            await migrate(layer.engine, MIGRATIONS)  # this code knows only version n

        broken = Migration(
            n + 2, "fails half way", lambda dialect: ['ALTER TABLE threads ADD COLUMN "x" TEXT', "NOT SQL"]
        )
        with pytest.raises(DBAPIError):
            await migrate(layer.engine, (*MIGRATIONS, archived, broken))
        assert await schema_version(layer.engine) == n + 1  # the failed step left nothing behind
        async with layer.transaction() as conn:  # (SQLite reads an unknown "x" as a string: list the columns)
            columns = set((await conn.execute(text("SELECT * FROM threads"))).keys())
        assert "archived" in columns and "x" not in columns

    run(db, scenario)
    if db.kind == "sqlite":
        for name in ("weaver.db", "files"):
            assert (db.app_dir / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"


def test_servers_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path: Path) -> None:
    """``weaver ui --workers N`` on a first start: every worker opens the new file at the same moment.
    Each switches it to WAL; SQLite fails all but one of those switches at once, past its busy timeout."""

    async def open_together(app_dir: Path, servers: int) -> list[int]:
        layers = await asyncio.gather(*(open_history(app_dir, None, server_id=f"w{i}") for i in range(servers)))
        try:
            return [await schema_version(layer.engine) for layer in layers]
        finally:
            await asyncio.gather(*(layer.close() for layer in layers))

    for attempt in range(12):
        app_dir = tmp_path / f"start{attempt}"
        assert asyncio.run(open_together(app_dir, 4)) == [SCHEMA_VERSION] * 4
        with sqlite3.connect(app_dir / "weaver.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_database_settings() -> None:
    app = Path("/srv/weaver")
    assert database_url_for(app, None) == "sqlite+aiosqlite:////srv/weaver/weaver.db"
    assert database_url_for(app, "postgresql://u:p@db/w") == "postgresql+asyncpg://u:p@db/w"
    assert database_url_for(app, "postgresql+asyncpg://u@db/w") == "postgresql+asyncpg://u@db/w"
    with pytest.raises(HistoryConfigError, match="WEAVER_DATABASE_URL"):
        database_url_for(app, "mysql://db/w")
    assert history_settings({}).database_url is None
    assert history_settings({"WEAVER_DATABASE_URL": " "}).database_url is None
    assert history_settings({"WEAVER_FILE_STORAGE": "s3://bucket"}).file_storage == "s3://bucket"
    with pytest.raises(HistoryConfigError, match="WEAVER_FILE_STORAGE"):
        history_settings({"WEAVER_FILE_STORAGE": "/tmp/files"})


# -- the data layer -------------------------------------------------------------------------------


def test_chats_are_stored_listed_renamed_and_searched(db: DB, tmp_path: Path) -> None:
    async def scenario(layer: WeaverDataLayer) -> None:
        alice, bob = await new_user(layer, "alice"), await new_user(layer, "bob")
        assert (await layer.get_user("alice")).id == alice.id  # type: ignore[union-attr]
        assert (await layer.create_user(alice)).id == alice.id  # type: ignore[union-attr]  (an update)

        first, key = await new_chat(layer, alice, "Übersicht der Verkäufe", tmp_path, "s-1")
        second, _ = await new_chat(layer, alice, "plot a sine", tmp_path, "s-2")
        theirs, _ = await new_chat(layer, bob, "bob's secret sine", tmp_path, "s-3")

        thread = await layer.get_thread(first)
        assert thread is not None
        assert thread["userIdentifier"] == "alice" and thread["userId"] == alice.id
        assert thread["metadata"] == {"weaver_session_id": "s-1"}
        steps = thread["steps"]
        assert [s["type"] for s in steps] == ["user_message", "tool", "assistant_message"]
        assert steps[0]["output"] == "Übersicht der Verkäufe"
        tool = steps[1]
        assert tool["input"] == "print(1)" and tool["output"] == "1" and tool["showInput"] == "python"
        assert tool["metadata"] == {"round": 1, "favorite": True} and tool["streaming"] is False
        assert steps[2]["parentId"] == steps[0]["id"]
        (element,) = thread["elements"]
        assert element["name"] == "data.csv" and element["mime"] == "text/csv"
        assert element["forId"] == steps[0]["id"] and element["url"] == f"/weaver/files/{key}"
        assert isinstance(element["props"], dict)
        stored = db.app_dir / "files" / key
        assert stored.read_bytes() == b"a,b\n1,2\n"
        fetched = await layer.get_element(first, element["id"])
        assert fetched is not None and fetched["objectKey"] == key
        assert await layer.get_thread_author(first) == "alice"
        assert await layer.get_thread_author(str(uuid.uuid4())) == ""  # Chainlit then answers 404

        from chainlit.types import Feedback, Pagination, ThreadFilter

        page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=alice.id))
        assert [t["id"] for t in page.data] == [second, first]  # newest first, only hers
        assert not page.pageInfo.hasNextPage
        page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=bob.id))
        assert [t["id"] for t in page.data] == [theirs]

        one = await layer.list_threads(Pagination(first=1), ThreadFilter(userId=alice.id))
        assert [t["id"] for t in one.data] == [second] and one.pageInfo.hasNextPage
        rest = await layer.list_threads(
            Pagination(first=1, cursor=one.pageInfo.endCursor), ThreadFilter(userId=alice.id)
        )
        assert [t["id"] for t in rest.data] == [first] and not rest.pageInfo.hasNextPage

        async def search(user: Any, words: str) -> list[str]:
            found = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id, search=words))
            return [t["id"] for t in found.data]

        assert await search(alice, "SINE") == [second]  # not bob's, which also says sine
        assert await search(alice, "übersicht") == [first]
        assert await search(alice, "100%") == []

        await layer.update_thread(first, name="Sales overview")
        assert (await layer.get_thread(first))["name"] == "Sales overview"  # type: ignore[index]
        assert await search(alice, "overview") == [first]
        assert await search(alice, "übersicht") == []

        # metadata merges; None removes a key; the owner never changes
        await layer.update_thread(first, metadata={"chat_profile": "x", "weaver_session_id": None})
        await layer.update_thread(first, user_id=bob.id)
        thread = await layer.get_thread(first)
        assert thread is not None and thread["metadata"] == {"chat_profile": "x"}
        assert thread["userIdentifier"] == "alice" and await layer.get_thread_author(first) == "alice"

        # feedback, favourites, tags
        answer_id = thread["steps"][2]["id"]
        await layer.upsert_feedback(Feedback(forId=answer_id, value=1, threadId=first, comment="good"))
        voted = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=alice.id, feedback=1))
        assert [t["id"] for t in voted.data] == [first]
        thread = await layer.get_thread(first)
        assert thread is not None and thread["steps"][2]["feedback"]["comment"] == "good"  # type: ignore[index]
        favourites = await layer.get_favorite_steps(alice.id)
        assert sorted(s["threadId"] for s in favourites) == sorted([first, second])
        await layer.update_thread(second, tags=["profile-a", "b"])
        assert (await layer.get_thread(second))["tags"] == ["profile-a", "b"]  # type: ignore[index]

    run(db, scenario)


def test_concurrent_writes_are_all_kept(db: DB) -> None:
    """Chainlit writes steps and thread changes from many tasks at once; none may be lost."""

    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl
        from chainlit.utils import utc_now

        alice = await new_user(layer, "alice")
        thread_id = str(uuid.uuid4())
        messages = [cl.Message(content=f"m{i}", author="alice", created_at=utc_now()) for i in range(30)]
        for message in messages:
            message.thread_id = thread_id
        await asyncio.gather(
            *(layer.create_step(m.to_dict()) for m in messages),
            *(layer.update_thread(thread_id, metadata={f"k{i}": i}) for i in range(10)),
            layer.update_thread(thread_id, name="busy", user_id=alice.id),
        )
        thread = await layer.get_thread(thread_id)
        assert thread is not None and thread["name"] == "busy" and thread["userIdentifier"] == "alice"
        assert sorted(s["output"] for s in thread["steps"]) == sorted(f"m{i}" for i in range(30))
        assert thread["metadata"] == {f"k{i}": i for i in range(10)}

    run(db, scenario)


def test_new_chats_arriving_together_share_the_transactions_of_their_thread_changes(db: DB) -> None:
    """Fifty chats started at once each name their thread, set its owner and note metadata. Each
    change used to be a transaction of its own (three per new chat, under a crowd on the event
    loop); they now share one or two, and every change is stored when its call returns."""

    async def scenario(layer: WeaverDataLayer) -> None:
        from sqlalchemy import event

        alice = await new_user(layer, "alice")
        ids = [str(uuid.uuid4()) for _ in range(50)]
        begins: list[object] = []
        began = begins.append
        event.listen(layer.engine.sync_engine, "begin", began)
        try:
            await asyncio.gather(
                *(
                    layer.update_thread(t, name=f"chat {i}", user_id=alice.id, metadata={"n": i})
                    for i, t in enumerate(ids)
                )
            )
        finally:
            event.remove(layer.engine.sync_engine, "begin", began)
        assert 1 <= len(begins) <= 3
        for i, thread_id in enumerate(ids):
            thread = await layer.get_thread(thread_id)
            assert thread is not None and thread["name"] == f"chat {i}" and thread["userIdentifier"] == "alice"
            assert thread["metadata"] == {"n": i}

    run(db, scenario)


def test_thread_changes_stored_together_end_as_if_stored_one_after_another(db: DB) -> None:
    """Changes of one thread that wait in the same batch: the first owner stays and a second is
    refused, metadata merges (a None removes its key), a name in later metadata wins."""

    async def scenario(layer: WeaverDataLayer) -> None:
        alice, bob = await new_user(layer, "alice"), await new_user(layer, "bob")
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, metadata={"gone": 1})
        await asyncio.gather(
            layer.update_thread(str(uuid.uuid4()), name="other"),  # its store runs while the three below wait together
            layer.update_thread(thread_id, name="first", user_id=alice.id, metadata={"a": 1}),
            layer.update_thread(thread_id, user_id=bob.id, metadata={"b": 2, "gone": None}),
            layer.update_thread(thread_id, metadata={"name": "from metadata"}),
        )
        thread = await layer.get_thread(thread_id)
        assert thread is not None and thread["userIdentifier"] == "alice" and thread["name"] == "from metadata"
        assert thread["metadata"] == {"a": 1, "b": 2, "name": "from metadata"}

    run(db, scenario)


def test_a_store_goes_on_when_the_caller_that_started_it_is_cancelled(db: DB) -> None:
    """The batch a cancelled caller was storing holds other chats' rows too: it is not rolled back."""

    async def scenario(layer: WeaverDataLayer) -> None:
        alice = await new_user(layer, "alice")
        thread_id = str(uuid.uuid4())
        caller = asyncio.ensure_future(layer.update_thread(thread_id, name="kept", user_id=alice.id))
        await asyncio.sleep(0)  # it queued its change and its store has begun
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        thread = await layer.get_thread(thread_id)
        assert thread is not None and thread["name"] == "kept" and thread["userIdentifier"] == "alice"

    run(db, scenario)


def test_first_logins_of_one_name_at_once_make_one_user(db: DB) -> None:
    """Two browsers signing in a new name at the same moment get the same user; a later login
    updates the metadata and keeps the id."""

    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl

        made = await asyncio.gather(
            *(layer.create_user(cl.User(identifier="zoe", metadata={"n": i})) for i in range(8))
        )
        assert len({u.id for u in made if u is not None}) == 1 and await count(layer, "users") == 1
        again = await layer.create_user(cl.User(identifier="zoe", metadata={"provider": "password"}))
        found = await layer.get_user("zoe")
        assert again is not None and found is not None and again.id == found.id == made[0].id  # type: ignore[union-attr]
        assert found.metadata == {"provider": "password"} and await layer.get_user("nobody") is None

    run(db, scenario)


def test_a_crowd_of_first_logins_of_one_name_writes_the_user_once(db: DB) -> None:
    """A class opening the app together: fifty logins of a name not yet stored, at once. Each
    used to queue its own write of the same row behind the others (seconds, on a busy server)."""

    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl
        from sqlalchemy import event

        inserts: list[str] = []

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT INTO USERS"):
                inserts.append(statement)

        event.listen(layer.engine.sync_engine, "before_cursor_execute", seen)
        try:
            made = await asyncio.gather(
                *(layer.create_user(cl.User(identifier="class", metadata={"provider": "local"})) for _ in range(50))
            )
        finally:
            event.remove(layer.engine.sync_engine, "before_cursor_execute", seen)
        assert len({u.id for u in made if u is not None}) == 1 and len(made) == 50
        assert len(inserts) == 1 and await count(layer, "users") == 1

    run(db, scenario)


def test_reads_do_not_wait_for_a_writer(db: DB) -> None:
    """A login and the chat list read beside a long write: on SQLite they used to queue for the
    write lock behind every step being stored."""

    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl

        await new_user(layer, "ann")
        writing, release = asyncio.Event(), asyncio.Event()

        async def long_write() -> None:
            async with layer.transaction() as conn:
                await conn.execute(
                    text('UPDATE users SET "metadata" = :m WHERE "identifier" = :i'), {"m": "{}", "i": "ann"}
                )
                writing.set()
                await release.wait()

        writer = asyncio.ensure_future(long_write())
        await writing.wait()
        try:
            again = await asyncio.wait_for(
                layer.create_user(cl.User(identifier="ann", metadata={"provider": "credentials"})), 5
            )
            assert again is not None and again.identifier == "ann"
            assert await asyncio.wait_for(layer.get_thread_author(str(uuid.uuid4())), 5) == ""
        finally:
            release.set()
            await writer

    run(db, scenario)


def test_streamed_step_updates_are_stored_together_and_a_users_message_at_once(db: DB) -> None:
    """A streaming step's updates wait a moment and land as one row with the last state; the
    user's own message is stored at once, without the delay; a read sees everything."""

    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl
        from chainlit.utils import utc_now

        layer._writes.delay = 60.0  # so only a store started at once can have a message stored in time
        alice = await new_user(layer, "alice")
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name="t", user_id=alice.id)
        step = cl.Step(name="CodeInterpreter", type="tool")
        step.thread_id = thread_id
        for i in range(50):
            step.output = f"line {i}"
            await (layer.create_step if i == 0 else layer.update_step)(step.to_dict())
        assert await count(layer, "steps") == 0, "each streamed update was stored on its own"
        question = cl.Message(content="hello", author="alice", type="user_message", created_at=utc_now())
        question.thread_id = thread_id
        await layer.create_step(question.to_dict())

        async def stored() -> None:  # without waiting for the write-behind delay (60 s here)
            while await count(layer, "steps", '"type" = :t', t="user_message") != 1:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(stored(), 5)
        other = cl.Message(content="pending answer", author="Weaver", created_at=utc_now())
        other.thread_id = thread_id
        await layer.create_step(other.to_dict())
        thread = await layer.get_thread(thread_id)
        assert thread is not None
        outputs = {s["id"]: s["output"] for s in thread["steps"]}
        assert outputs[step.id] == "line 49" and outputs[other.id] == "pending answer"

    run(db, scenario)


def test_pending_steps_are_stored_at_close_and_one_bad_row_loses_only_itself(db: DB) -> None:
    """Shutdown stores what is pending; a row the database refuses does not take the others with it."""
    thread_id = str(uuid.uuid4())

    async def write(layer: WeaverDataLayer) -> None:
        import chainlit as cl

        good = cl.Step(name="good", type="tool")
        good.thread_id, good.output = thread_id, "kept"
        await layer.create_step(good.to_dict())
        bad = {**good.to_dict(), "id": str(uuid.uuid4()), "output": object()}  # no database stores it
        await layer.create_step(bad)  # type: ignore[arg-type]
        assert await count(layer, "steps") == 0

    run(db, write)

    async def read(layer: WeaverDataLayer) -> None:
        thread = await layer.get_thread(thread_id)
        assert thread is not None and [s["output"] for s in thread["steps"]] == ["kept"]

    run(db, read)


def test_delete_thread_removes_rows_files_and_tells_the_ui(db: DB, tmp_path: Path) -> None:
    deleted: list[tuple[str, dict[str, Any]]] = []

    async def on_deleted(thread_id: str, metadata: dict[str, Any]) -> None:
        deleted.append((thread_id, metadata))

    async def scenario(layer: WeaverDataLayer) -> None:
        alice = await new_user(layer, "alice")
        doomed, doomed_key = await new_chat(layer, alice, "to delete", tmp_path, "session-doomed")
        kept, kept_key = await new_chat(layer, alice, "to keep", tmp_path, "session-kept")
        thread = await layer.get_thread(doomed)
        assert thread is not None
        from chainlit.types import Feedback

        await layer.upsert_feedback(Feedback(forId=thread["steps"][2]["id"], value=0, threadId=doomed))
        files = db.app_dir / "files"
        assert (files / doomed_key).is_file() and (files / kept_key).is_file()

        await layer.delete_thread(doomed)

        assert deleted == [(doomed, {"weaver_session_id": "session-doomed"})]
        assert await layer.get_thread(doomed) is None
        for table in ("steps", "elements", "feedbacks"):
            assert await count(layer, table, '"threadId" = :id', id=doomed) == 0
        assert await count(layer, "threads", '"id" = :id', id=doomed) == 0
        assert not (files / doomed_key).exists()
        assert not (files / doomed).exists()  # its folder went with its last file
        assert (files / kept_key).read_bytes() == b"a,b\n1,2\n"
        assert len((await layer.get_thread(kept))["steps"]) == 3  # type: ignore[index]

        await layer.delete_thread(doomed)  # a second time: nothing to tell
        assert len(deleted) == 1

    run(db, scenario, on_thread_deleted=on_deleted)


def test_hostile_ids_and_names_are_refused(db: DB, tmp_path: Path) -> None:
    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl

        alice = await new_user(layer, "alice")
        injection = "x') OR 1=1; DROP TABLE users; --"
        await layer.update_thread(injection, name="evil", user_id=alice.id)
        step = cl.Message(content="hi", author="alice", type="user_message")
        step.thread_id = injection
        await layer.create_step(step.to_dict())
        assert await count(layer, "threads") == 0 and await count(layer, "steps") == 0
        assert await layer.get_thread(injection) is None
        assert await count(layer, "users") == 1

        thread_id, key = await new_chat(layer, alice, "names", tmp_path, file_name="../../../etc/passwd")
        files = (db.app_dir / "files").resolve()
        stored = (files / key).resolve()
        assert stored.is_relative_to(files / thread_id) and stored.name == "passwd"
        assert (await layer.get_thread(thread_id))["elements"][0]["name"] == "../../../etc/passwd"  # type: ignore[index]

        # a message sent with the id of another chat's step neither overwrites nor moves it
        victim = (await layer.get_thread(thread_id))["steps"][0]  # type: ignore[index]
        other = str(uuid.uuid4())
        forged = cl.Message(content="overwritten", author="mallory", id=victim["id"])
        forged.thread_id = other
        await layer.create_step(forged.to_dict())
        kept = (await layer.get_thread(thread_id))["steps"][0]  # type: ignore[index]
        assert kept["id"] == victim["id"] and kept["output"] == victim["output"] == "names"
        assert await count(layer, "steps", '"threadId" = :id', id=other) == 0

        # nor while the victim's step still waits in the write-behind queue (not yet stored)
        queued = cl.Step(name="CodeInterpreter", type="tool")
        queued.thread_id, queued.output = thread_id, "victim's output"
        await layer.create_step(queued.to_dict())
        forged = cl.Message(content="overwritten", author="mallory", id=queued.id)
        forged.thread_id = other
        await layer.create_step(forged.to_dict())
        steps = {s["id"]: s for s in (await layer.get_thread(thread_id))["steps"]}  # type: ignore[index]
        assert steps[queued.id]["output"] == "victim's output" and steps[queued.id]["name"] == "CodeInterpreter"
        assert await count(layer, "steps", '"threadId" = :id', id=other) == 0

        bad_element = cl.File(content=b"x", name="x", thread_id=thread_id, for_id=str(uuid.uuid4()))
        bad_element.id = "../../escape"
        await layer.create_element(bad_element)
        assert await count(layer, "elements", '"id" = :id', id="../../escape") == 0
        assert not any(p.name == "escape" for p in db.app_dir.rglob("*"))

    run(db, scenario)


def test_feedback_stays_on_its_step_and_a_step_is_deleted_only_from_its_own_chat(db: DB, tmp_path: Path) -> None:
    """Ids come from the browser: a feedback id sent again for another step, or a step id removed
    from another chat's session, must not change the chat the row is in."""

    async def scenario(layer: WeaverDataLayer) -> None:
        from chainlit.context import context
        from chainlit.types import Feedback

        alice, bob = await new_user(layer, "alice"), await new_user(layer, "bob")
        hers, _ = await new_chat(layer, alice, "hers", tmp_path)
        mine, _ = await new_chat(layer, bob, "mine", tmp_path)
        her_answer = (await layer.get_thread(hers))["steps"][2]["id"]  # type: ignore[index]
        my_answer = (await layer.get_thread(mine))["steps"][2]["id"]  # type: ignore[index]

        async def feedback(thread_id: str, step_id: str) -> Any:
            steps = (await layer.get_thread(thread_id))["steps"]  # type: ignore[index]
            return next(s for s in steps if s["id"] == step_id).get("feedback")

        given = await layer.upsert_feedback(Feedback(forId=her_answer, value=1, threadId=hers, comment="good"))
        await layer.upsert_feedback(Feedback(id=given, forId=my_answer, value=0, threadId=mine, comment="moved"))
        kept = await feedback(hers, her_answer)
        assert kept is not None and (kept["value"], kept["comment"]) == (1, "good")
        assert await feedback(mine, my_answer) is None
        from ui.history.feedback import FeedbackTarget

        assert await layer.feedback_target(given) == FeedbackTarget(step_id=her_answer, author="alice")
        assert await layer.step_author(her_answer) == "alice" and await layer.step_author("no-such-step") is None

        naming_hers = await layer.upsert_feedback(Feedback(forId=my_answer, value=0, threadId=hers))
        assert await count(layer, "feedbacks", '"id" = :id AND "threadId" = :t', id=naming_hers, t=mine) == 1

        context.session.thread_id = mine  # bob's session asks
        await layer.delete_step(her_answer)
        assert her_answer in [s["id"] for s in (await layer.get_thread(hers))["steps"]]  # type: ignore[index]
        assert await feedback(hers, her_answer) is not None
        await layer.delete_step(my_answer)
        assert my_answer not in [s["id"] for s in (await layer.get_thread(mine))["steps"]]  # type: ignore[index]
        assert await count(layer, "feedbacks", '"forId" = :id', id=my_answer) == 0

    run(db, scenario)


HOSTILE_KEYS = [
    "../x",
    "a/../../x",
    "..",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "a/b/",
    "",
    "a\x00b",
    "a\\..\\b",
    "a\nb",
    "x" * 2000,
    "a/" + "y" * 300,
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=lambda k: repr(k)[:20])
def test_hostile_object_keys_are_refused(key: str, tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files")
    with pytest.raises(UnsafeObjectKey):
        check_object_key(key)
    with pytest.raises(UnsafeObjectKey):
        asyncio.run(storage.upload_file(key, b"x"))
    with pytest.raises(UnsafeObjectKey):
        asyncio.run(storage.delete_file(key))
    assert storage.existing_file(key) is None
    assert [p.name for p in tmp_path.rglob("*")] == ["files"]


def test_local_storage_stays_in_its_folder(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files", url_prefix="/root/weaver/files")
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / "link").symlink_to(outside)
    with pytest.raises(UnsafeObjectKey, match="outside"):
        asyncio.run(storage.upload_file("link/x", b"x"))
    assert not (outside / "x").exists()

    stored = asyncio.run(storage.upload_file("t/e/a b#?.csv", "é,1\n"))
    assert stored == {"object_key": "t/e/a b#?.csv", "url": "/root/weaver/files/t/e/a%20b%23%3F.csv"}
    assert (storage.root / "t/e/a b#?.csv").read_bytes() == "é,1\n".encode()
    assert oct((storage.root / "t/e/a b#?.csv").stat().st_mode & 0o777) == "0o600"
    assert asyncio.run(storage.delete_file("t/e/a b#?.csv")) is True
    assert not (storage.root / "t").exists()
    assert asyncio.run(storage.delete_file("t/e/a b#?.csv")) is False

    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("C:\\Users\\x\\report.xlsx") == "report.xlsx"
    assert safe_file_name("..") == "file" and safe_file_name("\x00\x01") == "file"
    long = safe_file_name("ä" * 300 + ".csv")
    assert long.endswith(".csv") and len(long.encode()) <= 150


# -- the file route -------------------------------------------------------------------------------


def test_file_route_serves_the_owner_only(db: DB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chainlit.auth import create_jwt
    from chainlit.user import User
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", secrets.token_urlsafe(32))

    async def scenario(layer: WeaverDataLayer) -> None:
        import chainlit as cl

        alice, bob = await new_user(layer, "alice"), await new_user(layer, "bob")
        thread_id, key = await new_chat(layer, alice, "files", tmp_path)
        svg = cl.Image(
            content=b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            name="chart.svg",
            mime="image/svg+xml",
            thread_id=thread_id,
            for_id=str(uuid.uuid4()),
        )
        await layer.create_element(svg)
        svg_key = [e for e in (await layer.get_thread(thread_id))["elements"] if e["name"] == "chart.svg"][0]  # type: ignore[index]

        app = FastAPI()

        @app.get("/{full_path:path}")  # Chainlit's catch-all page route, registered before ours
        async def page(full_path: str) -> HTMLResponse:
            return HTMLResponse("<html>the chat page</html>")

        install_file_route(app, lambda: layer)
        install_file_route(app, lambda: layer)  # once only
        assert sum(getattr(r, "name", "") == "weaver_file" for r in app.router.routes) == 1

        tokens = {name: create_jwt(User(identifier=name)) for name in ("alice", "bob")}
        url = f"/weaver/files/{key}"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:

            async def get(path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
                headers = {"Cookie": f"access_token={tokens[who]}"} if who else None
                return await client.get(path, headers=headers, **kwargs)

            owner = await get(url, "alice")
            assert owner.status_code == 200, owner.text
            assert owner.content == b"a,b\n1,2\n"
            assert owner.headers["content-type"].startswith("text/csv")
            assert owner.headers["content-disposition"] == 'attachment; filename="data.csv"'
            assert owner.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in owner.headers["content-security-policy"]
            assert owner.headers["cache-control"] == "private, no-store"
            bearer = await client.get(url, headers={"Authorization": f"Bearer {tokens['alice']}"})
            assert bearer.status_code == 200 and bearer.content == owner.content

            image = await get(svg_key["url"], "alice")
            assert image.status_code == 200 and image.headers["content-type"] == "image/svg+xml"
            assert image.headers["content-disposition"].startswith("attachment")

            other = await get(url, "bob")
            missing = await get(f"/weaver/files/{thread_id}/nothing/here.csv", "bob")
            assert other.status_code == missing.status_code == 404
            assert other.content == missing.content  # another user's file looks like no file
            assert b"a,b" not in other.content

            anonymous = await get(url)
            assert anonymous.status_code == 401 and b"a,b" not in anonymous.content
            forged = await client.get(url, headers={"Cookie": f"access_token={tokens['alice'][:-4]}AAAA"})
            assert forged.status_code == 401
            stranger = create_jwt(User(identifier="mallory"))
            assert (await client.get(url, headers={"Cookie": f"access_token={stranger}"})).status_code == 404

            for hostile in (
                "/weaver/files/..%2F..%2Fweaver.db",
                "/weaver/files/%2Fetc%2Fpasswd",
                "/weaver/files/a%00b",
            ):
                response = await get(hostile, "alice")
                assert response.status_code == 404, hostile
            assert (await get("/elsewhere", "alice")).text == "<html>the chat page</html>"

            stored, canary = db.app_dir / "files" / key, tmp_path / "canary.txt"
            canary.write_bytes(b"CANARY-history")
            stored.unlink()
            stored.symlink_to(canary)  # a link where a stored file was: not followed
            linked = await get(url, "alice")
            assert linked.status_code == 404 and b"CANARY" not in linked.content
            stored.unlink()

            await layer.delete_thread(thread_id)
            assert (await get(url, "alice")).status_code == 404
        assert not (db.app_dir / "files" / key).exists()
        assert bob.identifier == "bob"

    run(db, scenario)
    assert os.environ["CHAINLIT_AUTH_SECRET"]


def test_logged_out_tokens_are_kept_for_every_replica_until_they_expire(db: DB) -> None:
    """Two servers on one database (two replicas, or one before and after a restart): a token one of
    them revokes is refused by the other after its refresh; a token past its own expiry is forgotten."""
    import time

    from ui.logins import TokenRevocations

    async def scenario(first: WeaverDataLayer) -> None:
        second = await db.open()
        try:
            here, there = TokenRevocations(lambda: first), TokenRevocations(lambda: second)
            await here.revoke("token-a", "alice", time.time() + 3600)
            await here.revoke("token-old", "alice", time.time() - 1)
            assert here.is_revoked("token-a") and not there.is_revoked("token-a")
            await there.refresh()
            assert there.is_revoked("token-a") and not there.is_revoked("token-b")
            assert not there.is_revoked("token-old")  # it would be refused as expired anyway
            await here.refresh()
            assert len(here) == 1
        finally:
            await second.close()

    run(db, scenario)


def test_usage_adds_up_per_user_and_model_on_both_databases(db: DB) -> None:
    """Rounds add to a user's totals per model (concurrent rounds too); a model without prices has
    no cost; the totals are read back per user, as ``weaver usage`` and the admin page show them."""
    from core.usage import usage_of_calls
    from ui.history.usage import add_usage, usage_by_user

    def calls(model: str, cost: float | None, n: int = 1) -> Any:
        one = {"role": "Planner", "model": model, "prompt_tokens": 100, "completion_tokens": 10, "cost": cost}
        return usage_of_calls([one] * n)

    async def scenario(layer: WeaverDataLayer) -> None:
        await asyncio.gather(*(add_usage(layer, "ann", calls("gpt", 0.5)) for _ in range(5)))
        await add_usage(layer, "ann", calls("local", None, n=2))
        await add_usage(layer, "ben", calls("gpt", 0.25))
        await add_usage(layer, "ben", usage_of_calls([{"role": "Planner", "model": "gpt"}]))  # nothing reported
        users = await usage_by_user(layer)
        assert [u.user for u in users] == ["ann", "ben"]
        ann, ben = users
        assert (ann.prompt_tokens, ann.completion_tokens, ann.rounds) == (700, 70, 6)
        assert ann.cost == pytest.approx(2.5)
        assert [(m.model, m.prompt_tokens, m.cost, m.rounds) for m in ann.models] == [
            ("gpt", 500, pytest.approx(2.5), 5),
            ("local", 200, None, 1),
        ]
        assert (ben.prompt_tokens, ben.completion_tokens, ben.cost, ben.rounds) == (100, 10, 0.25, 1)

    run(db, scenario)
