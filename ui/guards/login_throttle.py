"""The login throttle: failed password logins per name and per address; past the limit, 429.

Counted where the attempt is seen (``POST /login``, before Chainlit), so a locked-out name or address
never reaches the password check. Three rules keep it from being walked around:

* The name counted is the name the login uses: the body is parsed by the parser Chainlit's login
  uses (Starlette's form parser: urlencoded and multipart alike), and a form that names the user or
  the password twice, or that is not a form, is refused (400). ``username=decoy&username=alice``
  would otherwise count ``decoy`` while the login checks ``alice``.
* An attempt is reserved before the password is checked: it counts as a failure up front and is
  refunded only when the login succeeds. Checking the count and reserving is one step
  (``LoginLimiter.attempt``), so twelve wrong passwords sent at once are counted as twelve, and
  every one past the limit is answered 429, as it is when they come one by one.
* The address is the peer uvicorn reports, which follows ``X-Forwarded-For`` only when the peer is
  one of ``WEAVER_UI_TRUSTED_PROXIES`` (``ui.guards.client``).

``LoginThrottle`` counts in this process; ``ui.shared.SharedLoginThrottle`` counts in the database
replicas share, with the same rules.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from core import metrics
from ui import audit
from ui.guards.asgi import ASGIApp, Receive, Scope, Send, replayed, watching_status
from ui.guards.headers import ResponseHeaders, refuse

logger = logging.getLogger("weaver.ui.guards.login")

MAX_LOGIN_BODY = 8 * 1024
MAX_NAME_CHARS = 200  # longer names are counted by their start (they can only share a count)
FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")  # what Starlette parses


@dataclass(frozen=True)
class Attempt:
    """One login attempt as the throttle saw it: refused (``retry_after`` > 0, nothing reserved), or
    reserved as a failure until ``LoginLimiter.succeeded`` refunds it. ``token`` is the limiter's own."""

    user: str
    address: str
    retry_after: float = 0.0
    token: Any = None


class LoginLimiter(Protocol):
    """What the login guard asks: this process's ``LoginThrottle``, or ``ui.shared.SharedLoginThrottle``."""

    async def attempt(self, user: str, address: str) -> Attempt:
        """Refuse (``retry_after`` > 0) or reserve one failure for both the name and the address, in one step."""
        ...

    async def succeeded(self, attempt: Attempt) -> None:
        """The login went through: refund the address's reservation and forget the name's failures."""
        ...


def user_key(user: str) -> str:
    return f"user:{user.lower()}"


def address_key(address: str) -> str:
    return f"addr:{address}"


@dataclass
class LoginThrottle:
    """Failed logins per user and per address within a sliding window, in this process's memory.

    Everything here runs on the event loop without awaiting, so ``attempt`` is atomic.
    """

    per_user: int = 5
    per_address: int = 20
    window_s: float = 300.0
    max_keys: int = 10_000  # past this many names and addresses, expired ones are forgotten at once
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until another attempt is allowed (0 when it is allowed now)."""
        now = time.monotonic()
        return max(
            self._wait(user_key(user), self.per_user, now),
            self._wait(address_key(address), self.per_address, now),
        )

    def failed(self, user: str, address: str, at: float | None = None) -> float:
        """Count one failure for both; returns its time (the reservation's token)."""
        now = time.monotonic() if at is None else at
        if len(self._failures) >= self.max_keys:  # many names or addresses: drop what has expired
            self._failures = {k: v for k, v in self._failures.items() if now - v[-1] < self.window_s}
        for key in (user_key(user), address_key(address)):
            self._failures.setdefault(key, []).append(now)
        return now

    def succeeded_as(self, user: str, address: str, at: float | None = None) -> None:
        """Forget the name's failures, and the address's failure reserved at ``at``."""
        self._failures.pop(user_key(user), None)
        times = self._failures.get(address_key(address), [])
        if at is not None and at in times:
            times.remove(at)

    async def attempt(self, user: str, address: str) -> Attempt:
        wait = self.retry_after(user, address)
        if wait > 0:
            return Attempt(user, address, wait)
        return Attempt(user, address, token=self.failed(user, address))

    async def succeeded(self, attempt: Attempt) -> None:
        self.succeeded_as(attempt.user, attempt.address, attempt.token)

    def _wait(self, key: str, limit: int, now: float) -> float:
        recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        if len(recent) < limit:
            return 0.0
        return max(1.0, self.window_s - (now - recent[-limit]))


async def login_name(scope: Scope, body: bytes) -> str:
    """The user name Chainlit's ``POST /login`` will check, parsed from ``body`` exactly as it parses
    it; raises ``ValueError`` (the reason) for a body that is not one unambiguous login form."""
    kind, _ = parse_options_header(Request(scope).headers.get("content-type"))
    if kind not in FORM_TYPES:
        raise ValueError("a login is a form (application/x-www-form-urlencoded or multipart/form-data)")

    async def nothing_more() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    request = Request(scope, replayed(body, nothing_more))
    try:
        form = await request.form()
    except (MultiPartException, HTTPException) as exc:
        raise ValueError(f"the login form cannot be read ({getattr(exc, 'detail', None) or exc})") from None
    try:
        for field_name in ("username", "password"):
            if len(form.getlist(field_name)) > 1:
                raise ValueError(f"the login form names its {field_name} more than once")
        name = form.get("username")
        if name is not None and not isinstance(name, str):
            raise ValueError("the login form's username is a file")
        return name or ""
    finally:
        await form.close()


class RefusalsSaid:
    """Which throttled (name, address) pairs were already written to the audit and server logs, until
    when: a throttled client is refused at every try, and each try names whatever it likes, so a
    line per refusal would let anyone flood both logs. One line per pair per throttle period; the
    oldest pairs are forgotten past ``max_keys`` (then said again at worst)."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def first(self, user: str, address: str, retry_after: float, now: float | None = None) -> bool:
        """True if this refusal is to be written: the pair's first within its throttle period."""
        now = time.monotonic() if now is None else now
        key = (user.lower(), address)
        until = self._until.get(key)
        if until is not None and now < until:
            return False
        self._until[key] = now + retry_after
        self._until.move_to_end(key)
        while len(self._until) > self.max_keys:
            self._until.popitem(last=False)
        return True


@dataclass
class LoginGuard:
    """``POST {path}`` with password login on: throttled, and counted by the name the login uses."""

    path: str
    limiter: LoginLimiter
    said: RefusalsSaid = field(default_factory=RefusalsSaid)

    def applies(self, scope: Scope) -> bool:
        return scope.get("method") == "POST" and scope.get("path") == self.path

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, out: ResponseHeaders) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if len(body) > MAX_LOGIN_BODY:
                metrics.login_failed("bad_form")
                await refuse(scope, send, 413, "the login form is too large")
                return
            if not message.get("more_body"):
                break
        try:
            user = (await login_name(scope, body))[:MAX_NAME_CHARS]
        except ValueError as exc:
            metrics.login_failed("bad_form")
            await refuse(scope, send, 400, str(exc))
            return
        address = str((scope.get("client") or ("unknown",))[0])
        attempt = await self.limiter.attempt(user, address)
        if attempt.retry_after > 0:
            if self.said.first(user, address, attempt.retry_after):  # once per pair and throttle period
                logger.warning("login for %.80r from %s refused: too many failed attempts", user, address)
                audit.record(audit.AuditEvent.LOGIN_FAILED, user=user, client=address, reason="throttled")
            metrics.login_failed("throttled")
            await refuse(scope, send, 429, f"Too many failed logins; try again in {attempt.retry_after:.0f} s.")
            return
        status: list[int] = []
        await app(scope, replayed(body, receive), out.wrap(watching_status(send, status), False))
        if status and 200 <= status[0] < 300:
            await self.limiter.succeeded(attempt)
        elif status and status[0] in (401, 403):
            metrics.login_failed("password")
        # Anything else (401, an error, a client gone mid-check) keeps the reserved failure.
