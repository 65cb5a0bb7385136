"""The server's start-up objects, kept out of the garbage collector's way.

A started server holds ~400,000 objects (Chainlit, FastAPI, SQLAlchemy, Weaver) that live as long as
it does. CPython's full collections walk every tracked object, so each of them, in a crowd, stopped the
event loop for 0.3–0.4 s and together they were ~9 % of the server's CPU (``bench/load.py``, 300 users
in 18 s). ``gc.freeze()`` moves the objects alive at the end of start-up to a generation no collection
walks; what chats create later is collected as before. Frozen objects are never freed, so only what
start-up made is frozen, after one collection has removed its garbage.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("weaver.ui.heap")


def freeze_startup_objects() -> int:
    """Collect start-up garbage, then exempt every object still alive from later collections;
    returns how many objects are frozen now."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("start-up objects kept out of garbage collection: %d", frozen)
    return frozen
