"""The history's owner-only file route (``ui.history.install_file_route``), put at the head of
Chainlit's FastAPI router: Chainlit 2.12 ends its routes with a catch-all page route
(``/{full_path:path}``) that would otherwise answer first."""

from __future__ import annotations

from typing import Any

from ui.history import install_file_route


def install(app: Any, layer: Any, prefix: str) -> None:
    install_file_route(app, layer, prefix=prefix)
