"""Opt in to run a TaskWeaver application's own code on Weaver: ``import core.compat.taskweaver``.

Afterwards TaskWeaver's public import paths resolve to Weaver's engine::

    import core.compat.taskweaver  # noqa: F401
    from taskweaver.app.app import TaskWeaverApp
    from taskweaver.module.event_emitter import SessionEventHandlerBase, PostEventType, RoundEventType
    from taskweaver.memory.attachment import AttachmentType

Mapped: taskweaver.app.app (TaskWeaverApp), taskweaver.session.session (Session), taskweaver.module.
event_emitter (the event types, handlers and TaskWeaverEvent), taskweaver.memory (Round, Post,
Attachment, AttachmentType; .attachment, .post, .round, .type_vars) and taskweaver.plugin (with
.context, .utils). Importing this module refuses, with ImportError, when a real TaskWeaver is
installed or imported: Weaver never stands in for it.
"""

from __future__ import annotations

from core.compat.autoload import install, real_taskweaver


class TaskWeaverInstalled(ImportError):
    """A real TaskWeaver is present, so Weaver's stand-in modules are not installed."""


def enable() -> None:
    """Serve TaskWeaver's import paths from Weaver, unless a real TaskWeaver is present."""
    where = real_taskweaver()
    if where is not None:
        raise TaskWeaverInstalled(
            f"core.compat.taskweaver: a real TaskWeaver is installed ({where}); Weaver will not stand in for it. "
            "Uninstall it (pip uninstall taskweaver) to run this code on Weaver, or run the code on TaskWeaver."
        )
    install(app_api=True)


enable()
