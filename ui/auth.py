"""Who is using Weaver: the login modes and the password store (the login throttle: ``ui.guards``).

``WEAVER_UI_AUTH`` picks the mode:

* ``local`` (the default on a loopback address): nobody types anything; whoever reaches the page is
  the one local user (the OS user, or ``WEAVER_UI_LOCAL_USER``). It works through Chainlit's header
  login, which the page calls by itself, so history works with zero set-up. Other web pages cannot
  use it: ``ui.guard`` refuses their origins. A non-loopback address refuses this mode.
* ``password``: users and argon2 hashes in ``<app_dir>/users.json`` (``weaver user add``).
* ``header``: a trusted proxy names the user in ``WEAVER_UI_USER_HEADER``.
* ``oauth``: Chainlit's providers (GitHub, Google, Azure AD, Okta, Keycloak, generic), configured by
  their environment variables; ``WEAVER_UI_ALLOWED_USERS`` says who may enter.

Login cookies are signed with ``CHAINLIT_AUTH_SECRET``. For ``local`` and ``password`` a secret is
generated on first start unless one is set: kept in a shared PostgreSQL history database
(``ui.shared``) when there is one, else in the app folder (mode 0600), so replicas sharing either
agree; ``header`` and ``oauth`` want an explicit one, shared by every replica. The secret never reaches a kernel (the
kernels' environment is an allowlist).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

if TYPE_CHECKING:
    from ui.guards.login_throttle import LoginLimiter

logger = logging.getLogger("weaver.ui.auth")

AuthMode = Literal["local", "password", "header", "oauth"]
SECRET_ENV = "CHAINLIT_AUTH_SECRET"
SECRET_FILE = ".auth_secret"
USERS_FILE = "users.json"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
OAUTH_ENV = re.compile(r"^OAUTH_[A-Z_]+_CLIENT_ID$")
_HASHER = PasswordHasher()
# Checked against when a user does not exist, so a wrong name costs as much time as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class AuthSetupError(ValueError):
    """The login configuration cannot be served safely; the message says what to set."""


def choose_mode(requested: str | None, user_header: str | None, loopback: bool) -> AuthMode:
    """The login mode: as asked, else ``header`` when a proxy header is set, else ``local`` on loopback.

    On an address other machines can reach, ``local`` would let anyone in: refused.
    """
    mode = (requested or ("header" if user_header else "local" if loopback else "")).strip().lower()
    if not mode:
        raise AuthSetupError(
            "Weaver listens on an address other machines can reach, so it needs a login: set WEAVER_UI_AUTH "
            "to password, header or oauth (local login is for 127.0.0.1 only)."
        )
    if mode not in ("local", "password", "header", "oauth"):
        raise AuthSetupError(f"WEAVER_UI_AUTH={requested!r} is not one of local, password, header, oauth.")
    if mode == "local" and not loopback:
        raise AuthSetupError(
            "WEAVER_UI_AUTH=local lets whoever reaches the page in as the local user, so it is refused on an "
            "address other machines can reach; use password, header or oauth, or listen on 127.0.0.1."
        )
    if mode == "header" and not user_header:
        raise AuthSetupError("WEAVER_UI_AUTH=header needs WEAVER_UI_USER_HEADER, the header the proxy sets.")
    return mode  # type: ignore[return-value]


def local_user_name(configured: str | None) -> str:
    """The one local user: ``WEAVER_UI_LOCAL_USER``, else the OS account's name."""
    name = (configured or "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "local"
    return name


def ensure_secret(app_dir: Path, mode: AuthMode, database_url: str | None = None) -> str:
    """The cookie-signing secret: ``CHAINLIT_AUTH_SECRET`` if set; for ``local``/``password`` the one kept
    in a shared (PostgreSQL) history database, else the one in the app folder (created 0600 on first
    start); otherwise an ``AuthSetupError``. Replicas sharing the database or the app folder agree."""
    given = os.environ.get(SECRET_ENV, "")
    if given:
        return given
    if mode in ("header", "oauth"):
        raise AuthSetupError(
            f"WEAVER_UI_AUTH={mode} needs {SECRET_ENV} to sign login cookies (from `chainlit create-secret`); "
            "set the same one on every replica."
        )
    from ui.shared import is_shared, shared_secret

    if is_shared(database_url):
        assert database_url is not None
        import asyncpg  # the database drivers only when the secret is shared (`weaver user` needs neither)
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return shared_secret(database_url)
        except (OSError, SQLAlchemyError, asyncpg.PostgresError) as exc:
            raise AuthSetupError(
                f"the login secret is kept in the shared database, which cannot be reached ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check WEAVER_DATABASE_URL, or set {SECRET_ENV} on every replica."
            ) from None
    return _secret_file(app_dir / SECRET_FILE)


def _secret_file(path: Path) -> str:
    """The secret in ``path``, made on first use. It is written to a private temporary file and
    linked into place, so a replica starting at the same moment reads a whole secret or makes none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
            logger.info("made a new login secret in %s", path)
        except FileExistsError:
            pass  # another server made it first: use theirs
        finally:
            os.unlink(tmp)
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise AuthSetupError(f"{path} holds no usable secret; delete it to have a new one made.")
    os.chmod(path, 0o600)
    return secret


# ----------------------------------------------------------------------------------- passwords


class UserStore:
    """Users and argon2 hashes in ``<app_dir>/users.json`` (mode 0600), re-read when it changes."""

    def __init__(self, app_dir: Path) -> None:
        self.path = app_dir / USERS_FILE
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise AuthSetupError(f"{self.path} cannot be read as a user list ({exc})") from None
        return data if isinstance(data, dict) else {}

    def _save(self, users: Mapping[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(users, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def names(self) -> list[str]:
        return sorted(self._load())

    def add(self, name: str, password: str) -> bool:
        """Add or replace ``name``; True if the user is new."""
        if not USER_NAME.match(name):
            raise ValueError("a user name has 1-64 letters, digits or . _ @ + - and starts with a letter or digit")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        with self._lock:
            users = self._load()
            new = name not in users
            users[name] = {
                "hash": _HASHER.hash(password),
                "changed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self._save(users)
        return new

    def remove(self, name: str) -> bool:
        with self._lock:
            users = self._load()
            if users.pop(name, None) is None:
                return False
            self._save(users)
        return True

    def verify(self, name: str, password: str) -> bool:
        """True when the password is right; the same work is done for an unknown name."""
        entry = self._load().get(name)
        stored = str(entry.get("hash", "")) if isinstance(entry, dict) else _DUMMY_HASH
        try:
            return _HASHER.verify(stored, password) and entry is not None
        except (VerificationError, InvalidHashError):
            return False


# ----------------------------------------------------------------------------------- oauth


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


# ----------------------------------------------------------------------------------- Chainlit


@dataclass
class Login:
    """The login in force: its mode, and the throttle ``ui.guard`` applies to password logins."""

    mode: AuthMode
    description: str
    throttle: LoginLimiter | None = None


def install_login(
    mode: AuthMode,
    app_dir: Path,
    *,
    local_user: str | None,
    user_header: str | None,
    allowed_users: list[str],
    throttle: LoginLimiter,
    database_url: str | None = None,
) -> Login:
    """Register the Chainlit callbacks of ``mode`` and make sure a signing secret is in place.

    Raises ``AuthSetupError`` when the mode cannot be served safely as configured.
    """
    import chainlit as cl

    os.environ[SECRET_ENV] = ensure_secret(app_dir, mode, database_url)
    if mode == "local":
        name = local_user_name(local_user)

        @cl.header_auth_callback
        async def local_login(headers: Mapping[str, str]) -> cl.User | None:
            return cl.User(identifier=name, metadata={"provider": "local"})

        return Login(mode, f"local: everyone who reaches this page is {name!r}")
    if mode == "header":
        header = user_header or ""

        @cl.header_auth_callback
        async def header_login(headers: Mapping[str, str]) -> cl.User | None:
            value = (headers.get(header) or "").strip()  # a repeated header never gets here (ui.guard)
            return cl.User(identifier=value, metadata={"provider": "header"}) if value else None

        return Login(mode, f"header: the user is whoever the proxy names in the {header} header")
    if mode == "password":
        store = UserStore(app_dir)
        if not store.names():
            logger.warning("password login is on but %s has no users: add one with `weaver user add NAME`", store.path)

        @cl.password_auth_callback
        async def password_login(username: str, password: str) -> cl.User | None:
            from ui.bridge import run_in_thread

            ok = await run_in_thread(store.verify, username, password, name="weaver-login")  # argon2 is slow on purpose
            return cl.User(identifier=username, metadata={"provider": "password"}) if ok else None

        return Login(mode, f"password: users in {store.path}", throttle)
    if not oauth_configured():
        raise AuthSetupError(
            "WEAVER_UI_AUTH=oauth needs a provider: set its OAUTH_<PROVIDER>_CLIENT_ID and _CLIENT_SECRET "
            "(see Chainlit's OAuth documentation)."
        )
    if not allowed_users:
        raise AuthSetupError(
            "WEAVER_UI_AUTH=oauth needs WEAVER_UI_ALLOWED_USERS: names or @domains who may enter "
            "(or * for anyone the provider accepts)."
        )
    if "*" in allowed_users:
        logger.warning("!!! WEAVER_UI_ALLOWED_USERS=*: anyone the OAuth provider accepts may use Weaver")

    @cl.oauth_callback
    async def oauth_login(
        provider_id: str, token: str, raw_user_data: dict[str, str], default_user: cl.User, id_token: str | None = None
    ) -> cl.User | None:
        email = raw_user_data.get("email") if isinstance(raw_user_data, dict) else None
        if allowed_by(allowed_users, default_user.identifier, email):
            return default_user
        logger.warning(
            "oauth login of %r via %s refused: not in WEAVER_UI_ALLOWED_USERS", default_user.identifier, provider_id
        )
        return None

    return Login(mode, f"oauth: {', '.join(allowed_users)} may enter")
