"""``chainlit.session.BaseSession.persist_file``, wrapped: an upload whose declared MIME type
disagrees with its file name is stored as ``application/octet-stream``, so it is never served back
as, say, ``text/html`` (``ui.guards.file_serving.mime_agrees``)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

from ui.guards.file_serving import OCTET_STREAM, mime_agrees

logger = logging.getLogger("weaver.ui.patches.upload_mime")


def install(accept: Callable[[], Mapping[str, Iterable[str]] | None]) -> None:
    """``accept``: Chainlit's current upload accept table (it follows config)."""
    from chainlit.session import BaseSession

    original = BaseSession.persist_file
    if getattr(original, "weaver_patched", False):
        return

    async def persist_file(self: Any, name: str, mime: str, path: str | None = None, content: Any = None) -> Any:
        if not mime_agrees(name, mime or "", accept()):
            # DEBUG: nothing to act on (files without a known type, the Files panel's own text).
            logger.debug("upload %.80r declared as %.80r: stored as %s", name, mime, OCTET_STREAM)
            mime = OCTET_STREAM
        return await original(self, name=name, mime=mime, path=path, content=content)

    persist_file.weaver_patched = True  # type: ignore[attr-defined]
    BaseSession.persist_file = persist_file  # type: ignore[method-assign]
