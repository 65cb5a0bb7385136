"""``weaver experience save CHAT_ID`` / ``list`` / ``delete ID``: a chat of the history saved as
experience, and the tips an admin keeps or removes (``core/experience.py`` does the work).

A chat is found as ``weaver export`` finds it: the history's chat names its Weaver session
(``weaver_session_id``), whose ``rounds.jsonl`` holds what was said and run. A session id given
directly (a ``weaver chat`` session, which has no history) works too. Saves and deletes go to the
audit log with ``client`` ``cli``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from core.config import AppConfig, load_config
from core.errors import ConfigError
from core.experience import ExperienceError, ExperienceStore, Tip, check_id, save_experience
from core.llm.factory import create_backend
from core.llm.role_models import RoleModels
from core.resume import load_rounds
from core.workspace import Workspace
from ui.audit import AuditEvent, AuditLog
from ui.chat_export import SESSION_ID, session_of

PREVIEW_CHARS = 100


async def session_of_chat(app_dir: Path, thread_id: str) -> str | None:
    """The Weaver session of chat ``thread_id`` in the history of ``app_dir``'s server, if any."""
    from ui.chat_export import read_thread

    thread = await read_thread(app_dir, thread_id)
    return session_of(thread) if thread is not None else None


def save_session(config: AppConfig, app_dir: Path, session_id: str) -> Tip:
    """Save the stored session ``session_id`` with the experience model (``experience.llm_alias``)."""
    rounds = load_rounds(Workspace(app_dir).session_dir(session_id) / "rounds.jsonl")
    models = RoleModels(config, create_backend(config.llm))
    try:
        return save_experience(config, models.backend_for_role("experience"), session_id, rounds)
    finally:
        models.close()
        models.default.close()


def preview(tip: Tip) -> str:
    line = " ".join(tip.text.split())
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


def _by() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def run_experience(action: str, ident: str | None, app_dir: str | None) -> int:
    """``weaver experience save CHAT_ID | list | delete ID``; 0 on success, 1 with a message otherwise."""
    folder = Path(app_dir or os.environ.get("WEAVER_APP_DIR") or ".weaver").resolve()
    try:
        config = load_config(folder)
    except ConfigError as exc:
        print(f"weaver experience: {exc}", file=sys.stderr)
        return 1
    assert config.session.experience_dir is not None  # placed by load_config
    store = ExperienceStore(config.session.experience_dir)
    audit = AuditLog(folder)
    try:
        if action == "list":
            tips = store.tips()
            for tip in tips:
                kind = "handcrafted" if tip.handcrafted else "chat"
                print(f"{tip.exp_id}\t{kind}\t{preview(tip)}")
            if not tips:
                print(f"no experience tips in {store.folder}")
            return 0
        assert ident is not None
        if action == "delete":
            removed = store.delete(ident)
            if not removed:
                print(f"weaver experience: no tip {ident!r} in {store.folder}", file=sys.stderr)
                return 1
            audit.record(AuditEvent.EXPERIENCE_DELETED, user=_by(), client="cli", tip=ident, by=_by())
            print(f"deleted {', '.join(removed)}")
            return 0
        session_id = asyncio.run(session_of_chat(folder, ident)) if SESSION_ID.match(ident) else None
        if session_id is None and SESSION_ID.match(ident):
            if (Workspace(folder).session_dir(check_id(ident)) / "rounds.jsonl").is_file():
                session_id = ident  # a session id (weaver chat's sessions have no history)
        if session_id is None:
            print(f"weaver experience: no chat {ident!r} in the history of {folder}", file=sys.stderr)
            return 1
        tip = save_session(config, folder, session_id)
        audit.record(AuditEvent.EXPERIENCE_SAVED, user=_by(), client="cli", chat=ident, tip=tip.exp_id)
        print(f"saved {tip.path}\n{tip.text}")
        return 0
    except ExperienceError as exc:
        print(f"weaver experience: {exc}", file=sys.stderr)
        return 1
