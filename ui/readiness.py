"""Readiness (``/ready``): may this server take new users now?

``/health`` (Chainlit's) only says the process answers; a load balancer or Kubernetes asks
``/ready`` whether to send anyone here. Each check answers quickly or is counted as failed after
``WEAVER_UI_READY_TIMEOUT_S``; they run side by side:

* ``engine``: the engine has started (it does at the app's start-up);
* ``database``: ``SELECT 1`` on the chat history's database (SQLite or PostgreSQL). A database that
  does not answer while the history keeps (spools) its writes is only a note for
  ``WEAVER_UI_READY_DB_GRACE_S``: the replicas share the database, so failing at once would take every
  one of them out of the load balancer for a blip the history rides out. It fails when the outage
  lasts longer, or when the history can no longer keep writes (its spool is full or broken);
* ``kernels``: the kernel backend says kernels can start (a gateway answers an authenticated
  request; local kernels: whether they fork from the fork server, said but never failing);
* whatever else was registered with ``register`` (e.g. a draining server: one line).

A check returns None when all is well, a sentence saying what is wrong, or ``Note(sentence)`` for
something worth saying that does not make the server unready.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core import TaskWeaverApp
from ui.bridge import run_in_thread
from ui.history.write_behind import WriteBehind, history_writes


class Note(str):
    """A check's remark that leaves the server ready (e.g. a degraded but working path)."""


Verdict = Union[str, None]
Check = Callable[[], Union[Verdict, Awaitable[Verdict]]]

# Checks beyond the built-in ones, by name, in the order registered.
EXTRA_CHECKS: dict[str, Check] = {}


def register(name: str, check: Check) -> None:
    """Make ``check`` (sync or async; see the module's docstring) part of every ``/ready`` answer."""
    EXTRA_CHECKS[name] = check


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, dict[str, Any]]  # name -> {"ok": bool, "detail": str (when there is one)}

    def body(self, with_details: bool) -> dict[str, Any]:
        """The JSON answer; without details, only which checks passed (the details may name hosts)."""
        checks = {name: result if with_details else {"ok": result["ok"]} for name, result in self.checks.items()}
        return {"ready": self.ready, "checks": checks}


async def _verdict(check: Check) -> Verdict:
    verdict = check()
    return await verdict if inspect.isawaitable(verdict) else verdict


async def _run(check: Check, timeout: float) -> tuple[bool, str]:
    try:
        verdict = await asyncio.wait_for(_verdict(check), timeout)
    except asyncio.TimeoutError:
        return False, f"no answer within {timeout:g} s (WEAVER_UI_READY_TIMEOUT_S)"
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
        return False, f"{type(exc).__name__}: {exc}"[:300]
    if verdict is None:
        return True, ""
    return isinstance(verdict, Note), str(verdict)[:300]


class DatabaseOutage:
    """When this server's ``/ready`` first found the database silent (None: it answers)."""

    def __init__(self) -> None:
        self.since: float | None = None


OUTAGE = DatabaseOutage()


def _history_keeps(writes: WriteBehind | None) -> bool:
    """Whether the history still keeps every write: its spool is neither full nor broken."""
    if writes is None:
        return True  # nothing was written in this outage: nothing to lose yet
    full = writes.spooled_bytes >= writes.outage.spool_bytes
    return not (full or getattr(writes, "_full", False) or getattr(writes, "_spool_broken", False))


def database_verdict(
    problem: str, writes: WriteBehind | None, grace_s: float, outage: DatabaseOutage, now: float
) -> Verdict:
    """A silent database (``problem`` says how): a note while the outage is younger than ``grace_s``
    and the history keeps its writes, else a failure."""
    started = [t for t in (outage.since, writes.failing_since if writes is not None else None) if t is not None]
    lasted = max(0.0, now - min(started)) if started else 0.0
    if not _history_keeps(writes):
        return f"{problem}; the history can no longer keep writes (spool full or broken)"
    if lasted >= grace_s:
        return f"{problem} for {lasted:.0f} s (WEAVER_UI_READY_DB_GRACE_S={grace_s:g})"
    spooling = (
        f"history spooling since {now - writes.failing_since:.0f} s"
        if writes is not None and writes.failing_since is not None
        else "history would spool writes"
    )
    return Note(f"{problem}; {spooling} (ready for up to WEAVER_UI_READY_DB_GRACE_S={grace_s:g} s)")


async def readiness(
    engine: Callable[[], TaskWeaverApp | None],
    history: Callable[[], AsyncEngine | None],
    timeout: float,
    db_grace_s: float = 0.0,
    writes: Callable[[], WriteBehind | None] = history_writes,
    outage: DatabaseOutage = OUTAGE,
) -> Readiness:
    """Run every check (each within ``timeout`` s) and say whether all passed."""

    def engine_started() -> Verdict:
        return None if engine() is not None else "the engine has not started yet"

    async def database() -> Verdict:
        found = history()
        if found is None:
            return "the chat history is not open yet"
        try:
            await asyncio.wait_for(_select_one(found), timeout * 0.9)
        except asyncio.TimeoutError:
            problem = f"no answer within {timeout:g} s (WEAVER_UI_READY_TIMEOUT_S)"
        except Exception as exc:  # noqa: BLE001 - the database failing is what is checked
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        else:
            outage.since = None
            return None
        now = time.time()
        outage.since = outage.since if outage.since is not None else now
        return database_verdict(problem, writes(), db_grace_s, outage, now)

    async def kernels() -> Verdict:
        app = engine()
        if app is None:
            return "the engine has not started yet"
        status = await run_in_thread(app.kernel_backend.readiness, timeout, name="weaver-ready")
        if status.ok:
            return Note(status.detail) if status.detail else None
        return status.detail

    checks: dict[str, Check] = {"engine": engine_started, "database": database, "kernels": kernels, **EXTRA_CHECKS}
    results = await asyncio.gather(*(_run(check, timeout) for check in checks.values()))
    found = {
        name: {"ok": ok, **({"detail": detail} if detail else {})}
        for name, (ok, detail) in zip(checks, results, strict=True)
    }
    return Readiness(all(ok for ok, _ in results), found)


async def _select_one(database: AsyncEngine) -> None:
    async with database.connect() as connection:
        await connection.execute(text("SELECT 1"))
