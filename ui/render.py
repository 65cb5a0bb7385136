"""Chainlit output for one round: a ``cl.Step`` per post, the streamed answer, how the round ended.

``ui.view.RoundView`` says *what* to show; this module decides *when* and draws it with Chainlit.
Each step's Markdown is pushed at most every ``throttle_s`` seconds, so a stream of one-character
chunks costs ~10 socket messages a second rather than one per character. ``pump_round`` runs
``send_message`` through ``ui.bridge`` and keeps rendering after the stop button cancelled the
Chainlit task, so the user always sees how the round ended, which it reads from the returned
``Round`` alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import chainlit as cl
from chainlit.utils import utc_now

from core import RoleName, Round, SessionEventHandler, TaskWeaverEvent, WeaverError
from core.events import ApprovalRequested
from core.usage import RoundUsage, round_usage
from ui.bridge import EventPipe, PipeEnd, ThreadJob, run_in_thread
from ui.files import MAX_ATTACHED_TOTAL_BYTES, Attached, select_artifacts
from ui.files_folder import ensure as ensure_files_dir
from ui.markdown import table_markdown
from ui.view import (
    MAX_EVENT_CHARS,
    MAX_LIVE_CHARS,
    USAGE_STEP,
    RoundView,
    safe_markdown,
    usage_markdown,
    usage_summary,
)

logger = logging.getLogger("weaver.ui.render")

THROTTLE_S = 0.1
MAX_ANSWER_TABLES = 5


@dataclass
class RoundOutcome:
    """How a round ended, in the terms the UI needs: a ``Round``'s state, or ``refused``."""

    state: str
    reply_text: str = ""
    error: str | None = None
    usage: RoundUsage | None = None  # the tokens the model servers reported for the round
    round_id: str | None = None  # None: refused before it started


@dataclass
class _StepState:
    step: cl.Step
    sent: bool = False
    dirty: bool = True
    last_flush: float = 0.0
    started: float = field(default_factory=time.monotonic)


def _element_for(artifact: Attached) -> cl.Element:
    """Bytes, never a path: Chainlit would open a path again later, after user code swapped it."""
    if artifact.kind == "image":
        return cl.Image(content=artifact.content, name=artifact.name, display="inline", size="large")
    return cl.File(content=artifact.content, name=artifact.name, display="inline")


class RoundRenderer:
    """Draws a ``RoundView`` with Chainlit; all methods run on the event loop."""

    def __init__(
        self,
        parent_id: str | None,
        execution_cwd: Path,
        author: str,
        throttle_s: float = THROTTLE_S,
        max_event_chars: int = MAX_EVENT_CHARS,
        max_attached_bytes: int = MAX_ATTACHED_TOTAL_BYTES,
        max_table_rows: int = 20,
        max_table_columns: int = 30,
        show_model: bool = False,
        expand_steps: bool = False,
        max_output_chars: int = MAX_LIVE_CHARS,
    ) -> None:
        self.parent_id = parent_id
        self.author = author
        self.throttle_s = throttle_s
        self.max_event_chars = max_event_chars
        self.max_attached_bytes = max_attached_bytes
        self.table_caps = (max_table_rows, max_table_columns)
        # A running cell's output shows its tail, bounded like the result (execution.max_output_chars).
        self.view = RoundView(execution_cwd, show_model=show_model, max_live_chars=max_output_chars)
        self.expand_steps = expand_steps  # answer first: the work is folded away unless asked for
        self.steps: dict[str, _StepState] = {}
        self.usage_step: cl.Step | None = None  # drawn at the end; a re-run removes it with the steps
        self.answer: cl.Message | None = None
        self.answer_last_flush = 0.0
        self.closing_actions: Callable[[], Awaitable[list[cl.Action]]] | None = None  # under the round's last message
        self.outcome: RoundOutcome | None = None  # set as the round ends, before ``closing_actions`` runs
        # Asks the user about code waiting for approval (``ui.approval.ask``), on a task of its own.
        self.on_approval: Callable[[str, ApprovalRequested], Awaitable[None]] | None = None
        self._asking: list[asyncio.Task[None]] = []

    async def apply(self, event: TaskWeaverEvent) -> None:
        """Follow one event; only a new post is shown at once, the rest on flush."""
        if isinstance(event.payload, ApprovalRequested) and event.post_id and self.on_approval is not None:
            self._asking.append(asyncio.ensure_future(self.on_approval(event.post_id, event.payload)))
        change = self.view.apply(event)
        if change is None:
            return
        if change.created:
            self.steps[change.post_id] = self._new_step(self.view.posts[change.post_id].role)
        for post_id in (change.post_id, *change.also):
            if post_id in self.steps:
                self.steps[post_id].dirty = True
        state = self.steps[change.post_id]
        if change.created:
            await self._send(change.post_id)
        if change.ended:
            state.step.end = utc_now()
            post = self.view.posts[change.post_id]
            if post.error:
                state.step.is_error = True
            summary = post.summary()
            if summary and post.role == RoleName.CodeInterpreter:
                summary += f", {time.monotonic() - state.started:.1f} s"
            if summary:  # the folded step's header says what it did
                state.step.name = f"{post.role} · {summary}"
            await self._push(change.post_id, final=True)

    def _new_step(self, role: str) -> _StepState:
        step = cl.Step(
            name=role,
            type="tool" if role == RoleName.CodeInterpreter else "llm",
            parent_id=self.parent_id,
            default_open=self.expand_steps,
            show_input=False,
        )
        step.start = utc_now()
        return _StepState(step)

    def _markdown(self, post_id: str) -> str:
        return self.view.posts[post_id].markdown(self.max_event_chars, *self.table_caps)

    async def _send(self, post_id: str) -> None:
        state = self.steps[post_id]
        if state.sent:
            return
        state.step.output = self._markdown(post_id)
        await state.step.send()
        state.sent = True
        state.last_flush = time.monotonic()

    async def _push(self, post_id: str, final: bool = False) -> None:
        state = self.steps[post_id]
        if not state.sent:
            await self._send(post_id)
            if not final:
                return
        state.step.output = self._markdown(post_id)
        state.dirty = False
        state.last_flush = time.monotonic()
        if final:
            await state.step.update()
        else:
            await state.step.stream_token(state.step.output, is_sequence=True)

    async def flush(self, force: bool = False) -> None:
        """Push every change whose throttle window has passed (all of them when ``force``)."""
        now = time.monotonic()
        for post_id, state in list(self.steps.items()):
            if state.dirty and (force or now - state.last_flush >= self.throttle_s):
                await self._push(post_id, final=self.view.posts[post_id].ended)
        draft = self.view.draft
        if draft.withdrawn:  # the answer post turned out unusable: take its text back
            draft.withdrawn = False
            if self.answer is not None:
                answer, self.answer = self.answer, None
                await answer.remove()
        if draft.pending() and (force or now - self.answer_last_flush >= self.throttle_s):
            if self.answer is None:
                self.answer = cl.Message(content="", author=self.author)
            draft.mark_shown()
            self.answer_last_flush = now
            # The whole text each time: image syntax can only be neutralised on complete text.
            await self.answer.stream_token(safe_markdown(draft.text, self.max_event_chars), is_sequence=True)

    def next_flush_in(self) -> float | None:
        """Seconds until a change held back by the throttle is due; None when none is held."""
        now = time.monotonic()
        due = [state.last_flush + self.throttle_s for state in self.steps.values() if state.dirty]
        if self.view.draft.pending():
            due.append(self.answer_last_flush + self.throttle_s)
        return max(0.0, min(due) - now) if due else None

    async def finish(self, outcome: RoundOutcome) -> None:
        """Close every step and tell the user how the round ended."""
        self.outcome = outcome
        for task in self._asking:  # a question the round no longer waits for
            task.cancel()
        for post_id in self.view.finish_posts():
            state = self.steps.get(post_id)
            if state is not None:
                state.step.end = utc_now()
                state.dirty = True
        await self.flush(force=True)
        if outcome.usage is not None and outcome.usage.reported:
            await self._usage_step(outcome.usage)
        if outcome.state == "refused":
            await cl.ErrorMessage(
                content=safe_markdown(outcome.error or "", self.max_event_chars), author=self.author
            ).send()
            return
        actions = await self.closing_actions() if self.closing_actions is not None else []
        selection = await run_in_thread(
            functools.partial(select_artifacts, max_total_bytes=self.max_attached_bytes),
            list(self.view.artifacts),
            name="weaver-read-artifacts",
        )
        elements = [_element_for(a) for a in selection.shown]
        if elements:
            _ensure_files_dir()
        notes = "".join(f"\n\n_{note}_" for note in selection.notes) + self._tables_markdown()
        if outcome.state == "finished":
            if self.answer is not None:
                self.answer.content += notes  # already made safe as it streamed
                self.answer.elements = elements
                self.answer.actions = actions
                await self.answer.send()
            else:
                content = safe_markdown(outcome.reply_text or "_(no answer)_", self.max_event_chars) + notes
                await cl.Message(content=content, author=self.author, elements=elements, actions=actions).send()
            return
        if self.answer is not None:
            await self.answer.send()
        if outcome.state == "cancelled":
            said = "Round cancelled."
            if self.view.code_interrupted or self.view.code_running:
                said += " The running code was interrupted."
            await cl.Message(
                content=f"{said} You can send a new message.{notes}",
                author=self.author,
                elements=elements,
                actions=actions,
            ).send()
            return
        reason = outcome.error or "the round failed for an unknown reason (see the server log)"
        await cl.ErrorMessage(
            content=safe_markdown(f"The round failed: {reason}", self.max_event_chars), author=self.author
        ).send()
        if elements or notes or actions:
            await cl.Message(
                content=f"Files made before the failure:{notes}", author=self.author, elements=elements, actions=actions
            ).send()

    async def _usage_step(self, usage: RoundUsage) -> None:
        """A small folded step after the round's work: its tokens (and cost) in the header, one line
        per role and model inside."""
        step = cl.Step(
            name=f"{USAGE_STEP} · {usage_summary(usage)}",
            type="undefined",
            parent_id=self.parent_id,
            default_open=False,
            show_input=False,
        )
        step.start = step.end = utc_now()
        step.output = usage_markdown(usage)
        await step.send()
        self.usage_step = step

    def _tables_markdown(self) -> str:
        """The round's tables, shown with the answer (its steps are folded away)."""
        tables = [table_markdown(t, *self.table_caps) for t in self.view.tables()[:MAX_ANSWER_TABLES]]
        return safe_markdown("".join(f"\n\n{t}" for t in tables), self.max_event_chars)  # cells come from user code


def _ensure_files_dir() -> None:
    """Recreate Chainlit's ``.files`` folder if it is gone: any Chainlit server started in the same
    folder deletes it when it shuts down, and Chainlit only creates it at import, so every later
    element would fail to persist."""
    from chainlit.config import FILES_DIRECTORY

    ensure_files_dir(FILES_DIRECTORY)


async def pump_round(
    send: Callable[[SessionEventHandler], Round],
    renderer: RoundRenderer,
    on_cancel: Callable[[], object],
) -> RoundOutcome:
    """Run ``send(handler)`` (a ``send_message`` call) through the bridge and render its events.

    Events come in batches (``EventPipe.batch``); a batch is applied in order, then flushed once.
    A ``CancelledError`` (Chainlit cancels the message task when the user presses stop) calls
    ``on_cancel`` and keeps rendering, so the cancelled round is still closed properly.
    """
    loop = asyncio.get_running_loop()
    pipe = EventPipe(loop)

    def work() -> Round:
        try:
            return send(pipe)
        finally:
            pipe.close()  # after every event of the round, in order

    job = ThreadJob(work, name="weaver-round")
    wake: asyncio.TimerHandle | None = None  # one wake-up, only while the throttle holds a change back
    cancelled = False
    pending: deque[TaskWeaverEvent | PipeEnd] = (
        deque()
    )  # of the current batch; what a stop press interrupted stays here

    def woken() -> None:
        nonlocal wake
        wake = None  # fired: a later hold-back needs a new one
        pipe.wake()

    while True:
        try:
            if not pending:
                pending.extend(await pipe.batch())
            while pending and (event := pending[0]) is not EventPipe.END:
                pending.popleft()
                await renderer.apply(event)
            if pending:  # the end of the round
                break
            await renderer.flush()
            due = renderer.next_flush_in()
            if due is not None and wake is None:
                wake = loop.call_later(due, woken)
        except asyncio.CancelledError:
            if not cancelled:
                cancelled = True
                logger.info("stop pressed: cancelling the round")
                _safe_cancel(on_cancel)  # Session.cancel only sets an event: safe on the loop
        except Exception:
            logger.exception("rendering an event failed; the round goes on")
    if wake is not None:
        wake.cancel()
    outcome = await _outcome(job)
    try:
        await renderer.finish(outcome)
    except (Exception, asyncio.CancelledError):
        logger.exception("rendering the end of the round failed")
    return outcome


def _safe_cancel(on_cancel: Callable[[], object]) -> None:
    """Call ``on_cancel``; a failure is logged, never raised into the pump."""
    try:
        on_cancel()
    except Exception:
        logger.exception("cancel failed")


async def _outcome(job: ThreadJob[Round]) -> RoundOutcome:
    """The returned ``Round``'s ending (waited for even through further stop presses)."""
    while True:
        try:
            rnd = await job.join()
            break
        except asyncio.CancelledError:
            continue  # the worker still runs; the engine was already told to cancel
        except WeaverError as exc:  # refused before it started: bad files, a busy or ended session
            return RoundOutcome("refused", error=str(exc))
        except Exception as exc:
            logger.exception("send_message raised")
            return RoundOutcome("failed", error=f"internal error ({type(exc).__name__}); details are in the server log")
    return RoundOutcome(rnd.state, rnd.reply_text or "", rnd.error, round_usage(rnd), rnd.id)
