"""The JSON each role's model must answer with: its schema text for prompts, and its validation.

A ``ReplyContract`` is the one source of both, so what the prompt asks for (field order,
descriptions, allowed ``send_to`` values) is exactly what ``validate`` accepts.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, Field, ValidationError, field_validator

from core.llm.json_stream import JsonProtocolError, parse_json_object
from core.memory import RoleName

USER = RoleName.User
PLANNER = RoleName.Planner
CODE_INTERPRETER = RoleName.CodeInterpreter


class PlannerReply(BaseModel):
    """Field order is the order the model is asked to write them in, so the UI streams sensibly."""

    thought: str = Field("", description="your reasoning, one or two sentences")
    plan: list[str] = Field(default_factory=list, description="a step of your plan")
    current_plan_step: str = Field("", description="the step being worked on now")
    send_to: str = Field(description="the recipient of the message")
    message: str = Field(description="the message to that recipient")

    @field_validator("plan", mode="before")
    @classmethod
    def _plan_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [line.strip() for line in value.splitlines() if line.strip()]
        return value


class CodeReply(BaseModel):
    thought: str = Field("", description="your reasoning")
    reply_type: Literal["python", "text"] = Field(description="python to run code, text to answer in words")
    reply_content: str = Field(description="the Python code to run, or a text answer")


def planner_recipients(workers: Sequence[str]) -> tuple[str, ...]:
    """Whom the Planner may address: the registry's workers, then the User."""
    return (*workers, USER)


@dataclass(frozen=True)
class ReplyContract:
    """A reply model plus the allowed values of fields whose choices are known only at run time."""

    model: type[BaseModel]
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def fields(self) -> list[tuple[str, str]]:
        """(name, description) of each field, in the order the model must write them."""
        return [(name, info.description or name) for name, info in self.model.model_fields.items()]

    def format(self) -> str:
        """A one-line sketch of the JSON answer, e.g. ``{"thought": "<your reasoning>", ...}``."""
        parts = []
        for name, info in self.model.model_fields.items():
            parts.append(f"{json.dumps(name)}: {self._placeholder(name, info.annotation, info.description or name)}")
        return "{" + ", ".join(parts) + "}"

    def _placeholder(self, name: str, annotation: Any, description: str) -> str:
        options = self.choices.get(name)
        if options is None and typing.get_origin(annotation) is Literal:
            options = [str(a) for a in typing.get_args(annotation)]
        if options is not None:
            return " or ".join(json.dumps(str(o)) for o in options)
        if typing.get_origin(annotation) is list:
            return f'["<{description}>", ...]'
        return f'"<{description}>"'

    def validate(self, text: str) -> Any:
        """Parse and check an answer; raise ``JsonProtocolError`` with a reason the model can act on."""
        reply = validate_reply(text, self.model)
        for name, values in self.choices.items():
            got = getattr(reply, name, None)
            if got not in values:
                raise JsonProtocolError(f"{name} must be one of {sorted(map(str, values))}, got {got!r}")
        return reply


def validate_reply(text: str, model: type[BaseModel]) -> Any:
    """Parse an answer and check it against ``model``; ``JsonProtocolError`` says what is wrong."""
    required = frozenset(name for name, field in model.model_fields.items() if field.is_required())
    data = parse_json_object(text, required)
    try:
        reply = model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise JsonProtocolError(f"the JSON does not match the required format ({problems})") from None
    return reply
