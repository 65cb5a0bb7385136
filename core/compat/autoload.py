"""Serves TaskWeaver's import paths from Weaver's modules, without shadowing a real TaskWeaver.

A finder placed LAST on ``sys.meta_path``: a real ``taskweaver`` anywhere on the path is found
first, and this finder then declines every ``taskweaver.*`` name. By default it serves only the
plugin author's API (``taskweaver.plugin`` and its submodules, ``utils`` included), so a plugin file
runs on its own (``python my_plugin.py``, its ``if __name__ == "__main__":`` block with
``temp_context``). ``import core.compat.taskweaver`` adds the application API (the app, the session,
events, memory).

Installed by ``install()``: in each kernel by the plugin runtime, in any Python by
``python -m core.compat my_plugin.py``, or, where Weaver is installed, on the first ``taskweaver``
import by the start-up hook ``weaver_taskweaver_plugins`` (run by ``weaver_taskweaver_plugins.pth``
in site-packages, which ``pip install`` puts there; ``WEAVER_TASKWEAVER_PLUGINS=0`` turns it off).
Nothing heavy is imported until a module is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

ROOT = "taskweaver"
MARKER = "__weaver_alias__"  # set on every module this finder (or the kernel runtime) made

# name → (is a package, sources: (Weaver module, names or None for its __all__)).
Sources = tuple[tuple[str, tuple[str, ...] | None], ...]
_API = "core.plugins.api"
PLUGIN_MODULES: dict[str, tuple[bool, Sources]] = {
    ROOT: (True, ()),
    "taskweaver.plugin": (True, ((_API, None),)),
    "taskweaver.plugin.base": (False, ((_API, None),)),
    "taskweaver.plugin.register": (False, ((_API, ("register_plugin", "test_plugin")),)),
    "taskweaver.plugin.context": (False, ((_API, None),)),
    "taskweaver.plugin.utils": (False, (("core.plugins.utils", ("make_api_call",)),)),
}
_EVENTS = (
    "EventScope",
    "PostEventType",
    "RoundEventType",
    "SessionEventType",
    "SessionEventHandler",
    "SessionEventHandlerBase",
    "TaskWeaverEvent",
    "PostEventProxy",
)
APP_MODULES: dict[str, tuple[bool, Sources]] = {
    "taskweaver.app": (True, (("core.app", ("TaskWeaverApp",)),)),
    "taskweaver.app.app": (False, (("core.app", ("TaskWeaverApp",)),)),
    "taskweaver.session": (True, (("core.session", ("Session",)),)),
    "taskweaver.session.session": (False, (("core.session", ("Session",)), ("core.config", ("AppSessionConfig",)))),
    "taskweaver.module": (True, ()),
    "taskweaver.module.event_emitter": (False, (("core.events", _EVENTS),)),
    "taskweaver.memory": (
        True,
        (("core.memory", ("Attachment", "AttachmentType", "Conversation", "Memory", "Post", "Round")),),
    ),
    "taskweaver.memory.memory": (False, (("core.memory", ("Memory",)),)),
    "taskweaver.memory.conversation": (False, (("core.memory", ("Conversation",)),)),
    "taskweaver.memory.attachment": (False, (("core.memory", ("Attachment", "AttachmentType")),)),
    "taskweaver.memory.post": (False, (("core.memory", ("Post",)),)),
    "taskweaver.memory.round": (False, (("core.memory", ("Round",)),)),
    "taskweaver.memory.type_vars": (False, (("core.memory", ("RoleName", "RoundState")),)),
    "taskweaver.code_interpreter": (True, ()),
    "taskweaver.code_interpreter.code_verification": (
        False,
        (("core.roles.verification", ("code_snippet_verification",)),),
    ),
    "taskweaver.utils": (True, ()),
    "taskweaver.utils.app_utils": (False, (("core.workspace", ("discover_app_dir",)),)),
}


class TaskWeaverAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the ``taskweaver.*`` names it was given, if no real TaskWeaver is present."""

    def __init__(self) -> None:
        self.modules: dict[str, tuple[bool, Sources]] = dict(PLUGIN_MODULES)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        entry = self.modules.get(fullname)
        if entry is None:
            return None
        root = sys.modules.get(ROOT)
        if fullname != ROOT and (root is None or not getattr(root, MARKER, False)):
            return None  # the package above is a real TaskWeaver (or not ours): never mix
        return importlib.machinery.ModuleSpec(fullname, self, is_package=entry[0])

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        is_package, sources = self.modules[module.__name__]
        setattr(module, MARKER, True)
        if is_package:
            module.__path__ = []
        exported: list[str] = []
        for source_name, names in sources:
            source = importlib.import_module(source_name)
            chosen = names if names is not None else tuple(getattr(source, "__all__", ()))
            for name in chosen:
                setattr(module, name, getattr(source, name))
                exported.append(name)
        module.__dict__["__all__"] = exported
        module.__doc__ = f"Weaver's stand-in for {module.__name__} (core.compat)."


def finder() -> TaskWeaverAliasFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, TaskWeaverAliasFinder)), None)


def install(app_api: bool = False) -> TaskWeaverAliasFinder:
    """Put the finder last on ``sys.meta_path`` (once); ``app_api`` also serves the application API."""
    found = finder()
    if found is None:
        found = TaskWeaverAliasFinder()
        sys.meta_path.append(found)
    if app_api:
        found.modules.update(APP_MODULES)
    return found


def real_taskweaver() -> str | None:
    """Where a real TaskWeaver is (imported, or importable), or None."""
    loaded: Any = sys.modules.get(ROOT)
    if loaded is not None:
        if getattr(loaded, MARKER, False):
            return None
        return str(getattr(loaded, "__file__", None) or getattr(loaded, "__path__", None) or "an imported module")
    for other in sys.meta_path:
        # Weaver's own finders, this one and the start-up hook (weaver_taskweaver_plugins), are not it.
        if isinstance(other, TaskWeaverAliasFinder) or getattr(other, MARKER, False) or not hasattr(other, "find_spec"):
            continue
        try:
            spec = other.find_spec(ROOT, None)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            return str(spec.origin or list(spec.submodule_search_locations or []) or ROOT)
    return None
