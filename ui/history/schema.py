"""The history database's tables, and the ordered migrations that build and upgrade them.

Chainlit's ``SQLAlchemyDataLayer`` does not create tables; these are the ones its queries (and
``WeaverDataLayer``'s) name, with its quoted camelCase columns: ``users``, ``threads``, ``steps``,
``elements``, ``feedbacks``. Identifiers are TEXT on both databases (Chainlit makes UUIDs, but
the database need not refuse anything else: ``WeaverDataLayer`` checks thread ids itself). JSON
values are TEXT on SQLite and JSONB on PostgreSQL; tags are a JSON list on SQLite and TEXT[] on
PostgreSQL, as Chainlit's documented schema has them. There are no foreign keys: Chainlit writes
elements and steps from separate tasks, sometimes before their thread's row, and a constraint
would drop them; ``delete_thread`` removes a thread's rows itself, in one transaction.

``weaver_schema_version`` holds one row, the version reached. ``migrate`` applies every step
newer than it, each in its own transaction (DDL is transactional on both databases) under a lock
(PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``), so servers starting together
migrate once. A database newer than the code is refused rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

VERSION_TABLE = "weaver_schema_version"
_PG_LOCK_KEY = 0x57656176  # "Weav": one advisory lock for schema changes


class SchemaError(RuntimeError):
    """The database's schema cannot be used by this version of Weaver."""


@dataclass(frozen=True)
class Migration:
    """One step: the version it reaches and its statements for a dialect ("sqlite", "postgresql")."""

    version: int
    description: str
    statements: Callable[[str], Sequence[str]]


def _types(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        return {"json": "JSONB", "tags": "TEXT[]"}
    return {"json": "TEXT", "tags": "TEXT"}


def _v1(dialect: str) -> list[str]:
    t = _types(dialect)
    return [
        f"""CREATE TABLE users (
            "id" TEXT PRIMARY KEY,
            "identifier" TEXT NOT NULL UNIQUE,
            "metadata" {t["json"]} NOT NULL,
            "createdAt" TEXT
        )""",
        f"""CREATE TABLE threads (
            "id" TEXT PRIMARY KEY,
            "createdAt" TEXT,
            "name" TEXT,
            "userId" TEXT,
            "userIdentifier" TEXT,
            "tags" {t["tags"]},
            "metadata" {t["json"]}
        )""",
        f"""CREATE TABLE steps (
            "id" TEXT PRIMARY KEY,
            "name" TEXT NOT NULL,
            "type" TEXT NOT NULL,
            "threadId" TEXT NOT NULL,
            "parentId" TEXT,
            "streaming" BOOLEAN NOT NULL DEFAULT FALSE,
            "waitForAnswer" BOOLEAN,
            "isError" BOOLEAN,
            "metadata" {t["json"]},
            "tags" {t["tags"]},
            "input" TEXT,
            "output" TEXT,
            "createdAt" TEXT,
            "command" TEXT,
            "modes" {t["json"]},
            "start" TEXT,
            "end" TEXT,
            "generation" {t["json"]},
            "showInput" TEXT,
            "language" TEXT,
            "indent" INTEGER,
            "defaultOpen" BOOLEAN,
            "autoCollapse" BOOLEAN
        )""",
        f"""CREATE TABLE elements (
            "id" TEXT PRIMARY KEY,
            "threadId" TEXT,
            "type" TEXT,
            "url" TEXT,
            "chainlitKey" TEXT,
            "name" TEXT NOT NULL,
            "display" TEXT,
            "objectKey" TEXT,
            "size" TEXT,
            "page" INTEGER,
            "language" TEXT,
            "forId" TEXT,
            "mime" TEXT,
            "props" {t["json"]},
            "autoPlay" BOOLEAN,
            "playerConfig" {t["json"]}
        )""",
        """CREATE TABLE feedbacks (
            "id" TEXT PRIMARY KEY,
            "forId" TEXT NOT NULL,
            "threadId" TEXT,
            "value" INTEGER NOT NULL,
            "comment" TEXT
        )""",
        'CREATE INDEX threads_user ON threads ("userId")',
        'CREATE INDEX steps_thread ON steps ("threadId")',
        'CREATE INDEX elements_thread ON elements ("threadId")',
        'CREATE INDEX elements_for ON elements ("forId")',
        'CREATE INDEX elements_object_key ON elements ("objectKey")',
        'CREATE INDEX feedbacks_for ON feedbacks ("forId")',
    ]


def _v2(dialect: str) -> list[str]:
    """State that several replicas share (``ui.shared``); times are epoch seconds from the database's clock."""
    seconds = "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    return [
        'CREATE TABLE weaver_secrets ("name" TEXT PRIMARY KEY, "value" TEXT NOT NULL)',
        f'CREATE TABLE weaver_login_failures ("key" TEXT NOT NULL, "at" {seconds} NOT NULL)',
        'CREATE INDEX login_failures_key ON weaver_login_failures ("key", "at")',
        f"""CREATE TABLE weaver_live_sessions (
            "chat" TEXT PRIMARY KEY,
            "client" TEXT NOT NULL,
            "replica" TEXT NOT NULL,
            "threadId" TEXT,
            "live" BOOLEAN NOT NULL DEFAULT TRUE,
            "expiresAt" {seconds} NOT NULL
        )""",
        'CREATE INDEX live_sessions_client ON weaver_live_sessions ("client")',
        'CREATE INDEX live_sessions_replica ON weaver_live_sessions ("replica")',
    ]


def _v3(dialect: str) -> list[str]:
    """Which gateway kernel a live chat holds (``ui.shared``): another replica adopts it when the
    chat's replica dies, or deletes it when nobody does."""
    return [
        'ALTER TABLE weaver_live_sessions ADD COLUMN "sessionId" TEXT',
        'ALTER TABLE weaver_live_sessions ADD COLUMN "kernelId" TEXT',
    ]


def _v4(dialect: str) -> list[str]:
    """Logged-out login tokens (``ui.logins.revocations``): a hash of each, kept until it expires anyway."""
    seconds = "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    return [
        f"""CREATE TABLE weaver_revoked_tokens (
            "hash" TEXT PRIMARY KEY,
            "userIdentifier" TEXT NOT NULL,
            "expiresAt" {seconds} NOT NULL,
            "revokedAt" {seconds} NOT NULL
        )""",
        'CREATE INDEX revoked_tokens_expiry ON weaver_revoked_tokens ("expiresAt")',
    ]


def _v5(dialect: str) -> list[str]:
    """Each user's model usage (``ui.history.usage``): tokens and cost summed per user and model."""
    money = "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    return [
        f"""CREATE TABLE weaver_usage (
            "userIdentifier" TEXT NOT NULL,
            "model" TEXT NOT NULL,
            "promptTokens" BIGINT NOT NULL DEFAULT 0,
            "completionTokens" BIGINT NOT NULL DEFAULT 0,
            "cost" {money},
            "rounds" BIGINT NOT NULL DEFAULT 0,
            "updatedAt" {money} NOT NULL,
            PRIMARY KEY ("userIdentifier", "model")
        )""",
    ]


def _v6(dialect: str) -> list[str]:
    """Read-only share links of chats (``ui.history.shares``): an unguessable token each, kept after
    it is revoked (``revokedAt``) so the link can say so."""
    return [
        """CREATE TABLE weaver_shares (
            "token" TEXT PRIMARY KEY,
            "threadId" TEXT NOT NULL,
            "userIdentifier" TEXT NOT NULL,
            "createdAt" TEXT NOT NULL,
            "revokedAt" TEXT
        )""",
        'CREATE INDEX shares_thread ON weaver_shares ("threadId")',
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "Chainlit's tables: users, threads, steps, elements, feedbacks", _v1),
    Migration(2, "shared by replicas: the login secret, failed logins, live sessions per user", _v2),
    Migration(3, "the gateway kernel of each live chat, for adoption and clean-up across replicas", _v3),
    Migration(4, "logged-out login tokens, refused on every replica until they expire", _v4),
    Migration(5, "model tokens and cost per user and model, for the admins", _v5),
    Migration(6, "read-only share links of chats, revocable", _v6),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


async def _read_version(conn: AsyncConnection) -> int:
    await conn.execute(text(f'CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("version" INTEGER NOT NULL)'))
    row = (await conn.execute(text(f'SELECT MAX("version") FROM {VERSION_TABLE}'))).scalar()
    return int(row or 0)


async def schema_version(engine: AsyncEngine) -> int:
    """The version the database is at (0: nothing created yet)."""
    async with engine.begin() as conn:
        return await _read_version(conn)


async def _locked_version(engine: AsyncEngine) -> int:
    """``schema_version`` under the schema lock (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` locks anyway)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        return await _read_version(conn)


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration] = MIGRATIONS) -> tuple[int, int]:
    """Bring the schema to the last of ``migrations``; returns (version before, version after)."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or not versions or versions[0] < 1:
        raise ValueError("migrations must have increasing versions from 1")
    target = versions[-1]
    dialect = engine.dialect.name
    before = await _locked_version(engine)  # locked: replicas starting together would race on CREATE TABLE
    if before > target:
        raise SchemaError(
            f"the history database is at schema version {before}, newer than this Weaver knows ({target}); "
            "upgrade Weaver or point it at another database"
        )
    for step in migrations:
        async with engine.begin() as conn:
            if dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            current = await _read_version(conn)  # again, under the lock: another server may have done it
            if step.version <= current:
                continue
            for statement in step.statements(dialect):
                await conn.execute(text(statement))
            await conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
            await conn.execute(text(f'INSERT INTO {VERSION_TABLE} ("version") VALUES (:v)'), {"v": step.version})
    return before, await _locked_version(engine)
