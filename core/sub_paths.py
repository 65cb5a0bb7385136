"""The sub-folder a chat names for its examples or experience tips (TaskWeaver's dynamic sub-path),
and keeping it inside the folder it names a part of."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from core.memory import AttachmentType, Post


def named_sub_path(posts: Iterable[Post], session_vars: Mapping[str, str], key: str) -> str:
    """The last ``shared_memory_entry`` of type ``key`` a role posted (TaskWeaver's way), else the
    session variable ``key``; "" when neither names one."""
    found = ""
    for post in posts:
        for attachment in post.get_attachment(AttachmentType.shared_memory_entry):
            entry = attachment.extra if isinstance(attachment.extra, Mapping) else attachment.content
            if isinstance(entry, Mapping) and entry.get("type") == key and entry.get("content"):
                found = str(entry["content"])
    return found or str(session_vars.get(key) or "")


def sub_folder(base: Path, sub_path: str) -> Path | None:
    """``base / sub_path`` when it stays inside ``base``; ``None`` for a path that would leave it."""
    if not sub_path or os.path.isabs(sub_path):
        return None
    target = (base / sub_path).resolve()
    return target if target.is_relative_to(base.resolve()) else None
