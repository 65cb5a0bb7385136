"""The chat's own buttons beside "Files (N)": Export (a notebook or Markdown), Save as experience
(the chat summarised into a tip, ``core/experience.py``) and, when ``WEAVER_UI_SHARING`` is on,
Share / Stop sharing.

Each button is checked on the server: the chat must be the caller's (its history row's author),
whatever the page sends. Export answers with two download links (``ui.sharing``'s owner-only
``/weaver/export`` route); Share makes or shows the chat's read-only link and Stop sharing
revokes it, each an audit line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import chainlit as cl
from chainlit.config import config as chainlit_config

from core.experience import ExperienceError
from core.export import ExportFormat
from ui import audit
from ui.bridge import run_in_thread
from ui.chat_export import session_of
from ui.guards import client_address
from ui.history.layer import WeaverDataLayer
from ui.sharing import MENU_NOTE, export_path, share_path, sharing_enabled

if TYPE_CHECKING:
    from core.app import TaskWeaverApp

logger = logging.getLogger("weaver.ui.chat_menu")

EXPORT_ACTION = "weaver_export"
SHARE_ACTION = "weaver_share"
UNSHARE_ACTION = "weaver_unshare"
EXPERIENCE_ACTION = "weaver_save_experience"


def menu_actions() -> list[cl.Action]:
    """The buttons to show under an answer."""
    actions = [
        cl.Action(name=EXPORT_ACTION, payload={}, label="Export", tooltip="Download this chat as a notebook"),
        cl.Action(name=EXPERIENCE_ACTION, payload={}, label="Save as experience", tooltip="Learn a tip from this chat"),
    ]
    if sharing_enabled():
        actions.append(
            cl.Action(name=SHARE_ACTION, payload={}, label="Share", tooltip="A read-only link for signed-in users")
        )
    return actions


def _caller() -> str:
    return str(getattr(cl.user_session.get("user"), "identifier", "") or "")


async def _own_chat(layer: WeaverDataLayer | None, doing: str = "export or share") -> str | None:
    """This socket's chat id when the caller owns it; None (and a note) otherwise."""
    thread_id = str(getattr(cl.context.session, "thread_id", "") or "")
    caller = _caller()
    if layer is None or not thread_id or not caller:
        await _say(f"This chat is not saved yet, so you cannot {doing} it.")
        return None
    await layer.flush_writes()
    if await layer.get_thread_author(thread_id) != caller:
        logger.warning("%r asked to %s chat %s, which is not theirs", caller, doing, thread_id)
        await _say(f"Only the owner of this chat can {doing} it.")
        return None
    return thread_id


async def _say(text: str, actions: list[cl.Action] | None = None) -> None:
    """A note for the chat's owner (links to download or share it): marked, so that a reader of the
    shared chat is not shown the owner's own links."""
    await cl.Message(
        content=text, author=chainlit_config.ui.name, actions=actions or [], metadata={MENU_NOTE: True}
    ).send()


def _client() -> str:
    """The browser's address, for the audit line (behind a trusted proxy, the one it names)."""
    return client_address(getattr(cl.context.session, "environ", None))


def _root() -> str:
    return chainlit_config.run.root_path or ""


async def export_links(layer: WeaverDataLayer | None) -> None:
    thread_id = await _own_chat(layer)
    if thread_id is None:
        return
    thread = await layer.get_thread(thread_id) if layer is not None else None
    title = str(thread.get("name") or "chat") if thread is not None else "chat"
    notebook, markdown = (export_path(thread_id, title, fmt, _root()) for fmt in (ExportFormat.ipynb, ExportFormat.md))
    await _say(f"Download this chat: [Jupyter notebook (.ipynb)]({notebook}) · [Markdown (.md)]({markdown})")


async def share(layer: WeaverDataLayer | None) -> None:
    if not sharing_enabled():
        await _say("Sharing is turned off on this server.")
        return
    thread_id = await _own_chat(layer)
    if thread_id is None or layer is None:
        return
    link = await layer.create_share(thread_id, _caller())
    audit.record(audit.AuditEvent.CHAT_SHARED, user=_caller(), client=_client(), chat=thread_id, link=link.token[:6])
    path = share_path(link.token, _root())
    stop = cl.Action(name=UNSHARE_ACTION, payload={}, label="Stop sharing", tooltip="The link stops working at once")
    await _say(
        f"Read-only link to this chat, for anyone signed in here: [{path}]({path})\n\n"
        "They see the messages, steps and files shown in the chat; never your kernel, nor other files.",
        [stop],
    )


async def unshare(layer: WeaverDataLayer | None) -> None:
    thread_id = await _own_chat(layer)
    if thread_id is None or layer is None:
        return
    revoked = await layer.revoke_shares(thread_id)
    audit.record(audit.AuditEvent.CHAT_UNSHARED, user=_caller(), client=_client(), chat=thread_id, links=len(revoked))
    await _say(
        "This chat is no longer shared: its link now answers that it was revoked."
        if revoked
        else "This chat had no live link."
    )


async def save_experience(layer: WeaverDataLayer | None, engine: Callable[[], TaskWeaverApp]) -> None:
    """Save this chat as experience: the session its history row names (never one the page names),
    summarised by the experience model off the event loop; an audit line."""
    thread_id = await _own_chat(layer, "save as experience")
    if thread_id is None or layer is None:
        return
    thread = await layer.get_thread(thread_id)
    session_id = session_of(thread) if thread is not None else None
    if session_id is None:
        await _say("This chat has no finished round yet, so there is nothing to learn from.")
        return
    try:
        tip = await run_in_thread(lambda: engine().save_experience(session_id), name="weaver-save-experience")
    except ExperienceError as exc:
        await _say(f"This chat was not saved as experience: {exc}.")
        return
    audit.record(audit.AuditEvent.EXPERIENCE_SAVED, user=_caller(), client=_client(), chat=thread_id, tip=tip.exp_id)
    await _say(f"Saved as experience (tip `{tip.exp_id}`). Chats that turn on `use_experience` can now use it.")
