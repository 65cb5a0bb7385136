"""Who owns a Weaver session, and when its kernel goes away.

Chainlit calls ``on_chat_end`` on *every* socket drop, yet it keeps the browser session for
``project.session_timeout`` seconds and silently restores it when the same browser reconnects
with its session id - without calling ``on_chat_start`` again (see ``connect`` and
``connection_successful`` in chainlit/socket.py; Chainlit issues #2201 and #2228). Stopping
the kernel in ``on_chat_end`` would wipe the variables of a user whose Wi-Fi blinked; never
stopping it would leave one kernel process behind per closed tab.

Design - a grace period plus lazy re-creation:

* ``release`` (chat end) stops nothing at once. It arms a timer of ``grace_s`` seconds
  (env ``WEAVER_UI_DISCONNECT_GRACE_S``, default 120).
* When the timer fires, the owner asks ``is_connected(key)`` whether a socket of that Chainlit
  session is live again (Chainlit restored it). If so the session is kept. If not, the running
  round is cancelled and the session stopped, so its kernel process is gone.
* ``acquire`` (every user message) disarms a pending timer; if the session was already stopped
  it creates a fresh one and says so (``recreated``), so the UI can tell the user that earlier
  variables are gone instead of failing. ``acquire_async`` does the same but creates the session
  on a thread of its own (folders, log files, a pooled kernel's handover), so a crowd of first
  messages never blocks the event loop; concurrent messages of one chat share one creation.
* An explicit "New chat" stops the old session at once: the frontend emits ``clear_session``
  and then drops the socket, but the server may run the disconnect (and so ``on_chat_end``)
  before the ``clear_session`` handler, so ``release`` also re-checks ``is_abandoned(key)``
  after ``settle_s`` (one second) and stops then if the chat was cleared and not reconnected.
  ``close_all`` is for server shutdown.
* With several replicas sharing a database, ``registry`` (``ui.shared.LiveSessions``) holds the
  per-client cap across all of them (``ui.replica_cap``): ``acquire_async`` claims a place there
  before it creates a session (freeing this replica's longest-disconnected chat of the client when
  it is full), and a stop gives the place back. Without one, the cap is this process's (``_make_room``). A chat that
  comes back from a replica that died first asks the registry for the gateway kernel it held there
  (``adopt_kernel``); the factory then attaches to it instead of starting one.

Every method runs on the event loop thread; only the blocking creation (``acquire_async``) and
``stop`` of a session run off it, through ``ui.bridge`` on a thread of its own per call (a stop
can take seconds, and many at once, as at shutdown, must not queue behind each other). The owner
does not import Chainlit, so it can be reasoned about (and exercised) on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, TypeVar

from core import WeaverError
from ui.bridge import run_in_thread
from ui.replica_cap import LiveRegistry, ReplicaCap

logger = logging.getLogger("weaver.ui.lifecycle")

DEFAULT_GRACE_S = 120.0  # WEAVER_UI_DISCONNECT_GRACE_S
DEFAULT_MAX_PER_CLIENT = 5  # WEAVER_UI_MAX_SESSIONS_PER_CLIENT
FORGET_AFTER_S = 24 * 3600.0
SESSION_FAILED = "Weaver could not start a session for this chat. Please try again in a moment."


class StoppableSession(Protocol):
    """The part of ``core.Session`` that the owner needs."""

    session_id: str

    @property
    def is_stopped(self) -> bool: ...

    def cancel(self) -> object: ...

    def stop(self, keep_kernel: bool = False) -> None: ...


# The chat's session type: ``core.Session`` in the server (``ui.app`` uses all of it), anything
# with the ``StoppableSession`` part elsewhere.
S = TypeVar("S", bound=StoppableSession)
# (user name, id of a session to bring back or None[, its gateway kernel to adopt]) -> the chat's session;
# the third argument is passed only when there is a kernel to adopt.
SessionFactory = Callable[..., S]


class TooManyChats(WeaverError):
    """This client already holds its share of live sessions, all of them in use; says so plainly."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"You already have {limit} chats open, each with its own Python kernel, which is the most one "
            "person can hold. Close one of them (or use New chat there), then send your message again."
        )
        self.limit = limit


def idle_note(idle_s: float, restoring: bool) -> str:
    """What a chat says when its next message comes after ``idle_s`` unused: why it waits for a kernel
    (``restoring``: its earlier variables are being brought back)."""
    if idle_s >= 3600:
        span = f"{idle_s / 3600:g} hour" + ("" if idle_s == 3600 else "s")
    elif idle_s >= 60:
        span = f"{idle_s / 60:g} minute" + ("" if idle_s == 60 else "s")
    else:
        span = f"{idle_s:g} second" + ("" if idle_s == 1 else "s")
    return (
        f"Note: nobody used this chat for {span}, so its Python session was stopped to free the server's "
        "memory. It starts again now" + (", and your earlier variables are being brought back." if restoring else ".")
    )


def session_error_text(exc: BaseException) -> str:
    """What the browser is told when a session cannot be created: a ``WeaverError``'s own message
    (written for users), else a plain sentence, never a raw error that may name server paths."""
    if isinstance(exc, WeaverError) and str(exc).strip():
        return str(exc)
    return SESSION_FAILED


@dataclass
class Lease(Generic[S]):
    """What a message handler gets: the live session, whether it is new (``created``) or replaces
    one that stopped (``recreated``), and the turn lock."""

    session: S
    recreated: bool
    round_lock: asyncio.Lock
    created: bool = False
    after_idle: bool = False  # the session it replaces was stopped because nobody used the chat for ``idle_s``


@dataclass
class _Entry(Generic[S]):
    user_name: str
    session: S | None
    client: str = ""
    released_at: float | None = None
    round_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    timer: asyncio.TimerHandle | None = None
    timer_token: object | None = None
    settle_timer: asyncio.TimerHandle | None = None
    stopped_at: float | None = None
    had_session: bool = False
    creating: asyncio.Future[S] | None = None  # acquire_async's creation in flight
    resume_id: str | None = None  # the Weaver session to bring back when this chat needs one again
    idle_timer: asyncio.TimerHandle | None = None
    started_at: float | None = None  # time.time() when its current session was adopted
    active_at: float = field(default_factory=time.time)  # time.time() of its last message
    idle_stopped: bool = False  # its last session was stopped by the idle timer (``Lease.after_idle``)


@dataclass(frozen=True)
class LiveChat(Generic[S]):
    """One chat holding a live session here, as the admin page lists it."""

    key: str
    user_name: str
    client: str
    session: S
    started_at: float
    active_at: float


class SessionOwner(Generic[S]):
    """Maps Chainlit session ids to Weaver sessions and decides when to stop them."""

    def __init__(
        self,
        factory: SessionFactory[S],
        is_connected: Callable[[str], bool],
        grace_s: float = DEFAULT_GRACE_S,
        is_abandoned: Callable[[str], bool] | None = None,
        settle_s: float = 1.0,
        max_per_client: int = DEFAULT_MAX_PER_CLIENT,
        idle_s: float | None = None,
        registry: LiveRegistry | None = None,
    ) -> None:
        self._factory = factory
        self._is_connected = is_connected
        self._is_abandoned = is_abandoned
        self.settle_s = settle_s
        self.grace_s = grace_s
        self.max_per_client = max_per_client
        self.idle_s = idle_s
        self._entries: dict[str, _Entry[S]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._cap = ReplicaCap(registry, self._stopping) if registry is not None else None

    def acquire(self, key: str, user_name: str, client: str = "", resume_id: str | None = None) -> Lease[S]:
        """A message arrived: the user is here, so disarm the stop and make sure a session is live.

        A chat gets its session (and kernel) only here, at its first message: a socket that never
        sends one holds nothing. ``client`` (the logged-in user, or the address without login) may
        hold at most ``max_per_client`` live sessions; past that its longest-disconnected chat is
        stopped to make room, and if all of its chats are connected ``TooManyChats`` is raised.
        """
        entry = self._arrive(key, user_name, client, resume_id)
        if entry.session is not None:
            return Lease(session=entry.session, recreated=False, round_lock=entry.round_lock)
        self._make_room(client, key)
        recreated, after_idle = entry.had_session, entry.idle_stopped
        self._adopt(key, entry, self._factory(user_name, entry.resume_id), user_name, client)
        assert entry.session is not None
        return Lease(
            session=entry.session, recreated=recreated, round_lock=entry.round_lock, created=True, after_idle=after_idle
        )

    async def acquire_async(self, key: str, user_name: str, client: str = "", resume_id: str | None = None) -> Lease[S]:
        """``acquire`` with the session created on a thread of its own, never on the event loop.

        A second message of the same chat while its session is being created waits for that one
        creation. If the awaiting task is cancelled the creation still completes and the chat
        keeps the session (the grace period then applies as usual).
        """
        entry = self._arrive(key, user_name, client, resume_id)
        if entry.session is not None:
            return Lease(session=entry.session, recreated=False, round_lock=entry.round_lock)
        creating, created, after_idle = entry.creating, False, False
        if creating is None:
            if self._cap is None:  # with a registry, ``ReplicaCap`` makes room against the shared count
                self._make_room(client, key)
            recreated, after_idle = entry.had_session, entry.idle_stopped
            creating = asyncio.ensure_future(self._create(key, user_name, client, entry.resume_id))
            entry.creating, created = creating, True
            creating.add_done_callback(lambda done: self._created(key, entry, done, user_name, client))
        session = await asyncio.shield(creating)
        return Lease(
            session=session,
            recreated=created and recreated,
            round_lock=entry.round_lock,
            created=created,
            after_idle=created and after_idle,
        )

    async def _create(self, key: str, user_name: str, client: str, resume_id: str | None) -> S:
        """Claim the chat's place among the client's live chats on every replica (taking over the gateway
        kernel it held on a replica that died, if any), then make its session."""
        kernel_id: str | None = None
        if self._cap is not None:
            kernel_id = await self._cap.prepare(
                key, client, resume_id, self.max_per_client, lambda: self._free_one(key, client)
            )
        adopt = (kernel_id,) if kernel_id else ()
        try:
            return await run_in_thread(self._factory, user_name, resume_id, *adopt, name="weaver-session-create")
        except BaseException:
            self._give_back(key)
            raise

    def _free_one(self, key: str, client: str) -> str:
        """The shared count is full: free this replica's longest-disconnected chat of ``client``, or
        refuse (its other chats may be connected, or on other replicas, which stop them after their
        own grace period)."""
        mine = [(k, e) for k, e in self._entries.items() if k != key and e.client == client]
        return self._stop_longest_disconnected(client, mine, " on all replicas")

    def _give_back(self, key: str) -> None:
        if self._cap is not None:
            self._cap.give_back(key)

    def _arrive(self, key: str, user_name: str, client: str, resume_id: str | None) -> _Entry[S]:
        """A message arrived for ``key``: its entry, with any pending stop disarmed and the idle
        clock restarted."""
        self._prune()
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(user_name=user_name, session=None, client=client)
            self._entries[key] = entry
        self._disarm(entry)
        entry.released_at = None
        entry.active_at = time.time()
        if resume_id and entry.session is None:
            entry.resume_id = resume_id
        if entry.session is not None and entry.session.is_stopped:
            entry.resume_id = entry.session.session_id
            entry.session = None  # stopped behind our back (e.g. the engine shut it down)
        self._arm_idle(key, entry)
        return entry

    def _arm_idle(self, key: str, entry: _Entry[S]) -> None:
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
            entry.idle_timer = None
        if self.idle_s:
            entry.idle_timer = asyncio.get_running_loop().call_later(self.idle_s, self._idle_over, key, entry)

    def _idle_over(self, key: str, entry: _Entry[S]) -> None:
        """Nobody used this chat for ``idle_s``: stop its kernel (its history stays; the next
        message brings the session back)."""
        entry.idle_timer = None
        if self._entries.get(key) is not entry or entry.session is None:
            return
        if entry.round_lock.locked():  # a round is still running: look again later
            self._arm_idle(key, entry)
            return
        logger.info("chat %s idle for %.0fs: stopping weaver session %s", key, self.idle_s, entry.session.session_id)
        self._disarm(entry)
        shared = any(other is not entry and other.session is entry.session for other in self._entries.values())
        self._stop(key, entry)
        entry.idle_stopped = not shared  # another tab still holds it: nothing was stopped

    def _adopt(self, key: str, entry: _Entry[S], session: S, user_name: str, client: str) -> None:
        entry.session = session
        entry.user_name, entry.client = user_name, client
        entry.had_session = True
        entry.idle_stopped = False
        entry.stopped_at = None
        entry.started_at = time.time()
        logger.info("chainlit session %s owns weaver session %s", key, session.session_id)

    def _created(self, key: str, entry: _Entry[S], done: asyncio.Future[S], user_name: str, client: str) -> None:
        """A creation finished (on the loop): the chat owns the session, even if its socket left meanwhile."""
        entry.creating = None
        if done.cancelled() or done.exception() is not None:
            return  # the awaiting message reports it; the next message tries again
        self._adopt(key, entry, done.result(), user_name, client)
        if self._entries.get(key) is not entry:
            self._stop(key, entry)  # forgotten meanwhile: nobody can reach this session
        elif entry.released_at is not None:
            self.release(key)  # the chat ended while its session was being made: the grace period starts now

    def _make_room(self, client: str, key: str) -> None:
        """Keep ``client`` within its share: free its longest-disconnected chat, or refuse."""
        mine = [
            (k, e)
            for k, e in self._entries.items()
            if k != key and e.client == client and (e.session is not None or e.creating is not None)
        ]
        if len(mine) < self.max_per_client:
            return
        self._stop_longest_disconnected(client, mine, "")

    def _stop_longest_disconnected(self, client: str, mine: list[tuple[str, _Entry[S]]], where: str) -> str:
        """Stop the chat of ``mine`` whose browser left longest ago and return its key; refuse
        (``TooManyChats``) when every one of them is still connected."""
        gone = sorted(
            (e.released_at, k)
            for k, e in mine
            if e.session is not None and e.released_at is not None and not self._connected(k)
        )
        if not gone:
            raise TooManyChats(self.max_per_client)
        _, oldest = gone[0]
        logger.info(
            "client %s is at its %d sessions%s: stopping disconnected chat %s",
            client,
            self.max_per_client,
            where,
            oldest,
        )
        victim = self._entries[oldest]
        self._disarm(victim)
        self._stop(oldest, victim)
        return oldest

    def current(self, key: str) -> S | None:
        """The live session of a key, without creating one (used by the stop button)."""
        entry = self._entries.get(key)
        return entry.session if entry else None

    def release(self, key: str, immediate: bool = False) -> None:
        """Chat end: stop now if the user asked for a new chat, else after the grace period."""
        entry = self._entries.get(key)
        if entry is not None and entry.session is None and entry.creating is not None:
            entry.released_at = time.monotonic()  # ``_created`` releases the session once it exists
            return
        if entry is None or entry.session is None:
            return
        self._disarm(entry)
        entry.released_at = time.monotonic()
        if immediate or self.grace_s <= 0:
            logger.info("chat end for %s: stopping weaver session now", key)
            self._stop(key, entry)
            return
        loop = asyncio.get_running_loop()
        token = object()
        entry.timer = loop.call_later(self.grace_s, self._grace_over, key, token)
        entry.timer_token = token
        if self._is_abandoned is not None and self.settle_s < self.grace_s:
            entry.settle_timer = loop.call_later(self.settle_s, self._settled, key, token)
        logger.info(
            "chat end for %s: weaver session %s stops in %.1fs unless the browser reconnects",
            key,
            entry.session.session_id,
            self.grace_s,
        )

    async def close_all(self, keep_kernels: bool = False) -> None:
        """Server shutdown: stop every live session and wait for the stops to finish.

        ``keep_kernels`` (a drained stop where kernels outlive this server): each session lets go of
        its kernel instead of stopping it, and keeps its chat's place in the shared registry, whose
        row names the kernel for the replica the chat reconnects to (``adopt_kernel``)."""
        for key, entry in list(self._entries.items()):
            self._disarm(entry)
            if entry.session is not None:
                self._stop(key, entry, keep_kernel=keep_kernels)
        if self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def stop_pending(self, key: str) -> bool:
        """True while a disconnect timer is armed for this key (for diagnostics and tests)."""
        entry = self._entries.get(key)
        return entry is not None and entry.timer is not None

    def live_keys(self) -> list[str]:
        """The chats that hold a session here, or are getting one."""
        return [k for k, e in self._entries.items() if e.session is not None or e.creating is not None]

    def live_chats(self) -> list[LiveChat[S]]:
        """Every chat holding a live session here, oldest first (the admin page)."""
        found = [
            LiveChat(k, e.user_name, e.client, e.session, e.started_at or e.active_at, e.active_at)
            for k, e in self._entries.items()
            if e.session is not None and not e.session.is_stopped
        ]
        return sorted(found, key=lambda chat: chat.started_at)

    def end(self, key: str) -> None:
        """The chat's login ended: stop its session now and forget the chat (a session still being
        made is stopped as soon as it exists: ``_created`` finds its chat forgotten)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._disarm(entry)
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
            entry.idle_timer = None
        self._stop(key, entry)

    def live_count(self) -> int:
        """How many sessions are currently owned and not stopped."""
        return sum(1 for e in self._entries.values() if e.session is not None)

    def _connected(self, key: str) -> bool:
        try:
            return self._is_connected(key)
        except Exception:  # a failing probe counts as connected here: never stop a chat in use
            logger.exception("connection probe failed for %s", key)
            return True

    def _settled(self, key: str, token: object) -> None:
        """Shortly after a disconnect: stop now if the user had asked for a new chat."""
        entry = self._entries.get(key)
        if entry is None or entry.session is None or entry.timer_token is not token or self._is_abandoned is None:
            return
        entry.settle_timer = None
        try:
            abandoned = self._is_abandoned(key) and not self._is_connected(key)
        except Exception:
            logger.exception("abandon probe failed for %s; waiting for the grace period", key)
            return
        if abandoned:
            logger.info("chat end for %s: stopping weaver session now (new chat)", key)
            self._disarm(entry)
            self._stop(key, entry)

    def _grace_over(self, key: str, token: object) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.session is None or entry.timer_token is not token:
            return
        entry.timer = None
        try:
            connected = self._is_connected(key)
        except Exception:  # a failing probe must not keep kernels forever
            logger.exception("connection probe failed for %s; treating it as gone", key)
            connected = False
        if connected:
            logger.info(
                "grace over for %s: browser reconnected, keeping weaver session %s", key, entry.session.session_id
            )
            return
        logger.info("grace over for %s: browser gone, stopping weaver session %s", key, entry.session.session_id)
        self._stop(key, entry)

    def _disarm(self, entry: _Entry[S]) -> None:
        for timer in (entry.timer, entry.settle_timer):
            if timer is not None:
                timer.cancel()
        entry.timer = entry.settle_timer = None
        entry.timer_token = None

    def _stop(self, key: str, entry: _Entry[S], keep_kernel: bool = False) -> None:
        """Stop the chat's session, unless another chat (a second tab) still holds it; ``keep_kernel``:
        see ``close_all``."""
        session = entry.session
        entry.session = None
        entry.idle_stopped = False
        entry.stopped_at = time.monotonic()
        if session is None:
            return
        entry.resume_id = session.session_id
        if not keep_kernel:
            self._give_back(key)
        if any(other is not entry and other.session is session for other in self._entries.values()):
            logger.info("chat %s lets go of weaver session %s, which another chat still holds", key, session.session_id)
            return
        task = asyncio.ensure_future(
            run_in_thread(_cancel_and_stop, key, session, keep_kernel, name="weaver-session-stop")
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _prune(self) -> None:
        """Forget long-stopped entries so a server that runs for weeks does not grow without end."""
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if e.stopped_at and now - e.stopped_at > FORGET_AFTER_S]:
            del self._entries[key]


def _cancel_and_stop(key: str, session: StoppableSession, keep_kernel: bool = False) -> None:
    """Cancel a round that may still run for a vanished user, then shut the kernel down (or, with
    ``keep_kernel``, let go of a kernel that outlives this server)."""
    try:
        session.cancel()
    except Exception:
        logger.exception("cancel failed for weaver session %s", session.session_id)
    try:
        if keep_kernel:
            session.stop(keep_kernel=True)
        else:
            session.stop()
    except Exception:
        logger.exception("stop failed for weaver session %s", session.session_id)
    else:
        logger.info("stopped weaver session %s of chainlit session %s", session.session_id, key)
