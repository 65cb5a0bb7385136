"""Text embeddings: ``llm.embedding_api_type`` / ``llm.embedding_model`` (TaskWeaver's keys).

One small interface, ``Embedder.embed(texts) -> numpy array`` (one unit-length row per text, so a
dot product is the cosine similarity), chosen once from the config by ``create_embedder``. Texts
go to the model ``llm.embedding_batch_size`` at a time; each distinct text's vector is kept in
memory (keyed by a hash of the text, at most ``llm.embedding_cache_size`` of them, least recently
used dropped first), so asking again for the same plugin descriptions costs nothing.

The types: ``offline`` (the default: feature hashing of words and character n-grams, no model and no
download), ``openai`` (or any OpenAI-compatible server through ``llm.embedding_api_base``),
``azure`` / ``azure_ad``, ``ollama`` (``/api/embed``), ``qwen`` and ``zhipuai`` (their compatible
``/embeddings``). TaskWeaver's default, ``sentence_transformers``, needs a model download; here it
reads as ``offline``. Auto plugin selection ranks with it when ``llm.embedding_api_type`` is set
(core/retrieval.py); experience and document retrieval are the planned users.
"""

from __future__ import annotations

import abc
import hashlib
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from core.config import LLMSettings
from core.llm.base import LLMError

Vectors = NDArray[np.float32]

DEFAULT_MODELS = {
    "offline": "hashing-1024",
    "openai": "text-embedding-3-small",
    "azure": "text-embedding-3-small",
    "azure_ad": "text-embedding-3-small",
    "ollama": "nomic-embed-text",
    "qwen": "text-embedding-v3",
    "zhipuai": "embedding-3",
}
_ALIASES = {"sentence_transformers": "offline", "glm": "zhipuai"}


def embedding_type(settings: LLMSettings) -> str:
    """The embedding type in use (TaskWeaver's aliases resolved)."""
    return _ALIASES.get(settings.embedding_api_type, settings.embedding_api_type)


class Embedder(abc.ABC):
    """Embeds texts in batches, caching each distinct text's vector in memory."""

    name: str = "base"

    def __init__(self, model: str, batch_size: int = 64, cache_size: int = 10000) -> None:
        self.model = model
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 row per text, in order (shape ``(len(texts), dimensions)``)."""
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        found: dict[bytes, Vectors] = {}
        with self._lock:
            for key in keys:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    found[key] = self._cache[key]
        todo = list(dict.fromkeys(k for k in keys if k not in found))  # each missing text once
        text_of = dict(zip(keys, texts, strict=True))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            vectors = _unit_rows(self._embed_batch([text_of[k] for k in batch]), len(batch), self.name)
            found.update(zip(batch, vectors, strict=True))
            with self._lock:
                for key, vector in zip(batch, vectors, strict=True):
                    self._remember(key, vector)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    def rank(self, query: str, candidates: Sequence[str]) -> list[tuple[int, float]]:
        """``(index, cosine similarity)`` of each candidate, most similar to ``query`` first."""
        if not candidates:
            return []
        vectors = self.embed([query, *candidates])
        scores = vectors[1:] @ vectors[0]
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def _remember(self, key: bytes, vector: Vectors) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = vector
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    @property
    def cached(self) -> int:
        """How many texts' vectors are kept."""
        with self._lock:
            return len(self._cache)

    @abc.abstractmethod
    def _embed_batch(self, texts: list[str]) -> Any:
        """The raw vectors of one batch (a list of lists or an array), in order."""


def _unit_rows(raw: Any, count: int, name: str) -> Vectors:
    """``raw`` as a float32 matrix with unit-length rows; a wrong shape is the server's error."""
    try:
        matrix = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError):
        raise LLMError(f"the {name} embedding server sent vectors that are not numbers") from None
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        got = matrix.shape[0] if matrix.ndim else 0
        raise LLMError(f"the {name} embedding server sent {got} vectors for {count} texts")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


# --------------------------------------------------------------------------------------- offline


_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or our please the this to with me my i we you "
    "your can could would should do does make show give".split()
)


class HashingEmbedder(Embedder):
    """Offline: words, their crude stems, word pairs and character 3-5-grams, each hashed (with a
    sign) into a fixed number of dimensions, counts damped with log(1 + n). No model, no download, and
    the same vector on every machine; it matches wording (``month`` ~ ``monthly``), not meaning."""

    name = "offline"

    def __init__(self, dimensions: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dimensions = dimensions

    def _embed_batch(self, texts: list[str]) -> Vectors:
        matrix = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, weight in _features(text):
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                sign = 1.0 if digest >> 63 else -1.0
                matrix[row, digest % self.dimensions] += sign * weight
        return np.sign(matrix) * np.log1p(np.abs(matrix))


def _features(text: str) -> list[tuple[str, float]]:
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]
    features: list[tuple[str, float]] = []
    for word in words:
        features.append(("w:" + word, 1.0))
        stem = _stem(word)
        if stem != word:
            features.append(("w:" + stem, 0.7))
        padded = f"<{word}>"
        grams = [padded[i : i + n] for n in (3, 4, 5) for i in range(len(padded) - n + 1)]
        features.extend(("c:" + gram, 1.5 / len(grams)) for gram in grams)  # a word's grams weigh 1.5 together
    features.extend((f"b:{a} {b}", 0.5) for a, b in zip(words[:-1], words[1:], strict=True))
    return features


def _stem(word: str) -> str:
    for suffix in ("ingly", "ing", "edly", "ed", "ly", "ies", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


# --------------------------------------------------------------------------------------- servers


class OpenAIEmbedder(Embedder):
    """``/embeddings`` over the official client: OpenAI, compatible servers, Azure, Qwen, ZhipuAI."""

    def __init__(self, settings: LLMSettings, api_type: str, **kwargs: Any) -> None:
        from core.llm.openai_backend import _make_client  # one place builds clients, with our timeouts

        super().__init__(**kwargs)
        self.name = api_type
        self.where = settings.api_base or "api.openai.com"
        client = _make_client(settings, "openai" if api_type in ("qwen", "zhipuai") else api_type)
        # Not streamed, so nothing to cancel mid-way: the client's own retries will do.
        self._client = client.with_options(max_retries=settings.max_retries)

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        import openai

        try:
            answer = self._client.embeddings.create(model=self.model, input=texts, encoding_format="float")
        except openai.APIStatusError as exc:
            raise _status_error(self.name, self.model, self.where, exc.status_code, exc.message) from None
        except openai.APIError as exc:
            raise LLMError(f"the {self.name} embedding call to {self.where} failed: {exc.message}") from None
        return [item.embedding for item in sorted(answer.data, key=lambda d: d.index)]

    def close(self) -> None:
        self._client.close()


class OllamaEmbedder(Embedder):
    """Ollama's ``POST /api/embed`` (a list of inputs per call)."""

    name = "ollama"

    def __init__(self, settings: LLMSettings, **kwargs: Any) -> None:
        from core.llm.ollama_backend import make_client, ollama_base

        super().__init__(**kwargs)
        self.settings = settings
        self.where = ollama_base(settings.api_base)
        self._client = make_client(settings)

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        import httpx

        retries, backoff = self.settings.max_retries, self.settings.retry_backoff
        while True:
            try:
                response = self._client.post("/api/embed", json={"model": self.model, "input": texts})
            except httpx.TransportError as exc:
                failure = LLMError(f"could not reach the Ollama server at {self.where}: {exc}")
            else:
                if response.status_code == 200:
                    return list(response.json().get("embeddings") or [])
                try:
                    detail = str(response.json().get("error") or response.text)
                except ValueError:
                    detail = response.text
                failure = _status_error("ollama", self.model, self.where, response.status_code, detail)
                if response.status_code < 500 and response.status_code != 429:
                    raise failure
            if retries == 0:
                raise failure
            retries -= 1
            time.sleep(min(backoff, 30.0))  # no cancel token here: embeddings are short calls
            backoff *= 2

    def close(self) -> None:
        self._client.close()


def _status_error(name: str, model: str, where: str, code: int, detail: object) -> LLMError:
    text = " ".join(str(detail).split())[:200]
    if code == 404:
        pull = f" (run `ollama pull {model}`)" if name == "ollama" else ""
        return LLMError(
            f"embedding model {model!r} not found at {where} (HTTP 404: {text}){pull}; change llm.embedding_model"
        )
    if code in (401, 403):
        return LLMError(f"the {name} embedding server refused the key (HTTP {code}); check llm.embedding_api_key")
    return LLMError(f"the {name} embedding server answered HTTP {code}: {text}")


# --------------------------------------------------------------------------------------- choice


def create_embedder(settings: LLMSettings) -> Embedder:
    """The embedder ``llm.embedding_*`` names. The server, key and options are the chat's when
    the chat uses the same type (``llm.embedding_api_base`` / ``embedding_api_key`` override)."""
    kind = embedding_type(settings)
    common: dict[str, Any] = {
        "model": settings.embedding_model or DEFAULT_MODELS[kind],
        "batch_size": settings.embedding_batch_size,
        "cache_size": settings.embedding_cache_size,
    }
    if kind == "offline":
        return HashingEmbedder(**common)
    same = settings.resolved_api_type == kind
    server = settings.model_copy(
        update={
            "api_type": kind,
            "api_base": settings.embedding_api_base or (settings.api_base if same else None),
            "api_key": settings.embedding_api_key or (settings.api_key if same else None),
            "model": common["model"],
            "azure_deployment": None,  # Azure: the embedding model names the deployment
        }
    )
    if kind == "ollama":
        return OllamaEmbedder(server, **common)
    if kind in ("qwen", "zhipuai"):
        from core.llm.compatible import resolved_settings

        server = resolved_settings(server)
    return OpenAIEmbedder(server, kind, **common)
