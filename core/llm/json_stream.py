"""Incremental parsing of a model's JSON answer, so fields can be shown while they are generated.

The model answers with one JSON object. Top-level string fields are reported chunk by chunk as their
characters arrive; items of top-level arrays are reported as each completes; other values when whole.
Text before the object (a ```json fence, a preamble) and after it is skipped. ``parse_json_object``
is the tolerant parse of a complete answer that decides validity.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal


class JsonProtocolError(ValueError):
    """The answer is not the JSON object the protocol asks for."""


@dataclass
class FieldEvent:
    key: str
    kind: Literal["start", "chunk", "item", "end"]
    text: str = ""
    value: Any = None


_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.IGNORECASE)
# One decoder for every parse: ``json.loads`` with an option builds a new one each call, and a
# streamed answer is parsed in hundreds of small pieces.
_LENIENT = json.JSONDecoder(strict=False)
_STRING_RUN = re.compile(r'[^"\\]+')


def parse_json_object(text: str, required: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Parse the JSON object in ``text``, tolerating fences and surrounding prose.

    When prose holds several objects, the first that has every ``required`` key wins.
    """
    stripped = _FENCE.sub("", text.strip())
    try:
        whole = _LENIENT.decode(stripped)  # strict=False: raw newlines inside strings are common
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return whole
    found = list(_objects_in(text))
    best = next((obj for obj in found if required <= obj.keys()), found[0] if found else None)
    if best is None:
        preview = text.strip()[:200] or "(empty answer)"
        raise JsonProtocolError(f"expected one JSON object, got: {preview}")
    return best


def _objects_in(text: str) -> Iterator[dict[str, Any]]:
    decoder = json.JSONDecoder(strict=False)
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            yield value
        position = text.find("{", end)


class JsonStreamParser:
    """Feed chunks of text; get ``FieldEvent``s for the top-level fields of the first object."""

    def __init__(self) -> None:
        self._state = "before"
        self._key_raw = ""
        self._key = ""
        self._escape = False
        self._segment = ""  # raw string characters not yet decoded and reported
        self._value_raw = ""
        self._depth = 0
        self._in_nested_string = False
        self._nested_escape = False
        self._item_start = 0
        self._decoded = ""

    def feed(self, chunk: str) -> list[FieldEvent]:
        events: list[FieldEvent] = []
        i, end = 0, len(chunk)
        while i < end:
            if self._state == "string" and not self._escape:
                # Inside a string only a quote or a backslash matters: take the run before it at once.
                run = _STRING_RUN.match(chunk, i)
                if run is not None:
                    self._segment += run.group()
                    i = run.end()
                    continue
            self._step(chunk[i], events)
            i += 1
        if self._state == "string" and self._segment:
            self._flush_string(events)
        return events

    # One character of the top-level object.
    def _step(self, char: str, events: list[FieldEvent]) -> None:
        state = self._state
        if state == "before":
            if char == "{":
                self._state = "key_or_end"
        elif state == "key_or_end":
            if char == '"':
                self._state, self._key_raw, self._escape = "key", "", False
            elif char == "}":
                self._state = "done"
        elif state == "key":
            if self._escape:
                self._escape = False
                self._key_raw += char
            elif char == "\\":
                self._escape = True
                self._key_raw += char
            elif char == '"':
                self._key = _decode(self._key_raw)
                self._state = "colon"
            else:
                self._key_raw += char
        elif state == "colon":
            if char == ":":
                self._state = "value"
        elif state == "value":
            if char.isspace():
                return
            if char == '"':
                self._state, self._segment, self._decoded, self._escape = "string", "", "", False
                events.append(FieldEvent(self._key, "start"))
            else:
                self._state, self._value_raw = "other", ""
                self._depth, self._in_nested_string, self._nested_escape = 0, False, False
                self._item_start = 1
                events.append(FieldEvent(self._key, "start"))
                self._step_other(char, events)
        elif state == "string":
            self._step_string(char, events)
        elif state == "other":
            self._step_other(char, events)
        elif state == "after_value":
            if char == ",":
                self._state = "key_or_end"
            elif char == "}":
                self._state = "done"

    def _step_string(self, char: str, events: list[FieldEvent]) -> None:
        if self._escape:
            self._escape = False
            self._segment += char
            return
        if char == "\\":
            self._escape = True
            self._segment += char
            return
        if char == '"':
            self._flush_string(events, final=True)
            events.append(FieldEvent(self._key, "end", value=self._decoded))
            self._state = "after_value"
            return
        self._segment += char

    def _flush_string(self, events: list[FieldEvent], final: bool = False) -> None:
        """Decode and report the pending characters, holding back an unfinished escape."""
        segment = self._segment
        if not final:
            cut = _safe_cut(segment)
            segment, self._segment = segment[:cut], segment[cut:]
        else:
            self._segment = ""
        if not segment:
            return
        text = _decode(segment)
        self._decoded += text
        events.append(FieldEvent(self._key, "chunk", text=text))

    def _step_other(self, char: str, events: list[FieldEvent]) -> None:
        self._value_raw += char
        if self._in_nested_string:
            if self._nested_escape:
                self._nested_escape = False
            elif char == "\\":
                self._nested_escape = True
            elif char == '"':
                self._in_nested_string = False
            return
        if char == '"':
            self._in_nested_string = True
        elif char in "[{":
            self._depth += 1
        elif char in "]}" or (char == "," and self._depth <= 1):
            is_array = self._value_raw.startswith("[")
            if is_array and self._depth == 1 and char in ",]":
                self._report_item(events, len(self._value_raw) - 1)
            if char in "]}":
                self._depth -= 1
            if self._depth < 0 or (char == "," and self._depth == 0):
                # The value ended at this character (a number, literal or the closing brace).
                self._finish_other(events, self._value_raw[:-1], closing=char)
            elif self._depth == 0 and char in "]}":
                self._finish_other(events, self._value_raw, closing=None)

    def _report_item(self, events: list[FieldEvent], end: int) -> None:
        raw = self._value_raw[self._item_start : end].strip()
        self._item_start = end + 1
        if raw:
            try:
                events.append(FieldEvent(self._key, "item", value=_LENIENT.decode(raw)))
            except json.JSONDecodeError:
                pass

    def _finish_other(self, events: list[FieldEvent], raw: str, closing: str | None) -> None:
        try:
            value = _LENIENT.decode(raw.strip())
        except json.JSONDecodeError:
            value = raw.strip()
        events.append(FieldEvent(self._key, "end", value=value))
        if closing == "}":
            self._state = "done"
        elif closing == ",":
            self._state = "key_or_end"
        else:
            self._state = "after_value"


def _decode(raw: str) -> str:
    """The text of a raw JSON string body; a broken escape is shown raw rather than lost."""
    try:
        return _LENIENT.decode(f'"{raw}"')
    except json.JSONDecodeError:
        return raw


_HIGH_SURROGATE_END = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}$")


def _safe_cut(segment: str) -> int:
    """Length of the prefix of a raw JSON string body that ends outside any escape sequence."""
    cut = _cut_outside_escape(segment)
    if _HIGH_SURROGATE_END.search(segment[:cut]):
        cut -= 6  # keep a high surrogate together with the low one that follows it
    return cut


def _cut_outside_escape(segment: str) -> int:
    i = len(segment)
    backslash = segment.rfind("\\", max(0, i - 12))
    while backslash != -1:
        # Count the run of backslashes ending at this one: an even run is literal backslashes.
        run_start = backslash
        while run_start > 0 and segment[run_start - 1] == "\\":
            run_start -= 1
        if (backslash - run_start) % 2 == 1:
            backslash = segment.rfind("\\", max(0, run_start - 12), run_start)
            continue
        tail = segment[backslash:]
        if len(tail) == 1:
            return backslash
        if tail[1] == "u":
            if len(tail) < 6:
                return backslash
        return i
    return i
