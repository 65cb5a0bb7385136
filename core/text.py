"""Text helpers shared by the engine and the UI: Markdown fences and code spans that nothing inside can close."""

from __future__ import annotations

import re

_BACKTICK_RUN = re.compile(r"`+")


def fence(text: str, language: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``.

    Program output and file contents are untrusted: a plain three-backtick fence would let a line
    of backticks in them close the block and turn the rest into live Markdown.
    """
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
    ticks = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{ticks}{language}\n{body}{ticks}"


def code_span(text: str, max_chars: int = 200) -> str:
    """``text`` as an inline code span that nothing in it can close or break (a name or type the
    user's kernel reported is untrusted: it must not turn into live Markdown)."""
    clipped = text if len(text) <= max_chars else text[: max_chars - 1] + "…"
    return "`" + code_text(clipped) + "`"


def code_text(text: str) -> str:
    """Text safe inside a single-backtick code span (a name cannot close it or break the line)."""
    return text.replace("`", "'").replace("\r", " ").replace("\n", " ")


def human_size(size: float) -> str:
    """A size in binary units, as ``execution.disk_mb`` counts them (1 MB = 1024 KB)."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
