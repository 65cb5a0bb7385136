"""Edit and Regenerate in the chat: which Chainlit messages each round drew, and removing a
replaced round's from the page and the history before ``Session.rerun`` runs it again.

The engine does the re-run (``core.session.Session.rerun``: a fresh kernel at the state before the
round); here is only what the page shows. Each round's user message and drawn steps are kept in
the chat's ``user_session`` (``ROUNDS``), so an edit of a message maps to its round; a message this
server did not see run (a chat reopened after a restart) cannot be mapped and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import chainlit as cl
from chainlit.chat_context import chat_context

logger = logging.getLogger("weaver.ui.rerun")

ACTION = "weaver_regenerate"
ROUNDS = "weaver_rounds"  # user_session key: list[DrawnRound], in order
_handler: Callable[[str, str], Awaitable[None]] | None = None


@dataclass
class DrawnRound:
    """One round as the page shows it: the user's message, and the steps drawn under it."""

    round_id: str
    message_id: str
    steps: list[Any] = field(default_factory=list)  # cl.Step
    action: cl.Action | None = None  # its Regenerate button, removed once a later round has one


def on_edit(handler: Callable[[str, str], Awaitable[None]]) -> Callable[[str, str], Awaitable[None]]:
    """Register the chat's edit handler (``ui.app``); the ``edit_message`` patch calls ``dispatch``."""
    global _handler
    _handler = handler
    return handler


async def dispatch(message_id: str, text: str) -> None:
    if _handler is not None:
        await _handler(message_id, text)


def regenerate_action(round_id: str) -> cl.Action:
    return cl.Action(
        name=ACTION, payload={"round": round_id}, label="Regenerate", tooltip="Run this answer again", icon="refresh-cw"
    )


def drawn() -> list[DrawnRound]:
    rounds = cl.user_session.get(ROUNDS)
    if rounds is None:
        rounds = []
        cl.user_session.set(ROUNDS, rounds)
    return rounds  # type: ignore[no-any-return]


async def remember(entry: DrawnRound) -> None:
    """A round was drawn; the previous Regenerate button goes (only the last answer has one)."""
    rounds = drawn()
    for earlier in rounds:
        if earlier.action is not None:
            try:
                await earlier.action.remove()
            except Exception:  # noqa: BLE001 - a button already gone
                logger.debug("removing an old Regenerate button failed", exc_info=True)
            earlier.action = None
    rounds.append(entry)


def find(message_id: str | None) -> int | None:
    """The index of the round of that user message (None: the last round), or None if unknown."""
    rounds = drawn()
    if message_id is None:
        return len(rounds) - 1 if rounds else None
    return next((i for i, r in enumerate(rounds) if r.message_id == message_id), None)


async def erase_from(index: int) -> None:
    """Remove what the rounds from ``index`` on drew after their user message: their steps and every
    message after the first one's user message (later user messages too), from the page and the history."""
    rounds = drawn()
    first = rounds[index]
    for entry in rounds[index:]:
        for step in entry.steps:
            try:
                await step.remove()
            except Exception:  # noqa: BLE001
                logger.debug("removing a step failed", exc_info=True)
    after = False
    for message in chat_context.get():
        if after:
            await message.remove()
        elif message.id == first.message_id:
            after = True
    del rounds[index:]
