"""Which worker a new connection goes to, read from its first request without consuming it.

The router accepts a connection, peeks at its first bytes (``MSG_PEEK``: they stay in the socket
for the worker to read) until the request's header block is complete, and reads the sticky cookie
(``weaver_worker=<k>``, ``ui/workers/sticky.py``). A browser that has one goes back to its worker
while that worker is up; one without (a first visit), or whose worker is down, goes to the next
live worker in turn, which sets the cookie on its answer. A keep-alive connection stays with the
worker it was handed to, as it would with any proxy; every request on it comes from one browser.
Standard library only: this runs in the ``weaver ui`` process.
"""

from __future__ import annotations

import socket

from ui.workers import COOKIE
from ui.workers.handoff import CONNECTION

PEEK_BYTES = 16_384  # a header block longer than this is routed on what was read (cookies come early)
INDEX_DIGITS = 2  # `--workers` is at most 64; int() of thousands of digits would raise
HEAD_WAIT_S = 10.0  # a client that sends no complete header block within this is routed without one

_COOKIE = COOKIE.encode()


def head_complete(head: bytes) -> bool:
    """True when ``head`` holds the whole header block (or as much as the router reads)."""
    return b"\r\n\r\n" in head or len(head) >= PEEK_BYTES


def sticky_index(head: bytes) -> int | None:
    """The worker named by the ``weaver_worker`` cookie of the request that starts ``head``."""
    end = head.find(b"\r\n\r\n")
    lines = (head if end < 0 else head[:end]).split(b"\r\n")[1:]
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"cookie" or _COOKIE not in value:
            continue
        for part in value.split(b";"):
            key, _, found = part.strip().partition(b"=")
            found = found.strip()
            if key == _COOKIE and found.isdigit() and len(found) <= INDEX_DIGITS:
                return int(found)
    return None


class Choice:
    """Round-robin over the live workers, unless the browser's cookie names a live one."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, wanted: int | None, live: list[int]) -> int | None:
        if not live:
            return None
        if wanted is not None and wanted in live:
            return wanted
        ordered = sorted(live)
        chosen = next((i for i in ordered if i >= self._next), ordered[0])
        self._next = chosen + 1
        return chosen


def hand(pair: socket.socket, conn: socket.socket) -> bool:
    """Pass ``conn`` to the worker at the other end of ``pair``; False when it cannot take it now."""
    try:
        socket.send_fds(pair, [CONNECTION], [conn.fileno()])
    except OSError:  # full (BlockingIOError) or the worker's end is closed
        return False
    return True
