"""The login modes, one small class each (listed once in ``ui.logins.MODES``).

* ``local`` (the default on a loopback address): nobody types anything; whoever reaches the page is
  the one local user (the OS user, or ``WEAVER_UI_LOCAL_USER``). It works through Chainlit's header
  login, which the page calls by itself, so history works with zero set-up. Other web pages cannot
  use it: ``ui.guard`` refuses their origins. A non-loopback address refuses this mode.
* ``password``: users and argon2 hashes in ``<app_dir>/users.json`` (``weaver user add``).
* ``header``: a trusted proxy names the user in ``WEAVER_UI_USER_HEADER``.
* ``oauth``: Chainlit's providers (GitHub, Google, Azure AD, Okta, Keycloak, generic), configured by
  their environment variables; ``WEAVER_UI_ALLOWED_USERS`` says who may enter.

Chainlit is imported only in ``install``, so the command line (``weaver user``) stays light.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from typing import Any, Mapping

from ui import audit
from ui.audit import AuditEvent
from ui.logins.base import AuthSetupError, LoginMode, Refusal
from ui.logins.users import UserStore

logger = logging.getLogger("weaver.ui.auth")

OAUTH_ENV = re.compile(r"^OAUTH_[A-Z_]+_CLIENT_ID$")


def local_user_name(configured: str | None) -> str:
    """The one local user: ``WEAVER_UI_LOCAL_USER``, else the OS account's name."""
    name = (configured or "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "local"
    return name


class LocalLogin(LoginMode):
    name = "local"
    summary = "whoever reaches the page is the local user (127.0.0.1 only)"
    serves_others = False

    def check_safe(self) -> None:
        super().check_safe()
        if not self.context.loopback:
            raise AuthSetupError(
                "WEAVER_UI_AUTH=local lets whoever reaches the page in as the local user, so it is refused on an "
                "address other machines can reach; use password, header or oauth, or listen on 127.0.0.1."
            )

    def install(self) -> str:
        import chainlit as cl

        name = local_user_name(self.context.local_user)

        @cl.header_auth_callback
        async def local_login(headers: Mapping[str, str]) -> cl.User | None:
            audit.record(AuditEvent.LOGIN, user=name, mode=self.name)
            return cl.User(identifier=name, metadata={"provider": "local"})

        return f"local: on this machine's own address the page signs you in as {name!r}, without a password"

    def is_admin(self, identifier: str) -> bool:
        """The one local user owns this machine's server: the admin page is theirs."""
        return identifier == local_user_name(self.context.local_user)


class PasswordLogin(LoginMode):
    name = "password"
    summary = "users and passwords in <app_dir>/users.json (weaver user add)"
    throttled = True
    manages_users = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.users = UserStore(self.context.app_dir)

    def install(self) -> str:
        import chainlit as cl

        store = self.users
        if not store.names():
            logger.warning("password login is on but %s has no users: add one with `weaver user add NAME`", store.path)

        @cl.password_auth_callback
        async def password_login(username: str, password: str) -> cl.User | None:
            from ui.bridge import run_in_thread

            epoch = await run_in_thread(store.login, username, password, name="weaver-login")  # argon2: slow on purpose
            if epoch is None:
                audit.record(AuditEvent.LOGIN_FAILED, user=username, mode=self.name, reason="credentials")
                return None
            audit.record(AuditEvent.LOGIN, user=username, mode=self.name)
            return cl.User(identifier=username, metadata={"provider": "password", "login_epoch": epoch})

        return f"password: users in {store.path}"

    def is_admin(self, identifier: str) -> bool:
        """The role ``users.json`` gives the user now (``weaver user add --admin``, the admin page)."""
        return self.users.role_of(identifier) == "admin" and not self.users.is_disabled(identifier)

    def refusal(self, identifier: str, metadata: Mapping[str, Any]) -> Refusal | None:
        """A removed or disabled user's logins, and logins made under an earlier password, no longer hold."""
        epoch = self.users.epoch_of(identifier)
        if epoch is None:
            return Refusal.USER_REMOVED
        if self.users.is_disabled(identifier):
            return Refusal.USER_DISABLED
        if str(metadata.get("login_epoch", "")) != epoch:
            return Refusal.PASSWORD_CHANGED
        return None


class OutsideUsers(LoginMode):
    """Users who come from outside (a proxy, an OAuth provider): Weaver keeps no password for them,
    but may disable one (a record in ``users.json`` without a password: ``weaver user disable NAME
    --outside``, the admin page), which refuses their logins and ends those they have."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.users = UserStore(self.context.app_dir)

    def disabled(self, identifier: str) -> bool:
        """True (and an audit line) when this user may not sign in."""
        if not self.users.is_disabled(identifier):
            return False
        audit.record(AuditEvent.LOGIN_FAILED, user=identifier, mode=self.name, reason="disabled")
        return True

    def refusal(self, identifier: str, metadata: Mapping[str, Any]) -> Refusal | None:
        return Refusal.USER_DISABLED if self.users.is_disabled(identifier) else None


class HeaderLogin(OutsideUsers):
    name = "header"
    summary = "a trusted proxy names the user in WEAVER_UI_USER_HEADER"
    explicit_secret = True

    def check_safe(self) -> None:
        if not self.context.user_header:
            raise AuthSetupError("WEAVER_UI_AUTH=header needs WEAVER_UI_USER_HEADER, the header the proxy sets.")
        super().check_safe()

    def install(self) -> str:
        import chainlit as cl

        header = self.context.user_header or ""

        @cl.header_auth_callback
        async def header_login(headers: Mapping[str, str]) -> cl.User | None:
            value = (headers.get(header) or "").strip()  # a repeated header never gets here (ui.guard)
            if not value:
                audit.record(AuditEvent.LOGIN_FAILED, user="", mode=self.name, reason="no_user_header")
                return None
            if self.disabled(value):
                return None
            audit.record(AuditEvent.LOGIN, user=value, mode=self.name)
            return cl.User(identifier=value, metadata={"provider": "header"})

        return f"header: the user is whoever the proxy names in the {header} header"


def oauth_configured() -> bool:
    """True when at least one of Chainlit's OAuth providers has its client id set."""
    return any(OAUTH_ENV.match(key) and value for key, value in os.environ.items())


def allowed_by(allowed: list[str], identifier: str, email: str | None = None) -> bool:
    """Whether ``WEAVER_UI_ALLOWED_USERS`` lets this OAuth user in: a name, an ``@domain`` of the
    e-mail, or ``*`` (anyone the provider accepts, asked for by name)."""
    names = {a.strip().lower() for a in allowed if a.strip()}
    if "*" in names:
        return True
    candidates = {identifier.strip().lower()} | ({email.strip().lower()} if email else set())
    if candidates & names:
        return True
    domains = {n for n in names if n.startswith("@")}
    return any(c.rpartition("@")[1] and "@" + c.rpartition("@")[2] in domains for c in candidates)


class OAuthLogin(OutsideUsers):
    name = "oauth"
    summary = "Chainlit's OAuth providers; WEAVER_UI_ALLOWED_USERS says who may enter"
    explicit_secret = True

    def check_safe(self) -> None:
        super().check_safe()
        if not oauth_configured():
            raise AuthSetupError(
                "WEAVER_UI_AUTH=oauth needs a provider: set its OAUTH_<PROVIDER>_CLIENT_ID and _CLIENT_SECRET "
                "(see Chainlit's OAuth documentation)."
            )
        if not self.context.allowed_users:
            raise AuthSetupError(
                "WEAVER_UI_AUTH=oauth needs WEAVER_UI_ALLOWED_USERS: names or @domains who may enter "
                "(or * for anyone the provider accepts)."
            )

    def install(self) -> str:
        import chainlit as cl

        allowed = list(self.context.allowed_users)
        if "*" in allowed:
            logger.warning("!!! WEAVER_UI_ALLOWED_USERS=*: anyone the OAuth provider accepts may use Weaver")

        @cl.oauth_callback
        async def oauth_login(
            provider_id: str,
            token: str,
            raw_user_data: dict[str, str],
            default_user: cl.User,
            id_token: str | None = None,
        ) -> cl.User | None:
            email = raw_user_data.get("email") if isinstance(raw_user_data, dict) else None
            if allowed_by(allowed, default_user.identifier, email):
                if self.disabled(default_user.identifier):
                    return None
                audit.record(AuditEvent.LOGIN, user=default_user.identifier, mode=self.name, provider=provider_id)
                return default_user
            audit.record(
                AuditEvent.LOGIN_FAILED,
                user=default_user.identifier,
                mode=self.name,
                provider=provider_id,
                reason="not_allowed",
            )
            logger.warning(
                "oauth login of %r via %s refused: not in WEAVER_UI_ALLOWED_USERS", default_user.identifier, provider_id
            )
            return None

        return f"oauth: {', '.join(allowed)} may enter"
