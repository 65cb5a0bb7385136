"""Calls to make a little later, kept by one shared thread instead of a timer thread each.

A chat saves its variables once it has been idle a moment (``core.snapshot``). A ``threading.Timer``
per round costs a thread start on the round's own path (the caller waits until the new thread
runs: ~0.1–0.5 ms, more on a busy machine) and leaves one sleeping thread per recent round. Here
scheduling is a heap push and a notify; the one waiting thread starts a thread of its own for
each call when it falls due (a call may take long, e.g. a kernel pickling its variables, and must
not hold up the others), so the thread start happens when the chat is idle, not while it answers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable


class Later:
    """One scheduled call: ``cancel`` it while it waits; ``wait`` for it to be over (run or cancelled)."""

    def __init__(self, when: float, call: Callable[[], object], name: str) -> None:
        self.when = when
        self.call = call
        self.name = name
        self.cancelled = False
        self.started = False
        self._lock = threading.Lock()  # between ``cancel`` and the scheduler's ``_claim``
        self._done = threading.Event()

    def cancel(self) -> bool:
        """Stop it if it has not started; True if it will not run."""
        with self._lock:
            if self.started or self.cancelled:
                return self.cancelled
            self.cancelled = True
        self._done.set()
        return True

    def _claim(self) -> bool:
        """The scheduler takes it to run; False if it was cancelled first."""
        with self._lock:
            if self.cancelled:
                return False
            self.started = True
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """True once it has run to its end or was cancelled before starting."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        try:
            self.call()
        finally:
            self._done.set()


class _Scheduler:
    """The shared thread: sleeps until the earliest call is due, then hands it to a thread of its own."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Later]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def after(self, delay: float, call: Callable[[], object], name: str) -> Later:
        later = Later(time.monotonic() + delay, call, name)
        with self._cond:
            heapq.heappush(self._heap, (later.when, next(self._order), later))
            if self._thread is None or not self._thread.is_alive():
                # Once per process (or after a fork): the only thread start on the caller's path.
                self._thread = threading.Thread(target=self._loop, name="weaver-later", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is later:
                self._cond.notify()  # it now waits for an earlier call than it did
        return later

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        later = heapq.heappop(self._heap)[2]
                        if later._claim():
                            break
                        continue
                    self._cond.wait(wait)
            threading.Thread(target=later._run, name=later.name, daemon=True).start()


_SCHEDULER = _Scheduler()


def call_later(delay: float, call: Callable[[], object], name: str = "weaver-later-call") -> Later:
    """Run ``call`` on a thread of its own ``delay`` seconds from now, unless cancelled first."""
    return _SCHEDULER.after(delay, call, name)
