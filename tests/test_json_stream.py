"""The streamed-JSON parser reports every field exactly as a whole-text parse would."""

import json
import random

import pytest

from core.llm.json_stream import JsonProtocolError, JsonStreamParser, parse_json_object

ANSWER = {
    "thought": 'a "quoted" \\ thing é 😀 end',
    "plan": ["step one, with comma", "step [two]"],
    "n": 5,
    "nested": {"a": [1, {"b": "}"}]},
    "send_to": "User",
    "message": "line1\nline2 \\n",
}


@pytest.mark.parametrize("ascii_only", [True, False])
def test_random_chunking_reports_the_same_fields(ascii_only: bool) -> None:
    text = "```json\n" + json.dumps(ANSWER, ensure_ascii=ascii_only) + "\n```"
    rng = random.Random(7)
    for _ in range(300):
        parser = JsonStreamParser()
        events = []
        i = 0
        while i < len(text):
            step = rng.randint(1, 7)
            events += parser.feed(text[i : i + step])
            i += step
        ends = {e.key: e.value for e in events if e.kind == "end"}
        streamed = {}
        for e in events:
            if e.kind == "chunk":
                streamed[e.key] = streamed.get(e.key, "") + e.text
        items = [e.value for e in events if e.kind == "item" and e.key == "plan"]
        assert ends == ANSWER
        assert streamed["thought"] == ANSWER["thought"]
        assert streamed["message"] == ANSWER["message"]
        assert items == ANSWER["plan"]


def test_string_fields_stream_before_the_answer_is_complete() -> None:
    parser = JsonStreamParser()
    events = parser.feed('{"message": "Hel')
    assert [(e.kind, e.text) for e in events] == [("start", ""), ("chunk", "Hel")]


def test_tolerant_parse_of_prose_around_the_object() -> None:
    assert parse_json_object('Sure! {"a": 1} hope that helps') == {"a": 1}
    assert parse_json_object('```json\n{"a": 2}\n```') == {"a": 2}


@pytest.mark.parametrize("garbage", ["", "I cannot help with that.", "[1, 2]", '{"a": '])
def test_garbage_is_a_protocol_error(garbage: str) -> None:
    with pytest.raises(JsonProtocolError):
        parse_json_object(garbage)
