"""Cooperative cancellation of a running round (the UI's stop button)."""

from __future__ import annotations

import threading


class RoundCancelled(Exception):
    """Raised inside a round once its cancel token is set."""


class CancelToken:
    """Set once by any thread; checked by the round loop, the LLM stream and the kernel wait."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise RoundCancelled("the round was cancelled")

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancel; True if cancelled."""
        return self._event.wait(timeout)
