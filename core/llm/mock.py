"""Record and replay model calls (TaskWeaver's ``llm.use_mock``): demos and tests without a model.

A wrapper around the real backend, chosen once by ``core/llm/factory.py``. Each call is keyed by a
hash of what decides the answer (the role, the messages, the model and the sampling settings); a
recorded call is one JSON file ``<key>.json`` in ``llm.mock.cache_path`` holding the streamed
chunks as they came, written to a temporary file and renamed into place, so a reader never sees
half a record and a crash never leaves one.

``llm.mock.mode`` (TaskWeaver's names and default):

- ``playback_or_record``: replay a recorded call, otherwise call the model and record it;
- ``record_only``: always call the model, and record (replace) the call;
- ``playback_only``: replay only; a call never recorded is an ``LLMError`` saying so. The model
  is never built, so no key, server or network is needed.

Playback re-streams the recorded chunks; ``llm.mock.playback_delay`` (seconds, TaskWeaver's key)
waits that long before each one, a negative value (the default) not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from core.cancel import CancelToken, RoundCancelled
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMError
from core.llm.sampling import sampling_options

logger = logging.getLogger("weaver.llm")

FORMAT_VERSION = 1


def call_key(settings: LLMSettings, request: ChatRequest) -> str:
    """The hash of what decides a call's answer. Not the server's address, key or timeouts: a
    recording made against one server replays with another (or none)."""
    decisive: dict[str, Any] = {
        "role": request.role,
        "messages": request.messages,
        "api_type": settings.resolved_api_type,
        "model": settings.model,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "sampling": sampling_options(settings),
        "json": request.json_mode and settings.response_format == "json_object",
    }
    if settings.resolved_api_type == "offline":  # it answers from the hints, not the prose
        decisive["hints"] = request.hints
    text = json.dumps(decisive, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallCache:
    """The recorded calls: one JSON file per key in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The recorded call, or None when there is none (or it cannot be read: it is recorded anew)."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("recorded model call %s cannot be read (%s); it counts as not recorded", key, exc)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
            logger.warning("recorded model call %s is not a recording; it counts as not recorded", key)
            return None
        return data

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Write the record whole or not at all: a temporary file in the folder, renamed over the key's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(entry, out, ensure_ascii=False, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path(key))
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


class RecordReplayBackend(LLMBackend):
    """Replays recorded calls and records new ones, in front of the real backend (made on first need)."""

    def __init__(self, settings: LLMSettings, make_inner: Callable[[], LLMBackend]) -> None:
        mock = settings.mock
        if mock.cache_path is None:
            raise LLMError("llm.use_mock needs llm.mock.cache_path (the app sets <app_dir>/cache/llm)")
        self.settings = settings
        self.mode = mock.mode
        self.delay = mock.playback_delay
        self.cache = CallCache(mock.cache_path)
        self.name = settings.resolved_api_type
        self._make_inner = make_inner
        self._inner: LLMBackend | None = None
        self._lock = threading.Lock()

    def inner(self) -> LLMBackend:
        """The real backend, built on the first call that needs it (never in playback_only)."""
        with self._lock:
            if self._inner is None:
                self._inner = self._make_inner()
            return self._inner

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        key = call_key(self.settings, request)
        entry = None if self.mode == "record_only" else self.cache.get(key)
        if entry is not None:
            yield from self._replay(entry, request, cancel)
            return
        if self.mode == "playback_only":
            raise LLMError(
                f"this {request.role} call was not recorded (llm.mock.mode is playback_only; key {key[:12]} "
                f"not in {self.cache.folder}): record it first with llm.mock.mode = playback_or_record"
            )
        yield from self._record(key, request, cancel)

    def _replay(self, entry: dict[str, Any], request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        record = request.record
        assert record is not None
        started = time.monotonic()
        usage = entry.get("usage") or {}
        record.model = str(entry.get("model") or self.settings.model)
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        try:
            for chunk in entry["chunks"]:
                if self.delay >= 0 and cancel.wait(self.delay):
                    raise RoundCancelled("the round was cancelled")
                cancel.raise_if_cancelled()
                if record.first_token_s is None:
                    record.first_token_s = time.monotonic() - started
                yield str(chunk)
        finally:
            record.latency_s = time.monotonic() - started

    def _record(self, key: str, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        """Stream from the model, passing each chunk on; keep the call only if it ended whole."""
        chunks: list[str] = []
        for chunk in self.inner().stream_chat(request, cancel):
            chunks.append(chunk)
            yield chunk
        record = request.record
        assert record is not None
        entry = {
            "version": FORMAT_VERSION,
            "role": request.role,
            "model": record.model or self.settings.model,
            "messages": request.messages,
            "chunks": chunks,
            "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens},
            "recorded_at": time.time(),
        }
        try:
            self.cache.put(key, entry)
        except OSError as exc:  # the answer is still good: the user gets it, the log says what was lost
            logger.warning("model call not recorded in %s: %s", self.cache.folder, exc)

    def revises_code(self) -> bool:
        return self.settings.resolved_api_type != "offline"

    def close(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
