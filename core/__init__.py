"""Weaver's engine: TaskWeaver's Session model, with no UI dependency.

Names are imported on first use (PEP 562), so that the plugin runtime, which every kernel
imports from ``core.plugins``, does not pull the whole engine into each kernel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TaskWeaverApp": "core.app",
    "Session": "core.session",
    "AppSessionConfig": "core.config",
    "AppConfig": "core.config",
    "ConfigError": "core.errors",
    "WeaverError": "core.errors",
    "BadFiles": "core.errors",
    "SessionFull": "core.errors",
    "SessionLimitReached": "core.errors",
    "SessionNotFound": "core.errors",
    "SessionStopped": "core.errors",
    "RoundInProgress": "core.errors",
    "NothingToRerun": "core.errors",
    "CancelToken": "core.cancel",
    "RoundCancelled": "core.cancel",
    "EventScope": "core.events",
    "PostEventType": "core.events",
    "RoundEventType": "core.events",
    "SessionEventType": "core.events",
    "SessionEventHandler": "core.events",
    "SessionEventHandlerBase": "core.events",
    "TaskWeaverEvent": "core.events",
    "EventPayload": "core.events",
    "RoundStarted": "core.events",
    "RoundEnded": "core.events",
    "PostAdded": "core.events",
    "PostStarted": "core.events",
    "SendToUpdated": "core.events",
    "MessageChunk": "core.events",
    "AttachmentChunk": "core.events",
    "ExecutionOutput": "core.events",
    "KernelQueued": "core.events",
    "OutputStream": "core.execution.live_output",
    "Attachment": "core.memory",
    "AttachmentType": "core.memory",
    "ExecutionStatus": "core.memory",
    "PostStatus": "core.memory",
    "RoleName": "core.memory",
    "Post": "core.memory",
    "Round": "core.memory",
    "Plugin": "core.plugins.api",
    "register_plugin": "core.plugins.api",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from core.app import TaskWeaverApp
    from core.cancel import CancelToken, RoundCancelled
    from core.config import AppConfig, AppSessionConfig
    from core.errors import (
        BadFiles,
        ConfigError,
        NothingToRerun,
        RoundInProgress,
        SessionFull,
        SessionLimitReached,
        SessionNotFound,
        SessionStopped,
        WeaverError,
    )
    from core.events import (
        AttachmentChunk,
        EventPayload,
        EventScope,
        ExecutionOutput,
        KernelQueued,
        MessageChunk,
        PostAdded,
        PostEventType,
        PostStarted,
        RoundEnded,
        RoundEventType,
        RoundStarted,
        SendToUpdated,
        SessionEventHandler,
        SessionEventHandlerBase,
        SessionEventType,
        TaskWeaverEvent,
    )
    from core.execution.live_output import OutputStream
    from core.memory import Attachment, AttachmentType, ExecutionStatus, Post, PostStatus, RoleName, Round
    from core.plugins.api import Plugin, register_plugin
    from core.session import Session


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
