"""The server's shutdown as separate, bounded steps.

Chainlit runs the app's ``on_app_shutdown`` and only then closes the data layer (the chat history,
which stores or spools what is pending), and it skips that close when the hook raises. So each step
of Weaver's shutdown logs its own failure instead of raising, and the slow ones are bounded, so the
history close always gets its turn before ``weaver ui``'s deadline (``ui.drain.STOP_GRACE_S`` past
the drain). The bounds add up, with the drain's history flush and the history close, to less than
that grace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable

logger = logging.getLogger("weaver.ui.shutdown")

SESSIONS_STOP_S = 10.0  # every live session stopped (their kernels stopped or let go), side by side
LIVE_STOP_S = 3.0  # the shared live-chat registry's last writes
ENGINE_STOP_S = 5.0  # the engine: kernel pool, fork server
TRACING_FLUSH_S = 2.0  # spans still queued, sent to the OTLP endpoint


async def step(what: str, work: Awaitable[object], timeout_s: float | None = None) -> bool:
    """Await ``work`` (for at most ``timeout_s``; past it, the work goes on beside the next steps);
    a failure or a timeout is logged, never raised. True when it finished."""
    try:
        await asyncio.wait_for(asyncio.shield(work), timeout_s)
    except asyncio.TimeoutError:
        logger.warning("shutdown: %s took over %gs; going on without it", what, timeout_s)
        return False
    except Exception:
        logger.exception("shutdown: %s failed; going on", what)
        return False
    return True
