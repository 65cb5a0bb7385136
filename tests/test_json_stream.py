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


def test_raw_newlines_in_strings_are_accepted() -> None:
    text = '{"reply_type": "python", "reply_content": "import os\nprint(1)"}'
    assert parse_json_object(text)["reply_content"] == "import os\nprint(1)"
    streamed = "".join(e.text for e in JsonStreamParser().feed(text) if e.kind == "chunk" and e.key == "reply_content")
    assert streamed == "import os\nprint(1)"


def test_a_bad_escape_in_prose_before_the_answer_does_not_break_the_stream() -> None:
    parser = JsonStreamParser()
    parser.feed('I used {"C:\\data": 1} then {"thought": "x"}')  # must not raise
    assert parse_json_object('I used {"C:\\data": 1} then {"thought": "x"}') == {"thought": "x"}
