"""What the tests of each streamed provider (Ollama, Anthropic, Gemini) do the same way: backends
made and closed, a failed call's message and time, a cancel in the middle of a stream, and one
whole round (Planner → CodeInterpreter with real code → Planner) with its scripted answers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from core import AttachmentType, TaskWeaverApp
from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMError
from core.llm.factory import create_backend
from core.memory import Round
from tests.fake_http import FakeServer

SQUARES_CODE = "total = sum(i * i for i in range(1, 11))\nprint(f'total={total}')"


@pytest.fixture(name="backends")
def backends_fixture() -> Iterator[Callable[[LLMSettings], Any]]:
    """``backends(settings)``: a backend from the factory, closed at the test's end."""
    made: list[LLMBackend] = []

    def make(settings: LLMSettings) -> Any:
        backend = create_backend(settings)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def error_of(backend: LLMBackend, request: ChatRequest) -> tuple[str, float]:
    """The ``LLMError`` a call ends with, and how long it took."""
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        list(backend.stream_chat(request, CancelToken()))
    return str(info.value), time.monotonic() - started


def assert_cancel_mid_stream(fake: FakeServer[Any], path: str, backend: LLMBackend, request: ChatRequest) -> None:
    """The fake's next reply sends a first chunk, then nothing for 10 s: a cancel after the first
    chunk must end the call at once, and the server must see the client hang up."""
    first = len(fake.requests(path))
    token = CancelToken()
    got_first = threading.Event()
    canceller = threading.Thread(target=lambda: got_first.wait(5) and token.cancel())
    canceller.start()
    started = time.monotonic()
    received = []
    with pytest.raises(RoundCancelled):
        for chunk in backend.stream_chat(request, token):
            received.append(chunk)
            got_first.set()  # the next read blocks for 10 s unless cancel unblocks it
    canceller.join()
    assert time.monotonic() - started < 2 and len(received) == 1
    seen = fake.wait_for(path, first + 1)[first]
    assert seen.disconnected.wait(3), "the server should see the client hang up"


def planner(send_to: str, message: str) -> str:
    return json.dumps(
        {
            "thought": "t",
            "plan": ["compute", "report"],
            "current_plan_step": "compute",
            "send_to": send_to,
            "message": message,
        }
    )


def squares_answers() -> list[str]:
    """The three model answers of the round ``run_squares_round`` drives, in order."""
    return [
        planner("CodeInterpreter", "Sum the squares of 1..10 and print total=<n>."),
        json.dumps({"thought": "run", "reply_type": "python", "reply_content": SQUARES_CODE}),
        planner("User", "The sum of the squares of 1 to 10 is 385."),
    ]


def run_squares_round(tmp_path: Path, llm: dict[str, Any]) -> Round:
    """One round with the ``llm.*`` keys given: the code runs in a real kernel and the Planner
    reports its output; the round is checked as a user would see it and returned."""
    config = {**llm, "llm.timeout": 5, "execution.timeout": 20, "execution.prewarm": False, "execution.pool_size": 0}
    app = TaskWeaverApp(app_dir=tmp_path, config=config)
    try:
        rnd = app.get_session().send_message("What is the sum of squares of 1..10?")
        assert rnd.state == "finished", rnd.error
        assert [p.send_from for p in rnd.post_list] == ["User", "Planner", "CodeInterpreter", "Planner"]
        assert "total=385" in rnd.post_list[2].first(AttachmentType.execution_result)
        assert "385" in rnd.reply_text
        return rnd
    finally:
        app.stop()
