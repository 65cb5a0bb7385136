"""Weaver's engine: TaskWeaver's Session model, with no UI dependency."""

from core.app import TaskWeaverApp
from core.cancel import CancelToken, RoundCancelled
from core.config import AppConfig, ConfigError
from core.events import (
    EventScope,
    PostEventType,
    RoundEventType,
    SessionEventHandler,
    SessionEventHandlerBase,
    SessionEventType,
    TaskWeaverEvent,
)
from core.memory import Attachment, AttachmentType, Post, Round
from core.session import AppSessionConfig, Session

__all__ = [
    "AppConfig",
    "AppSessionConfig",
    "Attachment",
    "AttachmentType",
    "CancelToken",
    "ConfigError",
    "EventScope",
    "Post",
    "PostEventType",
    "Round",
    "RoundCancelled",
    "RoundEventType",
    "Session",
    "SessionEventHandler",
    "SessionEventHandlerBase",
    "SessionEventType",
    "TaskWeaverApp",
    "TaskWeaverEvent",
]
