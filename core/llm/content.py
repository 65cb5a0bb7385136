"""Chat messages whose content is text or OpenAI-style content parts (text and images).

A message's ``content`` is a string, or a list of parts: ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``. OpenAI-compatible
servers take the parts as they are; the other backends reshape them (``images_of``) into their own
image formats. Only ``data:`` URLs are sent: an image is always read by the server, never fetched.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from core.llm.base import ChatMessage, ContentPart, LLMError, MessageContent

__all__ = ["ChatMessage", "ContentPart", "InlineImage", "MessageContent", "image_part", "images_of", "text_of"]

_DATA_URL = re.compile(r"data:(?P<mime>image/[A-Za-z0-9.+-]+);base64,(?P<data>[A-Za-z0-9+/=\s]+)\Z")


@dataclass(frozen=True)
class InlineImage:
    """One image part: its media type and its bytes in base64 (as every provider wants them)."""

    mime: str
    data: str


def image_part(mime: str, raw: bytes) -> ContentPart:
    """The OpenAI content part holding ``raw`` as a data URL."""
    encoded = base64.b64encode(raw).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}


def text_of(content: MessageContent | None) -> str:
    """The text of a message (its text parts joined by a blank line)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


def images_of(content: MessageContent | None, provider: str) -> list[InlineImage]:
    """The image parts of a message; a part that is not a base64 ``data:`` image URL is refused
    with an ``LLMError`` naming ``provider`` (Weaver never asks a provider to fetch a URL)."""
    if content is None or isinstance(content, str):
        return []
    found: list[InlineImage] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            continue
        url = str((part.get("image_url") or {}).get("url", "")) if kind == "image_url" else ""
        match = _DATA_URL.match(url)
        if match is None:
            raise LLMError(f"{provider} is sent images only as base64 data: URLs; this message part is not one")
        found.append(InlineImage(match["mime"], "".join(match["data"].split())))
    return found
