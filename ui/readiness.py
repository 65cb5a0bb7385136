"""Readiness (``/ready``): may this server take new users now?

``/health`` (Chainlit's) only says the process answers; a load balancer or Kubernetes asks
``/ready`` whether to send anyone here. Each check answers quickly or is counted as failed after
``WEAVER_UI_READY_TIMEOUT_S``; they run side by side:

* ``engine``: the engine has started (it does at the app's start-up);
* ``database``: ``SELECT 1`` on the chat history's database (SQLite or PostgreSQL);
* ``kernels``: the kernel backend says kernels can start (a gateway answers an authenticated
  request; local kernels: whether they fork from the fork server, said but never failing);
* whatever else was registered with ``register`` (e.g. a draining server: one line).

A check returns None when all is well, a sentence saying what is wrong, or ``Note(sentence)`` for
something worth saying that does not make the server unready.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core import TaskWeaverApp
from ui.bridge import run_in_thread


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


async def readiness(
    engine: Callable[[], TaskWeaverApp | None],
    history: Callable[[], AsyncEngine | None],
    timeout: float,
) -> Readiness:
    """Run every check (each within ``timeout`` s) and say whether all passed."""

    def engine_started() -> Verdict:
        return None if engine() is not None else "the engine has not started yet"

    async def database() -> Verdict:
        found = history()
        if found is None:
            return "the chat history is not open yet"
        async with found.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None

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
