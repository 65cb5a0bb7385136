"""The cancel token wakes whoever registered, once, in the cancelling thread."""

from __future__ import annotations

import threading

from core.cancel import CancelToken


def test_callbacks_run_once_on_cancel_and_not_after_unregistering() -> None:
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append(threading.current_thread().name))
    forget = token.on_cancel(lambda: calls.append("forgotten"))
    forget()
    canceller = threading.Thread(target=token.cancel, name="canceller")
    canceller.start()
    canceller.join()
    token.cancel()  # a second cancel runs nothing again
    assert calls == ["canceller"] and token.cancelled


def test_registering_on_a_cancelled_token_runs_at_once() -> None:
    token = CancelToken()
    token.cancel()
    calls: list[int] = []
    token.on_cancel(lambda: calls.append(1))
    assert calls == [1]
