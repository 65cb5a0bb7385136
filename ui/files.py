"""Files in and out of the chat: uploads to the engine, artifacts back to the browser.

Only regular files inside the session's ``execution_cwd`` are ever handed to Chainlit, and only
as bytes read through ``core.safe_files`` (never a path Chainlit would open again later): a path
the generated code made up (``/etc/passwd``, ``../other-session/x``), a symlink, a FIFO or a
hard link is refused here, with a note the user reads.
Text that reaches the browser is made safe in ``ui.markdown``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from core.safe_files import Refusal, UnsafeFile, open_file, relative_name
from ui.markdown import code_text

logger = logging.getLogger("weaver.ui.files")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp"})
# Chainlit reads every attached file whole into memory, so a round attaches a bounded number.
MAX_ARTIFACTS_SHOWN = 20
MAX_ARTIFACT_BYTES = 25 * 1000 * 1000
# Attached files are held in memory as bytes until Chainlit has stored them: bounded per message.
MAX_ATTACHED_TOTAL_BYTES = 100 * 2**20
MAX_NAMES_LISTED = 10


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
    """A file the round produced that may be shown: ``kind`` is "image" or "file"; ``rel`` is its
    path inside ``root`` (the session folder), as named, never resolved through links."""

    name: str
    rel: str
    kind: str
    root: Path


@dataclass(frozen=True)
class Attached:
    """An artifact's bytes, read from the handle that was checked, for Chainlit (``content=``)."""

    name: str
    kind: str
    content: bytes


def artifacts_inside(items: Iterable[Any], root: str | Path) -> list[Artifact]:
    """The servable files of an ``artifact_paths`` list (``{name, path, type}`` dicts or paths):
    only regular files inside ``root``, reached without following links; anything else is logged
    and dropped. The file is opened again (safely) when it is attached."""
    artifacts: list[Artifact] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not item.get("path"):
            continue
        try:
            rel = relative_name(str(item["path"]), root)
            open_file(root, rel).close()
        except (UnsafeFile, OSError) as exc:
            logger.warning("refusing to serve artifact %r: %s", item.get("path"), exc)
            continue
        declared = str(item.get("type") or "")
        is_image = Path(rel).suffix.lower() in IMAGE_SUFFIXES and declared in ("", "image", "chart", "file")
        name = str(item.get("name") or Path(rel).name)
        artifacts.append(Artifact(name, rel, "image" if is_image else "file", Path(root)))
    return artifacts


@dataclass
class ArtifactSelection:
    """The artifacts attached to a message (their bytes), and sentences about the ones that are not."""

    shown: list[Attached]
    notes: list[str]


def select_artifacts(
    artifacts: Iterable[Artifact],
    max_count: int = MAX_ARTIFACTS_SHOWN,
    max_bytes: int = MAX_ARTIFACT_BYTES,
    max_total_bytes: int = MAX_ATTACHED_TOTAL_BYTES,
) -> ArtifactSelection:
    """Read at most ``max_count`` artifacts of at most ``max_bytes`` each and ``max_total_bytes`` in
    all through ``core.safe_files`` (blocking: call it off the event loop); name the others, and
    any refused file, in notes."""
    shown: list[Attached] = []
    too_big: list[str] = []
    over_count: list[str] = []
    refused: list[str] = []
    seen: set[tuple[Path, str]] = set()
    total = 0
    for artifact in artifacts:
        if (artifact.root, artifact.rel) in seen:
            continue
        seen.add((artifact.root, artifact.rel))
        try:
            with open_file(artifact.root, artifact.rel) as opened:
                if opened.size > max_bytes:
                    too_big.append(f"`{code_text(artifact.name)}` ({opened.size / 1e6:.0f} MB)")
                elif len(shown) >= max_count or total + opened.size > max_total_bytes:
                    over_count.append(f"`{code_text(artifact.name)}`")
                elif opened.size:  # Chainlit cannot attach empty content
                    shown.append(Attached(artifact.name, artifact.kind, opened.read_all()))
                    total += opened.size
        except UnsafeFile as exc:
            if exc.reason is not Refusal.MISSING:  # deleted since the round reported it: nothing to say
                refused.append(f"`{code_text(exc.name)}` {exc.said}")
        except OSError:
            continue
    notes: list[str] = []
    if too_big:
        too_big = too_big[:MAX_NAMES_LISTED] + (
            [f"{len(too_big) - MAX_NAMES_LISTED:,} more"] if len(too_big) > MAX_NAMES_LISTED else []
        )
        notes.append(
            f"Not attached because each is over {max_bytes / 1e6:.0f} MB: {', '.join(too_big)}; "
            "they are in the session's working folder."
        )
    if over_count:
        named = ", ".join(over_count[:MAX_NAMES_LISTED])
        if len(over_count) > MAX_NAMES_LISTED:
            named += f" and {len(over_count) - MAX_NAMES_LISTED:,} more"
        notes.append(
            f"Showing {len(shown)} of {len(shown) + len(over_count) + len(too_big):,} files; the others are in "
            f"the session's working folder: {named}."
        )
    if refused:
        notes.append("Not attached: " + "; ".join(refused[:MAX_NAMES_LISTED]) + ".")
    return ArtifactSelection(shown, notes)
