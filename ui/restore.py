"""The "your earlier session" step: a resumed chat's variables coming back, with a way not to wait.

``core`` does the restore (``Session.replay_code``: the kernel's snapshot, then the code of later
rounds); this shows it as a step under the user's message, so it stays above the answer once
the round's own steps arrive (a step without a parent was a sibling of the message, drawn after
everything under it), titled with what happened, plus a "Skip restore" button while it runs. The
button calls ``Session.skip_restore``: the restore stops, the chat goes on, and the step says
which variables did not come back. The page would keep that button disabled while the message's
task runs, so the task is ended for the time of the restore (the page is idle meanwhile; a
message sent then waits for the chat's round lock, held by the restore).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

import chainlit as cl
from chainlit.utils import utc_now

from core import Session, WeaverError
from core.resume import RestoreOutcome
from ui.bridge import run_in_thread

SKIP_ACTION = "weaver_skip_restore"
TITLE = "your earlier session"  # Chainlit puts "Using"/"Used" before a step's name
logger = logging.getLogger("weaver.ui.restore")


def skip_action() -> cl.Action:
    return cl.Action(
        name=SKIP_ACTION, payload={}, label="Skip restore", tooltip="Go on now, without the variables not back yet"
    )


def skip(session: Session | None) -> bool:
    """The "Skip restore" button: stop the chat's restore, if one is running."""
    return session is not None and session.skip_restore()


async def restore_session(session: Session, author: str, round_lock: asyncio.Lock) -> None:
    """Bring back a resumed chat's variables, shown as a step with a "Skip restore" button meanwhile;
    ``round_lock``: the chat's, held meanwhile (one round or restore at a time)."""
    async with round_lock:
        await _restore(session, author)


async def _restore(session: Session, author: str) -> None:
    loop = asyncio.get_running_loop()
    parent = cl.context.current_step
    step = cl.Step(
        name=TITLE, type="tool", parent_id=parent.id if parent else None, default_open=True, show_input=False
    )
    step.start = utc_now()  # running: "Using your earlier session"
    step.output = "Bringing back this chat's variables…"
    await step.send()
    offer = cl.Message(
        content="Bringing back this chat's variables; you can go on without waiting.",
        author=author,
        actions=[skip_action()],
    )
    await offer.send()
    # The page disables every button while a message's task runs: the task is ended for the time
    # of the restore, as Chainlit does while it asks the user something, and started again after.
    await cl.context.emitter.task_end()
    chat_context = contextvars.copy_context()  # Chainlit's context of this chat: stream_token needs it

    def progress(done: int, total: int) -> None:
        text = f"Running your earlier code again… step {done} of {total}"
        loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(step.stream_token(text, is_sequence=True)), context=chat_context
        )

    try:
        report = await run_in_thread(session.replay_code, progress, name="weaver-restore")
        step.name = f"{TITLE} · {report.headline()}"
        step.output = report.summary()
        step.is_error = report.outcome in (RestoreOutcome.FAILED, RestoreOutcome.TIMED_OUT)
    except WeaverError as exc:
        step.output, step.is_error = str(exc), True
    except Exception:
        logger.exception("restoring weaver session %s failed", session.session_id)
        step.output, step.is_error = (
            "Your earlier variables could not be restored; the chat goes on without them.",
            True,
        )
    finally:
        await offer.remove()
        await cl.context.emitter.task_start()
    step.end = utc_now()
    await step.update()
