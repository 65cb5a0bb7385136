"""The web UI's parts that need no server: the view model, the bridge, the session owner, files.

Events come from core's own ``EventEmitter`` and sessions from a real ``TaskWeaverApp``, so these
check the contract between engine and UI as it is, not as a mock of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from core import (
    AttachmentType,
    ExecutionStatus,
    Post,
    PostStatus,
    RoleName,
    SessionLimitReached,
    SessionStopped,
    TaskWeaverApp,
)
from core.events import EventEmitter, SessionEventHandler, TaskWeaverEvent
from ui.answer import AnswerDraft
from ui.bridge import EventPipe, ThreadJob, in_background, run_in_thread
from ui.files import Artifact, artifacts_inside, select_artifacts
from ui.lifecycle import SESSION_FAILED, SessionOwner, TooManyChats, session_error_text
from ui.view import RoundView


def test_only_files_inside_the_session_folder_are_served(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "ok.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "secret.txt").write_text("no")
    (cwd / "link.txt").symlink_to(tmp_path / "secret.txt")
    payload = [
        {"name": "ok", "path": str(cwd / "ok.png"), "type": "image"},
        {"name": "up", "path": str(cwd / ".." / "secret.txt"), "type": "file"},
        {"name": "abs", "path": "/etc/passwd", "type": "file"},
        {"name": "link", "path": str(cwd / "link.txt"), "type": "file"},
        "not-there.png",
    ]
    assert [(a.name, a.kind) for a in artifacts_inside(payload, cwd)] == [("ok", "image")]
    assert [a.rel for a in artifacts_inside(["ok.png", str(cwd)], cwd)] == ["ok.png"]
    chosen = select_artifacts(artifacts_inside(payload, cwd))
    assert [a.content for a in chosen.shown] == [b"\x89PNG\r\n"]


async def _until(predicate: "Callable[[], object]", timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_session_owner_grace_reconnect_and_cleared_chat(tmp_path: Path) -> None:
    """The owner's decisions with real engine sessions (no kernel starts: nothing executes)."""
    app = TaskWeaverApp(app_dir=tmp_path / "app")
    connected: set[str] = set()
    cleared: set[str] = set()

    async def scenario() -> None:
        owner = SessionOwner(
            lambda user, resume: app.get_session(),
            is_connected=lambda key: key in connected,
            grace_s=0.3,
            is_abandoned=lambda key: key in cleared,
            settle_s=0.1,
        )
        # A blip: the browser is back when the grace period ends, so the session lives on.
        kept = owner.acquire("blip", "alice").session
        owner.release("blip")
        connected.add("blip")
        await _until(lambda: not owner.stop_pending("blip"), 5, "the grace timer")
        assert not kept.is_stopped and owner.current("blip") is kept
        # Gone for good: stopped after the grace period; the next message gets a fresh session.
        gone = owner.acquire("gone", "bob").session
        owner.release("gone")
        await _until(lambda: gone.is_stopped, 10, "the session to stop")
        lease = owner.acquire("gone", "bob")
        assert lease.recreated and lease.session is not gone
        # A message during the grace period disarms the stop.
        owner.release("gone")
        assert owner.stop_pending("gone")
        assert owner.acquire("gone", "bob").session is lease.session
        assert not owner.stop_pending("gone")
        # "New chat": stopped after the short settle delay, not the grace period.
        owner.grace_s = 30
        cleared_session = owner.acquire("cleared", "carol").session
        owner.release("cleared")
        cleared.add("cleared")
        await _until(lambda: cleared_session.is_stopped, 5, "the cleared chat to stop")
        await owner.close_all()
        assert lease.session.is_stopped and kept.is_stopped and owner.live_count() == 0

    try:
        asyncio.run(scenario())
    finally:
        app.stop()


def test_select_artifacts_skips_files_over_the_size_cap(tmp_path: Path) -> None:
    big, small = tmp_path / "big.bin", tmp_path / "small.png"
    root = tmp_path
    with open(big, "wb") as f:
        f.truncate(26 * 1000 * 1000)  # sparse: no real 26 MB write
    small.write_bytes(b"\x89PNG")
    chosen = select_artifacts(
        [
            Artifact("big.bin", "big.bin", "file", root),
            Artifact("small.png", "small.png", "image", root),
            Artifact("again", "small.png", "image", root),
        ]
    )
    assert [a.name for a in chosen.shown] == ["small.png"]
    assert len(chosen.notes) == 1 and "`big.bin` (26 MB)" in chosen.notes[0] and "over 25 MB" in chosen.notes[0]


class _Recorder(SessionEventHandler):
    def __init__(self) -> None:
        self.events: list[TaskWeaverEvent] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        self.events.append(event)


def test_answer_draft_drops_an_attempt_that_core_readdressed() -> None:
    """Core's own event objects, emitted the way ``Role.ask_model`` handles an unusable answer."""
    emitter, recorder = EventEmitter(), _Recorder()
    emitter.register(recorder)
    draft = AnswerDraft()
    first = emitter.post_proxy("r1", Post(send_from="Planner"))
    first.update_send_to("User")
    first.update_message("Wrong ")
    first.update_message("answer")
    for event in recorder.events:
        draft.apply(event)
    assert draft.pending() == "Wrong answer"
    draft.mark_shown()
    recorder.events.clear()
    first.update_attachment("{bad", AttachmentType.invalid_response)
    first.error("The model's answer could not be used: not JSON")
    first.update_send_to("Planner")
    first.end()
    second = emitter.post_proxy("r1", Post(send_from="Planner"))
    second.update_message("Right")  # message before send_to: taken when the post turns to User
    second.update_send_to("User")
    second.update_message(" answer")
    for event in recorder.events:
        draft.apply(event)
    assert draft.withdrawn and draft.text == "Right answer" and draft.pending() == "Right answer"
    assert draft.post_id == second.post.id


def test_session_error_text_shows_only_weaver_errors(tmp_path: Path) -> None:
    app = TaskWeaverApp(app_dir=tmp_path / "app", config={"session.max_live_sessions": 1})
    session = app.get_session()
    try:
        with pytest.raises(SessionLimitReached) as full:
            app.get_session()
        session.stop()
        with pytest.raises(SessionStopped) as stopped:
            session.send_message("hi")
    finally:
        app.stop()
    assert session_error_text(full.value) == "Weaver is serving its limit of 1 sessions; try again later."
    assert session_error_text(stopped.value).startswith("This session has ended")
    assert session_error_text(TooManyChats(3)).startswith("You already have 3 chats open")
    for raw in (RuntimeError(f"kernel spec in {tmp_path} is broken"), ValueError("x"), OSError(2, "No such file")):
        assert session_error_text(raw) == SESSION_FAILED  # may name server paths: never shown


def test_session_stops_run_on_their_own_threads() -> None:
    """Many slow session stops at once (a shutdown) must not occupy asyncio's default executor."""
    release = __import__("threading").Event()

    class SlowSession:
        session_id = "slow"
        is_stopped = False

        def cancel(self) -> bool:
            return False

        def stop(self) -> None:
            release.wait(30)

    async def scenario() -> None:
        owner = SessionOwner(
            lambda user, resume: SlowSession(), is_connected=lambda key: False, grace_s=0, max_per_client=100
        )
        for i in range(12):
            owner.acquire(f"k{i}", "u")
        closing = asyncio.ensure_future(owner.close_all())
        await asyncio.sleep(0)
        # With stops in the default executor (6 workers here) this would wait for a free worker.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42
        release.set()
        await asyncio.wait_for(closing, 10)
        assert owner.live_count() == 0

    asyncio.run(scenario())


def _round_view(tmp_path: Path) -> tuple[EventEmitter, RoundView]:
    emitter, view = EventEmitter(), RoundView(tmp_path)

    class Apply(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            view.apply(event)

    emitter.register(Apply())
    return emitter, view


def test_an_answer_that_says_cancelled_is_an_answer(tmp_path: Path) -> None:
    """Only the round's state says it was cancelled, never the words of a message."""
    emitter, view = _round_view(tmp_path)
    post = emitter.post_proxy("r1", Post(send_from=RoleName.Planner))
    post.update_send_to(RoleName.User)
    post.update_message("Sorry, your order was cancelled.")
    post.end()
    assert view.draft.text == "Sorry, your order was cancelled." and not view.draft.withdrawn
    step = view.posts[post.post.id].markdown()
    assert "■" not in step and "**Error:**" not in step


def test_a_post_error_is_shown_as_an_error_whatever_it_says(tmp_path: Path) -> None:
    emitter, view = _round_view(tmp_path)
    post = emitter.post_proxy("r1", Post(send_from=RoleName.Planner))
    post.update_send_to(RoleName.User)
    post.update_message("draft")
    post.error("The request was cancelled by the server")
    post.end()
    assert (
        view.draft.text == ""
        and "**Error:** The request was cancelled by the server" in view.posts[post.post.id].markdown()
    )


def test_tables_and_files_arrive_as_data_and_render_within_caps(tmp_path: Path) -> None:
    (tmp_path / "chart.png").write_bytes(b"\x89PNG")
    emitter, view = _round_view(tmp_path)
    post = emitter.post_proxy("r1", Post(send_from=RoleName.CodeInterpreter))
    post.update_status(PostStatus.executing_code)
    assert view.code_running
    post.update_attachment(ExecutionStatus.cancelled, AttachmentType.execution_status)
    table = {"columns": ["a|b", "c"], "rows": [[str(i), "x"] for i in range(30)], "shape": [400_000, 2]}
    post.update_attachment(table, AttachmentType.table)
    post.update_attachment(
        [{"name": "chart.png", "path": str(tmp_path / "chart.png"), "type": "image"}], AttachmentType.artifact_paths
    )
    post.end()
    step = view.posts[post.post.id].markdown(max_table_rows=5)
    assert "**Execution:** ■ cancelled" in step
    assert "| a\\|b | c |" in step and "showing 5 of 400,000 rows" in step
    assert [a.name for a in view.artifacts] == ["chart.png"] and view.code_interrupted and not view.code_running


def test_background_work_runs_to_its_end_and_a_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Work started beside a round is not lost: it finishes, and a failure says what failed."""
    done: list[str] = []

    async def note() -> None:
        await asyncio.sleep(0)
        done.append("noted")

    async def broken() -> None:
        raise RuntimeError("database gone")

    async def main() -> None:
        first = in_background(note(), "noting a session")
        second = in_background(broken(), "noting a kernel")
        await asyncio.wait([first, second])
        await asyncio.sleep(0)  # their done-callbacks run next

    with caplog.at_level("ERROR", logger="weaver.ui.bridge"):
        asyncio.run(main())
    assert done == ["noted"]
    assert any("noting a kernel failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_thread_job_hands_back_results_and_errors_to_sync_and_async_callers() -> None:
    assert ThreadJob(lambda: 6 * 7, "t").wait(5)
    job = ThreadJob(lambda: 6 * 7, "t")
    job.wait(5)
    assert job.result() == 42

    def boom() -> None:
        raise ValueError("bad")

    failing = ThreadJob(boom, "t")
    failing.wait(5)
    with pytest.raises(ValueError, match="bad"):
        failing.result()

    gate = threading.Event()

    async def scenario() -> None:
        slow = ThreadJob(lambda: gate.wait(10) and "done", "t")
        waiter = asyncio.ensure_future(slow.join())
        await asyncio.sleep(0)
        waiter.cancel()  # the awaiting task goes away; the call goes on
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.set()
        assert await slow.join() == "done"
        assert await run_in_thread(lambda a, b: a + b, 2, 3) == 5

    asyncio.run(scenario())


def test_event_pipe_hands_over_every_event_in_order_and_wakes_the_loop_once_per_batch() -> None:
    """Events sent from the engine's thread while the loop is busy arrive together, in order,
    after one wake-up of the loop; the end marker comes last; ``wake`` returns an empty batch."""

    async def scenario() -> tuple[list[object], list[object], list[object]]:
        loop = asyncio.get_running_loop()
        pipe = EventPipe(loop)
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        try:
            producer = threading.Thread(target=lambda: [pipe.handle(i) for i in range(300)])  # type: ignore[func-returns-value]
            producer.start()
            producer.join()  # the loop is busy meanwhile: nothing is taken yet
            first = await pipe.batch()
            assert wakeups == 1
            pipe.wake()
            empty = await pipe.batch()
            closer = threading.Thread(target=lambda: (pipe.handle("last"), pipe.close()))
            closer.start()
            closer.join()
            last = await pipe.batch()
        finally:
            del loop.call_soon_threadsafe
        return first, empty, last

    first, empty, last = asyncio.run(scenario())
    assert first == list(range(300))
    assert empty == []
    assert last == ["last", EventPipe.END]


def test_thread_jobs_all_run_at_once_and_reuse_idle_workers() -> None:
    """Twenty rounds that each wait for all the others finish (none queues behind another); a
    hundred quick jobs one after another reuse the idle workers instead of a thread each."""
    together = threading.Barrier(20, timeout=10)
    jobs = [ThreadJob(together.wait, "round") for _ in range(20)]
    assert all(job.wait(15) for job in jobs)
    assert all(isinstance(job.result(), int) for job in jobs)  # no BrokenBarrierError: all ran at once
    names = set()
    for _ in range(100):
        job = ThreadJob(lambda: threading.current_thread().name, "quick")
        assert job.wait(5)
        names.add(job.result())
    assert len(names) <= 21  # the twenty workers and at most one more, not a hundred new threads
    assert all(name.startswith("quick (weaver-worker-") for name in names)
    values = contextvars.ContextVar("values", default="unset")
    seen = set()
    for _ in range(30):
        setter = ThreadJob(lambda: values.set("set by an earlier job"), "setter")
        assert setter.wait(5)
        reader = ThreadJob(values.get, "reader")
        assert reader.wait(5)
        seen.add(reader.result())
    assert seen == {"unset"}  # each job starts in a fresh context, as on a thread of its own


def test_login_modes_and_who_oauth_lets_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.logins import MODES, AuthSetupError, LoginContext, allowed_by, make_login
    from ui.settings import UISettings

    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)

    def mode(requested: str | None, header: str | None, loopback: bool) -> str:
        return make_login(requested, LoginContext(app_dir=tmp_path, loopback=loopback, user_header=header)).name

    assert mode(None, None, loopback=True) == "local"
    assert mode("Password", None, loopback=False) == "password"
    for requested, header, loopback in (
        ("local", None, False),
        (None, None, False),
        ("header", None, True),
        ("x", None, True),
    ):
        with pytest.raises(AuthSetupError):
            mode(requested, header, loopback)
    with pytest.raises(AuthSetupError, match="CHAINLIT_AUTH_SECRET"):  # header and oauth want an explicit secret
        mode(None, "X-User", loopback=False)
    assert sorted(MODES) == ["header", "local", "oauth", "password"]
    with pytest.raises(ValueError, match="not one of local, password, header, oauth"):
        UISettings(auth="kerberos")
    allowed = ["alice", "@example.org"]
    assert allowed_by(allowed, "alice") and allowed_by(allowed, "gh-carol", "carol@example.org")
    assert not allowed_by(allowed, "mallory", "mallory@example.org.evil")
    assert not allowed_by(allowed, "mallory@evil", None) and allowed_by(["*"], "anyone")


def test_servers_starting_together_on_one_app_folder_agree_on_the_login_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas sharing an app folder (no shared database) make at most one secret and all read it whole."""
    from concurrent.futures import ThreadPoolExecutor

    from ui.logins import SECRET_FILE, ensure_secret

    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)
    for attempt in range(5):
        folder = tmp_path / str(attempt)
        with ThreadPoolExecutor(8) as pool:
            secrets = set(pool.map(ensure_secret, [folder] * 8))
        assert len(secrets) == 1 and len(secrets.pop()) >= 32
        assert [p.name for p in folder.iterdir()] == [SECRET_FILE]  # no temporary file is left behind
        assert (folder / SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_a_second_tab_shares_the_session_and_an_idle_chat_comes_back(tmp_path: Path) -> None:
    """Resume by id: a second tab of a live chat gets the same session (no second kernel); a chat idle
    past ``idle_s`` stops its kernel, and its next message brings it back with its rounds."""
    app = TaskWeaverApp(app_dir=tmp_path / "app", config={"execution.pool_size": 0})

    def factory(user: str, resume_id: str | None) -> Any:
        return app.open_session(resume_id) if resume_id else app.get_session()

    async def scenario() -> None:
        owner = SessionOwner(factory, is_connected=lambda key: False, grace_s=0.1, idle_s=0.5, max_per_client=10)
        first = owner.acquire("tab1", "alice").session
        assert first.send_message("hello").state == "finished"  # one round on disk
        second = owner.acquire("tab2", "alice", resume_id=first.session_id).session
        assert second is first
        owner.release("tab1")  # the first tab closes: the other still holds the session
        await _until(lambda: not owner.stop_pending("tab1"), 5, "the grace period")
        assert not first.is_stopped
        await _until(lambda: first.is_stopped, 10, "the idle chat to stop")
        back = owner.acquire("tab2", "alice")
        assert back.session is not first and back.session.session_id == first.session_id
        assert [r.user_query for r in back.session.rounds] == ["hello"]
        await owner.close_all()

    try:
        asyncio.run(scenario())
    finally:
        app.stop()


def test_token_checks_verify_each_token_once_and_still_end_logins(tmp_path: Path) -> None:
    """The token gate keeps the claims it verified (a live chat's token is asked about every 2 s),
    yet a cached token past its ``exp`` is refused and a logout after caching still holds."""
    import jwt

    from ui.logins import tokens as token_module
    from ui.logins.base import LoginContext, Refusal
    from ui.logins.modes import LocalLogin
    from ui.logins.revocations import TokenRevocations

    secret = "s" * 32
    gate = token_module.TokenGate(
        lambda: secret, 3600, TokenRevocations(lambda: None), LocalLogin(LoginContext(tmp_path, True))
    )
    now = int(time.time())
    live = jwt.encode({"identifier": "ann", "iat": now, "exp": now + 3600, "metadata": {"login_id": "a"}}, secret)
    assert gate.refusal(live) is None and gate.refusal(live) is None
    assert len(gate._verified) == 1  # verified once
    asyncio.run(gate.sign_out(live))
    refused = gate.refusal(live)
    assert refused is not None and refused.why is Refusal.SIGNED_OUT
    short = jwt.encode({"identifier": "bo", "iat": now, "exp": now + 1, "metadata": {"login_id": "b"}}, secret)
    assert gate.claims(short) is not None
    gate._verified[(secret, short)]["exp"] = now - 1  # as if its second had passed while cached
    assert gate.claims(short) is None
    for n in range(token_module.MAX_VERIFIED + 5):
        gate.claims(jwt.encode({"identifier": f"u{n}", "iat": now, "exp": now + 3600}, secret))
    assert len(gate._verified) == token_module.MAX_VERIFIED


def test_only_chainlits_stop_note_is_taken_away_never_a_user_message_with_its_words() -> None:
    """After Stop, the round's own "Round cancelled" replaces Chainlit's "Task manually stopped."
    (``remove_stop_notice``); a user who sent those very words keeps their message."""
    import chainlit as cl
    from chainlit.context import init_http_context

    from ui.reopen import CHAINLIT_STOP_NOTICE, remove_stop_notice

    async def chat() -> list[tuple[str, str]]:
        init_http_context()  # a chat context of its own, without a socket
        await cl.Message(content=CHAINLIT_STOP_NOTICE, type="user_message", author="alice").send()
        await cl.Message(content="working on it").send()
        await remove_stop_notice()  # no note from Chainlit yet: the user's message stays
        await cl.Message(content=CHAINLIT_STOP_NOTICE).send()  # as chainlit/socket.py's "stop" sends it
        await remove_stop_notice()
        return [(m.type, m.content) for m in cl.chat_context.get()]

    assert asyncio.run(chat()) == [("user_message", CHAINLIT_STOP_NOTICE), ("assistant_message", "working on it")]
