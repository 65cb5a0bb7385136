"""The bridge from engine events (worker thread) to Chainlit steps and messages (event loop).

The engine calls ``handle(event)`` on the thread that runs the round. ``LoopHandler`` only
hands each event to the event loop with ``call_soon_threadsafe``, so the order is kept and no
Chainlit call ever runs off the loop. ``RoundRenderer`` turns the events into one ``cl.Step``
per post (named after its role, nested under the user's turn) whose Markdown is rebuilt from
a small model of the post and pushed at most every ``throttle_s`` seconds, so a stream of
one-character chunks costs ~10 socket messages a second rather than one per character.
The final answer is an ordinary assistant ``cl.Message`` streamed the same way.
``pump_round`` wires the two together and keeps rendering after the stop button cancelled the
Chainlit task, so the user always sees how the round ended.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import chainlit as cl
from chainlit.utils import utc_now

from core import SessionEventHandlerBase, TaskWeaverEvent
from ui.answer import USER, AnswerDraft, event_value, is_cancel_error
from ui.files import Artifact, parse_artifacts, select_artifacts
from ui.markdown import clip_text, fence, neutralise_images, table_markdown

logger = logging.getLogger("weaver.ui.render")

THROTTLE_S = 0.1
MAX_EVENT_CHARS = 100_000  # the default of WEAVER_UI_MAX_EVENT_CHARS
EXECUTING_STATUS = "executing code"  # the status core gives a post while its code runs
# Plain symbols from common text fonts: emoji would show as boxes where no emoji font is installed.
STATUS_ICONS = {"success": "✓", "failure": "✗", "timeout": "✗", "cancelled": "■"}
HIDDEN_ATTACHMENTS = frozenset({"artifact_paths", "reply_type", "init_plan", "stop", "llm_usage", "session_variables"})
LABELS = {
    "verification": "Verification",
    "code_error": "Code error",
    "revise_message": "Revision",
    "invalid_response": "Invalid response",
}


class LoopHandler(SessionEventHandlerBase):
    """Runs on the engine's worker thread: forwards every event, in order, to the loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._queue = queue

    def handle(self, event: TaskWeaverEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closing (server shutdown): nobody is left to render
            logger.debug("dropping %r: event loop closed", event)


@dataclass
class _Attachment:
    type: str
    text: str = ""
    done: bool = False


@dataclass
class _PostView:
    """What we know about one post; ``markdown()`` is the step's whole output."""

    role: str
    step: cl.Step
    send_to: str | None = None
    message: str = ""
    status: str = ""
    error: str = ""
    cancelled: str = ""  # the error core reported when a cancel stopped this post
    is_answer: bool = False
    attachments: dict[str, _Attachment] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    ended: bool = False
    sent: bool = False
    dirty: bool = True
    last_flush: float = 0.0
    max_chars: int = MAX_EVENT_CHARS

    def markdown(self) -> str:
        """The step's Markdown; model-written image syntax is neutralised (see ``neutralise_images``)."""
        parts: list[str] = []
        for att in self.attachments.values():
            part = _attachment_markdown(att)
            if part:
                parts.append(part)
        if self.artifacts:
            names = ", ".join(f"`{a.name}` ({a.kind})" for a in self.artifacts)
            parts.append(f"**Artifacts:** {names} - shown with the answer")
        shows_result = any(a.type == "execution_result" for a in self.attachments.values())
        if self.message and not (shows_result and self.send_to != USER):  # the result is shown already
            if self.send_to == USER and self.is_answer:
                parts.append(f"**→ {USER}:** _(the answer below)_")
            else:
                parts.append(f"**→ {self.send_to or '…'}:** {self.message}")
        if self.error:
            parts.append(f"**Error:** {self.error}")
        elif self.cancelled:
            parts.append(f"{STATUS_ICONS['cancelled']} cancelled")
        if not self.ended:
            # Bold with asterisks: underscores stay literal when the streaming cursor follows them.
            parts.append(f"**Working:** {self.status or 'starting'}…")
        return safe_markdown("\n\n".join(parts), self.max_chars)


def safe_markdown(text: str, max_chars: int) -> str:
    """What may be sent to the browser: bounded in size, with no image that loads by itself."""
    return neutralise_images(clip_text(text, max_chars))


def _attachment_markdown(att: _Attachment) -> str:
    text = att.text
    if att.type == "plan":
        return f"**Plan**\n\n{text.strip()}" if text.strip() else ""
    if att.type == "current_plan_step":
        return f"**Current step:** {text.strip()}" if text.strip() else ""
    if att.type in ("thought", "plan_reasoning"):
        lines = text.strip().splitlines()
        return "\n".join(f"> {line}" for line in lines) if lines else ""
    if att.type == "reply_content":
        return fence(text, "python") if text else ""
    if att.type == "execution_status":
        status = text.strip()
        return f"**Execution:** {STATUS_ICONS.get(status, '')} {status}".replace("  ", " ") if status else ""
    if att.type == "execution_result":
        return f"**Output**\n\n{fence(text, 'text')}" if text.strip() else ""
    if att.type == "table":
        return table_markdown(text) if att.done else ""
    if att.type in HIDDEN_ATTACHMENTS:
        return ""
    label = LABELS.get(att.type, att.type.replace("_", " ").capitalize())
    return f"**{label}:** {text.strip()}" if text.strip() else ""


def _element_for(artifact: Artifact) -> cl.Element:
    if artifact.kind == "image":
        return cl.Image(path=str(artifact.path), name=artifact.name, display="inline", size="large")
    return cl.File(path=str(artifact.path), name=artifact.name, display="inline")


class RoundRenderer:
    """Builds the UI of one round from its events; all methods run on the event loop."""

    def __init__(
        self,
        parent_id: str | None,
        execution_cwd: Path,
        author: str,
        throttle_s: float = THROTTLE_S,
        max_event_chars: int = MAX_EVENT_CHARS,
    ) -> None:
        self.parent_id = parent_id
        self.max_event_chars = max_event_chars
        self.execution_cwd = Path(execution_cwd)
        self.author = author
        self.throttle_s = throttle_s
        self.posts: dict[str, _PostView] = {}
        self.answer: cl.Message | None = None
        self.draft = AnswerDraft()
        self.answer_last_flush = 0.0
        self.code_running = False
        self.code_interrupted = False
        self.round_error: str | None = None
        self.round_state: str | None = None
        self.artifacts: list[Artifact] = []

    async def apply(self, event: TaskWeaverEvent) -> None:
        """Update the model with one event; only a new post is shown at once, the rest on flush."""
        t = event_value(event.t)
        extra = event.extra if isinstance(event.extra, dict) else {}
        if t == "round_error":
            self.round_error = event.msg or self.round_error
            return
        if t == "round_end":
            self.round_state = str(extra.get("state") or "") or None
            return
        if not t.startswith("post_") or not event.post_id:
            return
        view = self.posts.get(event.post_id)
        if view is None:
            view = self._new_view(event.post_id, str(extra.get("role") or "Weaver"))
            await self._send(view)
        view.dirty = True
        previous_answer = self.draft.post_id
        self.draft.apply(event)
        if self.draft.post_id != previous_answer:
            for post_id in (previous_answer, self.draft.post_id):
                if post_id in self.posts:
                    self.posts[post_id].is_answer = post_id == self.draft.post_id
                    self.posts[post_id].dirty = True
        if t == "post_send_to_update":
            view.send_to = str(extra.get("role") or "") or None
        elif t == "post_status_update":
            view.status = event.msg
            self.code_running = event.msg == EXECUTING_STATUS
        elif t == "post_message_update":
            view.message = event.msg if extra.get("replace") else view.message + event.msg
        elif t == "post_attachment_update":
            self._attachment(view, event.msg, extra)
        elif t == "post_error":
            if is_cancel_error(event.msg):
                view.cancelled = event.msg  # a cancel is not shown as a failure; ``finish`` decides
            else:
                view.error = event.msg
                view.step.is_error = True
        elif t == "post_end":
            view.ended = True
            view.step.end = utc_now()
            await self._push(view, final=True)

    def _new_view(self, post_id: str, role: str) -> _PostView:
        step = cl.Step(
            name=role,
            type="tool" if role == "CodeInterpreter" else "llm",
            parent_id=self.parent_id,
            default_open=True,
            show_input=False,
        )
        step.start = utc_now()
        view = _PostView(role=role, step=step, max_chars=self.max_event_chars)
        self.posts[post_id] = view
        return view

    def _attachment(self, view: _PostView, chunk: str, extra: dict[str, Any]) -> None:
        att_id = str(extra.get("id") or f"{event_value(extra.get('type'))}-{len(view.attachments)}")
        att = view.attachments.get(att_id)
        if att is None:
            att = _Attachment(type=event_value(extra.get("type") or "text"))
            view.attachments[att_id] = att
        att.text += chunk or ""
        if extra.get("is_end", True) and not att.done:
            att.done = True
            if att.type == "execution_status":
                self.code_running = False
                self.code_interrupted = self.code_interrupted or att.text.strip() == "cancelled"
            if att.type == "artifact_paths":
                # Shown once, with the answer: each element is a copy in Chainlit's file store.
                artifacts = parse_artifacts(att.text, self.execution_cwd)
                view.artifacts.extend(artifacts)
                self.artifacts.extend(artifacts)

    async def _send(self, view: _PostView) -> None:
        if view.sent:
            return
        view.step.output = view.markdown()
        await view.step.send()
        view.sent = True
        view.last_flush = time.monotonic()

    async def _push(self, view: _PostView, final: bool = False) -> None:
        if not view.sent:
            await self._send(view)
            if not final:
                return
        view.step.output = view.markdown()
        view.dirty = False
        view.last_flush = time.monotonic()
        if final:
            await view.step.update()
        else:
            await view.step.stream_token(view.step.output, is_sequence=True)

    async def flush(self, force: bool = False) -> None:
        """Push every change whose throttle window has passed (all of them when ``force``)."""
        now = time.monotonic()
        for view in list(self.posts.values()):
            if view.dirty and (force or now - view.last_flush >= self.throttle_s):
                await self._push(view, final=view.ended)
        if self.draft.withdrawn:  # the answer post turned out unusable: take its text back
            self.draft.withdrawn = False
            if self.answer is not None:
                answer, self.answer = self.answer, None
                await answer.remove()
        if self.draft.pending() and (force or now - self.answer_last_flush >= self.throttle_s):
            if self.answer is None:
                self.answer = cl.Message(content="", author=self.author)
            self.draft.mark_shown()
            self.answer_last_flush = now
            # The whole text each time: image syntax can only be neutralised on complete text.
            await self.answer.stream_token(safe_markdown(self.draft.text, self.max_event_chars), is_sequence=True)

    async def finish(self, state: str, reply_text: str, error: str | None) -> None:
        """Close every step and tell the user how the round ended."""
        for view in self.posts.values():
            if view.cancelled and state != "cancelled":  # not a cancel after all: show it as the error it is
                view.error, view.cancelled = view.cancelled, ""
                view.step.is_error = view.dirty = True
            if not view.ended:
                view.ended = True
                view.step.end = utc_now()
                view.dirty = True
        await self.flush(force=True)
        selection = select_artifacts(self.artifacts)
        elements = [_element_for(a) for a in selection.shown]
        if elements:
            _ensure_files_dir()
        notes = "".join(f"\n\n_{note}_" for note in selection.notes)
        if state == "finished":
            if self.answer is not None:
                self.answer.content += notes  # already made safe as it streamed
                self.answer.elements = elements
                await self.answer.send()
            else:
                content = safe_markdown(reply_text or "_(no answer)_", self.max_event_chars) + notes
                await cl.Message(content=content, author=self.author, elements=elements).send()
            return
        if self.answer is not None:
            await self.answer.send()
        if state == "cancelled":
            said = "Round cancelled."
            if self.code_interrupted or self.code_running:
                said += " The running code was interrupted."
            await cl.Message(
                content=f"{said} You can send a new message.{notes}", author=self.author, elements=elements
            ).send()
            return
        reason = self.round_error or error or "the round failed for an unknown reason (see the server log)"
        await cl.ErrorMessage(content=safe_markdown(f"The round failed: {reason}", self.max_event_chars), author=self.author).send()
        if elements or notes:
            await cl.Message(
                content=f"Files made before the failure:{notes}", author=self.author, elements=elements
            ).send()


def _ensure_files_dir() -> None:
    """Recreate Chainlit's ``.files`` folder if it is gone: any Chainlit server started in the same
    folder deletes it when it shuts down, and Chainlit only creates it at import, so every later
    element would fail to persist."""
    from chainlit.config import FILES_DIRECTORY

    FILES_DIRECTORY.mkdir(parents=True, exist_ok=True)


_DONE = object()
_TICK = object()


@dataclass
class RoundOutcome:
    """How a round ended, in the terms the UI needs."""

    state: str
    reply_text: str
    error: str | None


async def pump_round(
    run: Callable[[LoopHandler], Any],
    renderer: RoundRenderer,
    on_cancel: Callable[[], None],
) -> RoundOutcome:
    """Run ``run(handler)`` in a worker thread and render its events until it returns.

    A ``CancelledError`` (Chainlit cancels the message task when the user presses stop) calls
    ``on_cancel`` and keeps rendering, so the cancelled round is still closed properly.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    handler = LoopHandler(loop, queue)

    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        queue.put_nowait(_DONE)

    def work() -> None:
        # A thread per round, not the default executor: its few workers would queue users behind each other.
        result: Any = None
        error: BaseException | None = None
        try:
            result = run(handler)
        except BaseException as exc:  # handed to the loop, which decides what the user sees
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            logger.debug("round finished after the event loop closed")

    threading.Thread(target=work, name="weaver-round", daemon=True).start()
    ticker = asyncio.ensure_future(_tick(queue, renderer.throttle_s))
    cancelled = False
    try:
        while True:
            try:
                item = await queue.get()
                if item is _DONE:
                    break
                if item is not _TICK:
                    await renderer.apply(item)
                await renderer.flush()
            except asyncio.CancelledError:
                if not cancelled:
                    cancelled = True
                    logger.info("stop pressed: cancelling the round")
                    _safe_cancel(on_cancel)  # Session.cancel only sets an event: safe on the loop
            except Exception:
                logger.exception("rendering an event failed; the round goes on")
    finally:
        ticker.cancel()
    outcome = await _outcome(future, renderer, cancelled)
    try:
        await renderer.finish(outcome.state, outcome.reply_text, outcome.error)
    except (Exception, asyncio.CancelledError):
        logger.exception("rendering the end of the round failed")
    return outcome


def _safe_cancel(on_cancel: Callable[[], None]) -> None:
    """Call ``on_cancel``; a failure is logged, never raised into the pump."""
    try:
        on_cancel()
    except Exception:
        logger.exception("cancel failed")


async def _outcome(future: asyncio.Future[Any], renderer: RoundRenderer, cancelled: bool) -> RoundOutcome:
    """Wait for ``send_message`` to return, even through further stop presses."""
    while True:
        try:
            rnd = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            continue  # the worker still runs; the engine was already told to cancel
        except (ValueError, RuntimeError) as exc:  # a bad file entry, or the session refused the round
            return RoundOutcome("failed", "", str(exc))
        except Exception as exc:
            logger.exception("send_message raised")
            return RoundOutcome("failed", "", f"internal error ({type(exc).__name__}); details are in the server log")
    state = str(getattr(rnd, "state", "") or renderer.round_state or ("cancelled" if cancelled else "failed"))
    return RoundOutcome(state, str(getattr(rnd, "reply_text", "") or ""), getattr(rnd, "error", None))


async def _tick(queue: asyncio.Queue[Any], every: float) -> None:
    """Wake the pump regularly so throttled changes are pushed even when no event arrives."""
    while True:
        await asyncio.sleep(every)
        queue.put_nowait(_TICK)

