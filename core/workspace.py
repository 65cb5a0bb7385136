"""Where an app keeps its sessions: ``<app_dir>/workspace/sessions/<id>/cwd``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def default_app_dir() -> Path:
    return Path(os.environ.get("WEAVER_APP_DIR") or Path.cwd() / ".weaver")


def discover_app_dir(app_dir: str | Path | None = None) -> tuple[str, bool, bool]:
    """TaskWeaver's search for an app folder: ``(folder, holds a valid taskweaver_config.json,
    is empty or absent)``. With ``app_dir``, that folder; without, the nearest folder from the
    current one upwards whose config file is a JSON object, else the current folder. (Weaver's own
    default, ``default_app_dir``, is ``WEAVER_APP_DIR`` or ``./.weaver``; this is for TaskWeaver's code.)"""

    def valid(folder: Path) -> bool:
        try:
            return isinstance(json.loads((folder / "taskweaver_config.json").read_text(encoding="utf-8")), dict)
        except (OSError, ValueError):
            return False

    def empty(folder: Path) -> bool:
        return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))

    if app_dir is not None:
        folder = Path(os.path.abspath(app_dir))
        return str(folder), folder.is_dir() and valid(folder), empty(folder)
    here = Path(os.path.abspath("."))
    for folder in (here, *here.parents):
        if valid(folder):
            return str(folder), True, False
    return str(here), False, empty(here)


class Workspace:
    def __init__(self, app_dir: Path) -> None:
        self.app_dir = app_dir.resolve()
        self.workspace_dir = self.app_dir / "workspace"
        self.plugin_dir = self.app_dir / "plugins"

    def session_dir(self, session_id: str) -> Path:
        return self.workspace_dir / "sessions" / session_id

    def execution_cwd(self, session_id: str) -> Path:
        return self.session_dir(session_id) / "cwd"
