"""Whole rounds over real HTTP: Planner → CodeInterpreter → kernel → Planner → User.

The scripted server (tests/llm_server.py) answers in the roles' JSON protocol; the code runs in the
session's real Jupyter kernel. Nothing is mocked: these are the rounds a user would see with a model.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import AttachmentType, PostEventType, RoundEventType, SessionEventHandler, TaskWeaverApp, TaskWeaverEvent
from core.memory import Round
from core.session import Session
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer, Stall, Status

pytestmark = pytest.mark.timeout(90)

LLM_TIMEOUT_S = 1.5
CODE_RETRIES = 2


# --------------------------------------------------------------------------------------- helpers


def planner(send_to: str, message: str, plan: list[str] | None = None, step: str = "") -> str:
    """A Planner answer in the protocol's JSON."""
    return json.dumps(
        {
            "thought": f"I will ask {send_to}.",
            "plan": plan if plan is not None else ["do the work", "report to the user"],
            "current_plan_step": step or (plan or ["do the work"])[0],
            "send_to": send_to,
            "message": message,
        }
    )


def code_reply(code: str) -> str:
    return json.dumps({"thought": "Run it.", "reply_type": "python", "reply_content": code})


def text_reply(text: str) -> str:
    return json.dumps({"thought": "No code needed.", "reply_type": "text", "reply_content": text})


def to_user(message: str) -> Answer:
    return Answer(planner("User", message), chunks=6)


def all_text(request: RecordedRequest) -> str:
    """Every message of a recorded chat request, joined, to search the prompt."""
    return "\n".join(m["content"] for m in request.body["messages"])


class Recorder(SessionEventHandler):
    """Keeps every event with the time it arrived."""

    def __init__(self) -> None:
        self.events: list[TaskWeaverEvent] = []
        self.times: list[float] = []

    def handle(self, event: TaskWeaverEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())

    def index(self, event: TaskWeaverEvent) -> int:
        return next(i for i, e in enumerate(self.events) if e is event)

    def attachment_updates(self, kind: AttachmentType, post_id: str | None = None) -> list[TaskWeaverEvent]:
        return [
            e
            for e in self.events
            if e.t == PostEventType.post_attachment_update
            and e.extra["type"] == kind
            and (post_id is None or e.post_id == post_id)
        ]

    def message_updates(self, post_id: str) -> list[TaskWeaverEvent]:
        return [e for e in self.events if e.t == PostEventType.post_message_update and e.post_id == post_id]

    def round_events(self) -> list[tuple[RoundEventType, Any]]:
        return [(e.t, e.extra) for e in self.events if e.t in set(RoundEventType)]


def assert_streamed(updates: list[TaskWeaverEvent], minimum: int = 3) -> str:
    """Several chunks, all open but the last, which closes it; returns the joined text."""
    assert len(updates) >= minimum, [e.msg for e in updates]
    assert all(e.extra["is_end"] is False for e in updates[:-1])
    assert updates[-1].extra["is_end"] is True
    return "".join(e.msg for e in updates)


def assert_failed_then_recovers(server: ScriptedLLMServer, session: Session, rnd: Round, recorder: Recorder) -> None:
    """A failed round tells the user why, ends properly, and the session still works."""
    assert rnd.state == "failed"
    assert rnd.error and "Traceback" not in rnd.error
    kinds = recorder.round_events()
    assert [k for k, _ in kinds] == [RoundEventType.round_start, RoundEventType.round_error, RoundEventType.round_end]
    assert kinds[-1][1] == {"state": "failed"}
    assert recorder.events[-1].t == RoundEventType.round_end
    server.push(to_user("Back to normal."))
    after = session.send_message("Are you there?")
    assert after.state == "finished", after.error
    assert after.reply_text == "Back to normal."
    assert_no_cut_short_turns(server.requests[-1], rnd)


def assert_no_cut_short_turns(request: RecordedRequest, failed: Round) -> None:
    """The next prompt keeps what the user asked in a failed round, but none of its cut-short answers."""
    messages = request.body["messages"]
    question = {"role": "user", "content": f"From User: {failed.user_query}"}
    asked = max(i for i, m in enumerate(messages) if m == question)
    assert all(m["role"] == "user" for m in messages[asked:]), messages[asked:]


def new_app(tmp_path: Path, server: ScriptedLLMServer, **overrides: Any) -> TaskWeaverApp:
    config: dict[str, Any] = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test",
        "llm.model": "scripted",
        "llm.timeout": LLM_TIMEOUT_S,
        "llm.max_retries": 2,
        "llm.retry_backoff": 0.05,
        "execution.timeout": 10,
        "code_interpreter.max_retry_count": CODE_RETRIES,
    }
    config.update(overrides)
    return TaskWeaverApp(app_dir=tmp_path, config=config)


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


@pytest.fixture(scope="module")
def weaver(server: ScriptedLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskWeaverApp]:
    application = new_app(tmp_path_factory.mktemp("llm_app"), server)
    yield application
    application.stop()


@pytest.fixture(scope="module")
def session(weaver: TaskWeaverApp) -> Iterator[Session]:
    s = weaver.get_session()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def script(server: ScriptedLLMServer) -> Iterator[ScriptedLLMServer]:
    """The shared server, checked after each test: every scripted reply was asked for."""
    yield server
    left = server.pending
    if left:
        with server._lock:  # noqa: SLF001 - keep one test's leftovers from derailing the next
            server._replies.clear()  # noqa: SLF001
    assert left == 0, f"{left} scripted replies were never requested"


def requests_since(server: ScriptedLLMServer, start: int) -> list[RecordedRequest]:
    return server.requests[start:]


# --------------------------------------------------------------------------------------- full round


def test_full_round_streams_runs_code_and_records_usage(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    code = (
        "import pandas as pd\ndf = pd.read_csv('numbers.csv')\ntotal = int((df.x ** 2).sum())\nprint(f'total={total}')"
    )
    server.push(
        Answer(
            planner(
                "CodeInterpreter",
                "Sum the squares of column x of numbers.csv and print total=<n>.",
                plan=["load numbers.csv", "sum the squares of x", "report the total"],
            ),
            chunks=12,
            prompt_tokens=101,
            completion_tokens=31,
        ),
        Answer(code_reply(code), chunks=12, prompt_tokens=202, completion_tokens=42),
        Answer(
            planner(
                "User", "The sum of the squares of x over the ten rows of numbers.csv is 385.", step="report the total"
            ),
            chunks=12,
            delay=0.05,
            prompt_tokens=303,
            completion_tokens=23,
        ),
    )
    recorder = Recorder()
    csv = "x\n" + "\n".join(str(i) for i in range(1, 11)) + "\n"
    rnd = session.send_message(
        "What is the sum of squares of x?",
        event_handler=recorder,
        files=[{"name": "numbers.csv", "content": csv.encode()}],
    )

    assert rnd.state == "finished", rnd.error
    assert [p.send_from for p in rnd.post_list] == ["User", "Planner", "CodeInterpreter", "Planner"]
    plan_post, ci_post, answer_post = rnd.post_list[1:]
    # The kernel really ran the code on the file.
    assert ci_post.first(AttachmentType.execution_status) == "success"
    assert "total=385" in ci_post.first(AttachmentType.execution_result)
    assert "385" in rnd.reply_text and answer_post.send_to == "User"

    # Plan, code and answer streamed in chunks, in that order, all before round_end.
    plan_updates = recorder.attachment_updates(AttachmentType.plan, plan_post.id)
    plan = assert_streamed(plan_updates)
    assert plan == "1. load numbers.csv\n2. sum the squares of x\n3. report the total\n"
    code_updates = recorder.attachment_updates(AttachmentType.reply_content, ci_post.id)
    assert assert_streamed(code_updates) == code
    answer_updates = recorder.message_updates(answer_post.id)
    assert assert_streamed(answer_updates) == rnd.reply_text
    [result_event] = recorder.attachment_updates(AttachmentType.execution_result, ci_post.id)
    round_end = next(e for e in recorder.events if e.t == RoundEventType.round_end)
    order = [
        recorder.index(e)
        for e in (
            plan_updates[0],
            plan_updates[-1],
            code_updates[0],
            code_updates[-1],
            result_event,
            answer_updates[0],
            answer_updates[-1],
            round_end,
        )
    ]
    assert order == sorted(order)
    # The answer's chunks reached the handler as the server sent them (0.05 s apart), not all at the end.
    texts = [e for e in answer_updates if e.msg]
    arrived = [recorder.times[recorder.index(e)] for e in texts]
    assert len(texts) >= 3 and arrived[-1] - arrived[0] >= (len(texts) - 1) * 0.05 * 0.9

    # What the server was asked.
    planner_1, coder, planner_2 = requests_since(server, first)
    for request in (planner_1, coder, planner_2):
        assert request.body["model"] == "scripted" and request.body["stream"] is True
        assert request.headers["authorization"] == "Bearer test"
    assert planner_1.body["messages"][0]["role"] == "system"
    assert "You are the Planner" in planner_1.body["messages"][0]["content"]
    assert "numbers.csv" in planner_1.body["messages"][0]["content"]
    assert "What is the sum of squares of x?" in planner_1.body["messages"][-1]["content"]
    assert "You are the CodeInterpreter" in coder.body["messages"][0]["content"]
    assert "numbers.csv" in coder.body["messages"][0]["content"]
    assert coder.body["messages"][-1] == {
        "role": "user",
        "content": "From Planner: Sum the squares of column x of numbers.csv and print total=<n>.",
    }
    assert "total=385" not in all_text(planner_1) + all_text(coder)
    assert planner_2.body["messages"][-1]["role"] == "user"
    assert "From CodeInterpreter" in planner_2.body["messages"][-1]["content"]
    assert "total=385" in planner_2.body["messages"][-1]["content"]
    assert any(m["role"] == "assistant" and "Sum the squares" in m["content"] for m in planner_2.body["messages"])

    # Usage and latency, on the round and in the session's rounds.jsonl.
    assert [c["role"] for c in rnd.llm_calls] == ["Planner", "CodeInterpreter", "Planner"]
    assert [c["prompt_tokens"] for c in rnd.llm_calls] == [101, 202, 303]
    assert [c["completion_tokens"] for c in rnd.llm_calls] == [31, 42, 23]
    for call in rnd.llm_calls:
        assert call["model"] == "scripted-model" and call["attempts"] == 1
        assert 0 < call["first_token_s"] <= call["latency_s"] < 10
    assert rnd.llm_calls[2]["latency_s"] >= 0.5  # eleven 0.05 s gaps between its twelve chunks
    logged = [json.loads(line) for line in (session.workspace / "rounds.jsonl").read_text().splitlines()]
    [entry] = [r for r in logged if r["id"] == rnd.id]
    assert entry["state"] == "finished" and entry["llm_calls"] == rnd.llm_calls


def test_next_round_prompt_carries_the_conversation(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    server.push(to_user("Still 385."))
    rnd = session.send_message("And again?")
    assert rnd.state == "finished", rnd.error
    [request] = requests_since(server, first)
    text = all_text(request)
    assert "What is the sum of squares of x?" in text and "numbers.csv is 385." in text
    assert request.body["messages"][-1] == {"role": "user", "content": "From User: And again?"}


# --------------------------------------------------------------------------------------- code errors


def test_failing_code_is_fed_back_and_the_fix_runs(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    server.push(
        Answer(planner("CodeInterpreter", "Compute 7 * 6 from a helper.")),
        Answer(code_reply("def helper():\n    return undefined_name * 6\nprint(helper())")),
        Answer(code_reply("def helper():\n    return 7 * 6\nprint(helper())")),
        to_user("It is 42."),
    )
    rnd = session.send_message("What is 7 * 6?")

    assert rnd.state == "finished", rnd.error
    ci_posts = [p for p in rnd.post_list if p.send_from == "CodeInterpreter"]
    assert [p.first(AttachmentType.execution_status) for p in ci_posts] == ["failure", "success"]
    assert "NameError" in ci_posts[0].first(AttachmentType.execution_result)
    assert ci_posts[0].get_attachment(AttachmentType.revise_message)
    assert "42" in ci_posts[1].first(AttachmentType.execution_result)
    _, bad, fixed, back = requests_since(server, first)
    assert "NameError" not in all_text(bad)
    feedback = fixed.body["messages"][-1]
    assert feedback["role"] == "user"
    assert "NameError" in feedback["content"] and "undefined_name" in feedback["content"]
    assert "Fix it" in feedback["content"]
    assert "42" in back.body["messages"][-1]["content"]


def test_code_that_keeps_failing_goes_back_to_the_planner_after_the_retry_bound(
    server: ScriptedLLMServer, session: Session
) -> None:
    first = len(server.requests)
    broken = Answer(code_reply("raise ValueError('still broken')"))
    server.push(
        Answer(planner("CodeInterpreter", "Do the thing.")),
        *[broken] * (CODE_RETRIES + 1),
        to_user("The code kept failing with ValueError: still broken."),
    )
    rnd = session.send_message("Do the thing.")

    assert rnd.state == "finished", rnd.error
    ci_posts = [p for p in rnd.post_list if p.send_from == "CodeInterpreter"]
    assert len(ci_posts) == CODE_RETRIES + 1
    assert [p.send_to for p in ci_posts] == ["CodeInterpreter"] * CODE_RETRIES + ["Planner"]
    requests = requests_since(server, first)
    assert len(requests) == CODE_RETRIES + 3
    assert "still broken" in requests[-1].body["messages"][-1]["content"]
    assert "ValueError" in rnd.reply_text


# --------------------------------------------------------------------------------------- HTTP failures


def test_429_then_success_finishes_the_round(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    server.push(Status(429, "slow down"), to_user("Hello after a rate limit."))
    rnd = session.send_message("Hello?")
    assert rnd.state == "finished", rnd.error
    assert rnd.reply_text == "Hello after a rate limit."
    assert rnd.llm_calls[0]["attempts"] == 2
    assert len(requests_since(server, first)) == 2


def test_500_until_retries_run_out_fails_the_round_clearly(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    server.push(*[Status(500, "upstream exploded")] * 3)
    recorder = Recorder()
    rnd = session.send_message("Hello?", event_handler=recorder)

    assert "HTTP 500" in (rnd.error or "") and "upstream exploded" in rnd.error and "3 attempts" in rnd.error
    assert len(requests_since(server, first)) == 3
    [error_event] = [e for e in recorder.events if e.t == RoundEventType.round_error]
    assert error_event.msg == rnd.error
    assert rnd.llm_calls[0]["attempts"] == 3
    assert_failed_then_recovers(server, session, rnd, recorder)


@pytest.mark.parametrize(
    "reply, stage",
    [
        (Stall(10), "before answering"),
        (Answer(planner("User", "Half of an answer that never ends."), chunks=3, delay=10), "mid-answer"),
    ],
    ids=["before-answering", "mid-answer"],
)
def test_a_stalled_server_times_out(server: ScriptedLLMServer, session: Session, reply: Any, stage: str) -> None:
    server.push(reply)
    recorder = Recorder()
    started = time.monotonic()
    rnd = session.send_message("Hello?", event_handler=recorder)
    elapsed = time.monotonic() - started

    assert rnd.error and "timeout" in rnd.error and "llm.timeout" in rnd.error and stage in rnd.error
    assert LLM_TIMEOUT_S * 0.9 <= elapsed < LLM_TIMEOUT_S + 3
    assert_failed_then_recovers(server, session, rnd, recorder)


# --------------------------------------------------------------------------------------- bad answers


def test_garbage_answer_gets_one_corrective_reask(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    server.push(Answer("Sure! The answer is forty-two."), to_user("42"))
    rnd = session.send_message("Answer in JSON please.")

    assert rnd.state == "finished", rnd.error
    assert rnd.reply_text == "42"
    bad_post = rnd.post_list[1]
    assert bad_post.first(AttachmentType.invalid_response) == "Sure! The answer is forty-two."
    asked, reasked = requests_since(server, first)
    assert reasked.body["messages"][:-2] == asked.body["messages"]
    assert reasked.body["messages"][-2] == {"role": "assistant", "content": "Sure! The answer is forty-two."}
    correction = reasked.body["messages"][-1]
    assert correction["role"] == "user"
    assert "could not be used" in correction["content"] and '"send_to"' in correction["content"]


def test_wrong_recipient_is_corrected_by_the_reask(server: ScriptedLLMServer, session: Session) -> None:
    first = len(server.requests)
    server.push(Answer(planner("Accountant", "Please add these up.")), to_user("Done."))
    rnd = session.send_message("Add things up.")
    assert rnd.state == "finished", rnd.error
    _, reasked = requests_since(server, first)
    assert "send_to must be one of" in reasked.body["messages"][-1]["content"]
    assert "Accountant" in reasked.body["messages"][-1]["content"]


def test_garbage_twice_fails_the_round(server: ScriptedLLMServer, session: Session) -> None:
    server.push(Answer("I refuse to write JSON."), Answer("<html>still not JSON</html>"))
    recorder = Recorder()
    rnd = session.send_message("Hello?", event_handler=recorder)
    assert rnd.error and "twice" in rnd.error and "Planner" in rnd.error and "still not JSON" in rnd.error
    assert_failed_then_recovers(server, session, rnd, recorder)


# --------------------------------------------------------------------------------------- cancel


def test_cancel_mid_stream_stops_the_round_and_drops_the_connection(
    server: ScriptedLLMServer, session: Session
) -> None:
    first = len(server.requests)
    long_answer = planner("User", "This answer streams slowly, word by word, for a long while. " * 4)
    server.push(Answer(long_answer, chunks=80, delay=0.05))  # about 4 s in all
    first_chunk = threading.Event()
    cancelled_at: list[float] = []

    class FirstChunk(SessionEventHandler):
        def handle(self, event: TaskWeaverEvent) -> None:
            if event.t == PostEventType.post_message_update and event.msg:
                first_chunk.set()

    def cancel_on_first_chunk() -> None:
        if first_chunk.wait(10):
            cancelled_at.append(time.monotonic())
            session.cancel()

    canceller = threading.Thread(target=cancel_on_first_chunk)
    canceller.start()
    rnd = session.send_message("Tell me a long story.", event_handler=FirstChunk())
    returned_at = time.monotonic()
    canceller.join()

    assert rnd.state == "cancelled" and rnd.error
    assert cancelled_at and returned_at - cancelled_at[0] < 1.0
    partial = rnd.post_list[-1]
    assert partial.send_from == "Planner" and 0 < len(partial.message) < len(json.loads(long_answer)["message"])
    [request] = requests_since(server, first)
    assert request.disconnected.wait(3), "the server should see the client hang up"
    server.push(to_user("Back after cancel."))
    assert session.send_message("Still there?").reply_text == "Back after cancel."
    assert_no_cut_short_turns(server.requests[-1], rnd)


# --------------------------------------------------------------------------------------- other apps


def test_azure_round_uses_the_deployment_route(server: ScriptedLLMServer, tmp_path: Path) -> None:
    application = new_app(
        tmp_path,
        server,
        **{
            "llm.api_type": "azure",
            "llm.api_base": server.endpoint,
            "llm.api_key": "azure-key",
            "llm.model": "gpt-4o",
            "llm.azure_deployment": "my-deployment",
            "llm.api_version": "2024-06-01",
            "execution.prewarm": False,
        },
    )
    try:
        first = len(server.requests)
        server.push(to_user("Hello from Azure."))
        rnd = application.get_session().send_message("Hello?")
        assert rnd.state == "finished", rnd.error
        assert rnd.reply_text == "Hello from Azure."
        [request] = requests_since(server, first)
        assert request.path == "/openai/deployments/my-deployment/chat/completions"
        assert request.query == {"api-version": "2024-06-01"}
        assert request.headers["api-key"] == "azure-key"
        assert "You are the Planner" in request.body["messages"][0]["content"]
    finally:
        application.stop()


def test_internal_turns_are_bounded(server: ScriptedLLMServer, tmp_path: Path) -> None:
    bound = 4
    application = new_app(
        tmp_path, server, **{"session.max_internal_chat_round_num": bound, "execution.prewarm": False}
    )
    try:
        first = len(server.requests)
        circle = [Answer(planner("CodeInterpreter", "Think about it more.")), Answer(text_reply("Thinking."))]
        server.push(*circle * (bound // 2))
        recorder = Recorder()
        rnd = application.get_session().send_message("Go in circles.", event_handler=recorder)

        assert rnd.state == "failed"
        assert f"more than {bound} turns" in (rnd.error or "")
        assert len(rnd.post_list) == 1 + bound
        assert len(requests_since(server, first)) == bound
        assert [k for k, _ in recorder.round_events()][-2:] == [RoundEventType.round_error, RoundEventType.round_end]
    finally:
        application.stop()


def test_an_answer_the_stream_could_not_follow_is_replaced_not_repeated(
    session: Session, server: ScriptedLLMServer
) -> None:
    """Prose with braces before the JSON misleads the streaming parser; the final text replaces it."""
    preface = 'Sure. {"message": "draft"} Here is the real answer: '
    server.push(Answer(preface + planner("User", "final"), chunks=4))
    recorder = Recorder()
    rnd = session.send_message("hello", event_handler=recorder)
    assert rnd.state == "finished" and rnd.reply_text == "final"
    updates = recorder.message_updates(rnd.reply.id)
    assert updates[-1].msg == "final" and updates[-1].extra == {"is_end": True, "replace": True}
