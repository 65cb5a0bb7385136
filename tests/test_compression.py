"""Prompt compression (TaskWeaver's ``<role>.prompt_compression`` and ``round_compressor.*``).

The model is a scripted OpenAI-compatible server on 127.0.0.1 that records every request, so each
test reads what the Planner was really sent: after the configured number of rounds, the summary
instead of the old rounds, the retained ones verbatim. The round compressor's own model (its
``llm_alias``) is a second server. The summary lives in the chat's folder and survives a resume.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import TaskWeaverApp
from core.cancel import CancelToken
from core.compat.config_keys import translate
from core.compression import STATE_FILE, Compressed, RoundCompressor, SummaryStore
from core.config import RoundCompressorSettings, known_keys
from core.llm.offline import OfflineBackend
from core.memory import Post, Round
from core.session import Session
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer, Status

pytestmark = pytest.mark.timeout(120)

SUMMARY_MARK = "running summary"  # words of the round compressor's system prompt (round_compressor.yaml)


def _to_user(message: str) -> Answer:
    reply = {"thought": "t", "plan": ["answer"], "current_plan_step": "answer", "send_to": "User", "message": message}
    return Answer(json.dumps(reply))


def _to_planner(message: str) -> Answer:
    reply = {"thought": "t", "plan": ["code"], "current_plan_step": "code", "send_to": "CodeInterpreter"}
    return Answer(json.dumps({**reply, "message": message}))


def _code(code: str) -> Answer:
    return Answer(json.dumps({"thought": "run it", "reply_type": "python", "reply_content": code}))


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ScriptedLLMServer, ScriptedLLMServer]]:
    primary, compressor = ScriptedLLMServer().start(), ScriptedLLMServer().start()
    try:
        yield primary, compressor
    finally:
        primary.stop()
        compressor.stop()


def _app(tmp_path: Path, server: ScriptedLLMServer, **extra: Any) -> TaskWeaverApp:
    """An app written as a TaskWeaver user writes it: flat keys in taskweaver_config.json."""
    config = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "primary-key",
        "llm.model": "planner-model",
        "llm.max_retries": 0,
        "execution.pool_size": 0,
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "taskweaver_config.json").write_text(json.dumps(config))
    return TaskWeaverApp(app_dir=tmp_path)


def _compressing(**extra: Any) -> dict[str, Any]:
    return {
        "planner.prompt_compression": True,
        "round_compressor.rounds_to_compress": 2,
        "round_compressor.rounds_to_retain": 2,
        **extra,
    }


def _is_summary_call(request: RecordedRequest) -> bool:
    return SUMMARY_MARK in request.body["messages"][0]["content"]


def _chat_text(request: RecordedRequest) -> str:
    """Everything after the system prompt: the turns the model reads."""
    return "\n".join(m["content"] for m in request.body["messages"][1:])


def _ask(session: Session, server: ScriptedLLMServer, number: int) -> list[RecordedRequest]:
    """Round ``number`` ("question N" → "answer N"); the requests the server got during it."""
    start = len(server.requests)
    server.push(_to_user(f"answer {number}"))
    rnd = session.send_message(f"question {number}")
    assert rnd.state == "finished", rnd.error
    assert rnd.reply_text == f"answer {number}"
    return server.requests[start:]


def test_old_rounds_are_sent_as_a_summary_after_the_configured_count(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, _ = servers
    app = _app(tmp_path, primary, **_compressing())
    session = app.get_session()
    try:
        for number in (1, 2, 3):  # 3 rounds pending (the current one included): fewer than 2 + 2
            [planner] = _ask(session, primary, number)
            assert not _is_summary_call(planner)
        assert "question 1" in _chat_text(planner) and "answer 2" in _chat_text(planner)

        # Round 4: four rounds pending, so rounds 1 and 2 are summarised, 3 and 4 stay verbatim.
        primary.push(Answer("The user asked questions 1 and 2; both were answered (SUMMARY-A)."))
        summary_call, planner = _ask(session, primary, 4)
        assert _is_summary_call(summary_call) and not _is_summary_call(planner)
        folded = _chat_text(summary_call)
        assert "question 1" in folded and "answer 2" in folded and "question 3" not in folded
        assert summary_call.body["model"] == "planner-model"  # no alias of its own: the chat's model
        assert "response_format" not in summary_call.body  # plain text, not the roles' JSON
        sent = _chat_text(planner)
        assert "SUMMARY-A" in sent
        assert "question 1" not in sent and "answer 1" not in sent and "question 2" not in sent
        assert "question 3" in sent and "answer 3" in sent and "question 4" in sent
        assert sent.index("SUMMARY-A") < sent.index("question 3")  # the summary opens the chat

        # Round 5: three pending again; the summary is reused, not asked for again.
        [planner] = _ask(session, primary, 5)
        assert not _is_summary_call(planner)
        assert "SUMMARY-A" in _chat_text(planner) and "question 2" not in _chat_text(planner)

        # Round 6: rounds 3 and 4 are folded into the previous summary.
        primary.push(Answer("Questions 1 to 4 were answered (SUMMARY-B)."))
        summary_call, planner = _ask(session, primary, 6)
        assert _is_summary_call(summary_call)
        assert "SUMMARY-A" in summary_call.body["messages"][0]["content"]  # the previous summary
        assert "question 3" in _chat_text(summary_call) and "question 5" not in _chat_text(summary_call)
        sent = _chat_text(planner)
        assert "SUMMARY-B" in sent and "SUMMARY-A" not in sent and "question 4" not in sent
        assert "question 5" in sent and "question 6" in sent
        # The summary call's tokens count in the round's usage, under its own role.
        assert [c["role"] for c in session.rounds[-1].llm_calls] == ["RoundCompressor", "Planner"]
    finally:
        session.stop()
        app.stop()


def test_the_code_interpreter_gets_its_own_summary_with_taskweavers_code_generator_key(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, _ = servers
    keys = {"code_generator.prompt_compression": True, "round_compressor.rounds_to_compress": 2}
    app = _app(tmp_path, primary, **keys, **{"round_compressor.rounds_to_retain": 1, "execution.timeout": 30})
    session = app.get_session()

    def code_round(number: int, summary: str | None = None) -> list[RecordedRequest]:
        start = len(primary.requests)
        primary.push(_to_planner(f"Set v{number}."))
        if summary is not None:
            primary.push(Answer(summary))
        primary.push(_code(f"v{number} = {number} * 10\nprint('set', v{number})"), _to_user(f"v{number} is set"))
        rnd = session.send_message(f"set v{number}")
        assert rnd.state == "finished", rnd.error
        return primary.requests[start:]

    try:
        # Round 1 only talks to the Planner: the CodeInterpreter has no turn there to summarise.
        _ask(session, primary, 1)
        assert len(code_round(2)) == 3
        # Round 3: rounds 1 and 2 are folded; only round 2 reached the CodeInterpreter.
        requests = code_round(3, "v2 was set to 20 (CODE-SUMMARY).")
        planner, summary_call, coder, _ = requests
        assert _is_summary_call(summary_call) and "v2 = 2 * 10" in _chat_text(summary_call)
        assert "question 1" not in _chat_text(summary_call)
        sent = _chat_text(coder)
        assert "CODE-SUMMARY" in sent and "v2 = 2 * 10" not in sent and "Set v3." in sent
        assert "CODE-SUMMARY" not in _chat_text(planner)  # the Planner's prompt is not compressed
        # The code really ran in the kernel: the CodeInterpreter's post reports its output.
        assert any(p.send_from == "CodeInterpreter" and "set 30" in p.message for p in session.rounds[-1].post_list)
    finally:
        session.stop()
        app.stop()


def test_the_summary_is_asked_of_the_round_compressors_own_model(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, compressor = servers
    before = len(compressor.requests)
    alias = {
        "ext_llms.llm_configs": {
            "summariser": {"llm.api_base": compressor.base_url, "llm.api_key": "sum-key", "llm.model": "small-model"}
        },
        "round_compressor.llm_alias": "summariser",
    }
    app = _app(tmp_path, primary, **_compressing(**alias))
    session = app.get_session()
    try:
        for number in (1, 2, 3):
            _ask(session, primary, number)
        compressor.push(Answer("Two questions answered (SUMMARY-OWN)."))
        [planner] = _ask(session, primary, 4)  # the primary server saw only the Planner's request
        [summary_call] = compressor.requests[before:]
        assert _is_summary_call(summary_call)
        assert summary_call.body["model"] == "small-model"
        assert summary_call.headers["authorization"] == "Bearer sum-key"
        assert "SUMMARY-OWN" in _chat_text(planner) and "question 1" not in _chat_text(planner)
    finally:
        session.stop()
        app.stop()


def test_the_summary_is_cached_in_the_chat_folder_and_survives_a_resume(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, _ = servers
    app = _app(tmp_path, primary, **_compressing())
    session = app.get_session()
    session_id = session.session_id
    try:
        for number in (1, 2, 3):
            _ask(session, primary, number)
        primary.push(Answer("Questions 1 and 2 answered (SUMMARY-KEPT)."))
        assert len(_ask(session, primary, 4)) == 2
    finally:
        session.stop()
        app.stop()
    saved = json.loads((tmp_path / "workspace" / "sessions" / session_id / STATE_FILE).read_text())
    assert "SUMMARY-KEPT" in saved["roles"]["planner"]["summary"]
    assert len(saved["roles"]["planner"]["rounds"]) == 2

    app = _app(tmp_path, primary, **_compressing())  # a restarted server opens the chat from disk
    session = app.open_session(session_id)
    try:
        assert len(session.rounds) == 4
        [planner] = _ask(session, primary, 5)  # not summarised again: one request, the Planner's
        sent = _chat_text(planner)
        assert "SUMMARY-KEPT" in sent and "question 1" not in sent and "question 2" not in sent
        assert "question 3" in sent and "question 5" in sent
    finally:
        session.stop()
        app.stop()


def test_a_failed_summary_call_sends_the_rounds_verbatim(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    primary, _ = servers
    app = _app(tmp_path, primary, **_compressing())
    session = app.get_session()
    try:
        for number in (1, 2, 3):
            _ask(session, primary, number)
        primary.push(Status(500, "summariser down"))
        with caplog.at_level(logging.WARNING, logger="weaver.compression"):
            summary_call, planner = _ask(session, primary, 4)  # the round still finishes
        assert _is_summary_call(summary_call)
        sent = _chat_text(planner)
        assert all(f"question {n}" in sent for n in (1, 2, 3, 4))
        assert any("failed" in r.getMessage() and "verbatim" in r.getMessage() for r in caplog.records)
        assert not (session.workspace / STATE_FILE).exists()
        # The next turn tries again, and this time it works.
        primary.push(Answer("Questions 1 to 3 answered (SUMMARY-LATER)."))
        summary_call, planner = _ask(session, primary, 5)
        assert "question 3" in _chat_text(summary_call)
        sent = _chat_text(planner)
        assert "SUMMARY-LATER" in sent and "question 3" not in sent and "question 4" in sent
    finally:
        session.stop()
        app.stop()


def test_off_by_default_every_recent_round_is_sent_verbatim(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    primary, _ = servers
    app = _app(tmp_path, primary)
    session = app.get_session()
    try:
        for number in (1, 2, 3, 4, 5):
            [planner] = _ask(session, primary, number)  # one request per round: no summary call
        assert all(f"question {n}" in _chat_text(planner) for n in range(1, 6))
        assert not (session.workspace / STATE_FILE).exists()
    finally:
        session.stop()
        app.stop()


def test_offline_the_summary_lists_the_rounds_requests_and_outcomes(tmp_path: Path) -> None:
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps({"llm.api_type": "offline", "execution.pool_size": 0, **_compressing()})
    )
    app = TaskWeaverApp(app_dir=tmp_path)
    session = app.get_session()
    try:
        for number in (1, 2, 3, 4):
            assert session.send_message(f"tell me about topic {number}").state == "finished"
        summary = session.summaries.get("planner").summary
        assert "The user asked: tell me about topic 1" in summary
        assert "The user asked: tell me about topic 2" in summary and "topic 3" not in summary
        assert "answered:" in summary
        assert [c["role"] for c in session.rounds[-1].llm_calls][0] == "RoundCompressor"
    finally:
        session.stop()
        app.stop()


def test_taskweaver_compression_keys_are_read_not_warned() -> None:
    keys = {
        "planner.prompt_compression": True,
        "code_generator.prompt_compression": True,
        "round_compressor.rounds_to_compress": 4,
        "round_compressor.rounds_to_retain": 1,
        "echo.prompt_compression": True,
        "planner.compression_prompt_path": "x.yaml",
    }
    out, notes = translate(keys, known_keys())
    assert out == {
        "planner.prompt_compression": True,
        "code_interpreter.prompt_compression": True,
        "round_compressor.rounds_to_compress": 4,
        "round_compressor.rounds_to_retain": 1,
    }
    assert [n.split(" is ignored")[0] for n in notes] == ["echo.prompt_compression", "planner.compression_prompt_path"]


def _finished(query: str) -> Round:
    rnd = Round(user_query=query, state="finished")
    rnd.add_post(Post(send_from="User", send_to="Planner", message=query))
    rnd.add_post(Post(send_from="Planner", send_to="User", message=f"done: {query}"))
    return rnd


def _turns(rounds: list[Round]) -> str:
    return json.dumps([p.message for r in rounds for p in r.post_list])


def test_a_summary_of_rounds_the_chat_no_longer_has_is_started_over(tmp_path: Path) -> None:
    """A re-run drops rounds: a summary naming them would describe another chat."""
    store = SummaryStore(tmp_path)
    settings = RoundCompressorSettings(rounds_to_compress=2, rounds_to_retain=1)
    compressor = RoundCompressor("Planner", "planner", store, OfflineBackend(), settings)
    rounds = [_finished(f"q{n}") for n in range(1, 4)]
    calls: list[dict[str, Any]] = []
    state = compressor.compress(rounds, _turns, CancelToken(), calls)
    assert state.rounds == (rounds[0].id, rounds[1].id) and "q1" in state.summary and "q3" not in state.summary
    assert [c["role"] for c in calls] == ["RoundCompressor"]
    # The same rounds again: cached, no call.
    assert compressor.compress(rounds, _turns, CancelToken(), calls) == state and len(calls) == 1

    # Round 2 was re-run: its replacement is another round; the summary starts over from round 1.
    redone = [rounds[0], _finished("q2 again"), _finished("q4")]
    state = compressor.compress(redone, _turns, CancelToken(), calls)
    assert "q2 again" in state.summary and "- The user asked: q2 (" not in state.summary
    assert state.rounds == (redone[0].id, redone[1].id) and len(calls) == 2

    # A damaged file is logged and read as no summary; a good one is read back as written.
    reread = SummaryStore(tmp_path)
    reread.load()
    assert reread.get("planner") == state
    (tmp_path / STATE_FILE).write_text("{not json")
    damaged = SummaryStore(tmp_path)
    damaged.load()
    assert damaged.get("planner") == Compressed()


def test_stopping_the_round_during_the_summary_call_cancels_it(
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    """A cancel is the user's choice: the round stops (no fallback to the verbatim rounds)."""
    primary, _ = servers
    app = _app(tmp_path, primary, **_compressing())
    session = app.get_session()
    try:
        for number in (1, 2, 3):
            _ask(session, primary, number)
        start = len(primary.requests)
        primary.push(Answer("never finished", chunks=2, first_delay=30))

        def cancel_when_asked() -> None:
            primary.wait_for_requests(start + 1, timeout=30)
            session.cancel()

        canceller = threading.Thread(target=cancel_when_asked)
        canceller.start()
        rnd = session.send_message("question 4")
        canceller.join()
        assert rnd.state == "cancelled"
        [summary_call] = primary.requests[start:]  # the Planner was not asked
        assert _is_summary_call(summary_call)
        assert not (session.workspace / STATE_FILE).exists()
    finally:
        session.stop()
        app.stop()
