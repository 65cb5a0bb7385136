"""Embeddings: the offline hashing embedder's ranking, and OpenAI, Azure and Ollama embedders against
the fake server's real HTTP routes (batching, the per-text cache, errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import LLMSettings, load_config
from core.llm.base import LLMError
from core.llm.embeddings import HashingEmbedder, OllamaEmbedder, OpenAIEmbedder, create_embedder
from tests.ollama_server import FakeOllama, fake_vector, ollama_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(30)

# TaskWeaver's sample plugins, as the Planner would see them.
PLUGINS = [
    "anomaly_detection: detect anomalies in a time series column of a pandas DataFrame",
    "sql_pull_data: pull data from a SQL database by asking in natural language",
    "klarna_search: search products and compare their prices in online shops",
    "ascii_render: render a text as ASCII art",
    "speech2text: transcribe an audio file into text",
]


def _unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)


# ------------------------------------------------------------------------------------ offline


def test_offline_is_the_default_and_near_wording_is_nearer() -> None:
    embedder = create_embedder(LLMSettings())
    assert isinstance(embedder, HashingEmbedder)
    request, near, far = embedder.embed(["plot sales by month", "make a chart of monthly revenue", "delete a file"])
    assert float(request @ near) > float(request @ far) + 0.05
    assert np.allclose(np.linalg.norm(embedder.embed(["x y", "anything"]), axis=1), 1.0)
    again = HashingEmbedder(model="hashing-1024").embed(["plot sales by month"])[0]
    assert np.array_equal(again, request), "the same vector on every run and machine"


@pytest.mark.parametrize(
    ("request_text", "plugin"),
    [
        ("find the anomalies in the sales time series", "anomaly_detection"),
        ("get the orders table from our SQL database", "sql_pull_data"),
        ("what is the price of an iPhone in online shops", "klarna_search"),
        ("turn this audio recording into text", "speech2text"),
    ],
)
def test_offline_ranks_plugin_descriptions_for_a_request(request_text: str, plugin: str) -> None:
    """What plugin selection will do with it: the right plugin first among TaskWeaver's samples."""
    ranked = create_embedder(LLMSettings()).rank(request_text, PLUGINS)
    assert PLUGINS[ranked[0][0]].startswith(plugin), [(PLUGINS[i][:20], round(s, 3)) for i, s in ranked]
    assert ranked[0][1] > ranked[1][1]


def test_taskweaver_sentence_transformers_reads_as_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        tmp_path, {"llm.embedding_api_type": "sentence_transformers", "llm.embedding_model": "all-mpnet-base-v2"}
    )
    assert isinstance(create_embedder(config.llm), HashingEmbedder)


# ------------------------------------------------------------------------------------ servers


def test_ollama_embed_batches_and_caches_each_text(ollama: FakeOllama) -> None:
    first = len(ollama.requests("/api/embed"))
    settings = ollama.settings(api_type="openai", embedding_api_type="ollama", embedding_api_base=ollama.base)
    embedder = create_embedder(settings.model_copy(update={"embedding_batch_size": 2}))
    assert isinstance(embedder, OllamaEmbedder) and embedder.model == "nomic-embed-text"
    texts = ["alpha", "beta", "gamma", "beta", "delta", "epsilon"]
    try:
        vectors = embedder.embed(texts)
        assert vectors.shape == (6, 8)
        for text, vector in zip(texts, vectors, strict=True):
            assert np.allclose(vector, _unit(fake_vector(text)), atol=1e-6)
        calls = ollama.wait_for("/api/embed", first + 3)[first:]
        assert [c.body["input"] for c in calls] == [["alpha", "beta"], ["gamma", "delta"], ["epsilon"]]
        assert {c.body["model"] for c in calls} == {"nomic-embed-text"}

        again = embedder.embed(["epsilon", "alpha"])  # both cached: no request
        assert np.array_equal(again, vectors[[5, 0]])
        assert len(ollama.requests("/api/embed")) == first + 3
    finally:
        embedder.close()


def test_the_cache_is_bounded(ollama: FakeOllama) -> None:
    settings = ollama.settings(embedding_api_type="ollama", embedding_cache_size=2)
    embedder = create_embedder(settings)
    try:
        embedder.embed(["one", "two", "three"])
        assert embedder.cached == 2
        before = len(ollama.requests("/api/embed"))
        embedder.embed(["one"])  # the oldest was dropped: asked again
        assert len(ollama.requests("/api/embed")) == before + 1
    finally:
        embedder.close()


def test_missing_ollama_embedding_model_says_to_pull_it(ollama: FakeOllama) -> None:
    embedder = create_embedder(ollama.settings(embedding_api_type="ollama", embedding_model="missing"))
    try:
        expected = r"embedding model 'missing' not found.*ollama pull missing.*llm.embedding_model"
        with pytest.raises(LLMError, match=expected):
            embedder.embed(["x"])
    finally:
        embedder.close()


def test_openai_compatible_embeddings_use_the_chats_server_and_key(ollama: FakeOllama) -> None:
    first = len(ollama.requests("/v1/embeddings"))
    settings = LLMSettings(
        api_type="openai",
        api_base=ollama.base + "/v1",
        api_key="chat-key",
        embedding_api_type="openai",
        embedding_model="text-embedding-3-large",
        max_retries=0,
    )
    embedder = create_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    try:
        vectors = embedder.embed(["revenue by month", "delete a file"])
        assert np.allclose(vectors[1], _unit(fake_vector("delete a file")), atol=1e-6)
        [call] = ollama.wait_for("/v1/embeddings", first + 1)[first:]
        assert call.headers["authorization"] == "Bearer chat-key"
        assert call.body["model"] == "text-embedding-3-large"
        assert call.body["input"] == ["revenue by month", "delete a file"]
    finally:
        embedder.close()


def test_an_embedding_server_of_its_own(ollama: FakeOllama) -> None:
    """``llm.embedding_api_base`` / ``embedding_api_key`` when embeddings come from elsewhere than the chat."""
    first = len(ollama.requests("/v1/embeddings"))
    settings = LLMSettings(
        api_type="azure",
        api_base="https://chat.example.invalid",
        api_key="chat-key",
        embedding_api_type="openai",
        embedding_api_base=ollama.base + "/v1",
        embedding_api_key="embedding-key",
    )
    embedder = create_embedder(settings)
    try:
        embedder.embed(["hello"])
        [call] = ollama.wait_for("/v1/embeddings", first + 1)[first:]
        assert call.headers["authorization"] == "Bearer embedding-key"
        assert call.body["model"] == "text-embedding-3-small"
    finally:
        embedder.close()


def test_azure_embeddings_use_the_model_as_deployment(ollama: FakeOllama) -> None:
    path = "/openai/deployments/my-embeddings/embeddings"
    first = len(ollama.requests(path))
    settings = LLMSettings(
        api_type="azure",
        api_base=ollama.base,
        api_key="azure-key",
        model="gpt-4o",
        azure_deployment="chat-deployment",
        embedding_api_type="azure",
        embedding_model="my-embeddings",
    )
    embedder = create_embedder(settings)
    try:
        assert embedder.embed(["hello"]).shape == (1, 8)
        [call] = ollama.wait_for(path, first + 1)[first:]
        assert call.headers["api-key"] == "azure-key" and call.query == {"api-version": "2024-06-01"}
    finally:
        embedder.close()


def test_taskweaver_embedding_section_of_another_type_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TaskWeaver reads ``llm.ollama.*`` for Ollama embeddings even when the chat is OpenAI's."""
    monkeypatch.chdir(tmp_path)
    config = load_config(
        tmp_path,
        {
            "llm.api_type": "openai",
            "llm.api_key": "sk-chat",
            "llm.embedding_api_type": "ollama",
            "llm.ollama.api_base": "http://127.0.0.1:11434",
            "llm.ollama.embedding_model": "mxbai-embed-large",
        },
    )
    assert config.llm.embedding_api_base == "http://127.0.0.1:11434"
    assert config.llm.embedding_model == "mxbai-embed-large"
    assert config.llm.api_base is None  # the chat's server is untouched
