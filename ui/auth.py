"""The login throttle: failed password logins counted per user and per address (``ui.guard``).

The login modes, the password store and the cookie secret live in ``ui.logins``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

# ----------------------------------------------------------------------------------- throttle


class LoginLimiter(Protocol):
    """What ``ui.guard`` asks about password logins: this process's ``LoginThrottle``, or
    ``ui.shared.SharedLoginThrottle`` counting across replicas in their shared database."""

    async def wait(self, user: str, address: str) -> float: ...

    async def failure(self, user: str, address: str) -> None: ...

    async def success(self, user: str) -> None: ...


@dataclass
class LoginThrottle:
    """Failed logins per user and per address within a sliding window; past the limit, wait.

    Counted where the attempt is seen (``ui.guard`` reads ``POST /login``), so the password check
    itself is never reached by a locked-out name or address.
    """

    per_user: int = 5
    per_address: int = 20
    window_s: float = 300.0
    max_keys: int = 10_000  # past this many names and addresses, expired ones are forgotten at once
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until another attempt is allowed (0 when it is allowed now)."""
        now = time.monotonic()
        waits = [
            self._wait(f"user:{user.lower()}", self.per_user, now),
            self._wait(f"addr:{address}", self.per_address, now),
        ]
        return max(waits)

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        if len(self._failures) >= self.max_keys:  # many names or addresses: drop what has expired
            self._failures = {k: v for k, v in self._failures.items() if now - v[-1] < self.window_s}
        for key in (f"user:{user.lower()}", f"addr:{address}"):
            self._failures.setdefault(key, []).append(now)

    def succeeded(self, user: str) -> None:
        self._failures.pop(f"user:{user.lower()}", None)

    # ``LoginLimiter``: the same, for the guard (nothing here waits)
    async def wait(self, user: str, address: str) -> float:
        return self.retry_after(user, address)

    async def failure(self, user: str, address: str) -> None:
        self.failed(user, address)

    async def success(self, user: str) -> None:
        self.succeeded(user)

    def _wait(self, key: str, limit: int, now: float) -> float:
        recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        if len(recent) < limit:
            return 0.0
        return max(1.0, self.window_s - (now - recent[-limit]))
