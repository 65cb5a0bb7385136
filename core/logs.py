"""How the server's log lines look: one line per event, as text or as JSON (``WEAVER_LOG_FORMAT``).

The one place the format is chosen, so the web server's log (``ui.log_setup``) and the app's log
file (``logging.log_folder``, ``core.app``) always agree. JSON lines come from python-json-logger
with fixed keys (``time`` in UTC ISO 8601, ``level``, ``logger``, ``message``, and ``exc_info``
for a traceback, kept inside the line), so a log shipper parses every line the same way.
What goes into a line is the caller's business; the rule for callers is: never a user's message
or a program's output at INFO (``core.session`` logs a round's state, not its answer).
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any, Iterable, Mapping

from pythonjsonlogger.json import JsonFormatter

from core.errors import ConfigError

FORMAT_ENV = "WEAVER_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that get handlers of their own elsewhere (uvicorn configures its own at start).
FORMATTED_LOGGERS = ("", "weaver", "uvicorn", "uvicorn.error", "uvicorn.access")


class LogFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


class LogFormatError(ConfigError):
    """``WEAVER_LOG_FORMAT`` names no format; the message says which values work."""


def log_format(environ: Mapping[str, str] | None = None) -> LogFormat:
    """The format asked for by ``WEAVER_LOG_FORMAT`` (default ``text``)."""
    value = (os.environ if environ is None else environ).get(FORMAT_ENV, "").strip().lower()
    if not value:
        return LogFormat.TEXT
    try:
        return LogFormat(value)
    except ValueError:
        raise LogFormatError(
            f"{FORMAT_ENV}={value!r} is not a log format: use {' or '.join(f.value for f in LogFormat)}"
        ) from None


class _UTCJsonFormatter(JsonFormatter):
    """python-json-logger with the time first, in UTC, to the millisecond."""

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_record["time"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        super().add_fields(log_record, record, message_dict)


def formatter(fmt: LogFormat | None = None) -> logging.Formatter:
    """A formatter for ``fmt`` (default: the one ``WEAVER_LOG_FORMAT`` asks for)."""
    if (fmt or log_format()) is LogFormat.JSON:
        return _UTCJsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )
    return logging.Formatter(TEXT_FORMAT)


def format_handlers(fmt: LogFormat | None = None, loggers: Iterable[str] = FORMATTED_LOGGERS) -> None:
    """Give every handler of ``loggers`` the chosen formatter (those made by libraries included)."""
    chosen = formatter(fmt)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(chosen)


def configure(stream: IO[str] | None = None, level: int = logging.INFO) -> LogFormat:
    """The process's logging, once, before libraries set up their own: one handler on the root
    logger (standard output, where Chainlit would put it) with the chosen format. A library's later
    ``basicConfig`` then finds it there and adds nothing. Returns the format; ``LogFormatError``
    for a bad ``WEAVER_LOG_FORMAT``."""
    fmt = log_format()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(stream or sys.stdout))
        root.setLevel(level)
    format_handlers(fmt)
    return fmt
