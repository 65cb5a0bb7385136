"""A worker of ``weaver ui --workers N`` serves the connections its router hands it, listening on nothing.

With several workers, ``weaver ui`` itself accepts on the public port and passes each accepted
socket to one worker over a Unix socket pair (``SCM_RIGHTS``, ``ui/workers/router.py``). uvicorn's
``Server.startup`` binds ``host:port`` unless it is given listening sockets; here, in a worker only,
it is given none (``sockets=[]``: uvicorn then creates no server and logs no address), and a reader
on the pair's end (``ui/workers/handoff.py``) feeds each socket it receives to
``loop.connect_accepted_socket`` with the very protocol factory uvicorn's ``startup`` builds
(``config.http_protocol_class`` bound to the server's ``server_state`` and the lifespan's
``state``), so a handed connection is served, counted and shut down exactly as an accepted one.
``Server.shutdown`` first stops the reader (and closes the pair), so the router sends nothing
more to a stopping worker.

``install(receiver)``: ``receiver`` starts reading (given the loop and the protocol factory) and is
told to stop; installed by ``ui/server.py`` only when the process is a worker.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Protocol

import uvicorn


class Receiver(Protocol):
    def start(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol]) -> None: ...

    def stop(self) -> None: ...


def install(receiver: Receiver) -> None:
    server_class: Any = uvicorn.Server
    original_startup = server_class.startup
    original_shutdown = server_class.shutdown
    if getattr(original_startup, "weaver_patched", False):
        return

    async def startup(self: Any, sockets: list[socket.socket] | None = None) -> None:
        await original_startup(self, sockets=[] if sockets is None else sockets)
        if not self.started:
            return
        config = self.config

        def create_protocol() -> asyncio.Protocol:  # as uvicorn's own startup makes it
            return config.http_protocol_class(  # type: ignore[no-any-return]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        receiver.start(asyncio.get_running_loop(), create_protocol)

    async def shutdown(self: Any, sockets: list[socket.socket] | None = None) -> None:
        receiver.stop()
        await original_shutdown(self, sockets=sockets)

    startup.weaver_patched = True  # type: ignore[attr-defined]
    server_class.startup = startup
    server_class.shutdown = shutdown
