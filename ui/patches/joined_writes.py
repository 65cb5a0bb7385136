"""What the server writes to a connection during one pass of the event loop leaves in one ``send``.

uvicorn writes every piece at once: an HTTP response's head and its body, and every websocket
frame (each socket.io event Chainlit emits is one). Each ``send`` is a system call that also lets
go of the GIL, and under a crowd the server's worker threads take it, so the event loop then waits
to get it back. Here the pieces a connection is given in one pass are joined and written when the
pass ends (``call_soon``): the same bytes, in the same order, at most one loop pass later.

``install()`` wraps the transport uvicorn hands its HTTP (h11) and websocket (wsproto) protocols,
the ones it picks when ``httptools`` and ``websockets`` are not installed (Weaver does not need
them). When uvicorn would pick another protocol (``uvicorn[standard]`` brings both, or
``UVICORN_WS_PROTOCOL`` names one), that protocol is left alone and a warning says so: this patch
was written and measured against h11 and wsproto only. Chainlit builds uvicorn's ``Config`` with
``http`` left at ``auto`` and ``ws`` from ``UVICORN_WS_PROTOCOL``; ``serving_protocols`` reads the
choice the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

logger = logging.getLogger("weaver.ui.patches.joined_writes")
WRITTEN_FOR = (H11Protocol, WSProtocol)


class CoalescedWrites:
    """A transport whose ``write`` collects until the loop's current pass ends."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()  # what was written just before must still leave
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalescing(made: Callable[[Any, asyncio.Transport], None]) -> Callable[[Any, asyncio.Transport], None]:
    def connection_made(protocol: Any, transport: asyncio.Transport) -> None:
        if not isinstance(transport, CoalescedWrites):
            transport = CoalescedWrites(transport)  # type: ignore[assignment]
        made(protocol, transport)

    return connection_made


def serving_protocols() -> list[type]:
    """The protocol classes uvicorn will serve HTTP and websockets with, chosen as Chainlit asks it to."""
    chosen: list[type] = [import_from_string(HTTP_PROTOCOLS["auto"])]
    ws = os.environ.get("UVICORN_WS_PROTOCOL", "auto")
    target = WS_PROTOCOLS.get(ws, ws)
    if target:
        chosen.append(import_from_string(target))
    return chosen


def install(protocols: list[type] | None = None) -> list[type]:
    """Make every new connection of ``protocols`` (default: the ones uvicorn will serve with) write once
    per loop pass; a protocol this was not written for is left alone, with a warning. Returns the
    protocols that now join their writes."""
    joined: list[type] = []
    for protocol in serving_protocols() if protocols is None else protocols:
        if protocol not in WRITTEN_FOR:
            logger.warning(
                "uvicorn serves with %s here, not h11/wsproto: its writes are not joined (uninstall httptools "
                "and websockets, or unset UVICORN_WS_PROTOCOL, to have them joined)",
                protocol.__name__,
            )
            continue
        if not getattr(protocol.connection_made, "__weaver_coalescing__", False):
            wrapped = _coalescing(protocol.connection_made)
            wrapped.__weaver_coalescing__ = True  # type: ignore[attr-defined]
            protocol.connection_made = wrapped  # type: ignore[method-assign,assignment]
        joined.append(protocol)
    return joined
