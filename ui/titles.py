"""A chat's name in the sidebar, made from its first message as a person would title it.

Chainlit names a chat with its first message verbatim, so a fenced block shows as
"```python import matplot…". Here the Markdown is parsed (``markdown-it``, as ``ui.markdown``)
and its plain text kept: prose wins; a message that is only code is titled by its language and
its first line of code ("Python: import matplotlib.pyplot as plt").
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

MAX_TITLE_CHARS = 80
UNTITLED = "New chat"
_PARSER = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_SPACES = re.compile(r"\s+")
_CODE_BLOCKS = frozenset({"fence", "code_block"})


def _inline_text(token: Token) -> str:
    """The words of an inline token: text and code spans, no link targets or markup."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append(child.content or "image")
    return "".join(parts)


def _clip(text: str, limit: int) -> str:
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def chat_title(message: str, limit: int = MAX_TITLE_CHARS) -> str:
    """The title of a chat whose first message is ``message`` (Markdown), at most ``limit`` chars."""
    tokens = _PARSER.parse(message or "")
    prose = " ".join(_inline_text(t) for t in tokens if t.type == "inline")
    if prose.strip():
        return _clip(prose, limit)
    for token in tokens:
        if token.type in _CODE_BLOCKS:
            first = next((line.strip() for line in token.content.splitlines() if line.strip()), "")
            language = (token.info or "").split(maxsplit=1)[0] if token.info else ""
            label = language.capitalize() if language else "Code"
            return _clip(f"{label}: {first}" if first else label, limit)
    return _clip(message, limit) or UNTITLED
