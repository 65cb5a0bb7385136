"""Warm kernels for new sessions, and a bound on how many kernels start at once.

A kernel takes ~0.1 s to start, most of it CPU. ``KernelPool`` keeps
``execution.pool_size`` sandboxed kernels started ahead, each for a pre-allocated session id and
folder (the sandbox binds the folder at launch, so a kernel cannot change folders later); a new
session adopts the id, the folder and the kernel, so each pooled kernel serves exactly one session.
Plugins are loaded when the kernel starts (they are the app's, the same for every session); a
session's variables reach the kernel with each execution.
The pool refills while the server is quiet: only once no session has asked it for a kernel for
``execution.pool_refill_quiet_s``, and then with as many starts at once as the start line allows. In a
crowd every refill would take CPU from the people already waiting (a kernel started ahead is work done
before it is needed); a pool sized for the crowd is filled before it and again after it.
The folder a pooled kernel was started on was given to that kernel's own uid at its start
(``sandbox.KernelBox``) and is the very folder its session adopts, so nothing changes hands here.

``StartGate`` lets at most ``execution.max_concurrent_starts`` kernels start at once: a hundred
kernels starting together take as long as a few at a time, but leave nothing for the web server in
between. The others wait in line, first come first served, and a user's start learns its place;
a start a user waits for goes before a pool refill.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

logger = logging.getLogger(__name__)

WAIT_POLL_S = 0.2  # how often a queued start looks at its cancel token and its place in line
# The default bound per core: a start waits on its sandbox and its kernel's sockets for much of its
# ~0.1 s, so two at a time left both cores half idle (``bench/kernel_starts.py``).
STARTS_PER_CORE = 4
PLACE_EVERY_S = 3.0  # how often a start far back in line is told its place (each is an event for its page)
RETRY_FIRST_S = 1.0  # a failed refill waits this long, doubled per failure, up to RETRY_MAX_S
RETRY_MAX_S = 60.0
CLOSE_THREADS = 32  # warm kernels stopped at once when the pool closes


class StartCancelled(RuntimeError):
    """The start was abandoned while it queued for a slot (the round was cancelled or the session stops)."""


class _Ticket:
    """One start waiting at the gate: its place in arrival order and what wakes it."""

    __slots__ = ("serial", "urgent", "woken")

    def __init__(self, serial: int, urgent: bool) -> None:
        self.serial = serial
        self.urgent = urgent
        self.woken = threading.Event()


class StartGate:
    """At most ``limit`` kernel starts at once, first come first served; urgent ones (a user waits)
    go before background ones (pool refills).

    A queue, not a semaphore: a semaphore wakes whichever waiter the scheduler picks, so under a
    crowd a user could wait behind people who came after. Each start waits on a ticket of its own,
    woken when it is first in line and a slot is free; a waiting start a user sees learns its place
    (``on_place``) as the line moves, within ``WAIT_POLL_S``.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit if limit > 0 else STARTS_PER_CORE * (os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._running = 0
        self._serials = itertools.count()
        self._urgent: list[_Ticket] = []  # in arrival order
        self._background: list[_Ticket] = []
        self.peak = 0  # the most starts ever seen at once (for tests and operators)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        """Starts queued for a slot now."""
        with self._lock:
            return len(self._urgent) + len(self._background)

    @contextmanager
    def slot(
        self,
        urgent: bool = True,
        cancelled: Callable[[], bool] = lambda: False,
        on_place: Callable[[int], object] | None = None,
    ) -> Iterator[None]:
        """Hold one of the ``limit`` slots while the body starts a kernel; raises ``StartCancelled``.

        ``on_place`` (urgent starts only) is told the start's place in line while it waits (1: next)
        when it changes (at most once per ``PLACE_EVERY_S`` while more than ``limit`` are ahead: each
        is an event for the chat's page), and 0 when it leaves the line for its slot; never if it
        did not wait."""
        with self._lock:
            ticket = _Ticket(next(self._serials), urgent)
            (self._urgent if urgent else self._background).append(ticket)
        told: int | None = None
        told_at = 0.0
        try:
            while True:
                ticket.woken.clear()
                with self._lock:
                    if self._may_go(ticket):
                        self._take(ticket)
                        break
                    place = self._place(ticket)
                if cancelled():
                    raise StartCancelled("the kernel start was cancelled while it waited for its turn")
                if on_place is not None and urgent and place != told:
                    now = time.monotonic()
                    if told is None or place <= self.limit or now - told_at >= PLACE_EVERY_S:
                        told, told_at = place, now
                        on_place(place)
                # Far back in line, look less often: a crowd's hundreds of waiting starts each
                # waking five times a second cost the server's threads more than the line moves.
                ticket.woken.wait(WAIT_POLL_S if place <= self.limit else max(WAIT_POLL_S, PLACE_EVERY_S))
        except BaseException:
            with self._lock:
                self._leave(ticket)
                self._wake_next()
            raise
        if on_place is not None and told is not None:
            on_place(0)
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._wake_next()

    # ----- under the lock ------------------------------------------------------------------------

    def _may_go(self, ticket: _Ticket) -> bool:
        if self._running >= self.limit:
            return False
        if ticket.urgent:
            return self._urgent[0] is ticket
        return not self._urgent and self._background[0] is ticket

    def _take(self, ticket: _Ticket) -> None:
        self._leave(ticket)
        self._running += 1
        self.peak = max(self.peak, self._running)
        self._wake_next()  # another slot may be free
        line = self._urgent if ticket.urgent else self._background
        if len(line) >= self.limit:  # this one just came near the front: told now, then looks often
            line[self.limit - 1].woken.set()

    def _place(self, ticket: _Ticket) -> int:
        line = self._urgent if ticket.urgent else self._background
        return bisect.bisect_left(line, ticket.serial, key=_serial) + 1

    def _leave(self, ticket: _Ticket) -> None:
        line = self._urgent if ticket.urgent else self._background
        index = bisect.bisect_left(line, ticket.serial, key=_serial)
        if index < len(line) and line[index] is ticket:
            del line[index]

    def _wake_next(self) -> None:
        if self._running < self.limit:
            head = self._urgent[0] if self._urgent else self._background[0] if self._background else None
            if head is not None:
                head.woken.set()


def _serial(ticket: _Ticket) -> int:
    return ticket.serial


class PooledExecutor(Protocol):
    """What the pool needs of a ``KernelExecutor``."""

    @property
    def pid(self) -> int | None: ...

    def start(self, *, background: bool = False) -> None: ...

    def stop(self) -> None: ...


@dataclass
class WarmKernel:
    """A started kernel and the session id and folder it was started for."""

    session_id: str
    executor: PooledExecutor


class KernelPool:
    """Keeps ``size`` warm kernels; ``take`` hands one over for good; refills start in the background
    once no session has asked for a kernel for ``quiet_s`` seconds, ``fillers`` at once.

    ``allocate()`` reserves a new session id and folder and returns an unstarted executor for it;
    ``discard(session_id)`` removes the folder of a kernel that no session took.
    """

    def __init__(
        self,
        size: int,
        allocate: Callable[[], WarmKernel],
        discard: Callable[[str], None],
        quiet_s: float = 0.0,
        fillers: int = 1,
    ) -> None:
        self.size = size
        self.quiet_s = quiet_s
        self.fillers = max(1, min(fillers, size))
        self._allocate = allocate
        self._discard = discard
        self._ready: list[WarmKernel] = []
        self._cond = threading.Condition()
        self._closed = False
        self._failures = 0
        self._starting = 0  # refills in flight, counted against ``size``
        self._last_asked = -float("inf")  # when a session last asked for a kernel (``take``)
        self._threads: list[threading.Thread] = []
        self.handed_over = 0

    def start(self) -> "KernelPool":
        """Begin filling the pool on ``fillers`` background threads (nothing happens when ``size`` is 0)."""
        if self.size > 0 and not self._threads:
            for index in range(self.fillers):
                thread = threading.Thread(target=self._fill, name=f"weaver-kernel-pool-{index}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    @property
    def ready_count(self) -> int:
        with self._cond:
            return len(self._ready)

    def take(self) -> WarmKernel | None:
        """A started kernel no session has had, or None when none is ready (the caller starts its own)."""
        with self._cond:
            self._last_asked = time.monotonic()  # asked, served or not: refills wait for quiet
            while self._ready:
                warm = self._ready.pop(0)
                self._cond.notify_all()  # a filler starts a replacement once the pool is quiet
                if warm.executor.pid is not None:
                    self.handed_over += 1
                    return warm
                logger.warning("pooled kernel for %s died while waiting; starting another", warm.session_id)
                threading.Thread(target=self._drop, args=(warm,), name="weaver-pool-drop", daemon=True).start()
        return None

    def wait_ready(self, count: int, timeout: float) -> bool:
        """Block until ``count`` kernels are ready (for benchmarks and tests); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 90.0) -> None:
        """Stop every kernel the pool holds, including one still starting, and remove their folders."""
        with self._cond:
            self._closed = True
            ready, self._ready = self._ready, []
            self._cond.notify_all()
        if ready:
            # Side by side: stopping a kernel is mostly waiting for it to exit (~0.1 s), so a pool
            # of hundreds closed one by one outlasted a server's stop, leaving cgroups behind.
            with ThreadPoolExecutor(min(CLOSE_THREADS, len(ready)), thread_name_prefix="weaver-pool-close") as closer:
                list(closer.map(self._drop, ready))
        deadline = time.monotonic() + timeout
        for thread in self._threads:  # each filler stops the kernel it was starting
            thread.join(max(0.0, deadline - time.monotonic()))

    # ----- the filler thread ---------------------------------------------------------------------

    def _fill(self) -> None:
        while True:
            with self._cond:
                if not self._wait_for_room():
                    return
                self._starting += 1
            warm: WarmKernel | None = None
            try:
                warm = self._start_one()
            finally:
                with self._cond:  # no longer starting and ready in one step: no other filler overfills
                    self._starting -= 1
                    kept = False
                    if warm is not None and not self._closed:
                        self._ready.append(warm)
                        self._failures, kept = 0, True
                    self._cond.notify_all()
            if kept:
                continue
            if warm is None:
                self._back_off()
                continue
            self._drop(warm)  # closed while it started
            return

    def _wait_for_room(self) -> bool:
        """Under the lock: wait until the pool lacks a kernel nobody is starting and has been quiet
        for ``quiet_s``; False once it is closed."""
        while not self._closed:
            if len(self._ready) + self._starting >= self.size:
                self._cond.wait()
                continue
            quiet_in = self._last_asked + self.quiet_s - time.monotonic()
            if quiet_in <= 0:
                return True
            self._cond.wait(quiet_in)
        return False

    def _start_one(self) -> WarmKernel | None:
        try:
            warm = self._allocate()
        except Exception as exc:  # e.g. the sessions folder cannot be created
            logger.warning("could not prepare a pooled kernel: %s", exc)
            return None
        try:
            warm.executor.start(background=True)
            return warm
        except Exception as exc:
            logger.warning("a pooled kernel did not start: %s", exc)
            self._drop(warm)
            return None

    def _back_off(self) -> None:
        """Wait before the next refill after a failure, so a broken set-up does not spin."""
        self._failures += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._failures - 1))
        with self._cond:
            if not self._closed:
                self._cond.wait(delay)

    def _drop(self, warm: WarmKernel) -> None:
        try:
            warm.executor.stop()
        except Exception:
            logger.exception("stopping a pooled kernel failed")
        try:
            self._discard(warm.session_id)
        except Exception:
            logger.exception("removing the folder of pooled kernel %s failed", warm.session_id)
