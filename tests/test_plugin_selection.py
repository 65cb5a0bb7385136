"""Auto plugin selection (``code_generator.enable_auto_plugin_selection``): the ranker on its own,
then whole chats against the scripted OpenAI-compatible server, whose recorded requests show which
plugins the CodeInterpreter's model was offered. Plugin code runs in the session's real kernel."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from core import AttachmentType, TaskWeaverApp
from core.compat.config_keys import translate
from core.config import CodeInterpreterSettings, LLMSettings, known_keys, load_config
from core.llm.embeddings import HashingEmbedder
from core.memory import Post, Round
from core.plugins.selection import PluginSelector, plugin_document, used_plugins
from core.plugins.spec import PluginParameter, PluginSpec
from core.retrieval import BM25Ranker, EmbeddingRanker, create_ranker, words
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer
from tests.ollama_server import FakeOllama, fake_vector, ollama_fixture  # noqa: F401  (fixture)
from ui.console import ConsoleEventHandler
from ui.view import AttachmentView

pytestmark = pytest.mark.timeout(120)

# Three plugins on different topics, as YAML and code in an app's plugins/ folder.
PLUGINS: dict[str, tuple[str, list[tuple[str, str]], str]] = {
    "anomaly_detection": (
        "Detects anomalies (outliers) in a numeric time series, such as sudden spikes in sales.",
        [("values", "the series of numbers to check for outliers")],
        "return [i for i, v in enumerate(values) if v > 3 * sorted(values)[len(values) // 2]]",
    ),
    "sql_pull_data": (
        "Pulls rows from the company SQL database by running a query.",
        [("query", "the SQL query text to run against the database")],
        "return [{'query': query}]",
    ),
    "send_email": (
        "Sends an email message to a recipient's address.",
        [("recipient", "the address the mail goes to"), ("body", "the text of the message")],
        "return f'sent to {recipient}'",
    ),
}
DEFS = {name: f"def {name}(" for name in PLUGINS}


def spec(name: str) -> PluginSpec:
    description, params, _ = PLUGINS[name]
    return PluginSpec(
        name=name,
        description=description,
        parameters=[PluginParameter(name=p, type="Any", required=True, description=d) for p, d in params],
        returns=[PluginParameter(name="result", type="Any", description="the outcome")],
    )


SPECS = [spec(name) for name in PLUGINS]


def write_plugins(plugin_dir: Path) -> None:
    plugin_dir.mkdir(parents=True, exist_ok=True)
    for name, (description, params, body) in PLUGINS.items():
        args = ", ".join(p for p, _ in params)
        (plugin_dir / f"{name}.py").write_text(
            "from taskweaver.plugin import Plugin, register_plugin\n\n\n"
            f"@register_plugin\nclass Impl(Plugin):\n    def __call__(self, {args}):\n        {body}\n"
        )
        spec_yaml = {
            "name": name,
            "enabled": True,
            "required": False,
            "description": description,
            "parameters": [{"name": p, "type": "Any", "required": True, "description": d} for p, d in params],
            "returns": [{"name": "result", "type": "Any", "description": "the outcome"}],
        }
        (plugin_dir / f"{name}.yaml").write_text(json.dumps(spec_yaml))  # JSON is YAML


# --------------------------------------------------------------------------------------- ranker


def test_bm25_ranks_the_plugin_the_request_is_about_first() -> None:
    documents = [plugin_document(s) for s in SPECS]
    ranker = BM25Ranker()
    assert ranker.rank("Find the outliers in my sales numbers", documents)[0][0] == 0
    assert ranker.rank("pull the orders table from our database", documents)[0][0] == 1
    # "mail" is not "email": the parameter description ("the address the mail goes to") matches.
    assert ranker.rank("mail the summary to bob@example.com", documents)[0][0] == 2


def test_top_k_is_respected_and_ties_keep_the_catalog_order() -> None:
    documents = [plugin_document(s) for s in SPECS]
    ranker = BM25Ranker()
    assert ranker.top("send an email", documents, 1) == [2]
    assert len(ranker.top("send an email about sales anomalies", documents, 2)) == 2
    assert ranker.top("anything", documents, 5) == [0, 1, 2]  # k at least the count: all, in order
    # Nothing in common with any plugin: every score is 0 and the order is the catalog's.
    assert ranker.rank("xylophone", documents) == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert ranker.top("xylophone", documents, 2) == [0, 1]
    # Equal documents tie too, and stay in order, on every call.
    same = ["plot a chart", "plot a chart", "plot a chart"]
    assert [i for i, _ in ranker.rank("plot", same)] == [0, 1, 2]


def test_a_word_most_plugins_share_still_counts_for_the_ones_that_have_it() -> None:
    """With the Okapi IDF a word in 2 of 3 documents scores below zero; here it stays positive."""
    documents = ["read data from a file", "write data to a file", "play a song"]
    ranked = BM25Ranker().rank("data", documents)
    assert ranked[0][1] > 0 and ranked[1][1] > 0 and ranked[2] == (2, 0.0)


def test_words_split_names_and_match_plural_and_verb_forms() -> None:
    assert words("anomaly_detection") == ["anomaly", "detection"]
    assert words("sqlPullData") == ["sql", "pull", "data"]
    assert words("anomalies") == words("anomaly")
    assert words("sales") == words("sale")
    assert words("plotting") == words("plot") == words("plots")


def test_used_plugins_are_names_in_code_not_attributes_or_parts_of_names() -> None:
    code = ["rows = sql_pull_data('select 1')\nx = df.send_email\nmy_anomaly_detection_helper = 1"]
    assert used_plugins(SPECS, code) == ["sql_pull_data"]


def test_the_ranker_is_bm25_unless_embeddings_are_configured(tmp_path: Path) -> None:
    assert isinstance(create_ranker(LLMSettings()), BM25Ranker)
    ranker = create_ranker(load_config(tmp_path, {"llm.embedding_api_type": "offline"}).llm)
    assert isinstance(ranker, EmbeddingRanker) and isinstance(ranker.embedder, HashingEmbedder)
    assert ranker.rank("detect anomalies in sales", [plugin_document(s) for s in SPECS])[0][0] == 0


def test_taskweavers_keys_are_honoured_without_a_warning(tmp_path: Path) -> None:
    keys = {"code_generator.enable_auto_plugin_selection": True, "code_generator.auto_plugin_selection_topk": 2}
    (tmp_path / "taskweaver_config.json").write_text(json.dumps(keys))
    config = load_config(tmp_path, {})
    assert config.code_interpreter.enable_auto_plugin_selection is True
    assert config.code_interpreter.auto_plugin_selection_topk == 2
    assert translate(keys, known_keys())[1] == []  # no "is ignored" note
    default = load_config(tmp_path / "none", {}).code_interpreter
    assert (default.enable_auto_plugin_selection, default.auto_plugin_selection_topk) == (False, 3)


def test_embedding_ranking_asks_the_server_once_per_plugin(ollama: FakeOllama) -> None:
    """Through an OpenAI-compatible ``/v1/embeddings`` (the fake answers a fixed vector per text):
    the pick is the plugin nearest the request, and plugin texts are embedded once per app."""
    settings = LLMSettings(
        api_type="openai",
        api_base=ollama.base + "/v1",
        api_key="key",
        embedding_api_type="openai",
        max_retries=0,
    )
    selector = PluginSelector(
        CodeInterpreterSettings(enable_auto_plugin_selection=True, auto_plugin_selection_topk=1), settings
    )
    documents = [plugin_document(s) for s in SPECS]

    def nearest(query: str) -> str:
        vectors = [np.asarray(fake_vector(t)) for t in [query, *documents]]
        unit = [v / np.linalg.norm(v) for v in vectors]
        return SPECS[int(np.argmax([float(u @ unit[0]) for u in unit[1:]]))].name

    first = len(ollama.requests("/v1/embeddings"))
    try:
        chosen = selector.select(SPECS, "first request", [])
        assert chosen.picked == [nearest("first request")] and chosen.ranker == "embedding:openai"
        again = selector.select(SPECS, "second request", [])
        assert again.picked == [nearest("second request")]
        calls = ollama.wait_for("/v1/embeddings", first + 2)[first:]
        assert calls[0].body["input"] == ["first request", *documents]
        assert calls[1].body["input"] == ["second request"]  # the plugins' vectors were kept
    finally:
        selector.close()


def test_the_ui_shows_the_plugins_offered_as_names() -> None:
    view = AttachmentView(AttachmentType.plugin_selection, data=["anomaly_detection", "send_email"], done=True)
    assert view.markdown(20, 30) == "**Plugins offered:** `anomaly_detection`, `send_email`"


# --------------------------------------------------------------------------------------- chats


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["work"], "current_plan_step": "work", "send_to": send_to, "message": message}
    return Answer(json.dumps(body), chunks=2)


def code_reply(code: str) -> Answer:
    return Answer(json.dumps({"thought": "Run it.", "reply_type": "python", "reply_content": code}), chunks=2)


def system_prompt(request: RecordedRequest) -> str:
    return str(request.body["messages"][0]["content"])


def offered(request: RecordedRequest) -> set[str]:
    """The plugins whose signatures a request's system prompt lists."""
    return {name for name, signature in DEFS.items() if signature in system_prompt(request)}


def selection_of(rnd: Round) -> Post:
    [post] = [p for p in rnd.post_list if p.get_attachment(AttachmentType.plugin_selection)]
    return post


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def new_app(tmp_path: Path, server: ScriptedLLMServer, **overrides: Any) -> TaskWeaverApp:
    write_plugins(tmp_path / "plugins")
    config: dict[str, Any] = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test",
        "llm.model": "scripted",
        "llm.max_retries": 0,
        "execution.timeout": 30,
        "execution.pool_size": 0,
        "code_generator.auto_plugin_selection_topk": 1,
    }
    config.update(overrides)
    return TaskWeaverApp(app_dir=tmp_path, config=config)


def run_round(
    server: ScriptedLLMServer, session: Any, user: str, instruction: str, code: str
) -> tuple[Round, list[RecordedRequest]]:
    """Planner → CodeInterpreter (the code runs) → Planner → User; the round and its requests."""
    before = len(server.requests)
    server.push(planner("CodeInterpreter", instruction), code_reply(code), planner("User", "Done."))
    rnd = session.send_message(user)
    assert rnd.state == "finished", rnd.error
    return rnd, server.requests[before:]


def test_selection_offers_the_relevant_plugin_and_keeps_the_ones_used(
    tmp_path: Path, server: ScriptedLLMServer
) -> None:
    app = new_app(tmp_path, server, **{"code_generator.enable_auto_plugin_selection": True})
    session = app.get_session()
    try:
        first, (plan, ci, _) = run_round(
            server,
            session,
            "Are there anomalies in my sales series 1, 1, 50, 1?",
            "Detect the anomalies in the series [1, 1, 50, 1].",
            "print(anomaly_detection([1, 1, 50, 1]))",
        )
        assert offered(ci) == {"anomaly_detection"}
        assert offered(plan) == set(PLUGINS)  # the Planner is told about every plugin, as in TaskWeaver
        post = selection_of(first)
        assert post.first(AttachmentType.plugin_selection) == ["anomaly_detection"]
        assert post.get_attachment(AttachmentType.plugin_selection)[0].extra == {
            "picked": ["anomaly_detection"],
            "kept": [],
            "ranker": "bm25",
            "available": 3,
        }
        assert "[2]" in str(post.first(AttachmentType.execution_result))  # the plugin really ran

        second, (_, ci2, _) = run_round(
            server,
            session,
            "Now email the result to bob@example.com",
            "Send an email to bob@example.com saying index 2 is an outlier.",
            "print(send_email('bob@example.com', 'index 2 is an outlier'))",
        )
        assert offered(ci2) == {"anomaly_detection", "send_email"}  # used in round 1, so still offered
        details = selection_of(second).get_attachment(AttachmentType.plugin_selection)[0].extra
        assert details["picked"] == ["send_email"] and details["kept"] == ["anomaly_detection"]
    finally:
        app.stop()

    # The server restarts and the chat is resumed: the plugins its rounds used are still offered.
    again = new_app(tmp_path, server, **{"code_generator.enable_auto_plugin_selection": True})
    try:
        resumed = again.open_session(session.session_id)
        third, (_, ci3, _) = run_round(
            server,
            resumed,
            "Pull last month's orders from the company database",
            "Run a SQL query for last month's orders.",
            "print(sql_pull_data('select * from orders'))",
        )
        assert offered(ci3) == set(PLUGINS)
        details = selection_of(third).get_attachment(AttachmentType.plugin_selection)[0].extra
        assert details["picked"] == ["sql_pull_data"] and details["kept"] == ["anomaly_detection", "send_email"]

        # The email round is edited into another request: its plugin is no longer "used" by the chat.
        before = len(server.requests)
        server.push(
            planner("CodeInterpreter", "Run a SQL query for the orders."),
            code_reply("print(sql_pull_data('select * from orders'))"),
            planner("User", "Done."),
        )
        redone = resumed.rerun(second.id, "Pull the orders from the company database instead")
        assert redone.state == "finished", redone.error
        assert offered(server.requests[before + 1]) == {"anomaly_detection", "sql_pull_data"}
    finally:
        again.stop()


def test_with_selection_off_every_plugin_is_offered(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app = new_app(tmp_path, server)
    session = app.get_session()
    try:
        rnd, (_, ci, _) = run_round(
            server,
            session,
            "Email bob",
            "Send an email to bob@example.com.",
            "print(send_email('bob@example.com', 'hi'))",
        )
        assert offered(ci) == set(PLUGINS)
        assert not [p for p in rnd.post_list if p.get_attachment(AttachmentType.plugin_selection)]
    finally:
        app.stop()


def test_embeddings_rank_when_configured(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """``llm.embedding_api_type`` set: the offline hashing embedder ranks instead of BM25."""
    app = new_app(
        tmp_path,
        server,
        **{"code_generator.enable_auto_plugin_selection": True, "llm.embedding_api_type": "offline"},
    )
    session = app.get_session()
    try:
        rnd, (_, ci, _) = run_round(
            server,
            session,
            "Pull the monthly orders from our SQL database",
            "Query the SQL database for the monthly orders.",
            "print(sql_pull_data('select month, count(*) from orders group by month'))",
        )
        assert offered(ci) == {"sql_pull_data"}
        details = selection_of(rnd).get_attachment(AttachmentType.plugin_selection)[0].extra
        assert details["ranker"] == "embedding:offline"
    finally:
        app.stop()


def test_offline_mode_shows_the_selection_without_a_model(tmp_path: Path) -> None:
    """No key: the user's code runs as written, and its step still says which plugins were offered."""
    write_plugins(tmp_path / "plugins")
    app = TaskWeaverApp(
        app_dir=tmp_path,
        config={
            "code_generator.enable_auto_plugin_selection": True,
            "code_generator.auto_plugin_selection_topk": 1,
            "execution.pool_size": 0,
            "execution.timeout": 30,
        },
    )
    try:
        out = io.StringIO()
        console = ConsoleEventHandler(out=out, color=False, offline=True)
        request = "Send an email:\n```python\nprint(send_email('a@b.c', 'hi'))\n```"
        rnd = app.get_session().send_message(request, event_handler=console)
        assert rnd.state == "finished", rnd.error
        post = selection_of(rnd)
        assert post.first(AttachmentType.plugin_selection) == ["send_email"]
        assert "sent to a@b.c" in str(post.first(AttachmentType.execution_result))
        assert "  plugins offered:\n    send_email\n" in out.getvalue()  # what `weaver chat` prints
    finally:
        app.stop()
