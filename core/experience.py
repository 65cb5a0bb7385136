"""Experience: a finished chat distilled into a tip, and the tips relevant to a new request.

TaskWeaver's flow, in Weaver's terms. Saving a chat writes its rounds (ids dropped) as
``raw_exp_<id>.yaml`` in ``session.experience_dir``, asks the experience model
(``experience.llm_alias``) to summarise them into a short tip, and writes the tip as
``exp_<id>.yaml`` (``exp_id``, ``experience_text``, ``raw_experience_path``). A hand-written
``handcrafted_exp_<id>.yaml`` with ``experience_text`` is a tip too. Every file is written to a
temporary name and renamed into place, so a reader never sees half a tip.

A role with ``<role>.use_experience`` ranks the tips of its ``experience_dir`` (with
``dynamic_experience_sub_path``, of the sub-folder the chat names) against the request and puts the
best ``experience.max_tips`` scoring at least ``experience.retrieve_threshold`` into its prompt.
Ranking is ``core.retrieval``'s ``relevance`` (0 to 1): BM25 with no model by default, its score over
the request's total word weight (a tip shares no word with an unrelated request, so it scores 0 and
is never shown; no model call per turn, the same answer on every machine), or the cosine similarity
of embeddings when ``llm.embedding_api_type`` is set (as TaskWeaver ranks). The offline hashing
embedder is not the default here because its character n-grams give unrelated texts a small
similarity that the threshold must then be tuned against.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.cancel import CancelToken
from core.config import AppConfig, LLMSettings
from core.errors import WeaverError
from core.llm.base import ChatRequest, LLMBackend
from core.memory import AttachmentType, Post, Round
from core.retrieval import Ranker, create_ranker
from core.roles.prompts.templates import load_templates
from core.sub_paths import named_sub_path as shared_sub_path
from core.sub_paths import sub_folder

log = logging.getLogger("weaver.experience")

EXPERIENCE_ROLE = "experience"  # the ChatRequest role of a summary (the offline backend answers it)
EXP_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")  # a file-name part, never a path
TIP_PREFIXES = ("exp_", "handcrafted_exp_")
RAW_PREFIX = "raw_exp_"
SUB_PATH_KEY = "experience_sub_path"  # TaskWeaver's shared-memory entry type, and the session variable


class ExperienceError(WeaverError):
    """A chat could not be saved as experience, or a tip could not be found (the message says why)."""


@dataclass(frozen=True)
class Tip:
    """One tip: what a role's prompt shows, and where it came from."""

    exp_id: str
    text: str
    path: Path
    raw_path: str = ""
    handcrafted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_id": self.exp_id,
            "text": self.text,
            "file": self.path.name,
            "raw_experience_path": self.raw_path,
            "handcrafted": self.handcrafted,
        }


def check_id(exp_id: str) -> str:
    if not EXP_ID.match(exp_id):
        raise ExperienceError(f"{exp_id!r} is not an experience id (letters, digits, - and _)")
    return exp_id


def _write_atomic(path: Path, text: str) -> None:
    """``text`` as ``path``, written beside it and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


class ExperienceStore:
    """The tip files of one folder: read, written atomically, deleted."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def tips(self) -> list[Tip]:
        """Every readable tip, by file name; a broken file is skipped with a log line."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*exp_*.yaml")):
            prefix = next((p for p in TIP_PREFIXES if path.name.startswith(p)), None)
            if prefix is None or not path.is_file():
                continue
            tip = self._read(path, path.stem[len(prefix) :], prefix != "exp_")
            if tip is not None:
                found.append(tip)
        return found

    @staticmethod
    def _read(path: Path, exp_id: str, handcrafted: bool) -> Tip | None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.warning("%s: not read (%s)", path, " ".join(str(exc).split()))
            return None
        text = data.get("experience_text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            log.warning("%s: no experience_text; skipped", path)
            return None
        raw = data.get("raw_experience_path") or ""
        return Tip(exp_id, text.strip(), path, str(raw), handcrafted)

    def get(self, exp_id: str) -> Tip | None:
        check_id(exp_id)
        return next((t for t in self.tips() if t.exp_id == exp_id), None)

    def save_raw(self, exp_id: str, rounds: Sequence[Round]) -> Path:
        path = self.folder / f"{RAW_PREFIX}{check_id(exp_id)}.yaml"
        _write_atomic(path, _dump(raw_experience(exp_id, rounds)))
        return path

    def save_tip(self, exp_id: str, text: str, raw_path: Path | None, model: str) -> Tip:
        path = self.folder / f"exp_{check_id(exp_id)}.yaml"
        data = {
            "exp_id": exp_id,
            "experience_text": text,
            "raw_experience_path": str(raw_path) if raw_path else None,
            "summarised_by": model,
        }
        _write_atomic(path, _dump(data))
        return Tip(exp_id, text, path, str(raw_path or ""))

    def delete(self, exp_id: str) -> list[str]:
        """Remove the tip ``exp_id`` and its raw chat; the names of the files removed."""
        check_id(exp_id)
        removed = []
        for prefix in (*TIP_PREFIXES, RAW_PREFIX):
            path = self.folder / f"{prefix}{exp_id}.yaml"
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path.name)
        return removed


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def raw_experience(exp_id: str, rounds: Sequence[Round]) -> dict[str, Any]:
    """A chat's rounds as TaskWeaver saves raw experience: ``session_id`` and ``rounds``, ids dropped."""
    rounds_data = [json.loads(json.dumps(r.to_dict(), default=str)) for r in rounds]
    return {"session_id": exp_id, "rounds": _without_ids(rounds_data)}


def _ran_well(post: Post) -> bool:
    return str(post.first(AttachmentType.execution_status, "")) == "success"


def chat_facts(rounds: Sequence[Round]) -> dict[str, Any]:
    """What the offline summary is made of: the user's requests and the code that ran without error."""
    code = [
        str(post.first(AttachmentType.reply_content, "")).strip()
        for rnd in rounds
        for post in rnd.post_list
        if _ran_well(post) and str(post.first(AttachmentType.reply_type, "python")) == "python"
    ]
    return {"queries": [r.user_query.strip() for r in rounds if r.user_query.strip()], "code": [c for c in code if c]}


def summarise(llm: LLMBackend, rounds: Sequence[Round], config: AppConfig, cancel: CancelToken | None = None) -> str:
    """The experience model's tip for a chat: the summary prompt, then the chat's rounds as JSON
    (the oldest cut when they pass ``experience.max_chat_chars``), cut at ``experience.max_tip_chars``."""
    limits = config.experience
    record = _without_ids([r.to_dict() for r in rounds])
    text = json.dumps(record, ensure_ascii=False, default=str)
    total = len(record)
    while len(text) > limits.max_chat_chars and len(record) > 1:
        record = record[1:]
        text = json.dumps(record, ensure_ascii=False, default=str)
    if len(record) < total or len(text) > limits.max_chat_chars:
        log.warning(
            "the chat is longer than experience.max_chat_chars (%d): its last %d of %d rounds are summarised%s",
            limits.max_chat_chars,
            len(record),
            total,
            ", cut" if len(text) > limits.max_chat_chars else "",
        )
    text = text[-limits.max_chat_chars :]
    messages = [
        {"role": "system", "content": load_templates("experience").render("summarise")},
        {"role": "user", "content": text},
    ]
    request = ChatRequest(role=EXPERIENCE_ROLE, messages=messages, hints=chat_facts(rounds), json_mode=False)
    try:
        answer = "".join(llm.stream_chat(request, cancel or CancelToken())).strip()
    except Exception as exc:  # the model's error, said to the person saving
        raise ExperienceError(f"the experience model could not summarise the chat: {exc}") from None
    if not answer:
        raise ExperienceError("the experience model answered with nothing; no tip was saved")
    if len(answer) > limits.max_tip_chars:
        log.warning("the tip is longer than experience.max_tip_chars (%d): cut", limits.max_tip_chars)
    return answer[: limits.max_tip_chars]


def save_experience(
    config: AppConfig, llm: LLMBackend, exp_id: str, rounds: Sequence[Round], folder: Path | None = None
) -> Tip:
    """Save a chat as experience: its raw rounds, then its tip (``session.experience_dir`` by default).
    Saving the same chat again replaces both."""
    finished = [r for r in rounds if r.post_list]
    if not finished:
        raise ExperienceError("the chat has no finished round to learn from")
    store = ExperienceStore(folder or _shared_folder(config))
    raw = store.save_raw(exp_id, finished)
    text = summarise(llm, finished, config)
    settings = llm.configured()
    tip = store.save_tip(exp_id, text, raw, settings.model if settings is not None else getattr(llm, "name", ""))
    log.info("chat %s saved as experience in %s", exp_id, tip.path)
    return tip


def _shared_folder(config: AppConfig) -> Path:
    folder = config.session.experience_dir
    if folder is None:
        raise ExperienceError("session.experience_dir is not set")
    return folder


def named_sub_path(posts: Iterable[Post], session_vars: Mapping[str, str]) -> str:
    """The tips' sub-folder a chat names (``experience_sub_path``: a role's shared-memory entry,
    else the session variable)."""
    return shared_sub_path(posts, session_vars, SUB_PATH_KEY)


_TIPS_KEPT = 64
_tips_cache: dict[Path, tuple[tuple[Any, ...], list[Tip]]] = {}
_tips_lock = threading.Lock()  # sessions run their roles on threads of their own


def folder_tips(folder: Path) -> list[Tip]:
    """The tips of ``folder``, read again only when its tip files change (every turn of every role
    with ``use_experience`` asks)."""
    try:
        files = sorted(folder.glob("*exp_*.yaml"))
        signature = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except FileNotFoundError:  # the folder, or a file, went away while it was listed
        return []
    with _tips_lock:
        cached = _tips_cache.get(folder)
    if cached is not None and cached[0] == signature:
        return cached[1]
    tips = ExperienceStore(folder).tips()
    with _tips_lock:
        if len(_tips_cache) >= _TIPS_KEPT:
            _tips_cache.pop(next(iter(_tips_cache)))
        _tips_cache[folder] = (signature, tips)
    return tips


_rankers: dict[str, Ranker] = {}
_rankers_lock = threading.Lock()


def _ranker(settings: LLMSettings) -> Ranker:
    """One ranker per embedding configuration for the process (an embedder keeps its vectors)."""
    key = settings.model_dump_json(include={"embedding_api_type", "embedding_model", "embedding_api_base"})
    key += str(sorted(settings.model_fields_set & {"embedding_api_type"}))
    with _rankers_lock:
        if key not in _rankers:
            _rankers[key] = create_ranker(settings)
        return _rankers[key]


class ExperienceShelf:
    """One role's tips from its settings (``use_experience``, ``experience_dir``,
    ``dynamic_experience_sub_path``), chosen per request."""

    def __init__(self, alias: str, config: AppConfig, use: bool, folder: Path | None, dynamic: bool) -> None:
        self.alias = alias
        self.config = config
        self.use = use
        self.folder = folder
        self.dynamic = dynamic

    def select(self, query: str, sub_path: str = "") -> list[Tip]:
        """The tips for ``query``: most similar first, at most ``experience.max_tips``, each scoring at
        least ``experience.retrieve_threshold``."""
        if not self.use or self.folder is None or not query.strip():
            return []
        folder: Path | None = self.folder
        if self.dynamic:
            folder = sub_folder(self.folder, sub_path)
            if folder is None:
                if sub_path:
                    log.warning("%s: experience sub-path %r leaves %s; no tips used", self.alias, sub_path, self.folder)
                return []
        assert folder is not None
        tips = folder_tips(folder)
        if not tips:
            return []
        limits = self.config.experience
        ranked = _ranker(self.config.llm).relevance(query, [t.text for t in tips])
        return [tips[i] for i, score in ranked if score >= limits.retrieve_threshold and score > 0][: limits.max_tips]
