"""Session events: what a handler sees, step by step, while a round runs.

An event's data travels as a typed ``payload`` (one frozen dataclass per kind of event that carries
any), read by attribute. ``extra`` is the same data as TaskWeaver's dict, for handlers written
against TaskWeaver (``SessionEventHandlerBase.handle_post(type, msg, extra, ...)``).
"""

from __future__ import annotations

import abc
import json
import logging
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Optional

from core.execution.live_output import OutputPiece, OutputStream
from core.memory import Attachment, AttachmentType, Named, Post, RoundState
from core.usage import RoundUsage

logger = logging.getLogger(__name__)


class EventScope(Named):
    session = "session"
    round = "round"
    post = "post"


class SessionEventType(Named):
    session_start = "session_start"
    session_end = "session_end"
    session_new_round = "session_new_round"


class RoundEventType(Named):
    round_start = "round_start"
    round_end = "round_end"
    round_error = "round_error"
    round_new_post = "round_new_post"  # a post of the round is complete (ended without error): msg is its id


class PostEventType(Named):
    post_start = "post_start"
    post_end = "post_end"
    post_error = "post_error"
    post_status_update = "post_status_update"
    post_send_to_update = "post_send_to_update"
    post_message_update = "post_message_update"
    post_attachment_update = "post_attachment_update"
    # Weaver's own: what the running code printed since the last one (``ExecutionOutput``). Not part
    # of the post (its ``execution_result`` holds the output once the code ended); a preview only.
    post_execution_output = "post_execution_output"
    # Weaver's own: the post's code waits for the user's approval (``ApprovalRequested``); answer
    # with ``Session.approve(post_id, ...)``.
    post_approval_request = "post_approval_request"
    # Weaver's own: the post's kernel start waits in line for a free start slot (``KernelQueued``),
    # sent each time its place changes, and once more with place 0 when its turn comes.
    post_kernel_queue = "post_kernel_queue"


EventType = SessionEventType | RoundEventType | PostEventType


@dataclass(frozen=True)
class RoundStarted:
    """``round_start``: the model that answers this round."""

    model: str

    def as_extra(self) -> dict[str, Any]:
        return {"model": self.model}


@dataclass(frozen=True)
class RoundEnded:
    """``round_end``: how the round ended (``msg`` says the same as text), and the tokens its model
    calls used as the servers reported them."""

    state: RoundState
    usage: RoundUsage | None = None

    def as_extra(self) -> dict[str, Any]:
        return {"state": self.state}  # TaskWeaver's dict; the usage is read from the typed payload


@dataclass(frozen=True)
class PostAdded:
    """``round_new_post``: a post of the round is complete and part of the conversation."""

    post_id: str
    send_from: str
    send_to: str

    def as_extra(self) -> dict[str, Any]:
        return {"post_id": self.post_id, "send_from": self.send_from, "send_to": self.send_to}


@dataclass(frozen=True)
class PostStarted:
    """``post_start``: who writes the post, and with which model (None where no session chose one)."""

    role: str
    model: str | None = None

    def as_extra(self) -> dict[str, Any]:
        return {"role": self.role} if self.model is None else {"role": self.role, "model": self.model}


@dataclass(frozen=True)
class SendToUpdated:
    """``post_send_to_update``: whom the post is addressed to now (it may change while it streams)."""

    role: str

    def as_extra(self) -> dict[str, Any]:
        return {"role": self.role}


@dataclass(frozen=True)
class MessageChunk:
    """``post_message_update``: ``msg`` is a chunk of the post's message, or with ``replace`` the
    whole message instead of what streamed (the complete answer said otherwise)."""

    is_end: bool
    replace: bool = False

    def as_extra(self) -> dict[str, Any]:
        return {"is_end": self.is_end, "replace": True} if self.replace else {"is_end": self.is_end}


@dataclass(frozen=True)
class AttachmentChunk:
    """``post_attachment_update``: a chunk of attachment ``id``; its first chunk creates it.

    Text streams in ``msg``. A structured value (a table, a list of files) is ``data``, whole,
    with a sentence about it in ``msg``; ``attachment_extra`` is the attachment's ``extra``.
    """

    id: str
    type: AttachmentType
    is_end: bool = True
    data: Any = None
    attachment_extra: Any = None
    replace: bool = False  # ``msg`` is the attachment's whole text now (the user edited the code)

    def as_extra(self) -> dict[str, Any]:
        extra = self.attachment_extra
        found = {"type": self.type, "extra": extra, "id": self.id, "is_end": self.is_end, "data": self.data}
        return {**found, "replace": True} if self.replace else found


@dataclass(frozen=True)
class ApprovalRequested:
    """``post_approval_request``: ``code`` waits for the user's Run, Edit or Cancel for ``timeout_s``
    seconds (``code_interpreter.confirmation_timeout``)."""

    code: str
    timeout_s: float

    def as_extra(self) -> dict[str, Any]:
        return {"code": self.code, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class ExecutionOutput:
    """``post_execution_output``: ``msg`` is text the running code printed on ``stream`` since the
    last such event, in order; ``skipped`` characters printed before it were dropped (a burst
    bigger than ``execution.max_output_chars`` between two events keeps its tail)."""

    stream: OutputStream
    skipped: int = 0

    def as_extra(self) -> dict[str, Any]:
        return {"stream": self.stream, "skipped": self.skipped}


@dataclass(frozen=True)
class KernelQueued:
    """``post_kernel_queue``: the kernel this post needs waits for its turn to start
    (``execution.max_concurrent_starts`` start at once, first come, first served). ``position`` 1
    is next; 0 means its turn came and it is starting now (the wait is over)."""

    position: int

    @property
    def ahead(self) -> int:
        """Starts in line before this one."""
        return max(0, self.position - 1)

    @property
    def waiting(self) -> bool:
        return self.position > 0

    def as_extra(self) -> dict[str, Any]:
        return {"position": self.position, "ahead": self.ahead}


EventPayload = (
    RoundStarted
    | RoundEnded
    | PostAdded
    | PostStarted
    | SendToUpdated
    | MessageChunk
    | AttachmentChunk
    | ExecutionOutput
    | ApprovalRequested
    | KernelQueued
)


@dataclass
class TaskWeaverEvent:
    """One step of a round. Read ``payload`` by attribute; ``extra`` is TaskWeaver's dict of it."""

    scope: EventScope
    t: EventType
    round_id: Optional[str]
    post_id: Optional[str]
    msg: str
    payload: EventPayload | None = None

    @property
    def extra(self) -> dict[str, Any] | None:
        """The payload with TaskWeaver's keys (``{"role": ...}``, ``{"is_end": ...}``); a new dict each time."""
        return None if self.payload is None else self.payload.as_extra()

    def __repr__(self) -> str:
        return f"TaskWeaverEvent({self.t.value}, round={self.round_id}, post={self.post_id}, msg={self.msg[:40]!r})"


class SessionEventHandler(abc.ABC):
    """Receives every event of a round, in order, on the thread that runs the round."""

    @abc.abstractmethod
    def handle(self, event: TaskWeaverEvent) -> None: ...


class SessionEventHandlerBase(SessionEventHandler):
    """Dispatches to ``handle_session`` / ``handle_round`` / ``handle_post``; override what you need."""

    def handle(self, event: TaskWeaverEvent) -> None:
        t = event.t
        if isinstance(t, SessionEventType):
            self.handle_session(t, event.msg, event.extra)
        elif isinstance(t, RoundEventType):
            self.handle_round(t, event.msg, event.extra, event.round_id or "")
        else:
            self.handle_post(t, event.msg, event.extra, event.post_id or "", event.round_id or "")

    def handle_session(self, type: SessionEventType, msg: str, extra: Any, **kwargs: Any) -> None:
        pass

    def handle_round(self, type: RoundEventType, msg: str, extra: Any, round_id: str, **kwargs: Any) -> None:
        pass

    def handle_post(
        self, type: PostEventType, msg: str, extra: Any, post_id: str, round_id: str, **kwargs: Any
    ) -> None:
        pass


class EventEmitter:
    """Fans events out to the handlers registered for the current ``send_message`` call.

    A failing handler is logged and skipped: a broken UI must not break the round.
    """

    def __init__(self) -> None:
        self._handlers: list[SessionEventHandler] = []

    def register(self, handler: SessionEventHandler) -> None:
        self._handlers.append(handler)

    def unregister(self, handler: SessionEventHandler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)

    def emit(self, event: TaskWeaverEvent) -> None:
        for handler in list(self._handlers):
            try:
                handler.handle(event)
            except Exception:
                logger.exception("event handler %r failed on %r", handler, event)

    def emit_round(self, t: RoundEventType, round_id: str, msg: str, payload: EventPayload | None = None) -> None:
        self.emit(TaskWeaverEvent(EventScope.round, t, round_id, None, msg, payload))

    @property
    def model_name(self) -> str | None:
        """The model that writes the posts (told in ``post_start``); None where no session chose one."""
        return None

    def model_for(self, role: str) -> str | None:
        """The model that writes ``role``'s posts: ``model_name`` unless that role has its own."""
        return self.model_name

    def post_proxy(self, round_id: str, post: Post) -> "PostEventProxy":
        return PostEventProxy(self, round_id, post)


class PostEventProxy:
    """Builds one post while telling handlers about each change as it happens."""

    def __init__(self, emitter: EventEmitter, round_id: str, post: Post) -> None:
        self.emitter = emitter
        self.round_id = round_id
        self.post = post
        self.failed = False
        self._emit(PostEventType.post_start, "", PostStarted(post.send_from, emitter.model_for(post.send_from)))

    def _emit(self, t: PostEventType, msg: str, payload: EventPayload | None = None) -> None:
        self.emitter.emit(TaskWeaverEvent(EventScope.post, t, self.round_id, self.post.id, msg, payload))

    def update_status(self, status: str) -> None:
        self._emit(PostEventType.post_status_update, status)

    def update_send_to(self, send_to: str) -> None:
        self.post.send_to = send_to
        self._emit(PostEventType.post_send_to_update, "", SendToUpdated(send_to))

    def update_message(self, chunk: str, is_end: bool = False) -> None:
        """Append a chunk of the post's message (streamed); ``is_end`` closes it."""
        self.post.message += chunk
        self._emit(PostEventType.post_message_update, chunk, MessageChunk(is_end))

    def replace_message(self, text: str) -> None:
        """Replace what was streamed (``MessageChunk.replace``): the complete answer said otherwise."""
        self.post.message = text
        self._emit(PostEventType.post_message_update, text, MessageChunk(is_end=True, replace=True))

    def execution_output(self, piece: OutputPiece) -> None:
        """Pass on what the running code printed (``ExecutionOutput``); the post itself is unchanged."""
        self._emit(PostEventType.post_execution_output, piece.text, ExecutionOutput(piece.stream, piece.skipped))

    def update_attachment(
        self,
        chunk: Any,
        type: AttachmentType,
        attachment_id: str | None = None,
        extra: Any = None,
        is_end: bool = True,
    ) -> Attachment:
        """Create an attachment with its first chunk, append later string chunks to it."""
        existing = next((a for a in self.post.attachment_list if a.id == attachment_id), None)
        if existing is None:
            existing = Attachment(type=type, content=chunk, extra=extra)
            if attachment_id:
                existing.id = attachment_id
            self.post.add_attachment(existing)
        elif isinstance(existing.content, str) and isinstance(chunk, str):
            existing.content += chunk
        else:
            existing.content = chunk
        # Text streams as text; a structured value (a table, a file list) travels as ``data``, with
        # a sentence in ``msg`` for handlers that only print.
        if isinstance(chunk, str):
            msg, data = chunk, None
        else:
            msg, data = describe_value(type, chunk), chunk
        payload = AttachmentChunk(existing.id, type, is_end, data=data, attachment_extra=extra)
        self._emit(PostEventType.post_attachment_update, msg, payload)
        return existing

    def replace_attachment(self, attachment: Attachment, text: str) -> None:
        """Replace a text attachment's content (``AttachmentChunk.replace``): the code the user edited."""
        attachment.content = text
        payload = AttachmentChunk(attachment.id, attachment.type, replace=True)
        self._emit(PostEventType.post_attachment_update, text, payload)

    def kernel_queue(self, position: int) -> None:
        """Tell handlers where the post's kernel start is in line (``KernelQueued``; 0: starting)."""
        payload = KernelQueued(position)
        msg = f"waiting for a kernel: {payload.ahead} ahead" if payload.waiting else ""
        self._emit(PostEventType.post_kernel_queue, msg, payload)

    def request_approval(self, code: str, timeout_s: float) -> None:
        """Tell handlers that ``code`` waits for the user's approval (``ApprovalRequested``)."""
        self._emit(PostEventType.post_approval_request, code, ApprovalRequested(code, timeout_s))

    def error(self, msg: str) -> None:
        self.failed = True
        self._emit(PostEventType.post_error, msg)

    def end(self, msg: str = "") -> Post:
        self._emit(PostEventType.post_end, msg)
        post = self.post
        if self.failed:  # cut short: not a post of the conversation (round_error tells why)
            return post
        self.emitter.emit_round(
            RoundEventType.round_new_post,
            self.round_id,
            post.id,
            PostAdded(post.id, post.send_from, post.send_to),
        )
        return post


def describe_value(type: AttachmentType, value: Any) -> str:
    """One human sentence for a structured attachment (what a console prints instead of the data)."""
    if type == AttachmentType.table and isinstance(value, dict):
        rows, columns = (list(value.get("shape") or []) + [0, 0])[:2]
        return f"table: {rows} rows x {columns} columns"
    if type == AttachmentType.artifact_paths and isinstance(value, list):
        names = [str(item.get("name") if isinstance(item, dict) else PurePath(str(item)).name) for item in value]
        return f"{len(names)} file(s): {', '.join(names)}"
    if type == AttachmentType.plugin_selection and isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"  # under the label "plugins offered"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except TypeError:
        return str(value)
