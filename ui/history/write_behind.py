"""Step writes gathered for a moment and stored together, one transaction for many.

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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from ui.bridge import in_background

logger = logging.getLogger("weaver.ui.history")

Rows = dict[str, dict[str, Any]]
StoreRows = Callable[[Rows], Awaitable[None]]
Merge = Callable[[dict[str, Any], dict[str, Any]], None]


class WriteBehind:
    """Rows by id, merged until ``flush``; ``store`` gets them all at once, in arrival order."""

    def __init__(self, store: StoreRows, delay: float) -> None:
        self._store = store
        self.delay = delay
        self._pending: Rows = {}
        self._lock = asyncio.Lock()  # one store at a time: an older state never lands after a newer one
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, row_id: str, values: dict[str, Any], merge: Merge = dict.update) -> None:
        """Keep ``values`` for ``row_id`` (``merge``d over what is pending; by default later values
        replace earlier ones, column by column) and store them soon."""
        kept = self._pending.get(row_id)
        if kept is None:
            self._pending[row_id] = dict(values)
        else:
            merge(kept, values)
        if self.delay <= 0:
            self._schedule(0.0)
        elif self._timer is None:
            self._schedule(self.delay)

    def write_soon(self, row_id: str, values: dict[str, Any], merge: Merge = dict.update) -> None:
        """Store ``values`` (with everything pending) in a transaction started right away; the
        caller does not wait for it (under a crowd it queues behind other users' stores)."""
        self.add(row_id, values, merge)
        self._schedule(0.0)

    def discard(self, row_id: str) -> None:
        self._pending.pop(row_id, None)

    async def flush(self) -> None:
        """Store everything pending now; a failure is logged and those rows are dropped. The store
        goes on if the caller is cancelled: it holds other chats' rows too."""
        if not self._pending and not self._lock.locked():
            return  # the common read: nothing queued, no store running
        await asyncio.shield(in_background(self._flush_in_turn(), "storing the history"))

    async def _flush_in_turn(self) -> None:
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            rows, self._pending = self._pending, {}
            if not rows:
                return
            try:
                await self._store(rows)
            except Exception:
                logger.exception("could not store %d step(s) of the history", len(rows))

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        in_background(self._flush_in_turn(), "storing the history")
