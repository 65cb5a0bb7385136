"""Experience (``<role>.use_experience``): a saved chat becomes a tip, and a later similar request
carries it in the role's prompt.

Real rounds run in real kernels against the scripted OpenAI-compatible server
(tests/llm_server.py), which records every request, or against the offline backend.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from core import TaskWeaverApp
from core.compat.config_keys import translate
from core.config import known_keys
from core.experience import ExperienceError, ExperienceStore
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer
from tests.test_ui_admin import Browser, add_admin, audited
from tests.test_ui_auth import add_user
from tests.test_ui_history import client_of, cookie
from tests.test_ui_sharing import click, said
from tests.ui_harness import REPO_ROOT, UIServer, answers, code_block, start_server, stop_server

pytestmark = pytest.mark.timeout(120)

SALES_TIP = "For sales per region: df.groupby('region')['sales'].sum(), then a bar chart sorted descending."
WEATHER_TIP = "For weather forecasts: ask which city, and give temperatures in Celsius."


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["work", "report"], "current_plan_step": "work", "send_to": send_to}
    return Answer(json.dumps({**body, "message": message}))


def code(source: str) -> Answer:
    return Answer(json.dumps({"thought": "run", "reply_type": "python", "reply_content": source}))


def system_of(request: RecordedRequest) -> str:
    return str(request.body["messages"][0]["content"])


def scripted_app(app_dir: Path, server: ScriptedLLMServer, **overrides: Any) -> TaskWeaverApp:
    config: dict[str, Any] = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test",
        "llm.model": "scripted",
        "llm.timeout": 5,
        "llm.max_retries": 0,
        "execution.timeout": 20,
        **overrides,
    }
    return TaskWeaverApp(app_dir=app_dir, config=config)


def run_round(app: TaskWeaverApp, server: ScriptedLLMServer, query: str) -> tuple[str, list[RecordedRequest]]:
    """User → Planner → CodeInterpreter (runs code) → Planner → User; the session id and its requests."""
    start = len(server.requests)
    server.push(planner("CodeInterpreter", "sum sales per region"), code("print(7)"), planner("User", "Done: 7."))
    session = app.get_session()
    rnd = session.send_message(query)
    assert rnd.state == "finished", rnd.error
    return session.session_id, server.wait_for_requests(start + 3)[start:]


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def test_saving_a_chat_asks_the_experience_model_and_writes_a_tip(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app = scripted_app(tmp_path / "app", server)
    try:
        session_id, _ = run_round(app, server, "show total sales per region")
        start = len(server.requests)
        server.push(Answer(SALES_TIP))
        tip = app.save_experience(session_id)
        [asked] = server.wait_for_requests(start + 1)[start:]
    finally:
        app.stop()
    # The summary request: our instruction, then the chat's rounds as JSON (its query and code).
    assert "Distil it into a short tip" in system_of(asked)
    chat = json.loads(asked.body["messages"][1]["content"])
    assert chat[0]["user_query"] == "show total sales per region"
    assert "print(7)" in json.dumps(chat)
    assert "response_format" not in asked.body  # a tip is text, not the roles' JSON
    folder = tmp_path / "app" / "experience"
    assert tip.text == SALES_TIP and tip.path == folder / f"exp_{session_id}.yaml"
    saved = yaml.safe_load(tip.path.read_text())
    assert saved["experience_text"] == SALES_TIP and saved["exp_id"] == session_id
    raw = yaml.safe_load((folder / f"raw_exp_{session_id}.yaml").read_text())
    assert raw["rounds"][0]["user_query"] == "show total sales per region"
    assert "id" not in raw["rounds"][0]  # TaskWeaver's raw experience drops the ids
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def _with_two_tips(app_dir: Path) -> None:
    folder = app_dir / "experience"
    folder.mkdir(parents=True)
    (folder / "exp_sales1.yaml").write_text(yaml.safe_dump({"exp_id": "sales1", "experience_text": SALES_TIP}))
    (folder / "handcrafted_exp_weather1.yaml").write_text(yaml.safe_dump({"experience_text": WEATHER_TIP}))


def test_a_similar_request_carries_the_tip_and_not_an_unrelated_one(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app_dir = tmp_path / "app"
    _with_two_tips(app_dir)
    app = scripted_app(app_dir, server, **{"planner.use_experience": True, "code_generator.use_experience": True})
    try:
        session_id, (to_planner, to_code, back) = run_round(app, server, "plot the sales of each region")
        rnd = app.get_session(session_id).rounds[-1]
    finally:
        app.stop()
    for request in (to_planner, to_code, back):
        system = system_of(request)
        assert SALES_TIP in system and WEATHER_TIP not in system
        assert "Experience from earlier chats" in system
    assert [call.get("experience") for call in rnd.llm_calls] == [["sales1"], ["sales1"], ["sales1"]]

    # A request about something else carries neither.
    app = scripted_app(app_dir, server, **{"planner.use_experience": True})
    try:
        _, (unrelated, _, _) = run_round(app, server, "list the files in my folder")
    finally:
        app.stop()
    assert SALES_TIP not in system_of(unrelated) and "Experience from earlier chats" not in system_of(unrelated)


def test_use_experience_off_sends_no_tip(tmp_path: Path, server: ScriptedLLMServer) -> None:
    app_dir = tmp_path / "app"
    _with_two_tips(app_dir)
    app = scripted_app(app_dir, server)  # TaskWeaver's default: false
    try:
        session_id, requests = run_round(app, server, "plot the sales of each region")
        rnd = app.get_session(session_id).rounds[-1]
    finally:
        app.stop()
    assert all(SALES_TIP not in system_of(r) and "Experience from" not in system_of(r) for r in requests)
    assert all("experience" not in call for call in rnd.llm_calls)


def test_the_offline_backend_makes_a_tip_from_the_requests_and_the_code_that_ran(tmp_path: Path) -> None:
    app = TaskWeaverApp(app_dir=tmp_path / "app", config={"planner.use_experience": True})
    try:
        session = app.get_session()
        rnd = session.send_message("```python\ntotal_sales = 3 + 4\nprint(total_sales)\n```")
        assert rnd.state == "finished", rnd.error
        tip = app.save_experience(session.session_id)
        again = app.save_experience(session.session_id)  # the same chat again: the same tip, replaced
        later = app.get_session()
        answer = later.send_message("```python\nprint('total_sales')\n```")
    finally:
        app.stop()
    assert tip.text == again.text
    assert "total_sales = 3 + 4" in tip.text and tip.text.startswith("Requests of this chat: ")
    assert [t.exp_id for t in app.experience.tips()] == [session.session_id]
    # The offline Planner says which tips it was shown (it does not read prose).
    thoughts = [str(a.content) for p in answer.post_list if p.send_from == "Planner" for a in p.attachment_list]
    assert any(f"Experience tips in my prompt: {session.session_id}" in t for t in thoughts)


def test_a_chat_without_rounds_is_refused(tmp_path: Path) -> None:
    app = TaskWeaverApp(app_dir=tmp_path / "app")
    try:
        session = app.get_session()
        with pytest.raises(ExperienceError, match="no finished round"):
            app.save_experience(session.session_id)
    finally:
        app.stop()


def test_the_store_lists_and_deletes_tips_and_refuses_a_path(tmp_path: Path) -> None:
    _with_two_tips(tmp_path)
    store = ExperienceStore(tmp_path / "experience")
    assert [(t.exp_id, t.handcrafted) for t in store.tips()] == [("sales1", False), ("weather1", True)]
    assert store.delete("sales1") == ["exp_sales1.yaml"]
    assert [t.exp_id for t in store.tips()] == ["weather1"]
    with pytest.raises(ExperienceError):
        store.delete("../weaver")


def test_taskweavers_experience_keys_are_honoured_not_warned(tmp_path: Path) -> None:
    given = {
        "planner.use_experience": True,
        "planner.experience_dir": "tips",
        "code_generator.use_experience": True,
        "code_generator.experience_dir": "${AppBaseDir}/ci_tips",
        "code_generator.dynamic_experience_sub_path": True,
        "experience.experience_dir": "saved",
        "experience.retrieve_threshold": 0.5,
        "echo.use_experience": True,
    }
    keys, notes = translate(given, known_keys(), tmp_path)
    assert keys["code_interpreter.use_experience"] is True
    assert keys["code_interpreter.experience_dir"] == str(tmp_path / "ci_tips")
    assert keys["code_interpreter.dynamic_experience_sub_path"] is True
    assert keys["session.experience_dir"] == str(tmp_path / "saved")
    assert keys["experience.retrieve_threshold"] == 0.5
    assert notes == [
        "echo.use_experience is ignored: only the Planner (planner.*) and the CodeInterpreter "
        "(code_generator.* or code_interpreter.*) read experience tips in Weaver"
    ]


# ------------------------------------------------------------------ the web UI and the command line

UI_ENV = {"WEAVER_UI_AUTH": "password"}
SALES_CODE = "total_sales = 3 + 4\nprint('sales', total_sales)"


def weaver_experience(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ui.cli", "experience", *args, "--app-dir", str(app_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-experience-ui")
    add_admin(root / "app", "root", "root-password")
    add_user(root / "app", "bob", "bob-password-2")
    srv = start_server(root / "app", root / "server.log", extra_env=UI_ENV)
    try:
        yield srv
    finally:
        stop_server(srv)


def test_the_owner_saves_a_chat_as_experience_and_an_admin_lists_and_deletes_it(ui_server: UIServer) -> None:
    bob = cookie(ui_server, "bob", "bob-password-2")
    with client_of(ui_server, bob) as chat:
        assert any("sales 7" in a for a in answers(chat.ask(code_block(SALES_CODE))))
        thread_id = chat.wait_for(chat.thread_id, 30, "the chat's history id")
        root = Browser(ui_server, "root", "root-password")
        refused = click(ui_server, root.cookie, chat, "weaver_save_experience")
        assert refused.status_code == 401  # Chainlit: the socket session is bob's
        assert click(ui_server, bob, chat, "weaver_save_experience").status_code == 200
        tip_id = said(chat, r"Saved as experience \(tip `([0-9A-Za-z_-]+)`\)").group(1)
    folder = ui_server.app_dir / "experience"
    tip = yaml.safe_load((folder / f"exp_{tip_id}.yaml").read_text())
    assert "total_sales = 3 + 4" in tip["experience_text"]  # the offline backend's tip: the code that ran
    saved = audited(ui_server, "experience_saved", "bob")
    assert saved["chat"] == thread_id and saved["tip"] == tip_id

    # The command line lists it, and saves the same chat by its history id.
    listed = weaver_experience(ui_server.app_dir, "list")
    assert listed.returncode == 0 and listed.stdout.startswith(f"{tip_id}\tchat\tRequests of this chat"), listed
    again = weaver_experience(ui_server.app_dir, "save", thread_id)
    assert again.returncode == 0 and f"exp_{tip_id}.yaml" in again.stdout, again.stderr
    unknown = weaver_experience(ui_server.app_dir, "save", "no-such-chat")
    assert unknown.returncode == 1 and "no chat 'no-such-chat'" in unknown.stderr

    # An ordinary user may neither see the list nor delete a tip.
    bob_browser = Browser(ui_server, "bob", "bob-password-2")
    assert bob_browser.get("/admin").status_code == 403
    assert bob_browser.post("/admin/experience/delete", {"tip": tip_id}, csrf="0" * 64).status_code == 403
    assert (folder / f"exp_{tip_id}.yaml").is_file()

    page = root.get("/admin").text
    assert f'data-tip="{tip_id}"' in page and "total_sales = 3 + 4" in html.unescape(page)
    landed = root.act("experience/delete", tip=tip_id)
    assert f"Experience tip {tip_id} deleted." in landed and f'data-tip="{tip_id}"' not in landed
    assert not (folder / f"exp_{tip_id}.yaml").exists() and not (folder / f"raw_exp_{tip_id}.yaml").exists()
    assert audited(ui_server, "experience_deleted", "root")["tip"] == tip_id
    assert "There is no experience tip" in root.act("experience/delete", tip=tip_id)


def test_weaver_experience_deletes_a_tip_from_the_command_line(tmp_path: Path) -> None:
    _with_two_tips(tmp_path)
    done = weaver_experience(tmp_path, "delete", "weather1")
    assert done.returncode == 0 and "handcrafted_exp_weather1.yaml" in done.stdout, done.stderr
    listed = weaver_experience(tmp_path, "list")
    assert listed.stdout.splitlines() == [f"sales1\tchat\t{SALES_TIP}"]
    missing = weaver_experience(tmp_path, "delete", "weather1")
    assert missing.returncode == 1 and "no tip 'weather1'" in missing.stderr
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["tip"], e["client"]) for e in events] == [("experience_deleted", "weather1", "cli")]


def test_a_dynamic_sub_path_reads_the_tips_of_the_folder_the_chat_names(tmp_path: Path) -> None:
    from core.config import load_config
    from core.experience import ExperienceShelf

    (tmp_path / "experience").mkdir()
    _with_two_tips(tmp_path / "experience" / "sales")
    config = load_config(tmp_path, {"planner.use_experience": True, "planner.dynamic_experience_sub_path": True})
    folder = config.planner.experience_dir
    assert folder == tmp_path / "experience"
    shelf = ExperienceShelf("Planner", config, True, folder, dynamic=True)
    query = "plot the sales of each region"
    assert shelf.select(query, "") == []  # none named: no tips
    assert [t.exp_id for t in shelf.select(query, "sales/experience")] == ["sales1"]
    assert shelf.select(query, "../..") == []  # a path leaving the folder: none


def test_with_embeddings_configured_tips_are_ranked_by_their_similarity(tmp_path: Path) -> None:
    """``llm.embedding_api_type`` set (here the offline hashing embedder): cosine similarity at least
    ``experience.retrieve_threshold`` chooses, as TaskWeaver ranks."""
    from core.config import load_config
    from core.experience import ExperienceShelf

    _with_two_tips(tmp_path)
    config = load_config(tmp_path, {"planner.use_experience": True, "llm.embedding_api_type": "offline"})
    shelf = ExperienceShelf("Planner", config, True, config.planner.experience_dir, dynamic=False)
    assert [t.exp_id for t in shelf.select("plot the sales of each region")] == ["sales1"]
    assert shelf.select("list the files in my folder") == []
    strict = load_config(
        tmp_path, {"llm.embedding_api_type": "offline", "experience.retrieve_threshold": 0.9, "experience.max_tips": 1}
    )
    assert ExperienceShelf("Planner", strict, True, tmp_path / "experience", False).select("sales per region") == []


def test_the_limits_on_a_saved_chat_and_its_tip(
    tmp_path: Path, server: ScriptedLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``experience.max_chat_chars`` leaves older rounds out of the summary request,
    ``experience.max_tip_chars`` cuts a long tip, ``experience.max_tips`` bounds the tips shown;
    each cut is a warning naming its setting."""
    app = scripted_app(tmp_path / "app", server, **{"experience.max_chat_chars": 1000, "experience.max_tip_chars": 100})
    try:
        session_id, _ = run_round(app, server, "first: " + "a" * 900)
        server.push(planner("User", "ok"))
        app.get_session(session_id).send_message("second request about sales")
        start = len(server.requests)
        server.push(Answer("tip " * 100))
        tip = app.save_experience(session_id)
        [asked] = server.wait_for_requests(start + 1)[start:]
    finally:
        app.stop()
    sent = json.loads(asked.body["messages"][1]["content"])
    assert [r["user_query"] for r in sent] == ["second request about sales"]
    assert len(tip.text) == 100
    assert "experience.max_chat_chars (1000): its last 1 of 2 rounds" in caplog.text
    assert "experience.max_tip_chars (100): cut" in caplog.text

    folder = tmp_path / "many" / "experience"
    folder.mkdir(parents=True)
    for n in range(3):
        (folder / f"exp_s{n}.yaml").write_text(yaml.safe_dump({"experience_text": f"sales tip number {n}"}))
    from core.config import load_config
    from core.experience import ExperienceShelf

    config = load_config(tmp_path / "many", {"experience.max_tips": 2})
    assert len(ExperienceShelf("Planner", config, True, folder, False).select("sales")) == 2


def test_bm25_relevance_is_the_share_of_the_requests_word_weight_a_tip_has() -> None:
    from core.retrieval import BM25Ranker

    ranker = BM25Ranker()
    tips = [SALES_TIP, WEATHER_TIP]
    assert dict(ranker.relevance("list the files in my folder", tips)) == {0: 0.0, 1: 0.0}
    sales = dict(ranker.relevance("plot the sales of each region", tips))
    assert sales[1] == 0.0 and 0.2 <= sales[0] < 1.0  # two of its four words
    # A word every tip has still counts (its weight is small, but so is the total).
    assert [s for _, s in ranker.relevance("sales", ["sales tip one", "sales tip two"])] == [1.0, 1.0]


def test_the_tips_read_per_turn_follow_files_added_and_deleted(tmp_path: Path) -> None:
    from core.experience import folder_tips

    _with_two_tips(tmp_path)
    folder = tmp_path / "experience"
    assert [t.exp_id for t in folder_tips(folder)] == ["sales1", "weather1"]
    assert folder_tips(folder) is folder_tips(folder)  # unchanged files: not read again
    ExperienceStore(folder).delete("weather1")
    (folder / "exp_new1.yaml").write_text(yaml.safe_dump({"experience_text": "a new tip"}))
    assert [t.exp_id for t in folder_tips(folder)] == ["new1", "sales1"]


def test_save_in_the_terminal_chat_saves_it_as_experience(tmp_path: Path) -> None:
    """``/save`` (TaskWeaver's chat command) in ``weaver chat``, offline."""
    script = f"```python\n{SALES_CODE}\n```\n\n/save\n"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WEAVER_LLM__API_TYPE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "chat", "--app-dir", str(tmp_path / "app")],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**env, "WEAVER_EXECUTION__POOL_SIZE": "0"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "saved as experience: " in done.stdout and "total_sales = 3 + 4" in done.stdout.split("saved as")[1]
    [tip] = ExperienceStore(tmp_path / "app" / "experience").tips()
    assert "total_sales = 3 + 4" in tip.text
