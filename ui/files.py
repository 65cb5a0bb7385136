"""Files in and out of the chat: uploads to the engine, artifacts back to the browser.

Only files that resolve inside the session's ``execution_cwd`` are ever handed to Chainlit for
serving; a path that the generated code made up (``/etc/passwd``, ``../other-session/x``, a
symlink out of the folder) is refused here, before Chainlit copies it into its file store.
Text that reaches the browser is made safe in ``ui.markdown``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ui.markdown import code_text

logger = logging.getLogger("weaver.ui.files")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp"})
# Chainlit reads every attached file whole into memory, so a round attaches a bounded number.
MAX_ARTIFACTS_SHOWN = 20
MAX_ARTIFACT_BYTES = 25 * 1000 * 1000
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


def artifacts_inside(items: Iterable[Any], root: str | Path) -> list[Artifact]:
    """The servable files of an ``artifact_paths`` list (``{name, path, type}`` dicts or paths):
    only existing files inside ``root``; anything else is logged and dropped."""
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
        artifacts.append(
            Artifact(name=str(item.get("name") or real.name), path=real, kind="image" if is_image else "file")
        )
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
            too_big.append(f"`{code_text(artifact.name)}` ({size / 1e6:.0f} MB)")
        elif len(shown) >= max_count:
            over_count.append(f"`{code_text(artifact.name)}`")
        else:
            shown.append(artifact)
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
    return ArtifactSelection(shown, notes)
