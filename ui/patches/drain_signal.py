"""uvicorn's stop signals start Weaver's drain (``ui/drain.py``) instead of closing every socket.

uvicorn's ``Server.handle_exit`` (installed for SIGINT and SIGTERM by ``capture_signals`` around
``serve``, which Chainlit's ``run_chainlit`` calls) sets ``should_exit`` at once: the main loop then
closes the listening sockets and every connection, and only after that runs the lifespan shutdown.
That leaves no moment in which running rounds could finish. Here ``handle_exit`` first offers the
signal to ``take(server, sig)``; when it takes it (the drain started, or a repeat during the
drain), uvicorn does nothing more, and the drain sets ``should_exit`` itself when it is over. When
it does not (no running loop yet, or uvicorn already stopping), uvicorn's own handler runs, so a
third Ctrl-C still forces the exit.
"""

from __future__ import annotations

from types import FrameType
from typing import Any, Callable

import uvicorn

Take = Callable[[Any, int], bool]


def install(take: Take) -> None:
    server_class: Any = uvicorn.Server
    original = server_class.handle_exit
    if getattr(original, "weaver_patched", False):
        return

    def handle_exit(self: Any, sig: int, frame: FrameType | None) -> None:
        if not take(self, sig):
            original(self, sig, frame)

    handle_exit.weaver_patched = True  # type: ignore[attr-defined]
    server_class.handle_exit = handle_exit
