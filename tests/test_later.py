"""core.later: calls made a little later by one shared thread, each on a thread of its own when due."""

from __future__ import annotations

import threading

from core.later import call_later


def test_calls_run_in_the_order_they_fall_due_each_on_its_own_thread() -> None:
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def record(name: str) -> None:
        ran.append((name, threading.current_thread().name))
        if len(ran) == 2:
            done.set()

    late = call_later(0.3, lambda: record("late"), name="late-call")
    early = call_later(0.05, lambda: record("early"), name="early-call")
    assert done.wait(10), ran
    assert ran == [("early", "early-call"), ("late", "late-call")]
    assert early.wait(1) and late.wait(1) and early.done and late.done


def test_a_cancelled_call_never_runs_and_its_wait_returns_at_once() -> None:
    ran = threading.Event()
    later = call_later(0.2, ran.set)
    assert later.cancel() and later.wait(0) and later.cancelled
    after = call_later(0.3, lambda: None)  # the scheduler passes the cancelled call's time
    assert after.wait(10)
    assert not ran.is_set()


def test_a_call_that_runs_long_holds_up_no_other_call() -> None:
    release, second_ran = threading.Event(), threading.Event()
    first = call_later(0.0, lambda: release.wait(10))
    second = call_later(0.05, second_ran.set)
    try:
        assert second_ran.wait(10), "the second call waited for the first one to end"
        assert not first.done and not first.cancel(), "a running call cannot be cancelled"
    finally:
        release.set()
    assert first.wait(10) and second.wait(1)


def test_waiting_calls_start_no_thread_of_their_own() -> None:
    call_later(60, lambda: None).cancel()  # the shared thread exists now
    before = threading.active_count()
    calls = [call_later(60, lambda: None) for _ in range(50)]
    try:
        assert threading.active_count() == before
    finally:
        for call in calls:
            call.cancel()
