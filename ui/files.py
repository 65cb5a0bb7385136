"""Files in and out of the chat: uploads to the engine, artifacts back to the browser.

Only files that resolve inside the session's ``execution_cwd`` are ever handed to Chainlit for
serving; a path that the generated code made up (``/etc/passwd``, ``../other-session/x``, a
symlink out of the folder) is refused here, before Chainlit copies it into its file store.
Text helpers that turn engine output into safe Markdown live here too, because Markdown is the
only way we show content (``unsafe_allow_html`` stays off).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger("weaver.ui.files")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp"})
MAX_TABLE_ROWS = 20
MAX_CELL_CHARS = 80


def uploads_from_elements(elements: Iterable[Any] | None) -> list[dict[str, str]]:
    """Turn a Chainlit message's uploaded elements into ``send_message(files=...)`` entries."""
    files: list[dict[str, str]] = []
    for element in elements or []:
        path = getattr(element, "path", None)
        if not path:
            continue
        name = getattr(element, "name", None) or Path(path).name
        files.append({"name": str(name), "path": str(path)})
    return files


@dataclass(frozen=True)
class Artifact:
    """A file the round produced that may be shown: ``kind`` is "image" or "file"."""

    name: str
    path: Path
    kind: str


def resolve_inside(path: str | Path, root: str | Path) -> Path | None:
    """The real path of ``path`` if it is an existing file inside ``root``, else None."""
    try:
        real_root = Path(root).resolve(strict=True)
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = real_root / candidate
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file():
        return None
    if real_root != real and real_root not in real.parents:
        return None
    return real


def parse_artifacts(payload: str, root: str | Path) -> list[Artifact]:
    """Parse an ``artifact_paths`` attachment and keep only servable files inside ``root``."""
    try:
        items = json.loads(payload) if payload.strip() else []
    except json.JSONDecodeError:
        logger.warning("artifact_paths is not JSON: %.200r", payload)
        return []
    if isinstance(items, dict):
        items = [items]
    artifacts: list[Artifact] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not item.get("path"):
            continue
        real = resolve_inside(str(item["path"]), root)
        if real is None:
            logger.warning("refusing to serve artifact outside the session folder: %r", item.get("path"))
            continue
        declared = str(item.get("type") or "")
        is_image = real.suffix.lower() in IMAGE_SUFFIXES and declared in ("", "image", "chart", "file")
        artifacts.append(Artifact(name=str(item.get("name") or real.name), path=real, kind="image" if is_image else "file"))
    return artifacts


def fence(text: str, language: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{ticks}{language}\n{body}{ticks}"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text


def table_markdown(payload: str) -> str:
    """Render a ``table`` attachment (``{"columns","rows","shape"}``) as a Markdown table."""
    try:
        table = json.loads(payload)
    except json.JSONDecodeError:
        return fence(payload)
    if not isinstance(table, dict):
        return fence(payload)
    columns = [_cell(c) for c in table.get("columns") or []]
    rows = table.get("rows") or []
    if not columns and rows and isinstance(rows[0], list):
        columns = [str(i) for i in range(len(rows[0]))]
    lines: list[str] = []
    if columns:
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in columns) + "|")
        for row in rows[:MAX_TABLE_ROWS]:
            cells = [_cell(v) for v in (row if isinstance(row, list) else [row])]
            cells = (cells + [""] * len(columns))[: len(columns)]
            lines.append("| " + " | ".join(cells) + " |")
    shape = table.get("shape")
    notes: list[str] = []
    if isinstance(shape, list) and len(shape) == 2:
        notes.append(f"shape: {shape[0]} rows × {shape[1]} columns")
    if len(rows) > MAX_TABLE_ROWS:
        notes.append(f"first {MAX_TABLE_ROWS} of {len(rows)} rows shown")
    if notes:
        lines.append("")
        lines.append("_" + "; ".join(notes) + "_")
    return "\n".join(lines)
