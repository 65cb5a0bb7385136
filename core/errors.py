"""The engine's errors, by type: the UI decides what to do from the class, never from the words.

Every ``WeaverError``'s message is written for the person using Weaver (no server paths, no stack
traces), so a UI may show ``str(error)`` as it is. Each also derives from the built-in exception
that callers caught before this family existed (``ValueError`` for bad input, ``RuntimeError``
for a refused request), so code written against TaskWeaver's looser contract keeps working.
"""

from __future__ import annotations


class WeaverError(Exception):
    """Something Weaver refused or could not do; the message is fit to show the user."""


class ConfigError(WeaverError, ValueError):
    """A configuration value is invalid (a setting, a config file, a prompt file); the message names the key."""


class BadFiles(WeaverError, ValueError):
    """Files handed to ``send_message`` cannot be taken (name, size, type, room); nothing was kept."""


class SessionFull(BadFiles):
    """The files do not fit in the session's folder (``execution.disk_mb``)."""


class SessionLimitReached(WeaverError, RuntimeError):
    """The app already serves ``session.max_live_sessions`` sessions."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Weaver is serving its limit of {limit} sessions; try again later.")
        self.limit = limit


class SessionNotFound(WeaverError, KeyError):
    """``get_session(session_id)`` named no live session."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "no such session"


class SessionStopped(WeaverError, RuntimeError):
    """The session was stopped; it runs no more rounds."""

    def __init__(self, session_id: str) -> None:
        super().__init__("This session has ended, so it cannot run another message. Start a new chat.")
        self.session_id = session_id


class RoundInProgress(WeaverError, RuntimeError):
    """A round is already running in this session; rounds of one session never overlap."""

    def __init__(self) -> None:
        super().__init__("Your previous message is still being worked on; wait for it or press Stop.")


class NothingToRerun(WeaverError, LookupError):
    """``Session.rerun`` named no round of this session (or the session has none yet)."""

    def __init__(self, round_id: str | None = None) -> None:
        super().__init__(
            "There is no answer to regenerate yet; send a message first."
            if round_id is None
            else "That message is not part of this chat's conversation any more (it was replaced or the chat "
            "was reopened), so it cannot be run again; send it as a new message."
        )
        self.round_id = round_id


class GatewayError(WeaverError, RuntimeError):
    """The Jupyter kernel gateway (``execution.gateway_url``) cannot serve Weaver's kernels."""


class GatewayAuthError(GatewayError):
    """The gateway refused Weaver's credentials (401/403): ``execution.gateway_token`` is wrong or missing."""


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached, or answered with something other than a Jupyter gateway's API."""


class SandboxUnavailableError(WeaverError, RuntimeError):
    """The configuration asks for a sandbox that cannot be built here; the message says what to do."""
