"""Graceful drain: how the web server stops without losing a running round.

uvicorn's own stop (what Chainlit runs) closes every socket at the first SIGTERM or SIGINT, so a
round in progress lost its answer and, with a kernel gateway, ``on_app_shutdown`` deleted every
chat's kernel. Here the first signal starts a drain instead (``ui/patches/drain_signal.py`` hands it
over from uvicorn's ``handle_exit``):

* from that moment ``is_draining()`` is True: new sockets and logins are answered 503 with a
  ``Retry-After`` header (``DrainGate``), so a load balancer's health check (``/ready``) and the
  pages move elsewhere; a message that would start a new round in an open chat is answered with a
  short notice instead (``one_round``);
* rounds already running may finish for up to ``WEAVER_UI_DRAIN_S`` seconds (0: stop at once);
* then the history's pending writes are stored and uvicorn is told to stop (``should_exit``): it
  closes the sockets and runs the app's shutdown, which stops local kernels and, where kernels
  outlive this server and a shared database can hand them over, leaves them running for the
  replica each chat reconnects to. Rounds still running at the deadline are cancelled, as before.

A second SIGINT (Ctrl-C again) ends the wait at once; a third is uvicorn's forced exit. A repeated
SIGTERM is ignored: supervisors send it to every process of a group, and ``weaver ui`` forwards its
own, so one stop request often arrives twice.

Only the standard library is imported here (``ui/cli.py`` reads ``DEFAULT_DRAIN_S`` and must stay quick).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
from typing import Any, Awaitable, Callable, Coroutine, TypeVar
from urllib.parse import parse_qs

logger = logging.getLogger("weaver.ui.drain")

DEFAULT_DRAIN_S = 30.0  # WEAVER_UI_DRAIN_S
# Past the drain: the history flush (FLUSH_TIMEOUT_S), ui/shutdown_steps.py's bounded steps, the
# history close (``weaver ui`` waits this long before it kills its server).
STOP_GRACE_S = 40.0
FLUSH_TIMEOUT_S = 10.0  # the history's pending writes, stored before the sockets close
RETRY_AFTER_S = 5
RESTARTING = "This server is restarting: try again in a few seconds."
ROUND_REFUSED = (
    "This server is restarting, so your message was not run. Send it again in a few seconds: "
    "the page reconnects to a server that is up, and the chat goes on there."
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


def drain_seconds(environ: dict[str, str] | Any) -> float:
    """``WEAVER_UI_DRAIN_S`` as ``weaver ui`` reads it to know how long to wait for its server (the
    server itself refuses a bad value at start, naming it; here a bad value means the default)."""
    try:
        value = float(environ.get("WEAVER_UI_DRAIN_S", DEFAULT_DRAIN_S))
    except (TypeError, ValueError):
        return DEFAULT_DRAIN_S
    return value if value >= 0 else DEFAULT_DRAIN_S


class Drain:
    """The process's drain: started by the first stop signal, over when uvicorn is told to exit."""

    def __init__(self) -> None:
        self.drain_s = DEFAULT_DRAIN_S
        self.flush: Callable[[], Awaitable[None]] | None = None  # stores the history's pending writes
        self.signal_name: str | None = None  # the signal that started it; None while serving
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rounds: set[asyncio.Task[Any]] = set()
        self._cut: asyncio.Event | None = None

    @property
    def draining(self) -> bool:
        return self.signal_name is not None

    def configure(self, drain_s: float, flush: Callable[[], Awaitable[None]] | None) -> None:
        self.drain_s = drain_s
        self.flush = flush

    # ----- signals (called from uvicorn's signal handler: record, then act on the loop) ----------

    def on_signal(self, server: Any, sig: int) -> bool:
        """A stop signal reached uvicorn: True when the drain takes it, False to leave it to uvicorn
        (before the loop runs, or once uvicorn is stopping already: a third Ctrl-C forces)."""
        if getattr(server, "should_exit", False):
            return False
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
        loop = self._loop
        if self.signal_name is None:
            self.signal_name = signal.Signals(sig).name  # from now on: no new chats
            loop.call_soon_threadsafe(self._begin, server)
        elif sig == signal.SIGINT:
            loop.call_soon_threadsafe(self._cut_short)
        else:
            loop.call_soon_threadsafe(logger.info, "%s again while draining: ignored", signal.Signals(sig).name)
        return True

    def _begin(self, server: Any) -> None:
        self._cut = asyncio.Event()
        task = asyncio.ensure_future(self._run(server))
        task.add_done_callback(lambda done: None if done.cancelled() else done.exception())  # logged in _run

    def _cut_short(self) -> None:
        logger.info("Ctrl-C again: the drain ends now; running rounds are cancelled")
        if self._cut is not None:
            self._cut.set()

    async def _run(self, server: Any) -> None:
        try:
            await self._wait_for_rounds()
            await self._store_history()
        except Exception:
            logger.exception("the drain failed; stopping now")
        finally:
            server.should_exit = True

    async def _wait_for_rounds(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = {t for t in self._rounds if not t.done()}
        logger.info(
            "%s: draining; no new chats or logins (503). %d running round(s) may finish for up to %gs",
            self.signal_name,
            len(pending),
            self.drain_s,
        )
        assert self._cut is not None
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            deadline = started + self.drain_s
            while pending and not cut.done() and loop.time() < deadline:
                await asyncio.wait({*pending, cut}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in pending if not t.done()}
        finally:
            cut.cancel()
        took = loop.time() - started
        if pending:
            logger.warning("drain over after %.1fs: %d round(s) still running are cancelled", took, len(pending))
        else:
            logger.info("drain over after %.1fs: no round is running", took)

    async def _store_history(self) -> None:
        if self.flush is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.flush()), FLUSH_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("the history's pending writes took over %gs; they are stored at shutdown", FLUSH_TIMEOUT_S)

    # ----- rounds -----------------------------------------------------------------------------

    def one_round(self, handler: F) -> F:
        """Decorates the chat's message handler: while serving, the task that runs it (Chainlit's,
        up to its last emit) is a round the drain waits for; while draining, the message is not run
        and the chat is told why (``ROUND_REFUSED``)."""

        @functools.wraps(handler)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self.draining:
                logger.info("a message arrived while draining: not run, the chat is told to send it again")
                await _tell(ROUND_REFUSED)
                return None
            task = asyncio.current_task()
            if task is not None:
                self._rounds.add(task)
                task.add_done_callback(self._rounds.discard)
            return await handler(*args, **kwargs)

        return counted  # type: ignore[return-value]

    def running_rounds(self) -> int:
        return sum(1 for t in self._rounds if not t.done())


async def _tell(text: str) -> None:
    import chainlit as cl  # the server's process only; this module stays importable without it
    from chainlit.config import config

    await cl.ErrorMessage(content=text, author=config.ui.name).send()


DRAIN = Drain()


def is_draining() -> bool:
    """True from the first stop signal on: the server takes no new chats (``/ready`` answers 503)."""
    return DRAIN.draining


# ----- the gate in front of Chainlit ---------------------------------------------------------------


class DrainGate:
    """Pure ASGI, outermost: while draining, a new socket (a socket.io handshake without ``sid``)
    or a login is answered 503 with ``Retry-After`` and a JSON body; everything else (open sockets,
    their polling, pages, files, ``/health``, ``/ready``) goes through."""

    def __init__(self, app: ASGIApp, root_path: str = "", drain: Drain = DRAIN) -> None:
        self.app = app
        self.drain = drain
        self.socket_path = f"{root_path}/ws/socket.io"
        self.logins = {f"{root_path}{p}" for p in ("/login", "/auth/header", "/auth/jwt")}
        self.oauth = f"{root_path}/auth/oauth/"

    def refuses(self, scope: Scope) -> bool:
        path = str(scope.get("path", ""))
        if path.startswith(self.socket_path):
            return "sid" not in parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return scope["type"] == "http" and (path in self.logins or path.startswith(self.oauth))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.drain.draining and self.refuses(scope):
            await _unavailable(scope, send)
            return
        await self.app(scope, receive, send)


async def _unavailable(scope: Scope, send: Send) -> None:
    body = json.dumps({"detail": RESTARTING, "retry_after": RETRY_AFTER_S}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
        (b"cache-control", b"no-store"),
    ]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1013, "reason": RESTARTING})  # 1013: try again later
            return
        await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 503, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def install(app: Any, drain_s: float, flush: Callable[[], Awaitable[None]] | None, root_path: str = "") -> None:
    """At server start (before uvicorn runs): the gate in front of Chainlit's ``app``, and uvicorn's
    stop signals handed to the drain (on a uvicorn the patch was not written for, a warning, and the
    server stops as uvicorn does: ``ui.patches.Need.DRAIN``)."""
    from ui import patches

    DRAIN.configure(drain_s, flush)
    if getattr(app.state, "weaver_drain", False):
        return
    app.state.weaver_drain = True
    app.add_middleware(DrainGate, root_path=root_path)
    patches.install("drain_signal", DRAIN.on_signal)
