"""What a login mode is: one small class saying what it needs at start (``LoginContext``), what it
refuses as unsafe (``check_safe``), how it authenticates (``install``) and when a login it made no
longer holds (``refusal``). ``ui.logins`` lists the modes once (``MODES``): a new mode is a subclass
in ``ui.logins.modes`` and one name in that list.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

SECRET_ENV = "CHAINLIT_AUTH_SECRET"


class AuthSetupError(ValueError):
    """The login configuration cannot be served safely; the message says what to set."""


class Refusal(enum.Enum):
    """Why a login token that Chainlit would accept is refused (``ui.logins.tokens``)."""

    SIGNED_OUT = "signed out"  # its own logout
    EXPIRED = "expired"  # older than WEAVER_UI_SESSION_HOURS
    USER_REMOVED = "user removed"  # weaver user remove
    PASSWORD_CHANGED = "password changed"  # weaver user passwd (a new login epoch)
    USER_DISABLED = "user disabled"  # weaver user disable, or the admin page


@dataclass(frozen=True)
class LoginContext:
    """What a mode may need at start: the settings that concern logins, and where the server is."""

    app_dir: Path
    loopback: bool  # the server listens only where this machine can reach it
    local_user: str | None = None
    user_header: str | None = None
    allowed_users: list[str] = field(default_factory=list)
    admins: list[str] = field(default_factory=list)  # WEAVER_UI_ADMINS, for header and oauth logins
    database_url: str | None = None


class LoginMode:
    """One login mode. Subclasses set ``name`` and ``summary`` and implement ``install``."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the README and error messages
    # True: cookies must be signed with an explicit CHAINLIT_AUTH_SECRET, shared by every replica
    # (a generated one would let each replica sign its own: header and oauth users come from outside).
    explicit_secret: ClassVar[bool] = False
    throttled: ClassVar[bool] = False  # ui.guard counts failed logins of this mode
    serves_others: ClassVar[bool] = True  # False only for the one local user's own machine

    def __init__(self, context: LoginContext) -> None:
        self.context = context

    def check_safe(self) -> None:
        """Raise ``AuthSetupError`` when this mode cannot be served safely as configured."""
        if self.explicit_secret and not os.environ.get(SECRET_ENV):
            raise AuthSetupError(
                f"WEAVER_UI_AUTH={self.name} needs {SECRET_ENV} to sign login cookies (from `chainlit create-secret`); "
                "set the same one on every replica."
            )

    def install(self) -> str:
        """Register the Chainlit callback that authenticates; returns a line for the server log."""
        raise NotImplementedError

    # True: users, their roles and passwords are Weaver's own (``users.json``), managed from the
    # admin page and ``weaver user``; elsewhere they come from outside and only roles are Weaver's.
    manages_users: ClassVar[bool] = False

    def is_admin(self, identifier: str) -> bool:
        """Whether this user may use the admin page: by default, when ``WEAVER_UI_ADMINS`` names it."""
        wanted = identifier.strip().lower()
        return bool(wanted) and wanted in {name.strip().lower() for name in self.context.admins if name.strip()}

    def refusal(self, identifier: str, metadata: Mapping[str, Any]) -> Refusal | None:
        """Whether a signed, unexpired login of ``identifier`` no longer holds (asked on every request)."""
        return None
