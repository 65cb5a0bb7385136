"""OpenAI-style chat messages reshaped for APIs that keep the system prompt apart (Anthropic,
Gemini): the system messages joined into one text, the rest as alternating turns.

Both APIs want the system prompt in a field of its own and read consecutive turns of one role
as one; merging them here keeps the request the same whatever the API version does with them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    text: str


def split_system(messages: list[dict[str, str]]) -> tuple[str, list[Turn]]:
    """The system messages' text (joined by a blank line) and the other messages as turns, where
    neighbours of one role are joined by a blank line too. Empty messages are left out: both APIs
    refuse an empty text part."""
    system: list[str] = []
    turns: list[Turn] = []
    for message in messages:
        role, text = message.get("role", "user"), str(message.get("content") or "")
        if not text.strip():
            continue
        if role == "system":
            system.append(text)
            continue
        role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1].role == role:
            turns[-1].text = f"{turns[-1].text}\n\n{text}"
        else:
            turns.append(Turn(role, text))
    return "\n\n".join(system), turns
