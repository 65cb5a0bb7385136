"""Work many callers ask for at once, done together: the users' reads and writes of a login rush.

``ask(key, value)`` queues one piece and waits for its result. The first piece queued plans a run;
the run waits for its ``turn`` (SQLite's one writer, for writes; nothing for reads or on
PostgreSQL), then takes everything queued by then (up to ``size``) and does it at once. A piece
asked while a run is under way plans the next run, which does not wait for the one under way
unless ``turn`` says so: on PostgreSQL a run held by a row lock holds only the pieces it took.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncContextManager, Awaitable, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")

Run = Callable[[dict[K, V]], Awaitable[dict[K, R]]]


class Batches(Generic[K, V, R]):
    """Pieces queued by key (one per key at a time: a caller asking for a key already queued shares
    its result), done ``size`` at a time by ``run``, which returns a result per key (missing: None)."""

    def __init__(
        self, run: Run[K, V, R], size: int, turn: Callable[[], AsyncContextManager[object]] | None = None
    ) -> None:
        self._run = run
        self.size = size
        self._turn = turn or contextlib.nullcontext
        self._queued: dict[K, tuple[V, asyncio.Future[R | None]]] = {}
        self._planned = False  # a run is planned that has not taken its pieces yet
        self._runs: set[asyncio.Task[None]] = set()

    async def ask(self, key: K, value: V) -> R | None:
        """The result of ``key`` (``value`` is what the run needs), done together with the others."""
        queued = self._queued.get(key)
        if queued is None:
            queued = self._queued[key] = (value, asyncio.get_running_loop().create_future())
            if not self._planned:
                self._plan()
        return await asyncio.shield(queued[1])  # a caller that gives up leaves the others their result

    def _plan(self) -> None:
        self._planned = True
        task = asyncio.ensure_future(self._one_run())
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _one_run(self) -> None:
        async with self._turn():
            self._planned = False
            keys = list(self._queued)[: self.size]
            pieces = {key: self._queued.pop(key) for key in keys}
            if self._queued:  # more than one run's worth: the rest go next
                self._plan()
            if not pieces:
                return
            try:
                results = await self._run({key: value for key, (value, _) in pieces.items()})
            except BaseException as exc:  # each caller gets the failure, as its own query would have
                failure = exc if isinstance(exc, Exception) else RuntimeError("the batch was cancelled")
                for _, future in pieces.values():
                    if not future.done():
                        future.set_exception(failure)
                        future.exception()  # retrieved here too: a caller that gave up logs nothing
                if not isinstance(exc, Exception):
                    raise
                return
        for key, (_, future) in pieces.items():
            if not future.done():
                future.set_result(results.get(key))
