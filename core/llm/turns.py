"""OpenAI-style chat messages reshaped for APIs that keep the system prompt apart (Anthropic,
Gemini): the system messages joined into one text, the rest as alternating turns.

Both APIs want the system prompt in a field of its own and read consecutive turns of one role
as one; merging them here keeps the request the same whatever the API version does with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from core.llm.content import ChatMessage, InlineImage, images_of, text_of


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    text: str
    images: list[InlineImage] = field(default_factory=list)  # a message's image parts (data URLs)


def split_system(messages: Sequence[ChatMessage], provider: str = "this provider") -> tuple[str, list[Turn]]:
    """The system messages' text (joined by a blank line) and the other messages as turns, where
    neighbours of one role are joined by a blank line too (their images kept in order). Empty
    messages are left out: both APIs refuse an empty text part. An image that is not a data URL
    is an ``LLMError`` naming ``provider``."""
    system: list[str] = []
    turns: list[Turn] = []
    for message in messages:
        role, content = str(message.get("role", "user")), message.get("content")
        text, images = text_of(content), images_of(content, provider)
        if not text.strip() and not images:
            continue
        if role == "system":
            system.append(text)
            continue
        role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1].role == role:
            turns[-1].text = f"{turns[-1].text}\n\n{text}" if text.strip() else turns[-1].text
            turns[-1].images.extend(images)
        else:
            turns.append(Turn(role, text, images))
    return "\n\n".join(system), turns
