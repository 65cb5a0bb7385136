"""Step writes gathered for a moment and stored together, one transaction for many; kept, on disk
too, and stored later when the database fails.

A round streams: Chainlit stores a step when it starts and again at every update, and each store
was its own transaction (plus one more to make sure the thread row exists). Under a crowd that was
a third of the web server's CPU (``py-spy --gil`` on ``bench/load.py --users 100``), all of it on
the event loop every user waits on. Here a step's latest state waits up to ``delay`` seconds, keyed
by its id (later updates replace earlier ones, column by column, as the upsert would), and a single
transaction stores everything pending, from every user.

What it costs: a server killed outright loses at most ``delay`` seconds of step updates. A user's
own message is never held: its store starts at once (``write_soon``), though the round it starts
does not wait for the commit. Every read of the history waits for what is pending first, and
shutdown stores the rest.

Thread changes (name, owner, metadata) go the same way, as rows of their own with a merge of their
own: ``update_thread`` waits for the transaction that stores its change, but a hundred new chats
share a few transactions instead of taking three each.

**When the database fails** (the store raises: ``Steps._store_pending`` raises only when the
database does not answer; a row it refuses is logged and dropped there; or the store has not ended
after ``store_timeout_s``, as when the database's host is frozen or drops packets), nothing is
dropped: the rows go back in front of what came since (merged as any later update is, so an older
state never lands after a newer one), every change from then on is also appended to this server's
spool file (``ui.history.spool``, fsync'd within ``delay``, at once for a user's message) so a crash
loses nothing, and the store is tried again after ``retry_first_s``, doubling up to
``retry_max_s``. When it succeeds, the spool is emptied. A read waits for the next try if it comes
within ``wait_s`` (it does not start one: reads would undo the backoff), then reads what the
database has. What is kept is bounded by ``spool_bytes`` (the spool's size, which also bounds the
memory held): past it, later changes are not kept, and one error line says so.

``pending``, ``failed_writes``, ``failing_since`` (and ``dropped_rows``, ``spooled_bytes``) are for
the metrics and readiness endpoints; ``history_writes()`` gives the open history's write-behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from ui.bridge import in_background, run_in_thread
from ui.history.spool import Spool, encode

logger = logging.getLogger("weaver.ui.history")

Rows = dict[str, dict[str, Any]]
StoreRows = Callable[[Rows], Awaitable[None]]
Merge = Callable[[dict[str, Any], dict[str, Any]], None]

MB = 2**20


@dataclass(frozen=True)
class OutagePolicy:
    """How the history rides out a database that fails (``WEAVER_UI_HISTORY_*`` settings)."""

    retry_first_s: float = 0.5  # the first try again; each failure doubles the wait...
    retry_max_s: float = 10.0  # ...up to this
    wait_s: float = 5.0  # the longest a read waits for pending writes while the database fails
    spool_bytes: int = 256 * MB  # the most unsaved changes kept (the spool file's size)
    store_timeout_s: float = 15.0  # a store not ended by then failed: the database does not answer

    def retry_after(self, failures: int) -> float:
        # The exponent is bounded: 2 ** 1024 is past a float's range, and an outage may go on.
        doubled = self.retry_first_s * 2 ** min(max(0, failures - 1), 30)
        return min(max(self.retry_max_s, self.retry_first_s), doubled)


DEFAULT_OUTAGE = OutagePolicy()


class WriteBehind:
    """Rows by id, merged until ``flush``; ``store`` gets them all at once, in arrival order."""

    def __init__(
        self,
        store: StoreRows,
        delay: float,
        *,
        merge_for: Callable[[str], Merge] | None = None,
        outage: OutagePolicy = DEFAULT_OUTAGE,
        spool: Spool | None = None,
    ) -> None:
        self._store = store
        self.delay = delay
        self.outage = outage
        self.spool = spool
        self._merge_for = merge_for or (lambda key: dict.update)
        self._pending: Rows = {}
        self._in_flight: Rows = {}  # taken by the store that is running
        self._lock = asyncio.Lock()  # one store at a time: an older state never lands after a newer one
        self._timer: asyncio.TimerHandle | None = None
        # While the database fails: changes not yet in the spool file, and the file's writer.
        self._unspooled: Rows = {}
        self._spool_lock = asyncio.Lock()
        self._spool_timer: asyncio.TimerHandle | None = None
        self._added = 0  # changes added so far...
        self._settled = 0  # ...and how many of them the last store that ended has settled
        self._tried = asyncio.Event()  # set (and replaced) each time a store ends, stored or not
        self._failures = 0  # stores failed in a row
        self._failed_at = 0.0  # monotonic time this outage began
        self._full = False  # the bound was hit in this outage (said once)
        self._spool_broken = False  # the spool file could not be written in this outage (said once)
        self._closed = False
        self._spooled = False  # the spool file holds lines not known to be stored
        self.failing_since: float | None = None  # wall time the database began to fail; None when it answers
        self.failed_writes = 0  # stores that failed because the database did not answer
        self.dropped_rows = 0  # changes not kept because ``spool_bytes`` was reached
        self.spooled_bytes = 0  # unsaved changes kept since the database began to fail (JSON bytes)

    @property
    def pending(self) -> int:
        """Rows waiting to be stored (the queue's depth), the one being stored included."""
        return len(self._pending.keys() | self._in_flight.keys())

    @property
    def spooled(self) -> bool:
        """The spool file may hold rows not known to be stored."""
        return self._spooled

    def pending_keys(self) -> set[str]:
        return set(self._pending) | set(self._in_flight)

    def add(self, row_id: str, values: dict[str, Any], merge: Merge | None = None, *, soon: bool = False) -> None:
        """Keep ``values`` for ``row_id`` (``merge``d over what is pending; by default later values
        replace earlier ones, column by column) and store them soon."""
        if self.failing_since is not None and self.spooled_bytes >= self.outage.spool_bytes:
            self._drop(row_id)
            return
        merge = merge or self._merge_for(row_id)
        _merge_into(self._pending, row_id, values, merge)
        self._added += 1
        if self.failing_since is not None:  # kept on disk too, soon; stored when the database is back
            _merge_into(self._unspooled, row_id, values, merge)
            self._schedule_spool(0.0 if soon or self.delay <= 0 else self.delay)
            return
        if soon or self.delay <= 0:
            self._schedule(0.0)
        elif self._timer is None:
            self._schedule(self.delay)

    def write_soon(self, row_id: str, values: dict[str, Any], merge: Merge | None = None) -> None:
        """Store ``values`` (with everything pending) in a transaction started right away; the
        caller does not wait for it (under a crowd it queues behind other users' stores). While the
        database fails, they are written to the spool at once instead."""
        self.add(row_id, values, merge, soon=True)

    def discard(self, row_id: str) -> None:
        """Forget the pending change of ``row_id`` (its row was deleted); one being stored goes on."""
        self._pending.pop(row_id, None)
        self._unspooled.pop(row_id, None)

    async def flush(self, now: bool = False) -> bool:
        """Store everything pending now; True once it is stored. The store goes on if the caller is
        cancelled: it holds other chats' rows too. While the database fails this waits for the next
        try (made now when ``now``), if it ends within ``wait_s``; if the rows are still not stored
        they are all in the spool file when this returns False (so a shutdown may follow at once)."""
        target = self._added
        if self._settled >= target and not self._lock.locked():
            return True  # the common read: nothing queued, no store running
        if self.failing_since is None:
            await asyncio.shield(in_background(self._flush_in_turn(), "storing the history"))
            stored = self._settled >= target
        else:
            stored = await self._wait_for_try(target, now)
        if not stored:
            await asyncio.shield(in_background(self._spool_now(), "spooling the history"))
        return stored

    async def _wait_for_try(self, target: int, now: bool) -> bool:
        """Wait for the next try (made at once when ``now``) if it ends within ``wait_s``. A read
        does not start one: reads would undo the backoff, a try for each read of each user."""
        tried = self._tried
        if not self._lock.locked():
            if now or self._timer is None:
                self._schedule(0.0)
            elif self._timer.when() - asyncio.get_running_loop().time() > self.outage.wait_s:
                return False  # the next try is too far off to wait for
        try:
            await asyncio.wait_for(asyncio.shield(tried.wait()), self.outage.wait_s)
        except asyncio.TimeoutError:
            pass
        return self._settled >= target

    async def close(self) -> None:
        """At shutdown: try the database once more (at most ``wait_s``); what it does not take
        stays in the spool file for the next server to start (``take_over``)."""
        await self.flush(now=True)
        self._closed = True
        for timer in (self._timer, self._spool_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._spool_timer = None
        left = dict(self._in_flight)
        for key, values in self._pending.items():
            _merge_into(left, key, values, self._merge_for(key))
        if not left:
            if self.spool is not None:
                async with self._spool_lock:  # after a line being written, if any
                    await run_in_thread(self.spool.close, True, name="weaver-history-spool")
            return
        logger.error(
            "history: %d row(s) could not be stored before shutdown; %s",
            len(left),
            f"they are kept in {self.spool.path} for the next start" if self.spool is not None else "they are lost",
        )
        if self.spool is not None:
            async with self._spool_lock:  # all of it again: a line applied twice ends the same
                await self._append(left)
                await run_in_thread(self.spool.close, False, name="weaver-history-spool")

    async def take_over(self, batches: Iterable[Rows]) -> int:
        """Rows a dead server left in its spool (``spool.orphans``), older than anything here:
        merged in front of what is pending, written to this server's spool (so the caller may
        remove the dead one's file), then stored. Returns how many rows."""
        taken: Rows = {}
        for rows in batches:
            for key, values in rows.items():
                _merge_into(taken, key, values, self._merge_for(key))
        if not taken:
            return 0
        if self.spool is not None:
            async with self._spool_lock:
                if not await self._append(taken):
                    raise OSError(f"could not write the history spool {self.spool.path}")
        for key, values in self._pending.items():
            _merge_into(taken, key, values, self._merge_for(key))
        self._pending = taken
        self._added += 1
        self._schedule(0.0)
        return len(taken)

    async def _flush_in_turn(self) -> None:
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            rows, self._pending = self._pending, {}
            upto = self._added
            if not rows:
                self._settle(upto)
                return
            self._in_flight = rows
            try:
                await self._store_in_time(rows)
            except Exception as exc:
                await self._failed(rows, exc)
            else:
                self._settle(upto)
                if self.failing_since is not None:
                    self._recovered(len(rows))
                if self._spooled:
                    await self._clear_spool()
            finally:
                self._in_flight = {}
                tried, self._tried = self._tried, asyncio.Event()
                tried.set()

    async def _store_in_time(self, rows: Rows) -> None:
        """The store, failed (``TimeoutError``) when it has not ended after ``store_timeout_s``: a
        database that stops answering (a frozen host, dropped packets) would hold it for minutes,
        and every flush, and the shutdown, behind it. It is cancelled but not waited for, as its
        cancellation may wait on the same silent connection; if it committed after all, storing the
        rows again ends the same."""
        task = asyncio.ensure_future(self._store(rows))
        done, _ = await asyncio.wait({task}, timeout=self.outage.store_timeout_s)
        if task in done:
            task.result()
            return
        task.cancel()
        task.add_done_callback(_ignore_result)
        raise TimeoutError(f"no answer within {self.outage.store_timeout_s:g} s")

    def _settle(self, upto: int) -> None:
        self._settled = max(self._settled, upto)
        self._failures = 0

    async def _failed(self, rows: Rows, exc: Exception) -> None:
        """Put ``rows`` back in front of what came since, spool them, try again later."""
        for key, values in self._pending.items():
            _merge_into(rows, key, values, self._merge_for(key))
        self._pending = rows
        self._failures += 1
        self.failed_writes += 1
        first = self.failing_since is None
        retry = self.outage.retry_after(self._failures)
        if first:
            self.failing_since = time.time()
            self._failed_at = time.monotonic()
            logger.error(
                "history: the database does not answer (%s: %s); %d row(s) are kept%s and stored when it is "
                "back (next try in %.1f s)",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                len(rows),
                f" in {self.spool.path}" if self.spool is not None else " in memory",
                retry,
            )
            self._unspooled = {}
            async with self._spool_lock:
                await self._append(rows)  # everything held, once; from now on each change as it comes
        else:
            logger.warning(
                "history: the database still does not answer after %.0f s; %d row(s) wait (next try in %.1f s)",
                time.monotonic() - self._failed_at,
                len(rows),
                retry,
            )
        if not self._closed:
            self._schedule(retry)

    def _recovered(self, stored: int) -> None:
        logger.warning(
            "history: the database answers again after %.0f s; %d row(s) stored",
            time.monotonic() - self._failed_at,
            stored,
        )
        self.failing_since = None
        self._full = self._spool_broken = False
        self._unspooled = {}
        self.spooled_bytes = 0
        if self._spool_timer is not None:
            self._spool_timer.cancel()
            self._spool_timer = None
        if self._pending and not self._closed:  # what came during the store: soon, as usual
            self._schedule(0.0 if self.delay <= 0 else self.delay)

    async def _clear_spool(self) -> None:
        """Every line in the spool was in the rows just stored (lines written during that store
        hold rows still pending here: stored within ``delay``, as any change is when all is well)."""
        async with self._spool_lock:  # after any line being written: none is left behind
            self._spooled = False
            self.spooled_bytes = 0  # what it held counts no more (rows taken over from a dead server too)
            self._full = False
            if self.spool is None:
                return
            try:
                await run_in_thread(self.spool.clear, name="weaver-history-spool")
            except OSError:
                logger.exception("history: could not empty the spool %s", self.spool.path)

    async def _spool_now(self) -> None:
        async with self._spool_lock:
            if self.failing_since is None or not self._unspooled:
                return
            rows, self._unspooled = self._unspooled, {}
            await self._append(rows)

    async def _append(self, rows: Rows) -> bool:
        """One line for ``rows`` in the spool, counted against the bound; False if it could not be written."""
        line = encode(rows)
        self.spooled_bytes += len(line)
        if self.spooled_bytes >= self.outage.spool_bytes and not self._full:
            self._full = True
            logger.error(
                "history: %.1f MB of unsaved chat changes are kept, the most WEAVER_UI_HISTORY_SPOOL_MB allows; "
                "later changes are not kept until the database answers again",
                self.spooled_bytes / MB,
            )
        if self.spool is None:
            return True
        self._spooled = True
        try:
            await run_in_thread(self.spool.append, line, name="weaver-history-spool")
        except OSError:
            if not self._spool_broken:
                self._spool_broken = True
                logger.exception(
                    "history: could not write the spool %s; unsaved rows are kept in memory only", self.spool.path
                )
            return False
        return True

    def _drop(self, row_id: str) -> None:
        self.dropped_rows += 1
        if self.dropped_rows % 1000 == 1:
            logger.error(
                "history: a change of %s was not kept: WEAVER_UI_HISTORY_SPOOL_MB (%.1f MB) is reached "
                "(%d change(s) not kept so far)",
                row_id,
                self.outage.spool_bytes / MB,
                self.dropped_rows,
            )

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        in_background(self._flush_in_turn(), "storing the history")

    def _schedule_spool(self, delay: float) -> None:
        if self._spool_timer is not None and delay > 0:
            return
        if self._spool_timer is not None:
            self._spool_timer.cancel()
        self._spool_timer = asyncio.get_running_loop().call_later(delay, self._fire_spool)

    def _fire_spool(self) -> None:
        self._spool_timer = None
        in_background(self._spool_now(), "spooling the history")


def _ignore_result(task: asyncio.Future[Any]) -> None:
    """A store given up on: what it ends with was already counted as a failure."""
    if not task.cancelled():
        task.exception()


def _merge_into(rows: Rows, key: str, values: dict[str, Any], merge: Merge) -> None:
    kept = rows.get(key)
    if kept is None:
        rows[key] = dict(values)
    else:
        merge(kept, values)


_open: list[WriteBehind] = []


def history_writes() -> WriteBehind | None:
    """The write-behind of the history this server opened (for metrics and readiness), if any."""
    return _open[-1] if _open else None


def register(writes: WriteBehind) -> None:
    _open.append(writes)


def unregister(writes: WriteBehind) -> None:
    if writes in _open:
        _open.remove(writes)
