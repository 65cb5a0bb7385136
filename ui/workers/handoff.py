"""A worker's end of the router's socket pair: the connections handed to it, served by uvicorn.

The router sends one byte with one accepted socket attached (``SCM_RIGHTS``) per connection. The
reader runs on the server's event loop (``add_reader``), takes each socket and hands it to
``loop.connect_accepted_socket`` with uvicorn's protocol factory (``ui/patches/handed_sockets.py``).
Once started it tells the router it is ready (``READY``), so no connection is handed to a worker
still starting. When the router's end closes (``weaver ui`` is gone) nothing more arrives; the
worker itself stops by its signal (``ui/drain.py``), as a single server does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

logger = logging.getLogger("weaver.ui.workers")

READY = b"R"
CONNECTION = b"c"


class HandedSockets:
    """Receives accepted sockets from the router and serves each with uvicorn's protocol."""

    def __init__(self, fd: int) -> None:
        self._pair = socket.socket(fileno=fd)
        self._pair.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    def start(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        self._loop, self._factory = loop, protocol_factory
        loop.add_reader(self._pair.fileno(), self._read)
        try:
            self._pair.send(READY)
        except OSError:
            logger.warning("the router of `weaver ui --workers` is gone: this worker receives no connections")

    def stop(self) -> None:
        """Receive nothing more (at the server's shutdown); the router sees the pair close."""
        if self._loop is not None and self._pair.fileno() >= 0:
            self._loop.remove_reader(self._pair.fileno())
        self._pair.close()

    def _read(self) -> None:
        assert self._loop is not None and self._factory is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._pair, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("the router's socket failed (%s): this worker receives no more connections", exc)
                self.stop()
                return
            if not data and not fds:  # the router closed its end
                self.stop()
                return
            for fd in fds:
                self._serve(socket.socket(fileno=fd))

    def _serve(self, sock: socket.socket) -> None:
        assert self._loop is not None and self._factory is not None
        sock.setblocking(False)
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, sock))
        self._tasks.add(task)
        task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("a handed connection could not be served: %s", task.exception())
