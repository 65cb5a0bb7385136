"""The history's owner-only file route (``ui.history.install_file_route``) and the export and
share routes (``ui.sharing``), put at the head of Chainlit's FastAPI router: Chainlit 2.12 ends its
routes with a catch-all page route (``/{full_path:path}``) that would otherwise answer first."""

from __future__ import annotations

from typing import Any

from core.workspace import Workspace, default_app_dir
from ui.history import install_file_route
from ui.sharing import install_chat_routes


def install(app: Any, layer: Any, prefix: str, root_path: str = "") -> None:
    install_file_route(app, layer, prefix=prefix)
    install_chat_routes(app, layer, lambda: Workspace(default_app_dir()), root_path)
