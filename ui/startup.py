"""A web server that cannot work does not serve: it stops at start, with one line and a non-zero exit.

``weaver ui`` calls ``check_before_serving`` before it starts Chainlit, so a bad file (the config,
a prompt file, ``data/datasets.yaml``, a plugin's YAML, ``users.json`` in password mode) or a bad
``WEAVER_UI_*`` value stops it in about a second, naming the file or the variable. The server checks
the same again in its start-up hook (``stop_server_on_failure``, for a server started some other way
or a file changed meanwhile), and any failure of that hook stops the process there: Chainlit would
only log it and serve a page nobody can sign in to. The hook runs before uvicorn binds its port, so
a refused start leaves nothing listening.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Awaitable, Callable

from core.errors import ConfigError, WeaverError
from core.startup_check import check_app_files
from ui.settings import UISettingsError, ui_settings

logger = logging.getLogger("weaver.ui.startup")
EXIT_REFUSED = 1  # the same code as the server's other refusals at start (``SystemExit("Weaver UI: ...")``)


class StartupRefused(Exception):
    """A file or a setting read at start is wrong; the message is one line naming it."""


def check_before_serving(app_dir: Path, env_file: Path | None = None) -> None:
    """Read every file and ``WEAVER_UI_*`` setting the server reads at start; raise ``StartupRefused``
    at the first bad one. ``env_file``: the ``.env`` the server will read (it runs in the repo root).
    The config's notes (TaskWeaver keys Weaver does not use) are left to the engine to log, once."""
    notes = logging.getLogger("weaver.config")
    level = notes.level
    notes.setLevel(logging.ERROR)
    try:
        settings = ui_settings()
        check_app_files(app_dir, env_file)
        if settings.auth == "password":  # the only mode that reads a file; never chosen implicitly
            from ui.logins import AuthSetupError, UserStore

            try:
                UserStore(app_dir).names()
            except AuthSetupError as exc:
                raise StartupRefused(str(exc)) from None
    except (UISettingsError, ConfigError) as exc:
        raise StartupRefused(str(exc)) from None
    finally:
        notes.setLevel(level)


def stop_server_on_failure(hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """Wrap Chainlit's ``on_app_startup`` hook: the start-up check first, then the hook; a failure of
    either ends the process with one line (a traceback only for what is not a known refusal)."""

    @functools.wraps(hook)
    async def guarded() -> None:
        try:
            from core.workspace import default_app_dir

            await asyncio.to_thread(check_before_serving, default_app_dir())
            await hook()
        except (StartupRefused, WeaverError) as exc:
            await _stop_process(f"Weaver UI: {exc}")
        except Exception:
            logger.exception("the web server's start-up failed")
            await _stop_process("Weaver UI: start-up failed (the error is above); the server stops")

    return guarded


async def _stop_process(line: str) -> None:
    """Stop what the start-up began (the engine's kernels), print ``line``, and end the process
    before it serves. ``os._exit``: Chainlit catches every exception of the hook and serves anyway."""
    from ui import server

    engine = server.running_engine()
    if engine is not None:
        try:
            await asyncio.to_thread(engine.stop)
        except Exception:  # noqa: BLE001 - the process ends in any case
            logger.exception("stopping the engine after a failed start failed")
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_REFUSED)
