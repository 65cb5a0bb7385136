"""The passages of a session's documents, searchable: SQLite FTS5 ranked by ``bm25()`` (stdlib,
no model), or a ``core.retrieval`` ranker (embeddings when ``llm.embedding_api_type`` is set; BM25
written in Python where this SQLite was built without FTS5).

One ``DocumentIndex`` per session, kept in memory (an in-memory SQLite database): it is rebuilt
only when a file of its folders is added, removed, or changes size or time.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
from dataclasses import dataclass

from core.retrieval import BM25Ranker, Ranker
from core.roles.document_retriever.passages import Collected, Folder, Passage, collect, signature

log = logging.getLogger("weaver.document_retriever")
_TERM = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    "a an and are as at be by can do does find for from how i in is it me my of on or our please search "
    "show that the this to what where which who with you your documents document files file docs".split()
)


@functools.cache
def fts5_available() -> bool:
    """Whether this Python's SQLite has FTS5 (Debian's and the python.org builds do)."""
    try:
        with sqlite3.connect(":memory:") as probe:
            probe.execute("CREATE VIRTUAL TABLE probe USING fts5(text)")
        return True
    except sqlite3.OperationalError:
        return False


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_passages: int
    target_words: int


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


class DocumentIndex:
    """The passages of ``folders``; ``search`` brings it up to date first."""

    def __init__(self, folders: list[Folder], limits: Limits, ranker: Ranker | None = None) -> None:
        self.folders = folders
        self.limits = limits
        if ranker is None and not fts5_available():
            log.warning("this SQLite has no FTS5: document_retriever ranks with Weaver's BM25 instead")
            ranker = BM25Ranker()
        self.ranker = ranker  # None: SQLite FTS5's bm25()
        self.engine = ranker.name if ranker is not None else "fts5"
        self.collected = Collected()
        self.builds = 0  # how many times the passages were read (a test checks it stays put)
        self._signature: tuple[tuple[str, str, int, int], ...] | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def refresh(self) -> Collected:
        """Read the folders again when a file changed since the last time; what is indexed now."""
        with self._lock:
            now = signature(self.folders)
            if now != self._signature:
                self.collected = collect(
                    self.folders, self.limits.max_file_bytes, self.limits.max_passages, self.limits.target_words
                )
                self._signature = now
                self.builds += 1
                if self.ranker is None:
                    self._load_fts()
            return self.collected

    def search(self, query: str, size: int) -> list[Hit]:
        """The ``size`` passages most relevant to ``query``, best first (none share a word: none)."""
        passages = self.refresh().passages
        if not passages or size <= 0:
            return []
        if self.ranker is None:
            return self._search_fts(query, size)
        ranked = self.ranker.rank(query, [p.text for p in passages])
        if isinstance(self.ranker, BM25Ranker):  # as FTS5: a passage sharing no word is no answer
            ranked = [(i, score) for i, score in ranked if score > 0]
        return [Hit(passages[i], score) for i, score in ranked[:size]]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _load_fts(self) -> None:
        if self._db is not None:
            self._db.close()
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute("CREATE VIRTUAL TABLE passages USING fts5(text, tokenize='porter unicode61')")
        db.executemany(
            "INSERT INTO passages(rowid, text) VALUES (?, ?)",
            ((i, p.text) for i, p in enumerate(self.collected.passages)),
        )
        db.commit()
        self._db = db

    def _search_fts(self, query: str, size: int) -> list[Hit]:
        terms = [t for t in dict.fromkeys(t.lower() for t in _TERM.findall(query)) if t not in _STOPWORDS]
        if not terms or self._db is None:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)  # each word, quoted: no syntax
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(passages) FROM passages WHERE passages MATCH ? ORDER BY bm25(passages), rowid "
                "LIMIT ?",
                (match, size),
            ).fetchall()
        passages = self.collected.passages
        return [Hit(passages[row], -float(score)) for row, score in rows]
