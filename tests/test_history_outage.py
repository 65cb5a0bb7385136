"""The chat history through a PostgreSQL outage: nothing written during it is lost.

A real PostgreSQL (``tests/pg_cluster.py``) that the tests stop (fast shutdown, as ``pg_ctl stop -m
fast``) and start again on the same data, with the retry waits turned down by setting. What a user
would check: the messages and steps of a chat written while the database was away are all in it
once the database is back, in their latest state; a read during the outage answers (an error)
instead of hanging; the chat says, quietly, that it could not be saved, then that it is saved; a
server killed during the outage leaves its rows in its spool file and the next server start stores
them; a second server sharing the app folder never takes a live server's spool; and past the
spool's bound later changes are not kept, with one clear line in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
from sqlalchemy.exc import DBAPIError

from tests.pg_cluster import PgCluster, start_cluster
from tests.processes import stop_process
from tests.ui_harness import UIServer, answers, start_server, stop_server, wait_until
from ui.history import SPOOL_DIR, OutagePolicy, WeaverDataLayer, history_writes, open_history
from ui.history.spool import Spool, orphans
from ui.history.store import sql_text
from ui.history.write_behind import WriteBehind

pytestmark = pytest.mark.timeout(180)

FAST = OutagePolicy(retry_first_s=0.1, retry_max_s=0.4, wait_s=1.0)
UNSAVED = "could not be saved"
SAVED = "saved again"
ANSWER = "Offline mode cannot interpret free-form text"  # the offline model's answer to a plain message
ANSWER_SHOWN = "running in offline mode"  # how the page shows it


# -- a PostgreSQL that goes away and comes back ---------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def pg_stop(cluster: PgCluster) -> list[str]:
    """Stop the server (fast shutdown: clients are cut off), keeping its data; returns how to start it."""
    assert cluster.proc is not None
    args = [str(a) for a in cluster.proc.args]  # type: ignore[union-attr]
    stop_process(cluster.proc, signal.SIGINT, timeout=30)
    return args


def pg_start(cluster: PgCluster, args: list[str]) -> None:
    """Start the same server again, on the same data, and wait until it is ready."""
    with open(cluster.log_path, "ab") as log:
        cluster.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **cluster._popen_kwargs()
        )
    cluster._wait_ready()


@pytest.fixture
def outage(pg: PgCluster) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """(stop, start) of the database; whatever the test does, it is running again afterwards."""
    stopped: list[list[str]] = []

    def stop() -> None:
        stopped.append(pg_stop(pg))

    def start() -> None:
        pg_start(pg, stopped.pop())

    try:
        yield stop, start
    finally:
        if stopped:
            start()


# -- the data layer on its own ----------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """``scenario`` in a fresh event loop with a Chainlit HTTP context (the layer's methods want one)."""

    async def main() -> None:
        from chainlit.context import ChainlitContext, context_var
        from chainlit.session import HTTPSession

        context_var.set(ChainlitContext(HTTPSession(id=str(uuid.uuid4()), client_type="webapp")))
        await scenario()

    asyncio.run(main())


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` on the loop (every 20 ms) until it is truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def step(thread_id: str, step_id: str, output: str, kind: str = "run", name: str = "step") -> dict[str, Any]:
    return {
        "id": step_id,
        "threadId": thread_id,
        "name": name,
        "type": kind,
        "output": output,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z",
        "metadata": {},
    }


def spool_lines(app_dir: Path) -> list[dict[str, Any]]:
    folder = app_dir / SPOOL_DIR
    lines = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lines += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return lines


async def new_user(layer: WeaverDataLayer, name: str) -> Any:
    import chainlit as cl

    return await layer.create_user(cl.User(identifier=name, metadata={}))


def test_writes_during_an_outage_are_kept_in_order_and_stored_when_the_database_is_back(
    pg: PgCluster, outage: tuple[Callable[[], None], Callable[[], None]], tmp_path: Path
) -> None:
    stop, start = outage
    url, app_dir = pg.create_database(), tmp_path / "app"
    thread_id = str(uuid.uuid4())
    question, answer = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario() -> None:
        import chainlit as cl

        layer = await open_history(app_dir, url, outage=FAST, server_id="replica-a")
        writes = layer.writes
        assert history_writes() is writes
        try:
            alice = await new_user(layer, "alice")
            await layer.update_thread(thread_id, name="before", user_id=alice.id)
            await layer.create_step(step(thread_id, "before", "stored before", "user_message"))  # type: ignore[arg-type]
            assert await writes.flush()
            assert writes.failing_since is None and writes.failed_writes == 0

            await asyncio.to_thread(stop)
            await layer.create_step(step(thread_id, question, "the question", "user_message"))  # type: ignore[arg-type]
            await until(lambda: writes.failing_since is not None, 10, "the store to fail")
            assert writes.failed_writes >= 1 and writes.pending >= 1
            await until(lambda: "the question" in json.dumps(spool_lines(app_dir)), 5, "the question in the spool")

            # An answer streamed in three states, each spooled in its turn, and a rename.
            for so_far in ("The", "The answer", "The answer is 42"):
                lines = len(spool_lines(app_dir))
                await layer.update_step(step(thread_id, answer, so_far, "assistant_message"))  # type: ignore[arg-type]
                await until(lambda n=lines: len(spool_lines(app_dir)) > n, 5, f"{so_far!r} in the spool")
            await layer.update_thread(thread_id, name="renamed in the outage")
            chart = cl.File(content=b"<svg/>", name="chart.svg", thread_id=thread_id, for_id=answer)
            await layer.create_element(chart)  # its file is kept by the storage, its row by the history
            assert writes.pending >= 4

            began = time.monotonic()
            with pytest.raises((OSError, DBAPIError)):  # a read answers, with an error, instead of hanging
                await layer.get_thread(thread_id)
            assert time.monotonic() - began < FAST.wait_s + 2

            await asyncio.to_thread(start)
            await until(lambda: writes.failing_since is None and writes.pending == 0, 20, "the rows to be stored")
            thread = await layer.get_thread(thread_id)
            assert thread is not None and thread["name"] == "renamed in the outage"
            assert thread["userIdentifier"] == "alice"
            outputs = {s["id"]: s["output"] for s in thread["steps"]}
            assert outputs == {"before": "stored before", question: "the question", answer: "The answer is 42"}
            assert [s["id"] for s in thread["steps"]] == ["before", question, answer]
            assert [(e["id"], e["name"]) for e in thread["elements"]] == [(chart.id, "chart.svg")]
            assert spool_lines(app_dir) == []  # emptied once stored
        finally:
            await layer.close()
        assert list((app_dir / SPOOL_DIR).glob("*.jsonl")) == []  # a clean stop removes the file

    run(scenario)


def test_a_spool_left_at_shutdown_is_stored_by_the_next_start_and_a_live_servers_is_left_alone(
    pg: PgCluster, outage: tuple[Callable[[], None], Callable[[], None]], tmp_path: Path
) -> None:
    stop, start = outage
    url, app_dir = pg.create_database(), tmp_path / "app"
    thread_id = str(uuid.uuid4())

    async def scenario() -> None:
        live = Spool(app_dir / SPOOL_DIR, "live-replica")  # a replica that is running: its file is locked
        live.append(b'{"rows":{"thread:' + thread_id.encode() + b'":{"name":"not mine to take"}}}\n')
        try:
            first = await open_history(app_dir, url, outage=FAST, server_id="first")
            await first.update_thread(thread_id, name="stored")
            await asyncio.to_thread(stop)
            await first.create_step(step(thread_id, "late", "written in the outage", "user_message"))  # type: ignore[arg-type]
            await until(lambda: first.writes.failing_since is not None, 10, "the store to fail")
            await first.update_step(step(thread_id, "streamed", "a step's last state"))  # type: ignore[arg-type]
            assert not await first.flush_writes(now=True)  # a drain's flush: one try, then all of it on disk
            assert "a step's last state" in json.dumps(spool_lines(app_dir))
            await first.close()  # the shutdown flush tries once, fails, leaves the spool
            left = [p.name for p in (app_dir / SPOOL_DIR).glob("*.jsonl")]
            assert len(left) == 2 and any(name.startswith("first-") for name in left), left
            await asyncio.to_thread(start)

            second = await open_history(app_dir, url, outage=FAST, server_id="second")
            try:
                thread = await second.get_thread(thread_id)
                assert thread is not None and thread["name"] == "stored"  # not the live replica's row
                assert sorted(s["output"] for s in thread["steps"]) == ["a step's last state", "written in the outage"]
                assert not any(p.name.startswith("first-") for p in (app_dir / SPOOL_DIR).glob("*.jsonl"))
                assert spool_lines(app_dir) == [{"rows": {f"thread:{thread_id}": {"name": "not mine to take"}}}]
                assert orphans(app_dir / SPOOL_DIR) == []  # still held by its live server
            finally:
                await second.close()
        finally:
            live.close(remove=True)

    run(scenario)


def test_past_the_spool_bound_later_changes_are_not_kept_and_the_log_says_so(
    pg: PgCluster,
    outage: tuple[Callable[[], None], Callable[[], None]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop, start = outage
    url, app_dir = pg.create_database(), tmp_path / "app"
    thread_id = str(uuid.uuid4())
    bound = OutagePolicy(retry_first_s=0.1, retry_max_s=0.4, wait_s=1.0, spool_bytes=4000)

    async def scenario() -> None:
        layer = await open_history(app_dir, url, outage=bound, server_id="bounded")
        writes = layer.writes
        try:
            await asyncio.to_thread(stop)
            await layer.create_step(step(thread_id, "kept", "x" * 3000, "user_message"))  # type: ignore[arg-type]
            await until(lambda: writes.failing_since is not None, 10, "the store to fail")
            await layer.create_step(step(thread_id, "also-kept", "y" * 2000, "user_message"))  # type: ignore[arg-type]
            await until(lambda: writes.spooled_bytes >= bound.spool_bytes, 5, "the bound to be reached")
            await layer.create_step(step(thread_id, "dropped", "z", "user_message"))  # type: ignore[arg-type]
            assert writes.dropped_rows == 1
            await asyncio.to_thread(start)
            await until(lambda: writes.failing_since is None and writes.pending == 0, 20, "the rows to be stored")
            thread = await layer.get_thread(thread_id)
            assert thread is not None and sorted(s["id"] for s in thread["steps"]) == ["also-kept", "kept"]
        finally:
            await layer.close()

    with caplog.at_level(logging.ERROR, logger="weaver.ui.history"):
        run(scenario)
    said = caplog.text
    assert "WEAVER_UI_HISTORY_SPOOL_MB" in said and "not kept" in said, said


def test_the_outage_settings_are_read_and_a_bad_one_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.settings import UISettingsError, ui_settings

    values = {"RETRY_FIRST_S": "0.25", "RETRY_MAX_S": "3", "WAIT_S": "0", "NOTICE_S": "2", "SPOOL_MB": "0.5"}
    values["STORE_TIMEOUT_S"] = "4"
    for name, value in values.items():
        monkeypatch.setenv(f"WEAVER_UI_HISTORY_{name}", value)
    ui_settings.cache_clear()
    try:
        settings = ui_settings()
        read = (settings.history_retry_first_s, settings.history_retry_max_s, settings.history_wait_s)
        assert read == (0.25, 3.0, 0.0)
        assert (settings.history_notice_s, settings.history_spool_mb) == (2.0, 0.5)
        assert settings.history_store_timeout_s == 4.0
        monkeypatch.setenv("WEAVER_UI_HISTORY_SPOOL_MB", "0")
        ui_settings.cache_clear()
        with pytest.raises(UISettingsError, match="WEAVER_UI_HISTORY_SPOOL_MB"):
            ui_settings()
    finally:
        ui_settings.cache_clear()
    assert OutagePolicy(retry_first_s=0.5, retry_max_s=10).retry_after(1) == 0.5
    assert [OutagePolicy(retry_first_s=0.5, retry_max_s=10).retry_after(n) for n in (2, 3, 5, 9)] == [1, 2, 8, 10]
    # An outage of days: past a float's range, the tries still come, at the longest wait.
    assert [OutagePolicy(retry_first_s=0.5, retry_max_s=10).retry_after(n) for n in (64, 1025, 10**6)] == [10] * 3


# -- the write-behind alone, over a store that fails on purpose (fast, no database) -----------------


class Store:
    """A store that answers (keeping the rows), raises, or never ends, as the test says."""

    def __init__(self) -> None:
        self.mode = "answer"  # "answer", "fail" or "hang"
        self.calls = 0
        self.stored: dict[str, dict[str, Any]] = {}

    async def __call__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.calls += 1
        if self.mode == "fail":
            raise ConnectionRefusedError("the database is away")
        if self.mode == "hang":
            await asyncio.Event().wait()  # a frozen host: never answers
        for key, values in rows.items():
            self.stored.setdefault(key, {}).update(values)


def test_a_store_that_never_ends_is_a_failure_its_rows_are_spooled_and_stored_later(tmp_path: Path) -> None:
    policy = OutagePolicy(retry_first_s=0.05, retry_max_s=0.2, wait_s=0.5, store_timeout_s=0.3)
    folder = tmp_path / SPOOL_DIR

    async def scenario() -> None:
        store = Store()
        writes = WriteBehind(store, 0.05, outage=policy, spool=Spool(folder, "frozen"))
        store.mode = "hang"
        writes.write_soon("chat/question", {"output": "asked while the host froze"})
        await until(lambda: writes.failing_since is not None, 5, "the silent store to count as failed")
        await until(lambda: "asked while the host froze" in json.dumps(spool_lines(tmp_path)), 5, "the row spooled")
        began = time.monotonic()
        assert not await writes.flush()  # a read does not hang behind the silent store either
        assert time.monotonic() - began < 2
        store.mode = "answer"
        await until(lambda: writes.failing_since is None and writes.pending == 0, 5, "the rows to be stored")
        assert store.stored == {"chat/question": {"output": "asked while the host froze"}}
        assert spool_lines(tmp_path) == []
        await writes.close()

        # Shut down while the store hangs: the shutdown ends, and leaves the rows for the next start.
        store.mode = "hang"
        writes = WriteBehind(store, 0.05, outage=policy, spool=Spool(folder, "stopping"))
        writes.add("chat/answer", {"output": "streamed at shutdown"})
        await asyncio.wait_for(writes.close(), 5)
        assert "streamed at shutdown" in json.dumps(spool_lines(tmp_path))

    asyncio.run(scenario())


def test_after_taking_over_a_dead_servers_spool_the_next_outage_keeps_its_changes(tmp_path: Path) -> None:
    policy = OutagePolicy(retry_first_s=0.05, retry_max_s=0.2, wait_s=0.5, spool_bytes=2000)
    folder = tmp_path / SPOOL_DIR

    async def scenario() -> None:
        store = Store()
        writes = WriteBehind(store, 0.05, outage=policy, spool=Spool(folder, "next"))
        try:
            left = {"chat/old": {"output": "x" * 2500}}  # more than the bound, stored at once
            assert await writes.take_over([left]) == 1
            await until(lambda: "chat/old" in store.stored and writes.pending == 0, 5, "the dead server's rows")

            store.mode = "fail"
            writes.write_soon("chat/first", {"output": "said in the outage"})
            await until(lambda: writes.failing_since is not None, 5, "the store to fail")
            writes.write_soon("chat/second", {"output": "said next"})
            assert writes.dropped_rows == 0  # the bound counts this outage's changes only
            store.mode = "answer"
            await until(lambda: writes.failing_since is None and writes.pending == 0, 5, "the rows to be stored")
            assert {"chat/first", "chat/second"} <= store.stored.keys()
        finally:
            await writes.close()

    asyncio.run(scenario())


def test_reads_during_an_outage_wait_for_the_next_try_and_never_add_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store()
        policy = OutagePolicy(retry_first_s=0.01, retry_max_s=60, wait_s=0.3)
        writes = WriteBehind(store, 0.05, outage=policy)
        store.mode = "fail"
        writes.write_soon("chat/question", {"output": "asked"})
        await until(lambda: store.calls >= 8, 10, "the waits between tries to grow past wait_s")
        tries = store.calls
        for _ in range(5):  # a page reloaded five times: each read answers at once, no try is added
            began = time.monotonic()
            assert not await writes.flush()
            assert time.monotonic() - began < 0.25
            await asyncio.sleep(0.03)  # longer than retry_first_s apart
        assert store.calls == tries

        # A next try that comes within wait_s: the read waits for it, and gets the rows stored.
        writes = WriteBehind(store, 0.05, outage=OutagePolicy(retry_first_s=0.2, retry_max_s=0.2, wait_s=2))
        writes.write_soon("chat/answer", {"output": "answered"})
        await until(lambda: writes.failing_since is not None, 5, "the store to fail")
        tries = store.calls
        store.mode = "answer"
        assert await writes.flush()
        assert store.calls == tries + 1 and store.stored["chat/answer"] == {"output": "answered"}

    asyncio.run(scenario())


# -- deleted chats and titles, over SQLite with a store that fails on purpose ------------------------


def flaky(layer: WeaverDataLayer) -> dict[str, bool]:
    """Make the layer's store fail while ``switch["fail"]`` (the database away, for writes only)."""
    switch = {"fail": False}
    real = layer.writes._store

    async def store(rows: dict[str, dict[str, Any]]) -> None:
        if switch["fail"]:
            raise ConnectionRefusedError("the database is away")
        await real(rows)

    layer.writes._store = store
    return switch


def test_a_chat_deleted_while_its_rows_wait_never_comes_back(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    doomed, elsewhere, begun = (str(uuid.uuid4()) for _ in range(3))

    async def scenario() -> None:
        first = await open_history(app_dir, None, outage=FAST, server_id="first")
        switch = flaky(first)
        alice = await new_user(first, "alice")
        for thread_id in (doomed, elsewhere):
            await first.update_thread(thread_id, name=f"chat {thread_id}", user_id=alice.id)
            await first.create_step(step(thread_id, f"{thread_id}-1", "stored", "user_message"))  # type: ignore[arg-type]
        assert await first.flush_writes()

        switch["fail"] = True  # the database stops taking writes...
        await first.create_step(step(doomed, "late", "written in the outage", "user_message"))  # type: ignore[arg-type]
        await until(lambda: first.writes.failing_since is not None, 5, "the store to fail")
        await first.create_step(step(elsewhere, "late-2", "written in the outage", "user_message"))  # type: ignore[arg-type]
        await first.update_thread(begun, name="begun in the outage", user_id=alice.id)
        await first.create_step(step(begun, "begun-1", "first words", "user_message"))  # type: ignore[arg-type]

        await first.delete_thread(doomed)  # ...and answers the deletion
        other = await open_history(app_dir, None, server_id="other")  # a replica deletes the other chat
        try:
            await other.delete_thread(elsewhere)
        finally:
            await other.close()
        await first.close()  # its spool holds rows of both deleted chats
        assert "written in the outage" in json.dumps(spool_lines(app_dir))

        third = await open_history(app_dir, None, server_id="third")  # takes the spool over
        try:
            assert await third.get_thread(doomed) is None
            assert await third.get_thread(elsewhere) is None
            async with third.transaction() as conn:
                rows = await conn.execute(
                    sql_text('SELECT COUNT(*) FROM steps WHERE "threadId" IN (:a, :b)'), {"a": doomed, "b": elsewhere}
                )
                assert rows.scalar() == 0
            kept = await third.get_thread(begun)  # a chat begun in the outage is kept, with its owner
            assert kept is not None and kept["userIdentifier"] == "alice"
            assert [s["output"] for s in kept["steps"]] == ["first words"]
        finally:
            await third.close()

    run(scenario)


def test_a_spooled_thread_change_applied_twice_ends_as_once(tmp_path: Path) -> None:
    from ui.titles import chat_title

    app_dir = tmp_path / "app"
    thread_id = str(uuid.uuid4())
    first_message = "Plot the **monthly** sales " + "and their trend " * 10

    async def scenario() -> None:
        layer = await open_history(app_dir, None, outage=FAST, server_id="twice")
        try:
            alice = await new_user(layer, "alice")
            await layer.update_thread(thread_id, name=first_message, user_id=alice.id)
            line = {
                f"thread:{thread_id}": {"name": first_message, "userId": alice.id}
            }  # a line left by an older server
            for _ in range(2):  # the same spool line applied again (a takeover after a store that did commit)
                await layer.writes.take_over([line])
                assert await layer.flush_writes(now=True)
                thread = await layer.get_thread(thread_id)
                assert thread is not None and thread["name"] == chat_title(first_message) != first_message
            await layer.update_thread(thread_id, name="Sales, **by month**")  # a rename stays as given
            thread = await layer.get_thread(thread_id)
            assert thread is not None and thread["name"] == "Sales, **by month**"
        finally:
            await layer.close()

    run(scenario)


# -- a real server: the user's notice, and a server killed during the outage ------------------------


def server_env(url: str) -> dict[str, str]:
    return {
        "WEAVER_DATABASE_URL": url,
        "WEAVER_UI_HISTORY_RETRY_FIRST_S": "0.2",
        "WEAVER_UI_HISTORY_RETRY_MAX_S": "1",
        "WEAVER_UI_HISTORY_WAIT_S": "1",
        "WEAVER_UI_HISTORY_NOTICE_S": "1",
        "WEAVER_UI_REPLICA_HEARTBEAT_S": "1",
        "WEAVER_EXECUTION__POOL_SIZE": "0",
    }


def stored_outputs(url: str, thread_id: str) -> list[str]:
    """The outputs of the chat's steps as the database holds them, read with plain SQL."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg", "postgresql")

    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch('SELECT "output" FROM steps WHERE "threadId" = $1', thread_id)
        finally:
            await conn.close()
        return [str(row["output"] or "") for row in rows]

    return asyncio.run(read())


def stored_count(url: str, output: str) -> int:
    """How many steps of any chat the database holds with exactly this output."""
    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return int(await conn.fetchval('SELECT count(*) FROM steps WHERE "output" = $1', output))
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.mark.browser
def test_a_chat_during_an_outage_tells_its_user_and_a_killed_server_loses_nothing(
    pg: PgCluster, outage: tuple[Callable[[], None], Callable[[], None]], tmp_path: Path
) -> None:
    from tests.test_ui_browser import ARTIFACTS, _browser_page, _chat_started, playwright_sync

    expect = playwright_sync.expect
    stop, start = outage
    url, app_dir = pg.create_database(), tmp_path / "app"
    before, during, killed = (f"{word}-{uuid.uuid4()}" for word in ("before", "during", "killed"))
    server: UIServer | None = start_server(app_dir, tmp_path / "server-1.log", extra_env=server_env(url))
    try:
        # In the browser, a short outage: the answer still comes, the chat says it is not saved, then that it is.
        with _browser_page() as page:
            with page.expect_websocket() as ws_info:
                page.goto(server.base_url)
            ws_info.value.wait_for_event("framereceived", predicate=_chat_started, timeout=60_000)

            def say(text: str, answers_before: int) -> None:
                page.locator("#chat-input").fill(text)
                page.locator("#chat-submit").click()
                expect(page.get_by_text(ANSWER_SHOWN)).to_have_count(answers_before + 1, timeout=60_000)

            say(before, 0)
            stop()
            say(during, 1)
            expect(page.get_by_text(UNSAVED, exact=False)).to_be_visible(timeout=15_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "history_outage_not_saved.png"))
            start()
            expect(page.get_by_text(SAVED, exact=False)).to_be_visible(timeout=15_000)
            expect(page.get_by_text(UNSAVED, exact=False)).to_have_count(0)  # the same message, changed
            page.screenshot(path=str(ARTIFACTS / "history_outage_saved.png"))
        wait_until(lambda: stored_count(url, during) == 1, 15, "the message of the outage stored")

        # Another outage, and the server is killed in it: its spool keeps the round.
        chat = server.client().connect()
        try:
            assert answers(chat.ask(before))  # its session starts (a new one needs the database: the chat caps)
            stop()
            assert answers(chat.ask(killed))
            thread_id = chat.thread_id()
            spooled = lambda: json.dumps(spool_lines(app_dir))  # noqa: E731
            wait_until(lambda: killed in spooled() and ANSWER in spooled(), 15, "the message and its answer spooled")
        finally:
            chat.disconnect()
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
        server = None
        start()
        assert killed not in stored_outputs(url, thread_id)
        server = start_server(app_dir, tmp_path / "server-2.log", extra_env=server_env(url))
        outputs = stored_outputs(url, thread_id)  # stored at start, before anything is served
        assert killed in outputs and any(ANSWER in o for o in outputs), outputs
        assert spool_lines(app_dir) == []  # the dead server's file is gone; the new one's is empty
    finally:
        if server is not None:
            stop_server(server)
