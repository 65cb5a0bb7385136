"""Users' files: served as downloads that cannot run, stored with a type that matches their name.

Chainlit takes an upload's MIME type from the client and serves it back as is, so ``report.csv``
declared as ``text/html`` would be a page on our origin. ``mime_agrees`` decides what is stored
(the ``upload_mime`` patch, ``ui.patches``); ``FileServing`` says which paths are users' files, which
``ui.guards.headers`` answers with a sandboxing CSP and ``Content-Disposition: attachment``.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Iterable, Mapping

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class FileServing:
    """Where users' files are served: Chainlit's ``/project/file/`` and the history's file route."""

    prefixes: tuple[str, ...]

    def is_user_file(self, path: str) -> bool:
        return path.startswith(self.prefixes)


def mime_agrees(name: str, mime: str, accept: Mapping[str, Iterable[str]] | None) -> bool:
    """True when ``mime`` is what a file called ``name`` should be (or is plain bytes).

    A wildcard entry of Chainlit's accept table (``text/*``) says what may be uploaded, not what a
    ``.csv`` is: ``text/html`` with a ``.csv`` name is accepted but does not agree.
    """
    mime = mime.split(";", 1)[0].strip().lower()
    if mime == OCTET_STREAM:
        return True
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix and mimetypes.guess_type(f"x{suffix}")[0] == mime:
        return True
    listed = (accept or {}).get(mime)
    return bool(suffix) and "*" not in mime and listed is not None and suffix in {e.lower() for e in listed}
