"""Rows of the history tables as Chainlit's dicts, the same on SQLite and PostgreSQL.

PostgreSQL (asyncpg) hands JSONB back decoded and booleans as booleans; SQLite hands back JSON
text and 0/1. ``normalise`` makes both look like the former; ``thread_dict`` and ``step_dict``
shape rows as Chainlit's ``ThreadDict`` and ``StepDict``. ``sqlite_transactions`` gives SQLite
real transactions.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from typing import TYPE_CHECKING, Any, Mapping

from chainlit.types import ThreadDict
from sqlalchemy import event

from core.safe_files import open_plain
from ui.ids import is_canonical_uuid

if TYPE_CHECKING:
    from chainlit.step import StepDict

OCTET_STREAM = "application/octet-stream"
ELEMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Columns each table accepts from Chainlit's dicts, and how their values are kept.
STEP_COLUMNS = (
    "id", "name", "type", "threadId", "parentId", "streaming", "waitForAnswer", "isError", "metadata", "tags",
    "input", "output", "createdAt", "command", "modes", "start", "end", "generation", "showInput", "language",
    "defaultOpen", "autoCollapse",
)  # fmt: skip
ELEMENT_COLUMNS = (
    "id", "threadId", "type", "url", "chainlitKey", "name", "display", "objectKey", "size", "page", "language",
    "forId", "mime", "props", "autoPlay", "playerConfig",
)  # fmt: skip
JSON_COLUMNS = frozenset({"metadata", "modes", "generation", "props", "playerConfig"})
BOOL_COLUMNS = frozenset({"streaming", "waitForAnswer", "isError", "defaultOpen", "autoCollapse", "autoPlay"})
TAG_COLUMNS = frozenset({"tags"})


def is_thread_id(value: object) -> bool:
    """True for the canonical lowercase UUID form Chainlit gives every thread."""
    return is_canonical_uuid(value)


def decode(value: Any, default: Any = None) -> Any:
    """A JSON column's value as Python: PostgreSQL already decoded it, SQLite gives text."""
    if value is None:
        return default
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return value


def normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, uuid.UUID):
            value = str(value)
        if key in JSON_COLUMNS:
            value = decode(value, {} if key == "metadata" else None)
        elif key in TAG_COLUMNS:
            value = decode(value) if isinstance(value, str) else value
            value = list(value) if value is not None else None
        elif key in BOOL_COLUMNS and value is not None:
            value = bool(value)
        out[key] = value
    return out


def thread_dict(row: Mapping[str, Any]) -> ThreadDict:
    return ThreadDict(
        id=row["id"],
        createdAt=row["createdAt"],
        name=row["name"],
        userId=row["userId"],
        userIdentifier=row["userIdentifier"],
        tags=row["tags"],
        metadata=row["metadata"] or {},
        steps=[],
        elements=[],
    )


def step_dict(row: Mapping[str, Any]) -> StepDict:
    step: dict[str, Any] = {c: row.get(c) for c in STEP_COLUMNS}
    step["metadata"] = step["metadata"] or {}
    step["streaming"] = bool(step["streaming"])
    if step["showInput"] in (None, "false"):  # as Chainlit: a hidden input is not sent back
        step["input"] = ""
    step["feedback"] = (
        {
            "forId": row["id"],
            "id": row["feedback_id"],
            "value": row["feedback_value"],
            "comment": row["feedback_comment"],
        }
        if row.get("feedback_value") is not None
        else None
    )
    return step  # type: ignore[return-value]


def read_bytes(path: str) -> bytes:
    """An element's file (Chainlit's upload store), opened once as ``LocalFileStorage.upload_path``
    does: a link, FIFO, device or hard link as its last component is refused, never followed."""
    with open_plain(path) as opened:
        return opened.read_all()


READ_ONLY = "weaver_read_only"  # execution option of a connection that only reads
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a connection waits for another's lock on the file
_SQLITE_BUSY = 5  # SQLite's result code for "database is locked"
_WAL_RETRY_FIRST_S = 0.005
_WAL_RETRY_MAX_S = 0.1


def sqlite_transactions(sync_engine: Any) -> None:
    """Real transactions on SQLite: pysqlite's own begins too late for DDL and reads-then-writes.
    A transaction takes the write lock at once (``BEGIN IMMEDIATE``), so two writers wait for
    each other (``timeout``) instead of failing. One that only reads (``READ_ONLY``) begins
    deferred and never takes it: WAL lets it read beside a writer, so a login or a page of the
    chat list does not queue behind every step being stored."""

    @event.listens_for(sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the file, for at most
    ``SQLITE_BUSY_TIMEOUT_S``. On a new file two servers (``weaver ui --workers 2``) switch at the same
    moment; each holds a read lock while asking for the write lock, so SQLite fails one at once
    ("database is locked") rather than wait into a deadlock, and its busy timeout does not apply."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause = _WAL_RETRY_FIRST_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == _SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # on the driver's own thread (aiosqlite's), never the event loop
        pause = min(pause * 2, _WAL_RETRY_MAX_S)
