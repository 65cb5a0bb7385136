"""Each user's model usage, kept in the history database so admins see totals across restarts.

One row per user and model (table ``weaver_usage``, schema version 5): prompt and completion tokens,
the cost where the model has prices (``llm.price_per_1k_*``), and the rounds that called it. A round
adds its ``core.usage.RoundUsage`` with one upsert per model that adds to the row in the database
(``ON CONFLICT ... DO UPDATE``, on SQLite and PostgreSQL alike), so replicas never overwrite each
other's counts. ``usage_by_user`` is what ``weaver usage`` prints and the admin page shows.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Protocol

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.usage import RoundUsage
from ui.history import DB_FILE, database_url_for

_ADD = text(
    'INSERT INTO weaver_usage ("userIdentifier", "model", "promptTokens", "completionTokens", "cost", "rounds", '
    '"updatedAt") VALUES (:user, :model, :prompt, :completion, :cost, 1, :now) '
    'ON CONFLICT ("userIdentifier", "model") DO UPDATE SET '
    '"promptTokens" = weaver_usage."promptTokens" + excluded."promptTokens", '
    '"completionTokens" = weaver_usage."completionTokens" + excluded."completionTokens", '
    '"cost" = CASE WHEN excluded."cost" IS NULL THEN weaver_usage."cost" '
    'ELSE COALESCE(weaver_usage."cost", 0) + excluded."cost" END, '
    '"rounds" = weaver_usage."rounds" + 1, "updatedAt" = excluded."updatedAt"'
)
_BY_USER = text(
    'SELECT "userIdentifier", "model", "promptTokens", "completionTokens", "cost", "rounds", "updatedAt" '
    'FROM weaver_usage ORDER BY "userIdentifier", "model"'
)


class UsageStore(Protocol):
    """What usage needs of the history: ``WeaverDataLayer`` is one (``transaction``, ``reading``)."""

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


@dataclass
class ModelUsage:
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # None: no price was set for this model
    rounds: int


@dataclass
class UserUsage:
    """One user's totals over every model, and per model."""

    user: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    rounds: int = 0  # rounds per model, summed: a round that called two models counts in each
    last_used: float = 0.0  # epoch seconds
    models: list[ModelUsage] = field(default_factory=list)


async def add_usage(store: UsageStore, user: str, usage: RoundUsage) -> None:
    """Add one round's tokens and cost to ``user``'s totals (nothing when no tokens were reported)."""
    if not usage.reported:
        return
    now = time.time()
    async with store.transaction() as conn:
        for model, (prompt, completion, cost) in usage.by_model().items():
            await conn.execute(
                _ADD,
                {"user": user, "model": model, "prompt": prompt, "completion": completion, "cost": cost, "now": now},
            )


async def usage_by_user(store: UsageStore) -> list[UserUsage]:
    """Every user's totals, by user name, each with its models."""
    async with store.reading() as conn:
        rows = (await conn.execute(_BY_USER)).all()
    users: dict[str, UserUsage] = {}
    for user, model, prompt, completion, cost, rounds, updated in rows:
        entry = users.setdefault(str(user), UserUsage(str(user)))
        entry.models.append(
            ModelUsage(str(model), int(prompt), int(completion), None if cost is None else float(cost), int(rounds))
        )
        entry.prompt_tokens += int(prompt)
        entry.completion_tokens += int(completion)
        if cost is not None:
            entry.cost = (entry.cost or 0.0) + float(cost)
        entry.rounds += int(rounds)
        entry.last_used = max(entry.last_used, float(updated))
    return list(users.values())


class EngineStore:
    """A ``UsageStore`` over a bare engine, for ``weaver usage`` (no data layer, no write-behind)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn


async def read_usage(app_dir: Path, database_url: str | None) -> list[UserUsage]:
    """The totals in the history of ``app_dir`` (or ``WEAVER_DATABASE_URL``'s), read without changing
    anything: no database yet, or one from before usage was kept, has none."""
    if not database_url and not (app_dir / DB_FILE).is_file():
        return []
    engine = create_async_engine(database_url_for(app_dir, database_url))
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda sync: inspect(sync).has_table("weaver_usage")):
                return []
        return await usage_by_user(EngineStore(engine))
    finally:
        await engine.dispose()


def usage_table(users: list[UserUsage]) -> str:
    """``weaver usage``'s table: one line per user, totals first, then each model indented."""
    if not users:
        return "no model usage recorded yet"

    def cost(value: float | None) -> str:
        return "-" if value is None else f"${value:.4f}"

    lines = [f"{'user':<24} {'prompt tokens':>14} {'completion':>12} {'cost':>10} {'rounds':>7}  last used (UTC)"]
    for user in users:
        when = datetime.fromtimestamp(user.last_used, timezone.utc).strftime("%Y-%m-%d %H:%M")
        lines.append(
            f"{user.user:<24} {user.prompt_tokens:>14,} {user.completion_tokens:>12,} {cost(user.cost):>10} "
            f"{user.rounds:>7}  {when}"
        )
        for model in user.models:
            lines.append(
                f"  {model.model:<22} {model.prompt_tokens:>14,} {model.completion_tokens:>12,} "
                f"{cost(model.cost):>10} {model.rounds:>7}"
            )
    return "\n".join(lines)
