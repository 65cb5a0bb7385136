"""The audit log, ``<app_dir>/audit.jsonl``: who signed in, out, was added or removed, disabled,
given a role, deleted a chat, downloaded a file, had a chat stopped because their login ended or by
an admin, and every admin action (``by`` names the admin); one JSON object a line.

Each line has ``time`` (UTC, ISO 8601), ``event`` (an ``AuditEvent`` value), ``user`` and
``client`` (the browser's address as the guards see it, behind a trusted proxy the one it names;
``cli`` for ``weaver user``), then the event's own fields. Callers pass structured values, never
sentences: ``record(AuditEvent.FILE_DOWNLOADED, user=..., file=..., chat=...)``.

Several processes append to one file (the server, ``weaver user``, other replicas on a shared
folder): each line is one ``write`` to a descriptor opened with ``O_APPEND``, at most
``MAX_LINE_BYTES`` (one pipe buffer; longer fields are cut), so lines never interleave on a local
file system. The file is opened afresh for every line (log rotation just works), never through a
link (``O_NOFOLLOW``), and only when it is a regular file with one name, as ``core.safe_files``
opens users' files. A line that cannot be written is an ERROR in the server log; the action it
records goes on.
"""

from __future__ import annotations

import contextvars
import enum
import json
import logging
import os
import stat
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Union

from core.workspace import default_app_dir

logger = logging.getLogger("weaver.ui.audit")

AUDIT_FILE = "audit.jsonl"
MAX_LINE_BYTES = 4096  # PIPE_BUF on Linux: one write, never split
MAX_FIELD_CHARS = 200
SHORT_FIELD_CHARS = 40  # when a line of MAX_FIELD_CHARS fields would not fit
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
Value = Union[str, int, float, bool, None]

# The address of the client of the request being handled, set by ``ui.guards`` for every request.
CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("weaver_audit_client", default=None)
# That request's ASGI scope, for ``request_user`` (who asks, from the login token).
REQUEST: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("weaver_audit_request", default=None)


class AuditEvent(str, enum.Enum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"  # reason: credentials, throttled, no_user_header, not_allowed
    LOGOUT = "logout"
    USER_ADDED = "user_added"
    USER_REMOVED = "user_removed"
    PASSWORD_CHANGED = "password_changed"
    CHAT_DELETED = "chat_deleted"
    FILE_DOWNLOADED = "file_downloaded"
    CHAT_SHARED = "chat_shared"  # a read-only link made (chat, link: the token's first characters)
    CHAT_UNSHARED = "chat_unshared"  # its links revoked
    SESSION_ENDED = "session_ended"  # a live chat stopped because its login ended (reason: ui.logins.Refusal)
    USER_DISABLED = "user_disabled"
    USER_ENABLED = "user_enabled"
    ROLE_CHANGED = "role_changed"  # role: the new one
    SESSION_STOPPED = "session_stopped"  # an admin stopped a live chat's session (user: its owner; by: the admin)
    ADMIN_REFUSED = "admin_refused"  # an admin route asked by someone who may not (reason)
    EXPERIENCE_SAVED = "experience_saved"  # a chat saved as an experience tip (chat, tip)
    EXPERIENCE_DELETED = "experience_deleted"  # a tip deleted (tip; by: the admin, or the OS user of the CLI)


class UnsafeAuditFile(OSError):
    """The audit file is not a regular file with one name (a link, a FIFO, a hard link)."""


def _cut(value: Value, limit: int) -> Value:
    return value[:limit] if isinstance(value, str) else value


def audit_line(event: AuditEvent, user: str, client: str | None, details: Mapping[str, Value], when: datetime) -> bytes:
    """One line of the log, at most ``MAX_LINE_BYTES`` (fields are cut to fit; ``cut`` says so)."""
    for limit in (MAX_FIELD_CHARS, SHORT_FIELD_CHARS):
        entry: dict[str, Value] = {
            "time": when.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
            "event": event.value,
            "user": _cut(user, limit),
            "client": _cut(client or "unknown", limit),
        }
        for key, value in details.items():
            if key not in entry and value is not None:
                entry[key[:SHORT_FIELD_CHARS]] = _cut(value, limit)
        if limit != MAX_FIELD_CHARS:
            entry["cut"] = True
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        if len(line) <= MAX_LINE_BYTES:
            return line
    line = json.dumps({k: entry[k] for k in ("time", "event", "user", "client")} | {"cut": True}).encode() + b"\n"
    return line[:MAX_LINE_BYTES]


class AuditLog:
    """``audit.jsonl`` in one app folder."""

    def __init__(self, app_dir: Path) -> None:
        self.path = Path(app_dir) / AUDIT_FILE

    def append(self, line: bytes) -> None:
        """One ``write`` of one line; ``UnsafeAuditFile`` or ``OSError`` when it cannot be."""
        fd = os.open(self.path, _FLAGS, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise UnsafeAuditFile(f"{self.path} is not a regular file with one name; nothing written")
            if os.write(fd, line) != len(line):
                raise OSError(f"{self.path}: a line was written in part")
        finally:
            os.close(fd)

    def record(self, event: AuditEvent, *, user: str, client: str | None = None, **details: Value) -> bool:
        """Append one event; ``client`` defaults to the current request's. False (and an ERROR in
        the server log) when the line could not be written."""
        client = client if client is not None else CLIENT.get()
        line = audit_line(event, user, client, details, datetime.now(timezone.utc))
        try:
            self.append(line)
        except OSError as exc:
            logger.error("audit event %s of %r not written: %s", event.value, user[:80], exc)
            return False
        return True


@lru_cache(maxsize=4)
def _log_for(app_dir: Path) -> AuditLog:
    return AuditLog(app_dir)


def server_log() -> AuditLog:
    """The audit log of this server's app folder (``WEAVER_APP_DIR``)."""
    return _log_for(default_app_dir().resolve())


def record(event: AuditEvent, *, user: str, client: str | None = None, **details: Value) -> bool:
    """Append ``event`` to this server's audit log (see ``AuditLog.record``)."""
    return server_log().record(event, user=user, client=client, **details)


def scope_client(scope: Mapping[str, Any]) -> str:
    """The client of an ASGI request: the peer, or the address a trusted proxy names (uvicorn has
    already put it in ``client``, ``ui.guards.client``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
