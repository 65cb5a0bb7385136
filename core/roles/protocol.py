"""The JSON each role's model must answer with, and how it is validated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from core.llm.json_stream import JsonProtocolError, parse_json_object
from core.memory import RoleName

USER = RoleName.User
PLANNER = RoleName.Planner
CODE_INTERPRETER = RoleName.CodeInterpreter


class PlannerReply(BaseModel):
    """Field order is the order the model is asked to write them in, so the UI streams sensibly."""

    thought: str = ""
    plan: list[str] = Field(default_factory=list)
    current_plan_step: str = ""
    send_to: str
    message: str

    @field_validator("plan", mode="before")
    @classmethod
    def _plan_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [line.strip() for line in value.splitlines() if line.strip()]
        return value


class CodeReply(BaseModel):
    thought: str = ""
    reply_type: Literal["python", "text"]
    reply_content: str


PLANNER_FORMAT = (
    '{"thought": "<your reasoning, one or two sentences>", '
    '"plan": ["<step 1>", "<step 2>"], '
    '"current_plan_step": "<the step being worked on now>", '
    '"send_to": "CodeInterpreter" or "User", '
    '"message": "<the message to that recipient>"}'
)

CODE_FORMAT = (
    '{"thought": "<your reasoning>", '
    '"reply_type": "python" or "text", '
    '"reply_content": "<the Python code to run, or a text answer>"}'
)


def validate_reply(text: str, model: type[BaseModel], allowed_send_to: set[str] | None = None) -> Any:
    """Parse and check an answer; raise ``JsonProtocolError`` with a reason the model can act on."""
    required = frozenset(name for name, field in model.model_fields.items() if field.is_required())
    data = parse_json_object(text, required)
    try:
        reply = model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise JsonProtocolError(f"the JSON does not match the required format ({problems})") from None
    if allowed_send_to is not None and getattr(reply, "send_to", None) not in allowed_send_to:
        raise JsonProtocolError(
            f"send_to must be one of {sorted(allowed_send_to)}, got {getattr(reply, 'send_to', None)!r}"
        )
    return reply
