"""DocumentRetriever: answers the Planner's question with the passages most relevant to it from
the chat's files (its session folder: uploads and what its code wrote) and the app's ``data/``.

As TaskWeaver's role of that name it calls no model to answer: it searches. Unlike TaskWeaver's
(a FAISS index built beforehand in ``index_folder``), it indexes the files itself, per chat and
in memory, again whenever one of them changes: SQLite FTS5 with ``bm25()`` by default,
``llm.embedding_*`` similarity when an embedding type is configured.

Settings (``document_retriever.<key>``): ``size`` (passages returned, TaskWeaver's, 5),
``target_length`` (words per passage, TaskWeaver's key counts tokens, 256), ``max_file_mb``
(larger files are left out, 10), ``max_passages`` (passages indexed per chat, 20000).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import AppConfig
from core.errors import ConfigError
from core.memory import Post
from core.retrieval import EmbeddingRanker, Ranker, create_ranker
from core.roles.context import RoundContext
from core.roles.deps import RoleDeps
from core.roles.document_retriever.index import DocumentIndex, Hit, Limits
from core.roles.document_retriever.passages import Collected, Folder
from core.roles.ext import ExtRole, RoleEntry
from core.text import code_span, fence

SECTION = "document_retriever"


class DocumentRetriever(ExtRole):
    def __init__(self, deps: RoleDeps, entry: RoleEntry) -> None:
        super().__init__(deps, entry)
        self.size = self.setting("size", 5)
        self.limits = Limits(
            max_file_bytes=int(float(self.setting("max_file_mb", 10.0)) * 1e6),
            max_passages=self.setting("max_passages", 20000),
            target_words=max(16, self.setting("target_length", 256)),
        )
        for key, value in (("size", self.size), ("max_passages", self.limits.max_passages)):
            if value < 1:
                raise ConfigError(f"{SECTION}.{key}: must be at least 1, got {value}")
        if self.limits.max_file_bytes < 1:
            raise ConfigError(f"{SECTION}.max_file_mb: must be more than 0")
        self.index: DocumentIndex | None = None

    def setting(self, key: str, default: Any) -> Any:
        """As ``ExtRole.setting``, an int accepted where a float is expected (``max_file_mb: 1``)."""
        if isinstance(default, float) and isinstance(self.settings.get(key), int):
            return float(self.settings[key])
        return super().setting(key, default)

    def reply(self, ctx: RoundContext) -> Post:
        incoming = ctx.last_post
        proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
        proxy.update_send_to(str(incoming.send_from))
        index = self._index_for(ctx.cwd)
        hits = index.search(incoming.message, self.size)
        proxy.update_message(answer(incoming.message, hits, index.collected, index.engine), is_end=True)
        return proxy.end()

    def _index_for(self, cwd: Path) -> DocumentIndex:
        if self.index is None or self.index.folders[0].root != cwd:
            self.index = DocumentIndex(searched_folders(cwd, self.config), self.limits, _ranker(self.config))
        return self.index


def searched_folders(cwd: Path, config: AppConfig) -> list[Folder]:
    """The chat's folder (names as the user sees them) and the app's data folder (``data/...``)."""
    folders = [Folder(cwd, "")]
    data_dir = config.execution.data_dir
    if data_dir is not None:
        folders.append(Folder(data_dir, "data/"))
    return folders


def _ranker(config: AppConfig) -> Ranker | None:
    """Embedding similarity when ``llm.embedding_api_type`` is set; else None (FTS5's bm25)."""
    ranker = create_ranker(config.llm)
    return ranker if isinstance(ranker, EmbeddingRanker) else None


def answer(query: str, hits: list[Hit], collected: Collected, engine: str) -> str:
    """The passages found, each under its file and lines, then the files left out and why."""
    searched = f"{collected.files} file(s), {len(collected.passages)} passage(s), ranked by {engine}"
    if hits:
        lines = [f"DocumentRetriever found {len(hits)} passage(s) for {code_span(query)} ({searched}):"]
        for number, hit in enumerate(hits, start=1):
            lines.append(f"{number}. {hit.passage.place}\n{fence(hit.passage.text, 'text')}")
    elif collected.files:
        lines = [f"DocumentRetriever found no passage sharing a word with {code_span(query)} ({searched})."]
    else:
        lines = ["DocumentRetriever has no document to search: no text file was uploaded to this chat or is in data/."]
    if collected.skipped:
        lines.append("Not searched:")
        lines.extend(f"- {source}: {reason}" for source, reason in collected.skipped[:20])
        if len(collected.skipped) > 20:
            lines.append(f"- and {len(collected.skipped) - 20} more")
    if collected.full:
        lines.append(f"The passage limit ({SECTION}.max_passages) was reached: the files after it were not searched.")
    return "\n".join(lines)
