"""Chainlit's step and message timestamps, without the sleep it takes for them on the event loop.

Chainlit 2.x calls ``time.sleep(0.001)`` in every ``Step`` and ``Message`` constructor so that two
of them made back to back get different ``createdAt`` times (history is ordered by them). On the
event loop that is a blocking call: it releases the GIL, and getting it back waits for whichever
thread holds it, often a whole switch interval (5 ms). A round makes several steps, so with a
hundred users the loop spent seconds asleep while chats waited to become ready.

``install()`` (through ``ui.patches``, when ``ui/server.py`` sets the server up) removes the sleep
from the constructors in ``chainlit.step`` and ``chainlit.message`` and gives them a clock that
never repeats instead: each timestamp is at least 1 ms after the one before, which is the order the
sleep was there to keep, and always carries microseconds, so the strings sort as the times do.
"""

from __future__ import annotations

import importlib
import threading
import types
from datetime import datetime, timedelta, timezone

PATCHED = ("chainlit.step", "chainlit.message")
STEP = timedelta(milliseconds=1)
_lock = threading.Lock()
_last = datetime.min


def ordered_utc_now() -> str:
    """Now, in UTC, ISO 8601 with a ``Z``: strictly later (by 1 ms at least) than any earlier answer."""
    global _last
    with _lock:
        now = max(datetime.now(timezone.utc).replace(tzinfo=None), _last + STEP)
        _last = now
    return now.isoformat(timespec="microseconds") + "Z"


def _no_sleep(seconds: float) -> None:
    """Stands in for ``time.sleep`` where Chainlit slept only to separate timestamps."""


def install() -> None:
    """Patch ``chainlit.step`` and ``chainlit.message``: no sleep, ``ordered_utc_now`` for their times."""
    for module in map(importlib.import_module, PATCHED):  # ``chainlit.message`` the attribute is a function
        real = module.time
        clock = types.SimpleNamespace(**{name: getattr(real, name) for name in dir(real) if not name.startswith("_")})
        clock.sleep = _no_sleep
        module.time = clock  # type: ignore[attr-defined]
        module.utc_now = ordered_utc_now  # type: ignore[attr-defined]
