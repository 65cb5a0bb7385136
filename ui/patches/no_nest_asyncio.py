"""Chainlit's command line without ``nest_asyncio``: Weaver's web server on asyncio's C tasks.

``chainlit.cli`` calls ``nest_asyncio.apply()`` as it is imported. That makes every event loop
re-entrant by replacing asyncio's C ``Task`` and ``Future`` with their pure-Python versions and
running the loop's inner step in Python as well. Re-entrancy serves only code that calls
``run_until_complete`` inside the running loop: Chainlit's ``run_sync`` called from the loop's own
thread, and its per-chat-profile config overrides. Weaver uses neither. The price was paid on every
task step of the server: profiled under a crowd, asyncio's Python task and loop code was a quarter
of the event loop's CPU.

``install()`` puts a stand-in ``nest_asyncio`` whose ``apply`` does nothing in ``sys.modules``; it
must run before ``chainlit.cli`` is imported (``ui/chainlit_main.py``). Should a future Weaver add
chat profiles with config overrides, Chainlit's attempt fails inside its own ``try`` and falls back
to the global config.
"""

from __future__ import annotations

import sys
import types


def install() -> None:
    stand_in = types.ModuleType("nest_asyncio", "Stand-in in Weaver's web server: apply() leaves asyncio as it is.")
    stand_in.apply = lambda loop=None: None  # type: ignore[attr-defined]
    sys.modules["nest_asyncio"] = stand_in
