"""Run by ``weaver_taskweaver_plugins.pth`` at every Python start where Weaver is installed, so a
TaskWeaver plugin file's own ``if __name__ == "__main__":`` block runs with plain ``python plugin.py``
(TaskWeaver's FAQ way): ``from taskweaver.plugin import Plugin, register_plugin`` and
``taskweaver.plugin.context.temp_context`` then load Weaver's.

It only places a lazy finder last on ``sys.meta_path``; nothing of Weaver is imported until a
``taskweaver`` module is, and then only ``core.compat.autoload``'s plugin API (``taskweaver.plugin``
and below). A real TaskWeaver, found earlier on the path, always wins. The application API (the
app, the session, memory, events) stays opt-in: ``import core.compat.taskweaver``.
``WEAVER_TASKWEAVER_PLUGINS=0`` turns the hook off. A top-level module of its own, not part of
``core``: importing ``core`` at start-up would shadow a project's own package named ``core``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nothing more is imported at start-up
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ROOT = "taskweaver"


class LazyTaskWeaverFinder:
    """Answers ``taskweaver.*`` lookups by loading Weaver's alias finder on first need."""

    __weaver_alias__ = True  # core.compat.autoload.MARKER: not a real TaskWeaver when it looks for one

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != ROOT and not fullname.startswith(ROOT + "."):
            return None
        from core.compat.autoload import install

        return install().find_spec(fullname, path, target)


def install() -> None:
    """Put the lazy finder last on ``sys.meta_path`` (once), unless turned off."""
    if os.environ.get("WEAVER_TASKWEAVER_PLUGINS", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if not any(isinstance(f, LazyTaskWeaverFinder) for f in sys.meta_path):
        sys.meta_path.append(LazyTaskWeaverFinder())
