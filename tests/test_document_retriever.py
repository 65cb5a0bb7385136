"""The DocumentRetriever role: the Planner asks it, it answers with passages of the chat's
uploads and the app's ``data/`` files, each with its file name and lines.

Real parts: a local OpenAI-compatible server that records every request (tests/llm_server.py),
real sessions (with real kernels where the offline CodeInterpreter would run), real files and
links on disk, SQLite's FTS5.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import TaskWeaverApp
from core.errors import ConfigError
from core.llm.embeddings import HashingEmbedder
from core.memory import Round
from core.retrieval import BM25Ranker, EmbeddingRanker
from core.roles.document_retriever.document_retriever import answer
from core.roles.document_retriever.index import DocumentIndex, Limits, fts5_available
from core.roles.document_retriever.passages import Folder, split_passages
from tests.llm_server import Answer, ScriptedLLMServer

ROLES = ["planner", "code_interpreter", "document_retriever"]
TERMS = b"Shipping takes about a week.\n\nRefunds are paid within 14 days of the parcel's return.\n"
HANDBOOK = b"# Handbook\n\nEvery employee gets 25 vacation days per year.\n"
LIMITS = Limits(max_file_bytes=1_000_000, max_passages=1000, target_words=64)


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["ask", "report"], "current_plan_step": "ask", "send_to": send_to}
    return Answer(json.dumps({**body, "message": message}))


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def app_with(app_dir: Path, **config: Any) -> TaskWeaverApp:
    base: dict[str, Any] = {"session.roles": ROLES, "execution.prewarm": False, "execution.timeout": 20}
    return TaskWeaverApp(app_dir=app_dir, config={**base, **config})


def post_from(rnd: Round, alias: str) -> Any:
    return next(p for p in rnd.post_list if p.send_from == alias)


def test_the_planner_gets_the_passage_of_an_uploaded_file(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """The Planner is told about DocumentRetriever, sends it a question, and its next request holds
    the passage from the uploaded file with the file's name and lines."""
    app = app_with(
        tmp_path,
        **{
            "llm.api_type": "openai",
            "llm.api_base": server.base_url,
            "llm.api_key": "test",
            "llm.model": "scripted",
            "llm.max_retries": 0,
        },
    )
    start = len(server.requests)
    server.push(planner("DocumentRetriever", "when are refunds paid"), planner("User", "Within 14 days."))
    session = app.get_session()
    try:
        rnd = session.send_message("When do I get my refund?", files=[{"name": "terms.txt", "content": TERMS}])
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    first, second = server.wait_for_requests(start + 2)[start:]
    system = str(first.body["messages"][0]["content"])
    assert "- DocumentRetriever: DocumentRetriever takes a question and returns the most relevant passages" in system
    told = str(second.body["messages"][-1]["content"])
    assert told.startswith("From DocumentRetriever: DocumentRetriever found 1 passage(s) for `when are refunds paid`")
    assert "1. terms.txt, lines 1-3" in told
    assert "Refunds are paid within 14 days of the parcel's return." in told
    assert post_from(rnd, "DocumentRetriever").send_to == "Planner"
    assert rnd.reply_text == "Within 14 days."


def test_offline_a_find_request_goes_to_the_retriever_and_finds_data_files_too(tmp_path: Path) -> None:
    """With no model: "find ... in my documents" is sent to DocumentRetriever, which finds the
    passage in an upload and in the app's data/ folder; the answer names both files."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "handbook.md").write_bytes(HANDBOOK)
    app = app_with(tmp_path, **{"llm.api_type": "offline"})
    session = app.get_session()
    try:
        upload = [{"name": "terms.txt", "content": TERMS}]
        refunds = session.send_message("find the refund deadline in my documents", files=upload)
        vacation = session.send_message("search my documents for vacation days")
    finally:
        session.stop()
        app.stop()
    assert refunds.state == "finished", refunds.error
    asked = next(p for p in refunds.post_list if p.send_to == "DocumentRetriever")
    assert asked.message == "the refund deadline"
    assert "terms.txt, lines 1-3" in refunds.reply_text and "Refunds are paid within 14 days" in refunds.reply_text
    assert refunds.reply_text.startswith("DocumentRetriever answered")
    assert vacation.state == "finished", vacation.error
    found = post_from(vacation, "DocumentRetriever").message
    assert found.index("1. data/handbook.md, lines 1-3") < found.index("Every employee gets 25 vacation days")
    assert "ranked by fts5" in found or not fts5_available()


def test_a_symlink_planted_in_the_session_folder_is_not_followed(tmp_path: Path) -> None:
    """User code can link a server file into its folder; the retriever neither reads nor lists it."""
    outside = tmp_path / "outside.txt"
    outside.write_text("The server secret is swordfish.\n")
    chat = tmp_path / "chat"
    chat.mkdir()
    (chat / "notes.md").write_text("Swordfish is also a fish.\n")
    os.symlink(outside, chat / "secret.txt")
    os.mkdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "deep.txt").write_text("swordfish in a linked folder\n")
    os.symlink(tmp_path / "elsewhere", chat / "linked")
    index = DocumentIndex([Folder(chat, "")], LIMITS)
    hits = index.search("swordfish", 5)
    assert [h.passage.source for h in hits] == ["notes.md"]
    text = answer("swordfish", hits, index.collected, index.engine)
    assert "server secret" not in text and "secret.txt" not in text and "linked" not in text


def test_a_file_over_max_file_mb_is_left_out_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("refund " * 400)  # 2800 bytes
    (tmp_path / "small.txt").write_text("refund policy in short\n")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4 refund")
    limits = Limits(max_file_bytes=2048, max_passages=1000, target_words=64)
    index = DocumentIndex([Folder(tmp_path, "")], limits)
    hits = index.search("refund", 5)
    assert [h.passage.source for h in hits] == ["small.txt"]
    text = answer("refund", hits, index.collected, index.engine)
    assert "- big.txt: 2.7 KB, over the document_retriever.max_file_mb limit (2.0 KB)" in text
    assert "- scan.pdf: .pdf files are not supported (text files only)" in text


def test_max_passages_stops_indexing_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("\n\n".join(f"paragraph {i} about apples" for i in range(5)))
    (tmp_path / "b.md").write_text("bananas are the answer\n")
    limits = Limits(max_file_bytes=1_000_000, max_passages=3, target_words=4)
    index = DocumentIndex([Folder(tmp_path, "")], limits)
    assert index.search("bananas", 5) == []
    assert len(index.collected.passages) == 3
    text = answer("bananas", [], index.collected, index.engine)
    assert "- a.md: only its first 3 passage(s) indexed: the document_retriever.max_passages limit" in text
    assert "- b.md: not read: the document_retriever.max_passages limit was reached" in text
    assert "The passage limit (document_retriever.max_passages) was reached" in text


def test_the_index_is_rebuilt_only_when_a_file_changes(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("The meeting is on Monday.\n")
    index = DocumentIndex([Folder(tmp_path, "")], LIMITS)
    assert index.search("meeting", 3)[0].passage.text == "The meeting is on Monday."
    index.search("meeting", 3)
    assert index.builds == 1
    notes.write_text("The meeting moved to Thursday afternoon.\n")
    assert index.search("meeting", 3)[0].passage.text == "The meeting moved to Thursday afternoon."
    assert index.builds == 2


def test_passages_keep_their_lines_and_embeddings_rank_them(tmp_path: Path) -> None:
    """Passages end at blank lines near the target length; with an embedding ranker (as with
    ``llm.embedding_api_type``) the most similar passage comes first."""
    text = "alpha beta gamma\ndelta\n\nepsilon zeta eta theta\n\n\niota kappa\n"
    assert [(p.first_line, p.last_line) for p in split_passages("x.txt", text, 4)] == [(1, 2), (4, 4), (7, 7)]
    (tmp_path / "a.txt").write_text("Quarterly revenue grew by ten percent.\n")
    (tmp_path / "b.txt").write_text("The cafeteria serves soup on Fridays.\n")
    ranker = EmbeddingRanker(HashingEmbedder(model="hashing-1024"))
    index = DocumentIndex([Folder(tmp_path, "")], LIMITS, ranker)
    hits = index.search("revenue growth per quarter", 1)
    assert index.engine == "embedding:offline"
    assert [h.passage.source for h in hits] == ["a.txt"]


def test_taskweaver_keys_reach_the_role_and_index_folder_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from core.config import load_config

    given = {
        "document_retriever.size": 2,
        "document_retriever.target_length": 128,
        "document_retriever.index_folder": "kb",
    }
    with caplog.at_level("WARNING", logger="weaver.config"):
        config = load_config(tmp_path, {"session.roles": ROLES, **given})
    assert config.role_settings == {"document_retriever": {"size": 2, "target_length": 128}}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(
        "document_retriever.index_folder is ignored: Weaver's DocumentRetriever"
    )


def test_without_fts5_weavers_bm25_finds_the_same_passage(tmp_path: Path) -> None:
    """Where SQLite lacks FTS5 the index ranks with core/retrieval.py's BM25: same top passage,
    and a question sharing no word with any passage finds nothing."""
    (tmp_path / "a.md").write_text("The warranty covers two years of repairs.\n\nDelivery is free over 50 euros.\n")
    (tmp_path / "b.md").write_text("Repairs outside the warranty are billed hourly.\n")
    fts = DocumentIndex([Folder(tmp_path, "")], Limits(1_000_000, 1000, 8))
    bm25 = DocumentIndex([Folder(tmp_path, "")], Limits(1_000_000, 1000, 8), BM25Ranker())
    assert bm25.engine == "bm25"
    top = [index.search("how long is the warranty for repairs", 1)[0].passage for index in (fts, bm25)]
    assert top[0] == top[1] and top[0].source == "a.md" and top[0].first_line == 1
    assert bm25.search("zebra", 3) == [] and fts.search("zebra", 3) == []


def test_offline_help_mentions_the_search_when_the_role_is_registered(tmp_path: Path) -> None:
    """The offline Planner's help lists what works: with DocumentRetriever, the find command too."""
    app = app_with(tmp_path, **{"llm.api_type": "offline"})
    session = app.get_session()
    try:
        rnd = session.send_message("hello there")
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    assert rnd.reply_text.endswith("send `find <words> in my documents` or `search my documents for <words>`.")


def test_with_embeddings_configured_the_passages_are_ranked_by_them(tmp_path: Path) -> None:
    """``llm.embedding_api_type`` set (here ``offline``: hashing, no download): the answer says so."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "handbook.md").write_bytes(HANDBOOK)
    app = app_with(tmp_path, **{"llm.api_type": "offline", "llm.embedding_api_type": "offline"})
    session = app.get_session()
    try:
        rnd = session.send_message("search my documents for vacation")
    finally:
        session.stop()
        app.stop()
    found = post_from(rnd, "DocumentRetriever").message
    assert "ranked by embedding:offline" in found and "1. data/handbook.md, lines 1-3" in found


def test_a_limit_below_one_stops_the_chat_naming_the_key(tmp_path: Path) -> None:
    app = app_with(tmp_path, **{"llm.api_type": "offline", "document_retriever.max_passages": 0})
    try:
        with pytest.raises(ConfigError, match=r"document_retriever\.max_passages: must be at least 1, got 0"):
            app.get_session()
    finally:
        app.stop()
