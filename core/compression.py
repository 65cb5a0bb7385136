"""Prompt compression (TaskWeaver's round compressor): a role's older rounds become a running summary.

With ``<role>.prompt_compression`` on, once ``round_compressor.rounds_to_compress`` +
``rounds_to_retain`` rounds (the current one included) are not yet summarised, all but the last
``rounds_to_retain`` of them are folded by the model into the previous summary, and the role's
prompt carries that summary instead of those rounds. Until the next fold the summary stays as it
is, so the model is asked once per ``rounds_to_compress`` rounds, not at every turn.

Each role keeps its own summary (each sees the chat from its side), cached per chat in
``<session folder>/compression.json`` (replaced atomically), so a resumed chat goes on from it.
A summary that names rounds the chat no longer has (a re-run dropped them) is started over. A
failed summary call never fails the round: the role gets the rounds verbatim (and the previous
summary), and the next turn tries again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core import metrics
from core.cancel import CancelToken, RoundCancelled
from core.config import RoundCompressorSettings
from core.llm.base import ChatRequest, LLMBackend
from core.memory import Round
from core.roles.prompts.templates import load_templates
from core.usage import cost_of

log = logging.getLogger("weaver.compression")

# The ``ChatRequest.role`` of a summary call (the offline backend answers it with a plain summary).
COMPRESSOR_ROLE = "RoundCompressor"
STATE_FILE = "compression.json"
_VERSION = 1


@dataclass(frozen=True)
class Compressed:
    """A role's running summary and the rounds (ids, oldest first) it stands for."""

    summary: str = ""
    rounds: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "rounds": list(self.rounds)}

    @classmethod
    def from_dict(cls, data: Any) -> Compressed:
        if not isinstance(data, dict):
            return cls()
        rounds = data.get("rounds")
        ids = tuple(str(r) for r in rounds) if isinstance(rounds, list) else ()
        return cls(summary=str(data.get("summary") or ""), rounds=ids)


class SummaryStore:
    """One chat's summaries by role (config section), in its folder's ``compression.json``."""

    def __init__(self, session_dir: Path) -> None:
        self.path = session_dir / STATE_FILE
        self._states: dict[str, Compressed] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        """The summaries a resumed chat had; an unreadable file is logged and the chat starts without."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s); older rounds will be summarised again", self.path, exc)
            return
        roles = data.get("roles") if isinstance(data, dict) else None
        with self._lock:
            self._states = {str(k): Compressed.from_dict(v) for k, v in (roles or {}).items()}

    def get(self, section: str) -> Compressed:
        with self._lock:
            return self._states.get(section, Compressed())

    def put(self, section: str, state: Compressed) -> None:
        """Keep ``state`` and write the file at once (a reader never sees half of it)."""
        with self._lock:
            self._states[section] = state
            data = {"version": _VERSION, "roles": {k: v.to_dict() for k, v in self._states.items()}}
            part = self.path.with_name(self.path.name + ".part")
            try:
                part.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
                os.replace(part, self.path)
            except OSError as exc:  # the summary still serves this session; a resume summarises again
                log.warning("%s cannot be written (%s)", self.path, exc)


# Rounds as the role's own turns, for the summary call's user message ("" when it had none there).
Transcript = Callable[[list[Round]], str]


class RoundCompressor:
    """Summarises one role's older rounds of one chat with the round compressor's model."""

    def __init__(
        self, role: str, section: str, store: SummaryStore, llm: LLMBackend, settings: RoundCompressorSettings
    ) -> None:
        self.role = role
        self.section = section
        self.store = store
        self.llm = llm
        self.settings = settings
        self.templates = load_templates("round_compressor")

    def compress(
        self, rounds: list[Round], transcript: Transcript, cancel: CancelToken, calls: list[dict[str, Any]]
    ) -> Compressed:
        """The summary to send for ``rounds`` (the chat's, the current one last), after folding in
        the older ones if enough are pending. ``calls``: where the summary call's record goes (the
        round's ``llm_calls``, so its tokens count)."""
        state = self.store.get(self.section)
        ids = [r.id for r in rounds]
        if tuple(ids[: len(state.rounds)]) != state.rounds:
            log.info("%s: the summarised rounds are no longer the chat's first ones; starting over", self.role)
            state = Compressed()
            self.store.put(self.section, state)
        pending = rounds[len(state.rounds) :]
        retain, batch = self.settings.rounds_to_retain, self.settings.rounds_to_compress
        if len(pending) < batch + retain:
            return state
        fold = pending[:-retain]
        text = transcript(fold)
        if not text:  # none of these rounds reached this role: nothing to summarise, nothing to ask
            state = Compressed(state.summary, state.rounds + tuple(r.id for r in fold))
            self.store.put(self.section, state)
            return state
        try:
            summary = self._summarise(state.summary, fold, text, cancel, calls)
        except RoundCancelled:
            raise
        except Exception as exc:  # the round goes on with the rounds verbatim
            log.warning("%s: summarising %d earlier round(s) failed (%s); sent verbatim", self.role, len(fold), exc)
            return state
        if not summary:
            log.warning("%s: the summary of %d earlier round(s) came back empty; sent verbatim", self.role, len(fold))
            return state
        state = Compressed(summary, state.rounds + tuple(r.id for r in fold))
        self.store.put(self.section, state)
        log.info("%s: %d earlier round(s) summarised (%d in all)", self.role, len(fold), len(state.rounds))
        return state

    def note(self, state: Compressed) -> str:
        """The summary as the role reads it, in front of its first turn; empty without one."""
        return self.templates.render("summary", summary=state.summary).strip() if state.summary else ""

    def _summarise(
        self,
        previous: str,
        rounds: list[Round],
        transcript: str,
        cancel: CancelToken,
        calls: list[dict[str, Any]],
    ) -> str:
        system = self.templates.render("system", role=self.role, previous_summary=previous)
        hints = {
            "stage": "compress",
            "previous_summary": previous,
            "rounds": [_outline(r) for r in rounds],
        }
        request = ChatRequest(
            role=COMPRESSOR_ROLE,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": transcript}],
            hints=hints,
            json_mode=False,
        )
        record = request.record
        assert record is not None
        failed = True
        try:
            text = "".join(self.llm.stream_chat(request, cancel)).strip()
            failed = False
            return text
        except RoundCancelled:
            failed = False  # the user's choice, not a failure (as the roles count it)
            raise
        finally:
            settings = self.llm.configured()
            model = settings.model if settings is not None else (getattr(self.llm, "name", "") or "")
            record.provider = getattr(self.llm, "name", "") or type(self.llm).__name__
            record.model = record.model or model or record.provider
            record.cost = cost_of(settings, record.prompt_tokens, record.completion_tokens)
            calls.append(record.to_dict())
            metrics.llm_call(
                record.provider,
                failed,
                record.attempts,
                record.prompt_tokens,
                record.completion_tokens,
                record.first_token_s,
                model or record.provider,
            )


def _outline(rnd: Round) -> dict[str, str]:
    """A round as data for the offline backend: the request, how it ended, and the answer."""
    return {"user_query": rnd.user_query, "state": rnd.state, "reply": rnd.reply_text}
