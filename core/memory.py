"""Conversation memory with TaskWeaver's attribute names: Round → Post → Attachment."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Literal

from core.ids import create_id


class Named(str, Enum):
    """A str enum that prints as its value (``round_start``, ``Planner``), as TaskWeaver's do."""

    def __str__(self) -> str:
        return str(self.value)


class RoleName(Named):
    """Who sends and receives posts; the workers besides the Planner come from the role registry."""

    User = "User"
    Planner = "Planner"
    CodeInterpreter = "CodeInterpreter"


class PostStatus(Named):
    """What a post is waiting for, while it is open (``post_status_update``)."""

    calling_model = "calling the language model"
    starting_kernel = "starting your Python kernel"
    executing_code = "executing code"
    awaiting_approval = "waiting for your approval to run the code"


class ExecutionStatus(Named):
    """How one code execution ended (the ``execution_status`` attachment)."""

    success = "success"
    failure = "failure"
    timeout = "timeout"
    cancelled = "cancelled"


class AttachmentType(Named):
    """Typed pieces of a post (TaskWeaver's names)."""

    init_plan = "init_plan"
    plan = "plan"
    current_plan_step = "current_plan_step"
    plan_reasoning = "plan_reasoning"
    stop = "stop"
    thought = "thought"
    reply_type = "reply_type"
    reply_content = "reply_content"
    verification = "verification"
    code_error = "code_error"
    execution_status = "execution_status"
    execution_result = "execution_result"
    artifact_paths = "artifact_paths"
    revise_message = "revise_message"
    invalid_response = "invalid_response"
    table = "table"
    llm_usage = "llm_usage"
    # Weaver's own: the plugins offered to the CodeInterpreter when auto plugin selection is on
    # (content: their names; extra: ``Selection.details()``).
    plugin_selection = "plugin_selection"
    # TaskWeaver's other members, so its code can name them. Weaver's roles never create these:
    # ``function`` (function-calling replies), the ``web_exploring_*`` ones (the WebExplorer role),
    # ``text``, ``shared_memory_entry`` (cross-role shared memory) and ``image_url`` (vision input)
    # belong to features Weaver does not have; a restored round that holds them keeps them.
    function = "function"
    web_exploring_plan = "web_exploring_plan"
    web_exploring_screenshot = "web_exploring_screenshot"
    web_exploring_link = "web_exploring_link"
    text = "text"
    shared_memory_entry = "shared_memory_entry"
    image_url = "image_url"

    @property
    def label(self) -> str:
        """What a person reads as this attachment's heading, in every UI (``ATTACHMENT_LABELS``)."""
        return ATTACHMENT_LABELS[self]


# One table for the web and the terminal, lower case: a UI capitalises where its style wants.
ATTACHMENT_LABELS: dict[AttachmentType, str] = {
    AttachmentType.init_plan: "initial plan",
    AttachmentType.plan: "plan",
    AttachmentType.current_plan_step: "current step",
    AttachmentType.plan_reasoning: "reasoning",
    AttachmentType.stop: "stop",
    AttachmentType.thought: "thought",
    AttachmentType.reply_type: "reply type",
    AttachmentType.reply_content: "code",
    AttachmentType.verification: "verification",
    AttachmentType.code_error: "code error",
    AttachmentType.execution_status: "execution",
    AttachmentType.execution_result: "output",
    AttachmentType.artifact_paths: "artifacts",
    AttachmentType.revise_message: "revision",
    AttachmentType.invalid_response: "invalid response",
    AttachmentType.table: "table",
    AttachmentType.llm_usage: "model usage",
    AttachmentType.plugin_selection: "plugins offered",
    AttachmentType.function: "function call",
    AttachmentType.web_exploring_plan: "web plan",
    AttachmentType.web_exploring_screenshot: "web screenshot",
    AttachmentType.web_exploring_link: "web link",
    AttachmentType.text: "text",
    AttachmentType.shared_memory_entry: "shared memory",
    AttachmentType.image_url: "image",
}


RoundState = Literal["created", "finished", "failed", "cancelled"]


@dataclass
class Attachment:
    type: AttachmentType
    content: Any
    id: str = field(default_factory=lambda: create_id("atta"))
    extra: Any = None

    @staticmethod
    def create(type: AttachmentType | str, content: Any, id: str | None = None, extra: Any = None) -> Attachment:
        """TaskWeaver's constructor: ``type`` may be the member's name as a string; a new id when none."""
        kind = type if isinstance(type, AttachmentType) else AttachmentType(type)
        return Attachment(type=kind, content=content, id=id if id is not None else create_id("atta"), extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type.value, "content": self.content, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attachment | None:
        """The attachment ``to_dict`` wrote; None for a type this version does not know."""
        try:
            kind = AttachmentType(data["type"])
        except (KeyError, ValueError):
            return None
        return cls(
            type=kind, content=data.get("content"), id=str(data.get("id") or create_id("atta")), extra=data.get("extra")
        )


@dataclass
class Post:
    send_from: str
    send_to: str = "Unknown"
    message: str = ""
    attachment_list: list[Attachment] = field(default_factory=list)
    id: str = field(default_factory=lambda: create_id("post"))

    @staticmethod
    def create(
        message: str | None,
        send_from: str,
        send_to: str = "Unknown",
        attachment_list: list[Attachment] | None = None,
    ) -> Post:
        """TaskWeaver's constructor: a new id; no message is an empty one."""
        return Post(
            send_from=send_from,
            send_to=send_to,
            message=message or "",
            attachment_list=attachment_list if attachment_list is not None else [],
        )

    def add_attachment(self, attachment: Attachment) -> Attachment:
        self.attachment_list.append(attachment)
        return attachment

    def get_attachment(self, type: AttachmentType) -> list[Attachment]:
        """Every attachment of ``type``, in order (TaskWeaver's code reads ``[0].content``)."""
        return [a for a in self.attachment_list if a.type == type]

    def del_attachment(self, type_list: AttachmentType | Iterable[AttachmentType]) -> None:
        """Remove every attachment of the given type(s): TaskWeaver passes a list, one type works too."""
        kinds = {type_list} if isinstance(type_list, AttachmentType) else set(type_list)
        self.attachment_list = [a for a in self.attachment_list if a.type not in kinds]

    def first(self, type: AttachmentType, default: Any = None) -> Any:
        """The content of the first attachment of ``type``, or ``default``."""
        found = self.get_attachment(type)
        return found[0].content if found else default

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "send_from": self.send_from,
            "send_to": self.send_to,
            "message": self.message,
            "attachment_list": [a.to_dict() for a in self.attachment_list],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Post:
        attachments = [Attachment.from_dict(a) for a in data.get("attachment_list") or [] if isinstance(a, dict)]
        return cls(
            send_from=str(data.get("send_from") or "Unknown"),
            send_to=str(data.get("send_to") or "Unknown"),
            message=str(data.get("message") or ""),
            attachment_list=[a for a in attachments if a is not None],
            id=str(data.get("id") or create_id("post")),
        )


@dataclass
class Round:
    user_query: str
    state: RoundState = "created"
    post_list: list[Post] = field(default_factory=list)
    id: str = field(default_factory=lambda: create_id("round"))
    error: str | None = None
    llm_calls: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def create(
        user_query: str, id: str | None = None, state: RoundState = "created", post_list: list[Post] | None = None
    ) -> Round:
        """TaskWeaver's constructor: a new id unless one is given."""
        return Round(
            user_query=user_query,
            state=state,
            post_list=post_list if post_list is not None else [],
            id=id if id is not None else create_id("round"),
        )

    def add_post(self, post: Post) -> Post:
        self.post_list.append(post)
        return post

    def change_round_state(self, new_state: RoundState) -> None:
        self.state = new_state

    @property
    def reply(self) -> Post | None:
        """The answer to the user: the last post sent to ``User``."""
        for post in reversed(self.post_list):
            if post.send_to == "User":
                return post
        return None

    @property
    def reply_text(self) -> str:
        post = self.reply
        return post.message if post else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_query": self.user_query,
            "state": self.state,
            "error": self.error,
            "post_list": [p.to_dict() for p in self.post_list],
            "llm_calls": self.llm_calls,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Round:
        """The round ``to_dict`` wrote (a session's ``rounds.jsonl`` line), for resuming a chat."""
        known: tuple[RoundState, ...] = ("created", "finished", "failed", "cancelled")
        state: RoundState = next((s for s in known if s == data.get("state")), "failed")
        return cls(
            user_query=str(data.get("user_query") or ""),
            state=state,
            post_list=[Post.from_dict(p) for p in data.get("post_list") or [] if isinstance(p, dict)],
            id=str(data.get("id") or create_id("round")),
            error=data.get("error"),
            llm_calls=list(data.get("llm_calls") or []),
        )


@dataclass
class Conversation:
    """TaskWeaver's container of a session's rounds (``memory.conversation.rounds``)."""

    id: str = ""
    rounds: list[Round] = field(default_factory=list)

    def add_round(self, rnd: Round) -> None:
        self.rounds.append(rnd)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "rounds": [r.to_dict() for r in self.rounds]}


class Memory:
    """A session's memory as TaskWeaver's code reads it: ``session.memory.conversation.rounds``.

    ``rounds`` is the session's own list, not a copy: what the session does, the memory shows."""

    def __init__(self, session_id: str, rounds: list[Round] | None = None) -> None:
        self.session_id = session_id
        self.conversation = Conversation(id=create_id("conv"), rounds=rounds if rounds is not None else [])

    def create_round(self, user_query: str) -> Round:
        """A new round for ``user_query``, added to the conversation."""
        rnd = Round.create(user_query=user_query)
        self.conversation.add_round(rnd)
        return rnd

    def get_role_rounds(self, role: str, include_failure_rounds: bool = False) -> list[Round]:
        """Copies of the rounds holding only the posts ``role`` sent or received (failed rounds
        left out unless asked for), as TaskWeaver's roles see their history."""
        found: list[Round] = []
        for rnd in self.conversation.rounds:
            if rnd.state == "failed" and not include_failure_rounds:
                continue
            posts = [copy.deepcopy(p) for p in rnd.post_list if role in (p.send_from, p.send_to)]
            found.append(Round.create(user_query=rnd.user_query, id=rnd.id, state=rnd.state, post_list=posts))
        return found
