"""Ranking texts against a request: BM25 with no model (the default), or embedding similarity.

One interface, ``Ranker.rank(query, documents) -> [(index, score)]``, best first, ties kept in the
documents' order, chosen once per app by ``create_ranker`` from ``llm.embedding_api_type``: left
unset, the lexical ``BM25Ranker`` (no model, no download, the same answer on every machine); set
(``offline`` included), an ``EmbeddingRanker`` over ``core/llm/embeddings.py``, whose embedder
keeps each document's vector, so a plugin's description is embedded once per app.

BM25 is written here rather than taken from ``rank_bm25``: that package's Okapi IDF turns negative
for a word found in more than half of the documents, which in a catalog of three to ten plugins is
most shared words; the form used here, ``log(1 + (N - n + 0.5) / (n + 0.5))`` (Lucene's), stays
positive. It is twenty lines and needs nothing new installed.
"""

from __future__ import annotations

import abc
import math
import re
from collections import Counter
from typing import Sequence

from core.config import LLMSettings
from core.llm.embeddings import Embedder, create_embedder

Ranked = list[tuple[int, float]]

_WORD = re.compile(r"[A-Za-z][a-z]*|[A-Z]+(?![a-z])|[0-9]+")  # splits snake_case and camelCase too
_STOPWORDS = frozenset(
    "a an and are as at be by can could do does for from give how i in into is it its me my of on or our "
    "please show that the their them then this to use using was we what which with would you your".split()
)


def words(text: str) -> list[str]:
    """Lower-case word stems, stop words dropped: ``detectAnomalies`` → ``detect``, ``anomaly``."""
    return [_stem(w) for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOPWORDS]


def _stem(word: str) -> str:
    """A crude suffix strip, enough for ``anomalies`` ~ ``anomaly``, ``sales`` ~ ``sale``, ``boxes``
    ~ ``box`` and ``plotting`` ~ ``plot``; words the query and the documents share stem alike."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")) and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    for suffix in ("ing", "ed"):  # not "ly": anomaly, supply
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            return stem[:-1] if len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "ls" else stem
    return word


class Ranker(abc.ABC):
    """Orders documents by relevance to a query."""

    name: str = "base"

    @abc.abstractmethod
    def rank(self, query: str, documents: Sequence[str]) -> Ranked:
        """``(index, score)`` of every document, most relevant first; equal scores in input order."""

    def relevance(self, query: str, documents: Sequence[str]) -> Ranked:
        """Like ``rank``, with scores on a 0-1 scale a threshold can be set on (experience tips);
        an embedding ranker's cosine similarities already are."""
        return self.rank(query, documents)

    def top(self, query: str, documents: Sequence[str], k: int) -> list[int]:
        """The indexes of the ``k`` most relevant documents (all of them when there are ``k`` or fewer)."""
        if k >= len(documents):
            return list(range(len(documents)))
        return [index for index, _ in self.rank(query, documents)[: max(k, 0)]]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class BM25Ranker(Ranker):
    """Okapi BM25 (``k1``, ``b``) over ``words``; the statistics are computed per call, which for
    a plugin catalog (tens of short texts) costs well under a millisecond."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b

    def rank(self, query: str, documents: Sequence[str]) -> Ranked:
        docs = [Counter(words(d)) for d in documents]
        if not docs:
            return []
        count = len(docs)
        lengths = [sum(d.values()) for d in docs]
        average = sum(lengths) / count or 1.0
        terms = set(words(query))
        idf = {t: math.log(1 + (count - n + 0.5) / (n + 0.5)) for t in terms for n in [sum(t in d for d in docs)]}
        scores = []
        for doc, length in zip(docs, lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / average)
            scores.append(float(sum(idf[t] * doc[t] * (self.k1 + 1) / (doc[t] + norm) for t in terms if doc[t])))
        return _ordered(scores)

    def relevance(self, query: str, documents: Sequence[str]) -> Ranked:
        """Each BM25 score over the sum of the query's term weights (IDF): about the share of the
        request's words, the rarer weighing more, that the document has once at average length;
        0 for no shared word, at most 1."""
        ranked = self.rank(query, documents)
        docs = [set(words(d)) for d in documents]
        count = len(docs)
        weights = [
            math.log(1 + (count - n + 0.5) / (n + 0.5)) for t in set(words(query)) for n in [sum(t in d for d in docs)]
        ]
        total = sum(weights)
        return [(i, min(1.0, score / total) if total else 0.0) for i, score in ranked]


class EmbeddingRanker(Ranker):
    """Cosine similarity of ``llm.embedding_*`` vectors (the embedder caches each text's vector)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.name = f"embedding:{embedder.name}"

    def rank(self, query: str, documents: Sequence[str]) -> Ranked:
        if not documents:
            return []
        vectors = self.embedder.embed([query, *documents])
        return _ordered([float(s) for s in vectors[1:] @ vectors[0]])

    def close(self) -> None:
        self.embedder.close()


def _ordered(scores: list[float]) -> Ranked:
    return sorted(enumerate(scores), key=lambda pair: (-pair[1], pair[0]))


def create_ranker(settings: LLMSettings) -> Ranker:
    """Embeddings when the config names ``llm.embedding_api_type`` (any type, ``offline`` too);
    otherwise BM25, which needs nothing."""
    if "embedding_api_type" in settings.model_fields_set:
        return EmbeddingRanker(create_embedder(settings))
    return BM25Ranker()
