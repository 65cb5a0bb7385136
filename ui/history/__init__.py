"""Chat history: every chat of a signed-in user, kept through Chainlit's data layer.

Messages, steps and elements go to a database: SQLite at ``<app_dir>/weaver.db`` by default,
or PostgreSQL when ``WEAVER_DATABASE_URL=postgresql+asyncpg://user:pass@host/db`` is set (the
same tables and behaviour; see ``ui.history.schema``). The files of uploads and artifacts go to
``<app_dir>/files/`` (``LocalFileStorage``), or to S3 with ``WEAVER_FILE_STORAGE=s3://bucket``
(Chainlit's S3 client). Local files are served by ``GET /weaver/files/<key>`` to the chat's
owner only (``ui.history.route``).

The UI opens the history once, in the server's event loop (``on_app_startup``), then hands the
layer to Chainlit with ``@cl.data_layer``::

    layer = await open_history(app_dir, history_settings().database_url, on_thread_deleted=...)

When the database fails, nothing written is dropped: the write-behind keeps the rows, spools them
to ``<app_dir>/history-spool/`` and stores them when it is back; a server starting stores what a
dead one left there (``write_behind``, ``spool``); ``notices`` tells the users whose chats wait.

Modules: ``layer`` (``WeaverDataLayer``, made of ``users``, ``threads``, ``steps``, ``elements``
and ``feedback`` over the SQL of ``store``), ``write_behind`` (steps stored together), ``rows``
(rows as Chainlit's dicts), ``schema`` (tables and migrations), ``storage`` (files and key checks),
``route`` (the file route), ``ownership`` (feedback and element routes refuse another user's rows),
``shares`` (read-only share links of chats, for ``ui.sharing``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from chainlit.data.storage_clients.base import BaseStorageClient

from ui.history.layer import ThreadDeleted, WeaverDataLayer, is_thread_id
from ui.history.notices import OutageNotices
from ui.history.ownership import install_ownership_checks
from ui.history.route import install_file_route, request_user
from ui.history.schema import MIGRATIONS, SCHEMA_VERSION, Migration, SchemaError, migrate, schema_version
from ui.history.spool import SPOOL_DIR, Spool
from ui.history.storage import (
    DEFAULT_URL_PREFIX,
    LocalFileStorage,
    UnsafeObjectKey,
    check_object_key,
    s3_storage,
    safe_file_name,
)
from ui.history.write_behind import DEFAULT_OUTAGE, OutagePolicy, WriteBehind, history_writes

__all__ = [
    "DATABASE_URL_ENV",
    "FILE_STORAGE_ENV",
    "DEFAULT_URL_PREFIX",
    "HistoryConfigError",
    "HistorySettings",
    "LocalFileStorage",
    "MIGRATIONS",
    "Migration",
    "OutageNotices",
    "OutagePolicy",
    "SCHEMA_VERSION",
    "SPOOL_DIR",
    "SchemaError",
    "ThreadDeleted",
    "UnsafeObjectKey",
    "WeaverDataLayer",
    "WriteBehind",
    "check_object_key",
    "database_url_for",
    "history_settings",
    "history_writes",
    "install_file_route",
    "install_ownership_checks",
    "is_thread_id",
    "make_storage",
    "migrate",
    "open_history",
    "request_user",
    "safe_file_name",
    "schema_version",
]

DATABASE_URL_ENV = "WEAVER_DATABASE_URL"
FILE_STORAGE_ENV = "WEAVER_FILE_STORAGE"
DB_FILE = "weaver.db"
FILES_DIR = "files"


class HistoryConfigError(ValueError):
    """A history setting is invalid; the message names it."""


@dataclass(frozen=True)
class HistorySettings:
    database_url: str | None  # None: SQLite in the app folder
    file_storage: str | None  # None: <app_dir>/files; "s3://bucket"


def history_settings(environ: Mapping[str, str] | None = None) -> HistorySettings:
    """``WEAVER_DATABASE_URL`` and ``WEAVER_FILE_STORAGE`` (blank counts as unset)."""
    env = os.environ if environ is None else environ
    url = (env.get(DATABASE_URL_ENV) or "").strip() or None
    storage = (env.get(FILE_STORAGE_ENV) or "").strip() or None
    if url is not None:
        database_url_for(Path("."), url)  # refuse a bad value at start, naming the variable
    if storage is not None and not storage.startswith("s3://"):
        raise HistoryConfigError(f"{FILE_STORAGE_ENV}={storage!r}: expected s3://bucket (or unset for local files)")
    return HistorySettings(database_url=url, file_storage=storage)


def database_url_for(app_dir: Path, database_url: str | None) -> str:
    """The SQLAlchemy URL to use: SQLite in ``app_dir`` by default; plain ``postgresql://`` and
    ``sqlite:///`` URLs get the async drivers Weaver uses (asyncpg, aiosqlite)."""
    if not database_url:
        return f"sqlite+aiosqlite:///{Path(app_dir).resolve() / DB_FILE}"
    scheme, sep, rest = database_url.partition("://")
    if not sep:
        raise HistoryConfigError(f"{DATABASE_URL_ENV}: {database_url[:40]!r}... is not a database URL")
    drivers = {
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
    }
    if scheme.lower() not in drivers:
        raise HistoryConfigError(
            f"{DATABASE_URL_ENV}: {scheme}:// is not supported; use postgresql+asyncpg://... or sqlite+aiosqlite:///..."
        )
    return f"{drivers[scheme.lower()]}://{rest}"


def make_storage(
    app_dir: Path, file_storage: str | None = None, url_prefix: str = DEFAULT_URL_PREFIX
) -> BaseStorageClient:
    """Local files under ``<app_dir>/files`` by default, or Chainlit's S3 client for ``s3://bucket``."""
    if file_storage:
        return s3_storage(file_storage)
    return LocalFileStorage(Path(app_dir) / FILES_DIR, url_prefix=url_prefix)


async def open_history(
    app_dir: Path,
    database_url: str | None,
    on_thread_deleted: ThreadDeleted | None = None,
    *,
    file_storage: str | None = None,
    url_prefix: str = DEFAULT_URL_PREFIX,
    outage: OutagePolicy = DEFAULT_OUTAGE,
    server_id: str = "server",
) -> WeaverDataLayer:
    """The history's data layer with its schema created or upgraded, and the rows that servers
    which died left in ``<app_dir>/history-spool`` stored. Call it in the event loop that will use
    it (the server's): database connections belong to their loop. ``server_id`` names this
    server's spool file (for people reading the folder)."""
    app_dir = Path(app_dir)
    url = database_url_for(app_dir, database_url)
    if not database_url:  # our own file: readable by the server's user only (SQLite's -wal and -shm follow it)
        app_dir.mkdir(parents=True, exist_ok=True)
        os.close(os.open(app_dir / DB_FILE, os.O_CREAT | os.O_WRONLY, 0o600))
    layer = WeaverDataLayer(
        url,
        make_storage(app_dir, file_storage, url_prefix),
        on_thread_deleted,
        outage=outage,
        spool=Spool(app_dir / SPOOL_DIR, server_id),
    )
    try:
        await layer.open()
        await layer.take_over_spools()
    except BaseException:
        await layer.close()
        raise
    return layer
