"""The server's start-up objects, kept out of the garbage collector's way, and collections made rarer.

A started server holds ~400,000 objects (Chainlit, FastAPI, SQLAlchemy, Weaver) that live as long as
it does. CPython's full collections walk every tracked object, so each of them, in a crowd, stopped the
event loop for 0.3–0.4 s and together they were ~9 % of the server's CPU (``bench/load.py``, 300 users
in 18 s). ``gc.freeze()`` moves the objects alive at the end of start-up to a generation no collection
walks; what chats create later is collected as before. Frozen objects are never freed, so only what
start-up made is frozen, after one collection has removed its garbage.

A crowd allocates fast, and CPython's default (a young collection every 700 new objects, and with every
tenth of those an older one) ran ~1,850 collections in a 400-user run; after ``YOUNG_THRESHOLD`` new
objects instead, 117, and the server's CPU for the crowd fell 9 % (23.2 → 21.2 CPU-s,
``bench/load.py --users 400 --arrival 24 --pool-size 500``). Cyclic garbage waits a little longer.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("weaver.ui.heap")

YOUNG_THRESHOLD = 10_000  # new objects between two young collections (CPython's default: 700)


def freeze_startup_objects() -> int:
    """Collect start-up garbage, exempt every object still alive from later collections and make
    young collections rarer; returns how many objects are frozen now."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    frozen = gc.get_freeze_count()
    logger.info(
        "start-up objects kept out of garbage collection: %d; a young collection every %d new objects",
        frozen,
        YOUNG_THRESHOLD,
    )
    return frozen
