"""Password-login users: names and argon2 hashes in ``<app_dir>/users.json`` (``weaver user``).

Each record also holds a ``login_epoch``, a random value made anew whenever its password is set. A
login carries the epoch it was made under (in the token's user metadata), so a password change
(``weaver user passwd``, or ``add`` of an existing name) signs out every earlier login of that user,
and ``remove`` every login of it: the server compares on each request (``epoch_of``), and re-reads
the file when it changes, so the command needs no way to reach a running server and every replica
sharing the app folder sees it at once.

A record may also hold a ``role`` (``admin`` or ``user``; absent: ``user``, so stores written
before roles load as before) and ``disabled`` (absent: false). Disabling makes a new epoch too, so
the user's logins end at once and do not come back when the user is enabled again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ui.logins.base import AuthSetupError

USERS_FILE = "users.json"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_HASHER = PasswordHasher()
# Checked against when a user does not exist, so a wrong name costs as much time as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


ADMIN = "admin"
USER = "user"
ROLES = (ADMIN, USER)
Role = Literal["admin", "user"]


class NoSuchUser(KeyError):
    """The name is not in the user list."""


@dataclass(frozen=True)
class UserInfo:
    """One user as lists show it (never the hash)."""

    name: str
    role: Role
    disabled: bool
    changed: str


def _role(entry: Mapping[str, Any]) -> Role:
    return "admin" if entry.get("role") == ADMIN else "user"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class UserStore:
    """Users and argon2 hashes in ``<app_dir>/users.json`` (mode 0600), re-read when it changes."""

    def __init__(self, app_dir: Path) -> None:
        self.path = app_dir / USERS_FILE
        self._lock = threading.Lock()
        # The list as last read, with the (mtime_ns, size, inode) it was read at: one pair, replaced
        # whole, so a login on a worker thread and a check on the event loop never see halves.
        self._copy: tuple[tuple[int, int, int] | None, Mapping[str, dict[str, Any]]] = (None, {})

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise AuthSetupError(f"{self.path} cannot be read as a user list ({reason})") from None
        if not isinstance(data, dict):
            raise AuthSetupError(
                f"{self.path} is not a user list: expected a JSON object of names, found {type(data).__name__}"
                " (`weaver user add NAME` writes one)"
            )
        return data

    def _save(self, users: Mapping[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(users, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)  # a new inode: readers see the old list or the new one, never half

    def current(self) -> Mapping[str, dict[str, Any]]:
        """The users as the file holds them now: one ``stat`` per call, a re-read only when it
        changed (the server asks on every request; ``weaver user`` writes from another process).
        A list that cannot be read counts as empty: nobody's login is honoured until it is fixed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._copy = (None, {})
            return self._copy[1]
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._copy[0]:
            try:
                users: Mapping[str, dict[str, Any]] = self._load()
            except AuthSetupError:
                users = {}
            self._copy = (seen, users)
        return self._copy[1]

    def names(self) -> list[str]:
        return sorted(self._load())

    def epoch_of(self, name: str) -> str | None:
        """The user's current login epoch ("" for a record older than epochs); None: no such user."""
        entry = self.current().get(name)
        return str(entry.get("login_epoch", "")) if isinstance(entry, dict) else None

    def users(self) -> list[UserInfo]:
        """Every user with its role and state, by name."""
        return [
            UserInfo(name, _role(entry), bool(entry.get("disabled")), str(entry.get("changed", "")))
            for name, entry in sorted(self._load().items())
            if isinstance(entry, dict)
        ]

    def role_of(self, name: str) -> Role | None:
        """The user's role as the file says now; None: no such user."""
        entry = self.current().get(name)
        return _role(entry) if isinstance(entry, dict) else None

    def is_disabled(self, name: str) -> bool:
        entry = self.current().get(name)
        return isinstance(entry, dict) and bool(entry.get("disabled"))

    def set_role(self, name: str, role: str) -> bool:
        """Make ``name`` an ``admin`` or a ``user``; False when it already was. ``NoSuchUser``."""
        if role not in ROLES:
            raise ValueError(f"a role is one of {', '.join(ROLES)}")
        return self._change(name, lambda entry: entry.update(role=role) if _role(entry) != role else False)

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable (its logins end: a new epoch) or enable ``name``; False when nothing changed."""

        def change(entry: dict[str, Any]) -> bool:
            if bool(entry.get("disabled")) == disabled:
                return False
            entry["disabled"] = disabled
            entry["login_epoch"] = secrets.token_hex(8)
            entry["changed"] = _now()
            return True

        return self._change(name, change)

    def set_disabled_outside(self, name: str, disabled: bool) -> bool:
        """``set_disabled`` for a user of header or OAuth login, who may have no record here yet:
        disabling makes one without a password (it never signs anyone in with a password)."""
        name = name.strip()
        if not name or len(name) > 256 or not name.isprintable():
            raise ValueError("a user name is 1-256 printable characters")
        if disabled:
            with self._lock:
                users = self._load()
                if not isinstance(users.get(name), dict):
                    users[name] = {"changed": _now(), "login_epoch": secrets.token_hex(8)}
                    self._save(users)
        try:
            return self.set_disabled(name, disabled)
        except NoSuchUser:
            return False  # enabling someone never disabled

    def _change(self, name: str, change: Any) -> bool:
        with self._lock:
            users = self._load()
            entry = users.get(name)
            if not isinstance(entry, dict):
                raise NoSuchUser(name)
            if change(entry) is False:
                return False
            self._save(users)
        return True

    def add(self, name: str, password: str, *, must_exist: bool = False, role: Role | None = None) -> bool:
        """Add ``name`` or give it a new password (a new login epoch: its earlier logins end);
        True if the user is new. ``must_exist``: only change a password (``NoSuchUser`` otherwise).
        ``role``: set it (a new user without one is a ``user``; an existing one keeps its own), and
        a new password keeps the user's disabled state."""
        if not USER_NAME.match(name):
            raise ValueError("a user name has 1-64 letters, digits or . _ @ + - and starts with a letter or digit")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        with self._lock:
            users = self._load()
            new = name not in users
            if new and must_exist:
                raise NoSuchUser(name)
            before = users.get(name)
            entry = {k: v for k, v in before.items() if k in ("role", "disabled")} if isinstance(before, dict) else {}
            entry.update(hash=_HASHER.hash(password), changed=_now(), login_epoch=secrets.token_hex(8))
            if role is not None:
                entry["role"] = role
            users[name] = entry
            self._save(users)
        return new

    def remove(self, name: str) -> bool:
        with self._lock:
            users = self._load()
            if users.pop(name, None) is None:
                return False
            self._save(users)
        return True

    def login(self, name: str, password: str) -> str | None:
        """The user's login epoch when the password is right and the user is not disabled, else
        None; an unknown name costs the same work as a wrong password. The list is the copy read
        when the file last changed (``current``): a rush of logins parses it once, not once each."""
        entry = self.current().get(name)
        stored = str(entry.get("hash", "")) if isinstance(entry, dict) else _DUMMY_HASH
        try:
            ok = _HASHER.verify(stored, password) and isinstance(entry, dict) and not entry.get("disabled")
        except (VerificationError, InvalidHashError):
            return None
        return str(entry.get("login_epoch", "")) if ok and isinstance(entry, dict) else None

    def verify(self, name: str, password: str) -> bool:
        """True when the password is right."""
        return self.login(name, password) is not None
