"""The seam between roles and language models: a request in, streamed text chunks out."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union

from core.cancel import CancelToken

if TYPE_CHECKING:
    from core.config import LLMSettings


# A message's content: text, or OpenAI-style parts (text and data-URL images; core/llm/content.py).
ContentPart = dict[str, Any]
MessageContent = Union[str, list[ContentPart]]
ChatMessage = Mapping[str, MessageContent]


class LLMError(Exception):
    """A model call failed in a way the user should read (timeout, HTTP error, retries exhausted)."""


@dataclass
class LLMCallRecord:
    """Usage and latency of one model call, kept on the round and in the session log."""

    role: str
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    first_token_s: float | None = None
    attempts: int = 1
    provider: str = ""  # the backend's name (openai, azure, ollama, ...), for the metrics
    cost: float | None = None  # from the model's llm.price_per_1k_* settings, when both are set
    examples: list[str] = field(default_factory=list)  # the example conversations the prompt held (files)
    experience: list[str] = field(default_factory=list)  # the experience tips the prompt held (their ids)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("examples", "experience"):
            if not data[key]:  # most calls have none: records stay as they were
                del data[key]
        return data


@dataclass
class ChatRequest:
    """What a role asks of a model.

    ``messages`` is the OpenAI chat-message list that real backends send; a content may be a list
    of parts with images (core/llm/content.py), which each backend sends in its provider's format.
    ``hints`` carries the same situation as structured data for the offline backend, which must not
    pretend to read prose.
    """

    role: str
    messages: Sequence[ChatMessage]
    hints: dict[str, Any] = field(default_factory=dict)
    json_mode: bool = True
    record: LLMCallRecord | None = None

    def __post_init__(self) -> None:
        if self.record is None:
            self.record = LLMCallRecord(role=self.role)


class LLMBackend(abc.ABC):
    """Streams a model's answer; every backend speaks the same JSON protocol (see core.roles.protocol)."""

    name: str = "base"

    @abc.abstractmethod
    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        """Yield the answer's text in chunks as it is generated.

        Must stop promptly (closing any network stream) once ``cancel`` is set, by raising
        ``RoundCancelled``; must raise ``LLMError`` for failures; fills ``request.record``.
        """

    def revises_code(self) -> bool:
        """Whether this model can revise code that failed (the CodeInterpreter asks it again only then)."""
        return True

    def configured(self) -> LLMSettings | None:
        """The ``llm.*`` settings this backend was made from (None: the offline backend has none)."""
        settings = getattr(self, "settings", None)
        return settings if settings is not None and hasattr(settings, "model") else None

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release connections; called when the app stops."""
