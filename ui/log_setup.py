"""The web server's log: Weaver's format (``core.logs``, ``WEAVER_LOG_FORMAT``) on every line, and
none of Chainlit's noise that nobody can act on.

``ui.chainlit_main`` calls ``setup`` before Chainlit is imported, so the root handler is ours and
Chainlit's own ``basicConfig`` adds nothing; ``ui.app`` calls it again at start-up, when uvicorn
has made its handlers. Chainlit is not imported here.
"""

from __future__ import annotations

import logging

from core import logs

# Chainlit warns on every page load of a browser whose language has no chainlit_<lang>.md; ours
# is one readme for every language, so the fallback is the intended answer, not a problem.
QUIET_CHAINLIT = ("Translated markdown file for ",)


class DropNoise(logging.Filter):
    """Drops records whose message template starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


def setup() -> logs.LogFormat:
    """Format every handler the server has so far; once per process, safe to call again.
    ``LogFormatError`` for a bad ``WEAVER_LOG_FORMAT``."""
    fmt = logs.configure()
    chainlit = logging.getLogger("chainlit")
    if not any(isinstance(f, DropNoise) for f in chainlit.filters):
        chainlit.addFilter(DropNoise(QUIET_CHAINLIT))
    weaver = logging.getLogger("weaver")
    if weaver.level == logging.NOTSET:
        weaver.setLevel(logging.INFO)
    return fmt
