"""The one bridge between the engine's blocking calls and the UIs (in the spirit of starlette's
``concurrency.py``): every blocking engine call a UI makes runs through here.

``ThreadJob`` runs a call on a worker thread and lets a caller wait for it from plain code (the
terminal chat, which must stay responsive to Ctrl-C) or await it from the event loop (the web UI).
Not asyncio's default executor: that pool has a few workers shared by everyone, and a round or a
session stop can take minutes, so one user's wait would queue others. ``_Workers`` has a worker
for every job instead: an idle one if there is one, else a new one, started by a thread of its
own, because ``Thread.start`` waits until the new thread runs, and under load that wait held the
event loop for milliseconds per round.

``in_background`` runs a coroutine beside the caller, held until it ends (the loop keeps only
weak references to tasks) and with its failure logged, never lost.

``EventPipe`` is a ``SessionEventHandler`` for the engine's worker thread that hands each event,
in order, to the loop, in batches, so no UI code ever runs off the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
import logging
import queue
import threading
from typing import Any, Callable, Coroutine, Final, Generic, TypeVar

from core import SessionEventHandler, TaskWeaverEvent

logger = logging.getLogger("weaver.ui.bridge")
T = TypeVar("T")


class _Workers:
    """Daemon threads that run jobs; a job never waits for another, the caller never for a thread start."""

    IDLE_S = 60.0  # a worker idle this long ends

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wanted: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._names = itertools.count(1)
        self._starter: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` (in a fresh ``contextvars`` context, as on a new thread) as soon as a worker is free."""
        with self._lock:
            claimed = self._idle > 0
            if claimed:
                self._idle -= 1
            elif self._starter is None:
                self._starter = threading.Thread(target=self._start_workers, name="weaver-worker-starter", daemon=True)
                self._starter.start()  # once per process
        self._jobs.put(job)
        if not claimed:
            self._wanted.put(None)

    def _start_workers(self) -> None:
        while True:
            self._wanted.get()
            threading.Thread(target=self._work, name=f"weaver-worker-{next(self._names)}", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # else a job was handed to this worker just now: take it
                        self._idle -= 1
                        return
                continue
            contextvars.Context().run(job)
            with self._lock:
                self._idle += 1


_WORKERS = _Workers()


class ThreadJob(Generic[T]):
    """``fn()`` on a worker thread; ``wait``/``result`` from sync code, ``join`` from async."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn = fn
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._name = name
        _WORKERS.submit(self._run)

    def _run(self) -> None:
        worker = threading.current_thread()
        worker_name, worker.name = worker.name, f"{self._name} ({worker.name})"
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to whoever waits; nothing is lost on this thread
            self._error = exc
        finally:
            worker.name = worker_name
        with self._lock:
            self._done.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:  # that loop closed meanwhile: nobody waits there any more
                pass

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call returns (True) or ``timeout`` passes (False)."""
        return self._done.wait(timeout)

    def result(self) -> T:
        """The call's return value, or its exception raised again; only once it is done."""
        if not self._done.is_set():
            raise RuntimeError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    async def join(self) -> T:
        """Wait on the event loop without holding a worker thread; then as ``result``.

        A cancel of the awaiting task is not passed on: the call goes on, and a later ``join``
        waits for the same call.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done.is_set():
                future.set_result(None)
            else:
                self._waiters.append((loop, future))
        await future
        return self.result()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def run_in_thread(fn: Callable[..., T], *args: Any, name: str = "weaver-call") -> T:
    """Await ``fn(*args)`` run on a worker thread (see ``ThreadJob``)."""
    return await ThreadJob(lambda: fn(*args), name).join()


_BACKGROUND: set[asyncio.Future[Any]] = set()


def in_background(work: Coroutine[Any, Any, Any], what: str) -> asyncio.Future[Any]:
    """Start ``work`` on the running loop without waiting for it; a failure is logged as ``what``."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)

    def done(finished: asyncio.Future[Any]) -> None:
        _BACKGROUND.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            logger.error("%s failed", what, exc_info=finished.exception())

    task.add_done_callback(done)
    return task


class PipeEnd(enum.Enum):
    """The marker ``EventPipe.close()`` puts after a round's last event."""

    END = "end"


class EventPipe(SessionEventHandler):
    """Runs on the engine's worker thread: hands every event, in order, to the loop, where
    ``batch()`` takes all that arrived since the last call; ``close()`` adds ``EventPipe.END``
    after the last one.

    The loop is woken once per batch, not once per event: a round streams ~50 events, and each
    wake-up is a write to the loop's self-pipe plus a pass of the loop. When the loop is busy
    (a crowd), more events wait for it and each batch grows, so the cost per event falls just
    when it matters.
    """

    END: Final = PipeEnd.END

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready = asyncio.Event()
        self._items: list[TaskWeaverEvent | PipeEnd] = []
        self._lock = threading.Lock()
        self._woken = False  # a wake-up is on its way to the loop

    def handle(self, event: TaskWeaverEvent) -> None:
        self._put(event)

    def close(self) -> None:
        self._put(EventPipe.END)

    def wake(self) -> None:
        """On the loop: let ``batch()`` return (empty if nothing came), e.g. when a throttle ends."""
        self._ready.set()

    async def batch(self) -> list[TaskWeaverEvent | PipeEnd]:
        """On the loop: wait until something arrived (or ``wake``), then take all of it, in order."""
        await self._ready.wait()
        self._ready.clear()
        with self._lock:
            items, self._items = self._items, []
            self._woken = False
        return items

    def _put(self, item: TaskWeaverEvent | PipeEnd) -> None:
        with self._lock:
            self._items.append(item)
            if self._woken:
                return
            self._woken = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closing (server shutdown): nobody is left to render
            logger.debug("dropping %r: event loop closed", item)
