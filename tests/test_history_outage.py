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
    for name, value in values.items():
        monkeypatch.setenv(f"WEAVER_UI_HISTORY_{name}", value)
    ui_settings.cache_clear()
    try:
        settings = ui_settings()
        read = (settings.history_retry_first_s, settings.history_retry_max_s, settings.history_wait_s)
        assert read == (0.25, 3.0, 0.0)
        assert (settings.history_notice_s, settings.history_spool_mb) == (2.0, 0.5)
        monkeypatch.setenv("WEAVER_UI_HISTORY_SPOOL_MB", "0")
        ui_settings.cache_clear()
        with pytest.raises(UISettingsError, match="WEAVER_UI_HISTORY_SPOOL_MB"):
            ui_settings()
    finally:
        ui_settings.cache_clear()
    assert OutagePolicy(retry_first_s=0.5, retry_max_s=10).retry_after(1) == 0.5
    assert [OutagePolicy(retry_first_s=0.5, retry_max_s=10).retry_after(n) for n in (2, 3, 5, 9)] == [1, 2, 8, 10]


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
