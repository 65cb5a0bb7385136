"""Where an app keeps its sessions: ``<app_dir>/workspace/sessions/<id>/cwd``."""

from __future__ import annotations

import os
from pathlib import Path


def default_app_dir() -> Path:
    return Path(os.environ.get("WEAVER_APP_DIR") or Path.cwd() / ".weaver")


class Workspace:
    def __init__(self, app_dir: Path) -> None:
        self.app_dir = app_dir.resolve()
        self.workspace_dir = self.app_dir / "workspace"
        self.plugin_dir = self.app_dir / "plugins"

    def session_dir(self, session_id: str) -> Path:
        return self.workspace_dir / "sessions" / session_id

    def execution_cwd(self, session_id: str) -> Path:
        return self.session_dir(session_id) / "cwd"
