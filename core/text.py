"""Text helpers shared by the engine and the UI: Markdown fences that nothing inside can close."""

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


def human_size(size: float) -> str:
    """A size in binary units, as ``execution.disk_mb`` counts them (1 MB = 1024 KB)."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
