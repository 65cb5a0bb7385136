"""Code approval in the chat: Run / Edit / Cancel under code that waits (``core.approval``).

The engine emits ``post_approval_request`` and waits on its own thread; here a task of its own asks
the user (Chainlit's ``AskActionMessage``; for Edit an ``AskUserMessage``: the reply is the cell
to run, fenced or not) and answers with ``Session.approve``. Chainlit's asks cannot prefill the
composer and a custom element would need script the page's CSP refuses, so the code is shown in a
fenced block (with Chainlit's copy button) for the user to copy and change. The round's end (also
by Stop or the engine's timeout) cancels a question still open, and removes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import chainlit as cl

from core import Session
from core.approval import Decision, edited_code
from core.events import ApprovalRequested
from core.text import fence

logger = logging.getLogger("weaver.ui.approval")

SETTING = "code_approval"  # the chat settings switch (the user's choice, for all their chats)


CHOSEN = {
    Decision.RUN.value: "You approved this code:",
    Decision.EDIT.value: "You chose to edit this code:",
    Decision.CANCEL.value: "You cancelled this code:",
}


def _buttons(post_id: str) -> list[cl.Action]:
    return [
        cl.Action(name="weaver_approve", payload={"post": post_id, "decision": d.value}, label=label, tooltip=tip)
        for d, label, tip in (
            (Decision.RUN, "Run", "Run the code as it is"),
            (Decision.EDIT, "Edit", "Send changed code to run instead"),
            (Decision.CANCEL, "Cancel", "Run nothing; the round ends"),
        )
    ]


async def ask(session: Session, post_id: str, request: ApprovalRequested, author: str) -> None:
    """Ask the user about one cell and hand the answer to the engine (a late one is ignored there)."""
    deadline = time.monotonic() + request.timeout_s
    question = cl.AskActionMessage(
        content=f"This code waits for your approval before it runs:\n\n{fence(request.code, 'python')}",
        actions=_buttons(post_id),
        author=author,
        timeout=max(1, int(request.timeout_s)),
        raise_on_timeout=False,
    )
    edit: cl.AskUserMessage | None = None
    try:
        answer: Any = await question.send()
        payload = answer.get("payload") if isinstance(answer, dict) else None
        choice = payload.get("decision") if isinstance(payload, dict) else None
        if choice in CHOSEN:  # Chainlit put "Selected: ..." in place of the question: keep the code shown
            question.content = f"{CHOSEN[choice]}\n\n{fence(request.code, 'python')}"
            await question.update()
        if choice == Decision.RUN.value:
            session.approve(post_id, Decision.RUN)
        elif choice == Decision.CANCEL.value:
            session.approve(post_id, Decision.CANCEL)
        elif choice == Decision.EDIT.value:
            left = deadline - time.monotonic()
            if left < 1:
                return
            edit = cl.AskUserMessage(
                content="Send the code to run instead (copy the cell above and change it; a ```python fence is "
                "optional). It still meets the app's code rules.",
                author=author,
                timeout=int(left),
                raise_on_timeout=False,
            )
            reply: Any = await edit.send()
            text = reply.get("output") if isinstance(reply, dict) else None
            if isinstance(text, str) and text.strip():
                try:
                    session.approve(post_id, Decision.EDIT, edited_code(text))
                except ValueError as exc:  # too long
                    await cl.ErrorMessage(content=str(exc), author=author).send()
    except asyncio.CancelledError:  # the round ended first (Stop, the engine's timeout): the question goes
        for message in (question, edit):
            if message is not None:
                try:
                    await message.remove()
                except Exception:  # noqa: BLE001
                    logger.debug("removing an approval question failed", exc_info=True)
        raise
