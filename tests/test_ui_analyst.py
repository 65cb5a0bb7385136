"""What a data analyst sees in the web UI: the outputs panel, model choice per chat, datasets, the model check."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from core.files import FileEntry, FileListing
from tests.files_panel import panel_downloads
from tests.ui_harness import UIServer, code_block, ui_server
from ui.outputs import listing_markdown

__all__ = ["ui_server"]

REPORT = b"region,units\nnorth,3\nsouth,5\n"


def test_the_files_button_lists_a_written_file_and_it_downloads(ui_server: UIServer) -> None:
    code = f"open('report.csv', 'wb').write({REPORT!r})\nprint('written')"
    with ui_server.client() as client:
        turn = client.ask(code_block(code))
        answer_ids = {m["id"] for m in turn if m.get("type") == "assistant_message"}
        action = client.wait_for(
            lambda: next(
                (
                    d
                    for n, d in client.events
                    if n == "action" and d.get("forId") in answer_ids and d.get("name") == "weaver_outputs"
                ),
                None,
            ),
            30,
            "the Files button under the answer",
        )
        assert action["name"] == "weaver_outputs" and action["label"] == "Files (1)"
        pressed = httpx.post(
            f"{ui_server.base_url}/project/action",
            json={"sessionId": client.session_id, "action": action},
            headers=client.headers,
            timeout=30,
        )
        assert pressed.status_code == 200, pressed.text
        shown = client.wait_for(
            lambda: [d for n, d in client.events if n == "set_sidebar_elements" and d.get("elements")], 30, "the panel"
        )
        (table,) = shown[-1]["elements"]  # one table: each file once, its name the download link
        listed = client.fetch_element(table).text
        url = panel_downloads(listed)["report.csv"]
        served = httpx.get(f"{ui_server.base_url}{url}", headers=client.headers, timeout=10)
    assert served.status_code == 200 and served.content == REPORT
    assert served.headers["content-disposition"] == "attachment"
    size = f"{len(REPORT)} B"
    assert f' "report.csv") | {size} |' in listed and f"**1 file**, {size} of 1.0 GB used" in listed, listed


def test_the_listing_says_sizes_quota_and_what_it_left_out() -> None:
    now = time.time()
    entries = [FileEntry("out/chart.png", 2048, now), FileEntry("a`b.csv", 10, now - 60)]
    text = listing_markdown(FileListing(entries, total_files=5, used_bytes=3 * 1024 * 1024, quota_bytes=1024**3))
    assert "**5 files**, 3.0 MB of 1.0 GB used" in text
    assert "| out/chart.png | 2.0 KB |" in text and "| a\\`b.csv |" in text  # a name cannot break the table
    assert "showing the newest 2 of 5 files" in text


def test_a_chat_switches_its_model_from_the_settings_panel(tmp_path: Path) -> None:
    """With several models configured, the chat settings offer them; a switch applies from the
    chat's next round (the next request's ``model``), and each Planner step names its model."""
    import json

    from tests.llm_server import Answer, ScriptedLLMServer
    from tests.ui_harness import answers, start_server, steps, stop_server

    llm = ScriptedLLMServer().start()
    models = [{"name": "Big", "model": "big-model"}]
    env = {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": llm.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MODEL": "small-model",
        "WEAVER_LLM__MAX_RETRIES": "0",
        "WEAVER_LLM__MODELS": json.dumps(models),
    }
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)

    def reply(text: str) -> Answer:
        body = {"thought": "t", "plan": ["a"], "current_plan_step": "a", "send_to": "User", "message": text}
        return Answer(json.dumps(body), chunks=3)

    try:
        with server.client() as client:
            offered = client.wait_for(
                lambda: [d for n, d in client.events if n == "chat_settings"], 30, "the chat settings"
            )
            model_widget = next(w for w in offered[-1] if w.get("id") == "model")
            assert [item["value"] for item in model_widget["items"]] == ["small-model", "Big"]
            llm.push(reply("first"))
            first = client.ask("hello")
            client.sio.emit("chat_settings_change", {"model": "Big", "temperature": 0.3})
            llm.push(reply("second"))
            second = client.ask("again")
        sent = [r.body for r in llm.requests if isinstance(r.body, dict)]
        assert [b["model"] for b in sent[-2:]] == ["small-model", "big-model"], [b.get("model") for b in sent]
        assert sent[-1]["temperature"] == 0.3
        assert answers(first) == ["first"] and answers(second) == ["second"]
        assert "model: `small-model`" in steps(first, "Planner")[0] and "model: `Big`" in steps(second, "Planner")[0]
    finally:
        stop_server(server)
        llm.stop()


def test_the_welcome_lists_datasets_and_a_broken_model_is_a_banner(tmp_path: Path) -> None:
    from tests.ui_harness import free_port, start_server, stop_server

    data = tmp_path / "app" / "data"
    data.mkdir(parents=True)
    (data / "sales.csv").write_text("region,units\nnorth,3\n")
    (data / "datasets.yaml").write_text(
        "datasets:\n  - name: sales_2024\n    file: sales.csv\n    description: Units sold by region\n"
    )
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    env = {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": closed,
        "WEAVER_LLM__API_KEY": "k",
        "WEAVER_UI_CHECK_MODEL_AT_START": "true",
    }
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        server.wait_log(r"Model check failed", 30)
        with server.client() as client:
            said = client.wait_for(
                lambda: (  # the banner is a message; the datasets are a note under the welcome (ui.welcome)
                    [str(m.get("output")) for m in client.messages().values()]
                    if any("sales_2024" in str(m.get("output")) for m in client.messages().values())
                    else None
                ),
                30,
                "the welcome messages",
            )
        text = "\n".join(said)
        assert "Model check failed" in text and "llm.api_base" in text, text
        assert "**sales_2024** (`/data/sales.csv`): Units sold by region" in text, text
    finally:
        stop_server(server)


def test_a_forged_model_setting_is_refused_plainly(tmp_path: Path) -> None:
    import json

    from tests.ui_harness import answers, start_server, stop_server

    env = {"WEAVER_LLM__MODELS": json.dumps([{"name": "Big", "model": "big-model"}])}
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        with server.client() as client:
            client.sio.emit("chat_settings_change", {"model": "no-such-model", "temperature": "hot"})
            turn = client.ask(code_block("print('still works')"))
            refused = [str(m.get("output")) for m in client.messages().values() if m.get("isError")]
        assert any("That model setting cannot be used" in r for r in refused), refused
        assert any("still works" in a for a in answers(turn)), answers(turn)
    finally:
        stop_server(server)
