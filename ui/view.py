"""What the browser should show for one round, followed from the engine's events (no Chainlit here).

``RoundView.apply`` takes core's ``TaskWeaverEvent``s as they come and keeps one ``PostView`` per
post plus the answer draft; ``PostView.markdown`` is a step's whole, safe, bounded Markdown.
``ui.render`` decides when to draw it. Everything is read from types: event and attachment types,
``RoleName``, ``PostStatus``, ``ExecutionStatus`` and the events' typed payloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import (
    AttachmentChunk,
    AttachmentType,
    ExecutionOutput,
    ExecutionStatus,
    KernelQueued,
    MessageChunk,
    PostEventType,
    PostStarted,
    PostStatus,
    RoleName,
    SendToUpdated,
    TaskWeaverEvent,
)
from core.config import AppConfig
from core.usage import RoundUsage
from ui.answer import AnswerDraft
from ui.files import Artifact, artifacts_inside
from ui.markdown import clip_text, code_text, fence, neutralise_images, table_markdown

MAX_EVENT_CHARS = 100_000  # the default of WEAVER_UI_MAX_EVENT_CHARS
MAX_LIVE_CHARS = 1500  # the default of execution.max_output_chars: a running cell's output shows its tail
# Plain symbols from common text fonts: emoji would show as boxes where no emoji font is installed.
STATUS_ICONS = {
    ExecutionStatus.success: "✓",
    ExecutionStatus.failure: "✗",
    ExecutionStatus.timeout: "✗",
    ExecutionStatus.cancelled: "■",
}
HIDDEN = frozenset(
    {
        AttachmentType.artifact_paths,  # shown once, with the answer
        AttachmentType.reply_type,
        AttachmentType.init_plan,
        AttachmentType.stop,
        AttachmentType.llm_usage,
    }
)


def safe_markdown(text: str, max_chars: int) -> str:
    """What may be sent to the browser: bounded in size, with no image that loads by itself."""
    return neutralise_images(clip_text(text, max_chars))


USAGE_STEP = "Usage"
_ROLE_NAMES = {"planner": RoleName.Planner, "code_interpreter": RoleName.CodeInterpreter}


def model_picker_note(config: AppConfig) -> str | None:
    """What the chat settings' model picker changes, where a role has a model of its own
    (``<role>.llm_alias``): the picker changes only the roles without one."""
    own = [role for role in _ROLE_NAMES if config.llm_alias_of(role)]
    if not own:
        return None
    free = [str(_ROLE_NAMES[role]) for role in _ROLE_NAMES if role not in own]
    kept = " and ".join(f"{_ROLE_NAMES[role]} ({config.llm_alias_of(role)})" for role in own)
    verb = "keeps its own model" if len(own) == 1 else "keep their own models"
    if not free:
        return f"Changes no role here: the {kept} {verb}."
    return f"Changes the {' and '.join(free)}; the {kept} {verb}."


def _money(cost: float) -> str:
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def usage_summary(usage: RoundUsage) -> str:
    """The round's tokens in one line: "1,234 tokens in · 210 out · $0.0040" (the cost only where
    the models have prices)."""
    line = f"{usage.prompt_tokens:,} tokens in · {usage.completion_tokens:,} out"
    cost = usage.cost
    return line if cost is None else f"{line} · {_money(cost)}"


def usage_markdown(usage: RoundUsage) -> str:
    """One line per role and model, for the inside of the round's usage step."""
    rows = []
    for line in usage.lines:
        calls = f"{line.calls} call{'s' if line.calls != 1 else ''}"
        cost = "" if line.cost is None else f" · {_money(line.cost)}"
        rows.append(
            f"- {line.role or 'Weaver'} · `{code_text(line.model or '?')}` · {calls} · "
            f"{line.prompt_tokens:,} in · {line.completion_tokens:,} out{cost}"
        )
    return safe_markdown("\n".join(rows), MAX_EVENT_CHARS)


@dataclass
class AttachmentView:
    type: AttachmentType
    text: str = ""
    data: Any = None
    done: bool = False

    def markdown(self, max_table_rows: int, max_table_columns: int) -> str:
        text = self.text.strip()
        kind = self.type
        if kind in HIDDEN:
            return ""
        label = kind.label.capitalize()
        if kind == AttachmentType.plan:
            return f"**{label}**\n\n{text}" if text else ""
        if kind == AttachmentType.current_plan_step:
            return f"**{label}:** {text}" if text else ""
        if kind in (AttachmentType.thought, AttachmentType.plan_reasoning):
            return "\n".join(f"> {line}" for line in text.splitlines())
        if kind == AttachmentType.reply_content:
            return fence(self.text, "python") if self.text else ""
        if kind == AttachmentType.execution_status:
            icon = STATUS_ICONS.get(text, "")  # type: ignore[call-overload]  # str enums look up by value
            return f"**{label}:** {icon} {text}".replace("  ", " ") if text else ""
        if kind == AttachmentType.execution_result:
            return f"**{label}**\n\n{fence(self.text, 'text')}" if text else ""
        if kind == AttachmentType.plugin_selection and isinstance(self.data, list):
            return f"**{label}:** " + (", ".join(f"`{code_text(str(name))}`" for name in self.data) or "none")
        if kind == AttachmentType.table:
            return table_markdown(self.data, max_table_rows, max_table_columns) if self.done and self.data else ""
        return f"**{label}:** {text}" if text else ""


@dataclass
class PostView:
    """What we know about one post; ``markdown()`` is its step's whole output."""

    role: str
    model: str | None = None  # the model that wrote this post, when the chat can choose one
    send_to: str | None = None
    message: str = ""
    status: str = ""
    error: str = ""
    is_answer: bool = False
    attachments: dict[str, AttachmentView] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    ended: bool = False
    live: "LiveText | None" = None  # what the running code printed so far, until its result comes
    queued: int = 0  # the place in line of this post's kernel start (1: next); 0: not waiting

    def summary(self) -> str:
        """One line for the collapsed step: what this post did ("plan of 2 steps", "ran 4 lines")."""
        if self.error:
            return "error"
        by_type = {a.type: a for a in self.attachments.values()}
        status = by_type.get(AttachmentType.execution_status)
        code = by_type.get(AttachmentType.reply_content)
        if status is not None and code is not None:
            lines = len([line for line in code.text.splitlines() if line.strip()])
            return f"ran {lines} line{'s' if lines != 1 else ''}, {status.text.strip() or 'no status'}"
        parts = []
        plan = by_type.get(AttachmentType.plan)
        if plan is not None and plan.text.strip():
            steps = len([line for line in plan.text.splitlines() if line.strip()])
            parts.append(f"plan of {steps} step{'s' if steps != 1 else ''}")
        if self.send_to:
            parts.append("answered you" if self.send_to == RoleName.User else f"asked the {self.send_to}")
        return ", ".join(parts)

    def markdown(self, max_chars: int = MAX_EVENT_CHARS, max_table_rows: int = 20, max_table_columns: int = 30) -> str:
        parts = [a.markdown(max_table_rows, max_table_columns) for a in self.attachments.values()]
        parts = [p for p in parts if p]
        if self.model:
            parts.insert(0, f"model: `{code_text(str(self.model))}`")
        if self.artifacts:
            names = ", ".join(f"`{a.name}` ({a.kind})" for a in self.artifacts)
            parts.append(f"**Artifacts:** {names} - shown with the answer")
        shows_result = any(a.type == AttachmentType.execution_result for a in self.attachments.values())
        if self.message and not (shows_result and self.send_to != RoleName.User):  # the result is shown already
            if self.send_to == RoleName.User and self.is_answer:
                parts.append(f"**→ {RoleName.User}:** _(the answer below)_")
            else:
                parts.append(f"**→ {self.send_to or '…'}:** {self.message}")
        revision = self._no_revision()
        if revision:
            parts.append(revision)
        if self.live is not None and not shows_result:
            parts.append(self.live.markdown())
        if self.error:
            parts.append(f"**Error:** {self.error}")
        if self.queued > 0 and not self.ended:
            parts.append(f"**Waiting for a kernel:** {queue_words(self.queued)}")
        if not self.ended:
            # Bold with asterisks: underscores stay literal when the streaming cursor follows them.
            parts.append(f"**Working:** {self.status or 'starting'}…")
        return safe_markdown("\n\n".join(parts), max_chars)

    def _no_revision(self) -> str:
        """For failed code that goes back without a revision (the post is not addressed to its own
        role, and no revision was announced), say where the error goes instead."""
        by_type = {a.type: a for a in self.attachments.values()}
        status = by_type.get(AttachmentType.execution_status)
        failed = status is not None and status.text.strip() in (ExecutionStatus.failure, ExecutionStatus.timeout)
        if not failed or not self.ended or AttachmentType.revise_message in by_type:
            return ""
        if not self.send_to or self.send_to == self.role:
            return ""
        target = "you" if self.send_to == RoleName.User else f"the {self.send_to}"
        return f"**{AttachmentType.revise_message.label.capitalize()}:** none; the error goes to {target} as it is."


def queue_words(position: int) -> str:
    """Where a kernel start is in line, for the user: "12 ahead of you", "you are next"."""
    ahead = position - 1
    return "you are next" if ahead <= 0 else f"{ahead} ahead of you"


@dataclass
class LiveText:
    """The tail of what a running cell printed (stdout and stderr as they interleaved), bounded."""

    max_chars: int = MAX_LIVE_CHARS
    text: str = ""
    cut: int = 0  # characters printed before ``text`` that are not shown

    def add(self, chunk: str, skipped: int) -> None:
        self.cut += skipped
        self.text += chunk
        over = len(self.text) - self.max_chars
        if over > 0:
            self.text = self.text[over:]
            self.cut += over

    def markdown(self) -> str:
        note = f"\n\n_(showing the last {len(self.text):,} characters; {self.cut:,} before them are not shown)_"
        return f"**Output so far**\n\n{fence(self.text, 'text')}" + (note if self.cut else "")


@dataclass
class Change:
    """What one event did to the view: which post, and whether it was just created or just ended."""

    post_id: str
    created: bool = False
    ended: bool = False
    also: tuple[str, ...] = ()  # other posts whose look changed (the answer moved to or from them)


class RoundView:
    """Every post of one round and the answer to the user, as the events tell them."""

    def __init__(self, execution_cwd: Path, show_model: bool = False, max_live_chars: int = MAX_LIVE_CHARS) -> None:
        self.execution_cwd = Path(execution_cwd)
        self.show_model = show_model
        self.max_live_chars = max_live_chars
        self.posts: dict[str, PostView] = {}
        self.draft = AnswerDraft()
        self.code_running = False
        self.code_interrupted = False
        self.artifacts: list[Artifact] = []

    def apply(self, event: TaskWeaverEvent) -> Change | None:
        """Follow one event; None for events that change no post (round events)."""
        if not isinstance(event.t, PostEventType) or not event.post_id:
            return None
        payload = event.payload
        change = Change(event.post_id)
        view = self.posts.get(event.post_id)
        if view is None:
            started = payload if isinstance(payload, PostStarted) else PostStarted("Weaver")
            model = started.model if self.show_model else None
            view = self.posts[event.post_id] = PostView(role=started.role or "Weaver", model=model)
            change.created = True
        previous_answer = self.draft.post_id
        self.draft.apply(event)
        if self.draft.post_id != previous_answer:
            moved = tuple(p for p in (previous_answer, self.draft.post_id) if p in self.posts)
            for post_id in moved:
                self.posts[post_id].is_answer = post_id == self.draft.post_id
            change.also = moved
        t = event.t
        if t == PostEventType.post_send_to_update and isinstance(payload, SendToUpdated):
            view.send_to = payload.role or None
        elif t == PostEventType.post_status_update:
            view.status = event.msg
            self.code_running = event.msg == PostStatus.executing_code
        elif t == PostEventType.post_message_update:
            replace = isinstance(payload, MessageChunk) and payload.replace
            view.message = event.msg if replace else view.message + event.msg
        elif t == PostEventType.post_attachment_update and isinstance(payload, AttachmentChunk):
            self._attachment(view, event.msg, payload)
        elif t == PostEventType.post_kernel_queue and isinstance(payload, KernelQueued):
            view.queued = payload.position
        elif t == PostEventType.post_execution_output and isinstance(payload, ExecutionOutput):
            if view.live is None:
                view.live = LiveText(self.max_live_chars)
            view.live.add(event.msg, payload.skipped)
        elif t == PostEventType.post_error:
            view.error = event.msg
        elif t == PostEventType.post_end:
            view.ended = change.ended = True
        return change

    def _attachment(self, view: PostView, chunk: str, payload: AttachmentChunk) -> None:
        kind = payload.type
        att_id = payload.id or f"{kind}-{len(view.attachments)}"
        att = view.attachments.setdefault(att_id, AttachmentView(type=kind))
        if payload.data is not None:
            att.data = payload.data
        elif payload.replace:  # the user edited the code before it ran
            att.text = chunk or ""
        else:
            att.text += chunk or ""
        if payload.is_end and not att.done:
            att.done = True
            if kind == AttachmentType.execution_status:
                self.code_running = False
                self.code_interrupted = self.code_interrupted or att.text == ExecutionStatus.cancelled
            elif kind == AttachmentType.artifact_paths:
                # The content is TaskWeaver's list of paths; Weaver puts each file's name and type
                # in the attachment's ``extra`` (older rounds had those dicts as the content).
                details = payload.attachment_extra
                found = artifacts_inside(details if isinstance(details, list) else att.data or [], self.execution_cwd)
                view.artifacts.extend(found)
                self.artifacts.extend(found)

    def tables(self) -> list[Any]:
        """Every table the round's code produced, in order (shown again with the answer)."""
        return [
            a.data
            for view in self.posts.values()
            for a in view.attachments.values()
            if a.type == AttachmentType.table and a.done and a.data
        ]

    def finish_posts(self) -> list[str]:
        """Close every post still open (the round is over); returns their ids."""
        still_open = [post_id for post_id, view in self.posts.items() if not view.ended]
        for post_id in still_open:
            self.posts[post_id].ended = True
        return still_open
