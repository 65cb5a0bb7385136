"""The warm kernel pool and the bound on kernel starts, with real sandboxed kernels.

Timings are not checked here (``bench/load.py`` measures them); what a user or operator would
check is: a new session gets a kernel that is already running, in its own folder, with its own
variables; the pool refills; no kernel ever serves two sessions; nothing is left after a stop;
no more kernels start at once than allowed; a session holds no kernel until it runs code.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import PostEventType, PostStatus, SessionEventHandler, TaskWeaverApp, TaskWeaverEvent
from core.execution import kernel_procs, limits
from core.execution.pool import StartCancelled, StartGate
from tests.conftest import FIXTURE_APP, cgroups_of, pid_alive

READY_TIMEOUT_S = 60.0


def code(source: str) -> str:
    return f"```python\n{source}\n```"


def reply(session: Any, source: str) -> str:
    rnd = session.send_message(code(source))
    assert rnd.state == "finished", rnd.error
    return str(rnd.reply_text)


class Statuses(SessionEventHandler):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        if event.t == PostEventType.post_status_update:
            self.seen.append(event.msg)


@pytest.fixture
def pooled_app(tmp_path: Path) -> Iterator[TaskWeaverApp]:
    shutil.copytree(FIXTURE_APP, tmp_path / "app")
    application = TaskWeaverApp(app_dir=tmp_path / "app", config={"execution.pool_size": 2})
    try:
        assert application.pool.wait_ready(2, READY_TIMEOUT_S), "the pool did not fill"
        yield application
    finally:
        application.stop()


def test_a_new_session_gets_a_running_kernel_bound_to_its_own_folder_and_variables(pooled_app: TaskWeaverApp) -> None:
    alice, bob = pooled_app.get_session(), pooled_app.get_session()
    assert alice.executor.ready and bob.executor.ready  # running before any message
    assert pooled_app.pool.handed_over == 2
    alice.update_session_var({"user_name": "alice"})
    bob.update_session_var({"user_name": "bob"})
    statuses = Statuses()
    rnd = alice.send_message(code("import os\nprint(os.getcwd())\nprint(whoami('Hi'))"), event_handler=statuses)
    assert str(alice.cwd) in rnd.reply_text and "Hi, alice!" in rnd.reply_text
    assert PostStatus.starting_kernel not in statuses.seen  # nothing to wait for
    assert "Hi, bob!" in reply(bob, "print(whoami('Hi'))")
    assert str(bob.cwd) in reply(bob, "import os\nprint(os.getcwd())")
    assert alice.cwd != bob.cwd


def test_the_pool_refills_with_new_kernels_and_never_hands_one_out_twice(pooled_app: TaskWeaverApp) -> None:
    first = pooled_app.get_session()
    reply(first, "secret = 'first'\nopen('mine.txt', 'w').write('first')")
    first_pid = first.executor.kernel_pid
    first.stop()
    assert first_pid is not None and not pid_alive(first_pid)
    assert pooled_app.pool.wait_ready(2, READY_TIMEOUT_S), "the pool did not refill"
    pids = {first_pid}
    for _ in range(3):  # more sessions than the pool holds: later ones get refills
        assert pooled_app.pool.wait_ready(1, READY_TIMEOUT_S)
        later = pooled_app.get_session()
        assert later.session_id != first.session_id and later.executor is not first.executor
        out = reply(later, "import os\nprint(os.path.exists('mine.txt'))\nprint(globals().get('secret'))")
        assert "False" in out and "None" in out  # no trace of the first session
        assert later.executor.kernel_pid not in pids
        pids.add(later.executor.kernel_pid)
        later.stop()


def test_app_stop_stops_the_pooled_kernels_and_removes_their_folders_and_cgroups(tmp_path: Path) -> None:
    """The pool's kernels are stopped side by side (``CLOSE_THREADS`` at a time), so a large pool is
    gone within a server's stop: nothing of any of them is left, their cgroups included."""
    size = 8
    application = TaskWeaverApp(
        app_dir=tmp_path / "app", config={"execution.pool_size": size, "execution.pool_refill_quiet_s": 0}
    )
    assert application.pool.wait_ready(size, READY_TIMEOUT_S * 2)
    taken = application.get_session()
    sessions = tmp_path / "app" / "workspace" / "sessions"
    assert application.pool.wait_ready(size, READY_TIMEOUT_S * 2)
    pooled = [p for p in sessions.iterdir() if p.name != taken.session_id]
    assert len(pooled) == size
    pids = [int(pid) for pid in _kernel_pids(sessions)]
    assert len(pids) == size + 1 and all(pid_alive(pid) for pid in pids)
    groups = {group for pid in pids for group in _kernel_cgroups(pid)}
    assert len(groups) >= size + 1 and all(group.is_dir() for group in groups)
    application.stop()
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(p.exists() for p in pooled)  # never a session: nothing to keep
    assert (sessions / taken.session_id).is_dir()  # a real session keeps its folder and log
    assert sorted(str(group) for group in groups if group.exists()) == []


def _kernel_cgroups(pid: int) -> list[Path]:
    """The cgroup folders (v1) made for the kernel ``pid``: those named after its sandbox, under
    ``weaver/`` of each controller; none where this machine gives kernels no cgroups."""
    return [
        limits.CGROUP_ROOT / name / path.lstrip("/")
        for name, path in cgroups_of(pid).items()
        if "/weaver/" in path and (limits.CGROUP_ROOT / name).is_dir()
    ]


def _kernel_pids(sessions: Path) -> list[int]:
    """Host pids of the kernels working in a session folder under ``sessions``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and kernel_procs.is_kernel_process(int(proc.name)):
            try:
                if Path(os.readlink(proc / "cwd")).is_relative_to(sessions):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_without_the_pool_a_session_starts_its_kernel_at_its_first_code_and_says_so(tmp_path: Path) -> None:
    application = TaskWeaverApp(app_dir=tmp_path / "app", config={"execution.pool_size": 0})
    try:
        session = application.get_session()
        assert session.send_message("hello").state == "finished"
        assert session.executor.pid is None  # a chat that runs no code holds no kernel
        statuses = Statuses()
        rnd = session.send_message(code("print(6*7)"), event_handler=statuses)
        assert "42" in rnd.reply_text and session.executor.ready
        assert statuses.seen.index(PostStatus.starting_kernel) < statuses.seen.index(PostStatus.executing_code)
    finally:
        application.stop()


def test_kernel_starts_stay_within_the_bound(tmp_path: Path) -> None:
    application = TaskWeaverApp(
        app_dir=tmp_path / "app", config={"execution.pool_size": 0, "execution.max_concurrent_starts": 1}
    )
    try:
        sessions = [application.get_session() for _ in range(3)]
        outs: list[str] = []
        threads = [threading.Thread(target=lambda s=s: outs.append(reply(s, "print(6*7)"))) for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(READY_TIMEOUT_S * 3)
        assert len(outs) == 3 and all("42" in out for out in outs)
        assert application.kernel_starts.limit == 1 and application.kernel_starts.peak == 1
    finally:
        application.stop()


def test_a_large_pool_fills_with_several_starts_at_once_and_never_past_its_size(tmp_path: Path) -> None:
    """A pool sized for a crowd fills at the start line's pace, not one kernel after another, and
    its refills in flight never take it past ``execution.pool_size``."""
    shutil.copytree(FIXTURE_APP, tmp_path / "app")
    application = TaskWeaverApp(
        app_dir=tmp_path / "app",
        config={"execution.pool_size": 6, "execution.max_concurrent_starts": 3, "execution.pool_refill_quiet_s": 0},
    )
    try:
        assert application.pool.wait_ready(6, READY_TIMEOUT_S * 3), "the pool did not fill"
        assert application.kernel_starts.peak == 3  # three refills at once, within the bound
        sessions = [application.get_session() for _ in range(2)]
        assert all("42" in reply(session, "print(6*7)") for session in sessions)
        assert application.pool.wait_ready(6, READY_TIMEOUT_S * 3), "the pool did not refill"
        pooled = [entry for entry in (tmp_path / "app" / "workspace" / "sessions").iterdir() if entry.is_dir()]
        assert len(pooled) == 6 + 2  # six waiting kernels and the two sessions': no refill past the size
    finally:
        application.stop()


def test_the_pool_refills_only_once_no_session_has_asked_for_a_while(tmp_path: Path) -> None:
    """While sessions keep asking for kernels (a crowd), no refill takes CPU from them: the pool
    refills only ``execution.pool_refill_quiet_s`` after the last ask, served or not."""
    quiet_s = 3.0
    shutil.copytree(FIXTURE_APP, tmp_path / "app")
    application = TaskWeaverApp(
        app_dir=tmp_path / "app", config={"execution.pool_size": 2, "execution.pool_refill_quiet_s": quiet_s}
    )
    try:
        assert application.pool.wait_ready(2, READY_TIMEOUT_S), "the pool did not fill"
        sessions = [application.get_session() for _ in range(3)]  # two from the pool, one asks an empty pool
        asked = time.monotonic()
        assert application.pool.handed_over == 2
        # Nothing is refilled within the quiet period (the third session's own start is not the pool's).
        assert not application.pool.wait_ready(1, quiet_s - 1.0), "the pool refilled while sessions asked"
        assert application.pool.wait_ready(2, READY_TIMEOUT_S), "the pool did not refill once quiet"
        assert time.monotonic() - asked >= quiet_s - 0.5
        assert all("42" in reply(session, "print(6*7)") for session in sessions)
    finally:
        application.stop()


def test_the_default_bound_is_four_starts_per_core() -> None:
    import os

    assert StartGate().limit == 4 * (os.cpu_count() or 1) and StartGate(3).limit == 3


def test_a_start_a_user_waits_for_goes_before_a_pool_refill() -> None:
    gate = StartGate(1)
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.slot():
            holding.set()
            release.wait(30)

    def start(name: str, urgent: bool, queued: threading.Event) -> None:
        queued.set()
        with gate.slot(urgent=urgent):
            order.append(name)

    first = threading.Thread(target=hold)
    first.start()
    assert holding.wait(30)
    refill_queued, user_queued = threading.Event(), threading.Event()
    refill = threading.Thread(target=start, args=("refill", False, refill_queued))
    refill.start()
    assert refill_queued.wait(30)
    user = threading.Thread(target=start, args=("user", True, user_queued))
    user.start()
    deadline = time.monotonic() + 30
    while gate.waiting < 2:  # both queued inside the gate
        assert time.monotonic() < deadline, "the starts did not queue"
        time.sleep(0.01)
    release.set()
    for thread in (first, refill, user):
        thread.join(30)
    assert order == ["user", "refill"] and gate.peak == 1


def test_a_queued_start_can_be_cancelled() -> None:
    gate = StartGate(1)
    with gate.slot():
        with pytest.raises(StartCancelled):
            with gate.slot(cancelled=lambda: True):
                pass
    assert gate.running == 0


def _queue_up(gate: StartGate, count: int, go: Any) -> list[threading.Thread]:
    """Start ``count`` threads that each call ``go(i)``, the next only once the one before waits
    in ``gate``: they arrive in the order of ``i``."""
    threads = []
    for i in range(count):
        before = gate.waiting
        thread = threading.Thread(target=go, args=(i,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 30
        while gate.waiting <= before:
            assert time.monotonic() < deadline, f"start {i} did not queue"
            time.sleep(0.005)
    return threads


def test_starts_waiting_for_a_slot_go_first_come_first_served() -> None:
    gate = StartGate(1)
    order: list[int] = []

    def start(i: int) -> None:
        with gate.slot():
            order.append(i)

    with gate.slot():  # every slot taken: the starts below queue
        threads = _queue_up(gate, 12, start)
    for thread in threads:
        thread.join(30)
    assert order == list(range(12)) and gate.waiting == 0 and gate.running == 0


def test_kernels_start_in_arrival_order_and_each_waiting_session_sees_its_place_go_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``execution.max_concurrent_starts = 1``, real kernels: each start waiting in line is told
    its place (1: next) as the line moves, and 0 when its own start begins; they start in the
    order they asked."""
    from core.execution import pool
    from core.execution.kernel import KernelExecutor

    monkeypatch.setattr(pool, "PLACE_EVERY_S", 0.0)  # every change of place told, however far back

    gate = StartGate(1)
    executors = [KernelExecutor(f"q{i}", tmp_path / f"q{i}", start_gate=gate) for i in range(4)]
    places: dict[int, list[int]] = {i: [] for i in range(4)}
    try:

        def start(i: int) -> None:
            executors[i].start(on_queue=places[i].append)

        with gate.slot():  # a start in progress: the four below wait in line
            threads = _queue_up(gate, 4, start)
            deadline = time.monotonic() + 30
            while any(not places[i] for i in range(4)):
                assert time.monotonic() < deadline, f"not every start was told its place: {places}"
                time.sleep(0.01)
            assert [places[i][0] for i in range(4)] == [1, 2, 3, 4]  # where each stood on arrival
        for thread in threads:
            thread.join(READY_TIMEOUT_S * 2)
        assert all(ex.ready for ex in executors)
        turns = [dict(ex.start_steps)["turn"] for ex in executors]
        assert turns == sorted(turns), "the kernels did not start in arrival order"
        for i, seen in places.items():
            assert seen[-1] == 0, seen  # told its turn came
            assert all(a > b for a, b in zip(seen, seen[1:], strict=False)), f"start {i}: place went {seen}"
        assert len(places[3]) >= 3, places  # the last one saw the line move on its way to the front
        assert gate.peak == 1
    finally:
        for ex in executors:
            ex.stop()


def test_a_start_that_did_not_wait_is_told_nothing() -> None:
    gate = StartGate(2)
    told: list[int] = []
    with gate.slot(on_place=told.append):
        pass
    assert told == []


def test_a_start_far_back_in_line_is_told_its_place_at_most_once_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each place told is an event for the chat's page: far back in a moving line (more than
    ``limit`` ahead), a start hears at most once per ``PLACE_EVERY_S``; at the front, its turn."""
    from core.execution import pool

    monkeypatch.setattr(pool, "PLACE_EVERY_S", 1.0)  # the line below moves for ~1.3 s
    PLACE_EVERY_S = pool.PLACE_EVERY_S

    gate = StartGate(1)
    told: list[tuple[int, float]] = []

    def start(i: int) -> None:
        if i == 8:
            with gate.slot(on_place=lambda place: told.append((place, time.monotonic()))):
                pass
        else:
            with gate.slot():
                time.sleep(0.15)  # the work of a start: the line moves about 7 places a second

    with gate.slot():
        threads = _queue_up(gate, 9, start)
    for thread in threads:
        thread.join(30)
    places = [place for place, _ in told]
    assert places[0] == 9 and places[-1] == 0 and places == sorted(places, reverse=True)
    far = [at for place, at in told if place > 1]
    assert len(far) >= 2, told  # it did hear the line move
    assert all(b - a >= PLACE_EVERY_S * 0.99 for a, b in zip(far, far[1:], strict=False)), told
