"""The web UI against a real Chainlit server, a real engine and real kernels (offline model);
the parts that need no server are in ``test_ui_units.py``.

Each test talks over socket.io the way the browser does (see ``ui_harness``); waits are on
received events, server log lines or /proc, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.llm_server import Answer, ScriptedLLMServer
from tests.processes import stop_process
from tests.ui_harness import (
    KERNEL_ID_CODE,
    MAX_FILE_MB,
    REPO_ROOT,
    UIServer,
    answers,
    code_block,
    free_port,
    gated_code,
    kernel_pid_in,
    login_cookie,
    pid_alive,
    role_of,
    start_server,
    steps,
    stop_server,
    ui_server,
    wait_started,
    wait_until,
)
from ui.lifecycle import SESSION_FAILED
from ui.markdown import neutralise_images
from ui.restore import TITLE as RESTORE_TITLE

__all__ = ["ui_server"]

PID_CODE = code_block(KERNEL_ID_CODE)


def kernel_pid(turn: list[dict]) -> int:
    return kernel_pid_in("\n".join(steps(turn, "CodeInterpreter") + answers(turn)))


def test_code_block_streams_role_steps_and_answer(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        message_id = client.send(code_block("print(6*7)"))
        turn = client.wait_turn(message_id)

    planner, coder = steps(turn, "Planner"), steps(turn, "CodeInterpreter")
    assert planner and coder, [m.get("name") for m in turn]
    code_step = coder[0]
    assert "```python\nprint(6*7)\n```" in code_step
    assert "**Execution:** ✓ success" in code_step
    assert "42" in code_step.split("**Output**", 1)[1]
    assert "**Plan**" in planner[0] and "1. " in planner[0]
    assert any("42" in a for a in answers(turn)), answers(turn)
    # The steps were shown while they ran (sent before they ended), then closed.
    first_seen = {}
    for name, data in client.events:
        if name in ("new_message", "stream_start") and isinstance(data, dict):
            first_seen.setdefault(data["id"], data)
    live = [d for d in first_seen.values() if d.get("name") == "CodeInterpreter"]
    assert live and not live[0].get("end")
    roles = [m for m in turn if role_of(m) in ("Planner", "CodeInterpreter")]
    assert roles and all(m.get("end") for m in roles)
    # Folded away, each step's header says what it did.
    names = [str(m.get("name")) for m in roles]
    assert "Planner · plan of 2 steps, asked the CodeInterpreter" in names, names
    assert any(re.fullmatch(r"CodeInterpreter · ran 1 line, success, \d+\.\d s", n) for n in names), names
    assert not any("**Working:**" in s for s in planner + coder), "status line left behind"


def test_the_servers_start_up_objects_are_kept_out_of_garbage_collection(ui_server: UIServer) -> None:
    """The operator's log says how many start-up objects no collection walks again (``ui/heap.py``):
    the libraries' and Weaver's, hundreds of thousands; chats on this server still run (the tests
    around this one)."""
    frozen = ui_server.wait_log(r"start-up objects kept out of garbage collection: (\d+)", 30)
    assert int(frozen.group(1)) > 100_000, frozen.group(0)


def test_uploaded_csv_is_profiled(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        file_id = client.upload("sales.csv", b"region,units,price\nnorth,3,2.5\nsouth,5,1.0\neast,7,4.25\n")
        turn = client.ask("profile this file", [file_id])

    coder = "\n".join(steps(turn, "CodeInterpreter"))
    assert "| region | units | price |" in coder, coder
    assert "shape: 3 rows × 3 columns" in coder
    assert any("3 rows x 3 columns" in a for a in answers(turn)), answers(turn)
    sessions = list((ui_server.app_dir / "workspace" / "sessions").glob("*/cwd/sales.csv"))
    assert sessions, "the upload did not reach the session folder"


def test_a_refused_upload_is_a_clear_error_and_the_chat_goes_on(ui_server: UIServer) -> None:
    big = b"n\n" + b"1\n" * (MAX_FILE_MB * 1_000_000 // 2 + 10)
    with ui_server.client() as client:
        file_id = client.upload("big.csv", big)
        turn = client.ask("profile this file", [file_id])
        errors = [m for m in turn if m.get("isError")]
        assert errors and "big.csv" in errors[0]["output"], answers(turn)
        assert "Traceback" not in errors[0]["output"]
        after = client.ask(code_block("print('still', 6*7)"))
    assert any("still 42" in a for a in answers(after))


def test_two_clients_get_separate_sessions(ui_server: UIServer) -> None:
    cwd_code = "import os\nprint('CWD', os.getcwd())"
    with ui_server.client() as alice, ui_server.client() as bob:
        a_id = alice.send(code_block("x = 1\n" + cwd_code))
        b_first = bob.send(code_block(cwd_code))
        a_turn, b_turn = alice.wait_turn(a_id), bob.wait_turn(b_first)
        b_second = bob.ask(code_block("print(x)"))

    def cwd(turn: list[dict]) -> str:
        match = re.search(r"CWD (\S+)", "\n".join(steps(turn, "CodeInterpreter")))
        assert match
        return match.group(1)

    assert cwd(a_turn) != cwd(b_turn)
    assert "NameError" in "\n".join(steps(b_second, "CodeInterpreter") + answers(b_second))


def test_rounds_of_two_users_run_at_the_same_time(ui_server: UIServer) -> None:
    """A long round of one user must not hold up another user's short one."""
    with ui_server.client() as slow, ui_server.client() as fast:
        slow_id = slow.send(gated_code(slow.session_id, "print('slow done')"))
        gate = wait_started(ui_server, slow.session_id)
        fast_turn = fast.ask(code_block("print('fast', 2+2)"))
        assert not slow.turn_done(slow_id), "the slow round finished first: the test proves nothing"
        gate.write_text("go")
        slow_turn = slow.wait_turn(slow_id)
    assert any("fast 4" in a for a in answers(fast_turn))
    assert any("slow done" in a for a in answers(slow_turn))


def test_disconnect_without_return_stops_the_kernel(ui_server: UIServer) -> None:
    client = ui_server.client().connect()
    pid = kernel_pid(client.ask(PID_CODE))
    assert pid_alive(pid)
    mark = ui_server.log_size()
    client.disconnect()
    wait_until(lambda: not pid_alive(pid), ui_server.grace_s + 30, f"kernel {pid} to exit")
    ui_server.wait_log(rf"grace over for {client.session_id}: browser gone", 5, mark)


def test_new_chat_stops_the_old_kernel_at_once(ui_server: UIServer) -> None:
    client = ui_server.client().connect()
    pid = kernel_pid(client.ask(PID_CODE))
    mark = ui_server.log_size()
    client.new_chat()
    ui_server.wait_log(rf"chat end for {client.session_id}: stopping weaver session now", ui_server.grace_s - 0.5, mark)
    wait_until(lambda: not pid_alive(pid), 20, f"kernel {pid} to exit")


def test_reconnect_within_grace_keeps_the_conversation(ui_server: UIServer) -> None:
    first = ui_server.client().connect()
    pid = kernel_pid(first.ask(code_block("y = 41\n" + KERNEL_ID_CODE)))
    mark = ui_server.log_size()
    first.disconnect()
    ui_server.wait_log(rf"chat end for {first.session_id}", 10, mark)

    again = ui_server.client(first.session_id).connect(expect_chat_start=False)
    try:
        ui_server.wait_log(rf"grace over for {first.session_id}: browser reconnected", ui_server.grace_s + 15, mark)
        turn = again.ask(code_block("print(y + 1)"))
    finally:
        again.disconnect()
    assert any("42" in a for a in answers(turn)), answers(turn)
    assert pid_alive(pid), "the kernel was restarted"


def test_a_round_running_across_a_blip_finishes_on_the_new_socket(ui_server: UIServer) -> None:
    first = ui_server.client().connect()
    message_id = first.send(gated_code(first.session_id, "print('across', 6*7)"))
    gate = wait_started(ui_server, first.session_id)
    mark = ui_server.log_size()
    first.disconnect()
    ui_server.wait_log(rf"chat end for {first.session_id}", 10, mark)
    again = ui_server.client(first.session_id).connect(expect_chat_start=False)
    try:
        gate.write_text("go")
        turn = again.wait_turn(message_id)
    finally:
        again.disconnect()
    assert any("across 42" in a for a in answers(turn)), answers(turn)


def test_message_after_the_grace_period_brings_the_session_back(ui_server: UIServer) -> None:
    """The kernel went with the grace period; the chat's next message brings its variables back (its snapshot)."""
    first = ui_server.client().connect()
    pid = kernel_pid(first.ask(code_block("z = 5\n" + KERNEL_ID_CODE)))
    first.disconnect()
    wait_until(lambda: not pid_alive(pid), ui_server.grace_s + 30, f"kernel {pid} to exit")

    again = ui_server.client(first.session_id).connect(expect_chat_start=False)
    try:
        turn = again.ask(code_block("print('z is', z)"))
        restore = [m for m in again.messages().values() if str(m.get("name")).startswith(RESTORE_TITLE)]
    finally:
        again.disconnect()
    said = answers(turn)
    assert any("z is 5" in a for a in said), said
    assert restore and "Loaded" in str(restore[0].get("output")), restore


def test_stop_cancels_a_long_round_and_the_next_message_works(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        long_id = client.send(code_block("import time\nwhile True:\n    time.sleep(0.05)"))
        client.wait_for(
            lambda: any("executing code" in s for s in steps(client.turn(long_id), "CodeInterpreter")),
            60,
            "the loop to run",
        )
        client.stop()
        turn = client.wait_turn(long_id, timeout=60)
        said = answers(turn)
        assert any("Round cancelled." in a and "running code was interrupted" in a for a in said), said
        assert any("cancelled" in s for s in steps(turn, "CodeInterpreter"))
        assert not any("**Error:**" in str(m.get("output")) for m in turn), "a cancel is not an error"
        after = client.ask(code_block("print('after', 6*7)"))
    assert any("after 42" in a for a in answers(after)), answers(after)


def test_figure_is_shown_inline_and_served(ui_server: UIServer) -> None:
    code = (
        "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"
    )
    with ui_server.client() as client:
        client.ask(code_block(code))
        images = [e for e in client.elements() if e.get("type") == "image"]
        assert images, client.event_names()
        response = client.fetch_element(images[0])
    assert response.status_code == 200
    assert response.content.startswith(b"\x89PNG")


def test_weaver_ui_launcher_serves_the_app_from_any_folder(tmp_path: Path) -> None:
    """``weaver ui`` finds .chainlit/config.toml and public/ when started elsewhere, and keeps its
    app folder where it was started."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("WEAVER_APP_DIR", None)
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def page() -> str:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(base, timeout=1).text
            except httpx.HTTPError:
                return ""

        html = wait_until(page, 60, "the launcher's server", every=0.2)
        assert "<title>Weaver</title>" in html
        assert "/public/stylesheet.css" in html
        assert httpx.get(f"{base}/logo", params={"theme": "light"}, timeout=5).content.startswith(b"\x89PNG")
        assert f"open http://127.0.0.1:{port}" in log.read_text()
        assert (tmp_path / ".weaver").is_dir()  # not the repo root, where Chainlit itself runs
    finally:
        stop_process(proc, signal.SIGINT, timeout=30)
    with pytest.raises(httpx.HTTPError):
        httpx.get(base, timeout=1)


# ------------------------------------------------------------------ answers, images, artifacts, limits

TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_artifacts_beyond_the_cap_are_listed_by_name_not_attached(ui_server: UIServer) -> None:
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        f"png = base64.b64decode({TINY_PNG!r})\n"
        "for _ in range(23):\n    display(Image(data=png))\nprint('drawn')"
    )
    with ui_server.client() as client:
        turn = client.ask(code_block(code))
        client.ask(code_block("print('barrier')"))  # elements of the first turn have all arrived by now
        images = [e for e in client.elements() if e.get("type") == "image"]
    assert len(images) == 20, len(images)
    said = "\n".join(answers(turn))
    assert "showing 20 of 23 files; the rest are in the working folder too" in said, said


def test_printed_image_syntax_reaches_the_browser_only_as_code(ui_server: UIServer) -> None:
    with ui_server.client() as client:
        turn = client.ask(code_block("print('![x](http://127.0.0.1:1/x)')"))
    shown = [str(m.get("output") or "") for m in turn]
    assert any("![x](http://127.0.0.1:1/x)" in s for s in shown), shown
    for text in shown:  # wherever the printed text appears, it is inside code (so kept verbatim)
        assert neutralise_images(text) == text, text


def test_upload_limit_follows_the_engine_limit(ui_server: UIServer) -> None:
    settings = httpx.get(
        f"{ui_server.base_url}/project/settings",
        params={"language": "en-US"},
        headers=login_cookie(ui_server.base_url),
        timeout=10,
    ).json()
    # MAX_FILE_MB=1 in the harness: Chainlit's server counts MiB, so 1 MB decimal allows max_size_mb=1
    # (floor of 0.95, raised to Chainlit's smallest useful value); config.toml says 95.
    assert settings["features"]["spontaneous_file_upload"]["max_size_mb"] == 1


def test_a_session_that_cannot_start_is_reported_plainly(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    (app_dir / "workspace").mkdir(parents=True)
    (app_dir / "workspace" / "sessions").write_text("not a folder")  # every new session fails on an OSError
    server = start_server(app_dir, tmp_path / "server.log")
    try:
        with server.client() as client:  # the session is made at the first message
            client.send(code_block("print(1)"))
            said = client.wait_for(
                lambda: [str(m.get("output")) for m in client.messages().values() if m.get("isError")], 60, "an error"
            )
    finally:
        stop_server(server)
    assert said == [SESSION_FAILED], said
    assert "could not create a Weaver session" in server.log() and str(app_dir) in server.log()


# ------------------------------------------------------------------------- against a scripted model


def _planner_json(send_to: str, message: str, thought: str = "Thinking.", tail: str = "") -> str:
    body = json.dumps(
        {"thought": thought, "plan": ["answer"], "current_plan_step": "answer", "send_to": send_to, "message": message}
    )
    return body[:-1] + tail + "}" if tail else body


@pytest.fixture(scope="module")
def model_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UIServer, ScriptedLLMServer]]:
    llm = ScriptedLLMServer().start()
    root = tmp_path_factory.mktemp("weaver-ui-model")
    env = {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": llm.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MODEL": "test-model",
        "WEAVER_LLM__MAX_RETRIES": "0",
    }
    try:
        server = start_server(root / "app", root / "server.log", extra_env=env)
    except BaseException:
        llm.stop()
        raise
    try:
        yield server, llm
    finally:
        stop_server(server)
        llm.stop()


def test_an_unusable_answer_streamed_to_the_user_is_withdrawn(model_ui: tuple[UIServer, ScriptedLLMServer]) -> None:
    server, llm = model_ui
    wrong = "FIRST ATTEMPT WRONG " * 8
    bad = _planner_json("User", wrong, tail=', "plan": 42')  # streams send_to and message, then fails validation
    llm.push(Answer(bad, chunks=40, delay=0.03), Answer(_planner_json("User", "SECOND ATTEMPT RIGHT"), chunks=4))
    with server.client() as client:
        turn = client.ask("hello")
        shown = [
            d
            for n, d in client.events
            if n in ("stream_start", "new_message") and str(d.get("output")).startswith("FIRST")
        ]
        deleted = {d.get("id") for n, d in client.events if n == "delete_message"}
    assert shown and shown[0]["id"] in deleted, "the first attempt should have streamed, then been withdrawn"
    said = answers(turn)
    assert said == ["SECOND ATTEMPT RIGHT"], said
    planner = "\n".join(steps(turn, "Planner"))
    assert "**Invalid response:**" in planner and "**Error:**" in planner


def test_text_held_back_by_the_throttle_still_reaches_the_page(model_ui: tuple[UIServer, ScriptedLLMServer]) -> None:
    """The answer's last words arrive within the throttle window of the words before them, then
    the model pauses: no later event comes to push them, and they must show anyway."""
    server, llm = model_ui
    # Two halves 20 ms apart: the first carries the start of the answer and is shown at once.
    text = _planner_json("User", "The first words " * 12 + "THE LAST WORDS.")
    llm.push(Answer(text, chunks=2, delay=0.02, end_delay=5))
    with server.client() as client:
        message_id = client.send("hello")

        def last_words_shown() -> bool:
            return any("THE LAST WORDS" in a for a in answers(client.turn(message_id)))

        client.wait_for(last_words_shown, 4, "the last words to be shown while the model pauses")
        assert not client.turn_done(message_id)
        client.wait_turn(message_id)


def test_model_image_syntax_is_not_rendered_as_images(model_ui: tuple[UIServer, ScriptedLLMServer]) -> None:
    server, llm = model_ui
    message = "Done: ![x](http://127.0.0.1:9/leak?q=secret) and `![kept](code)`"
    llm.push(Answer(_planner_json("User", message, thought="look ![t](http://127.0.0.1:9/t)"), chunks=5))
    with server.client() as client:
        turn = client.ask("show me")
    said = answers(turn)
    # The paragraph holding an image is rewritten whole, so its code span changes look too.
    assert said == ["Done: [image: x](http://127.0.0.1:9/leak?q=secret) and `[image: kept](code)`"], said
    planner = "\n".join(steps(turn, "Planner"))
    assert "[image: t](http://127.0.0.1:9/t)" in planner and "![t]" not in planner


def test_stop_during_a_model_call_says_cancelled_without_an_error(model_ui: tuple[UIServer, ScriptedLLMServer]) -> None:
    server, llm = model_ui
    llm.push(Answer(_planner_json("User", "A long story, word by word. " * 20), chunks=80, delay=0.05))
    with server.client() as client:
        long_id = client.send("tell me a story")
        client.wait_for(
            lambda: any(m.get("type") == "assistant_message" for m in client.turn(long_id)), 30, "the answer to stream"
        )
        client.stop()
        turn = client.wait_turn(long_id, timeout=30)
        said = answers(turn)
        assert any(a.startswith("Round cancelled. You can send a new message.") for a in said), said
        assert not any("interrupted" in a for a in said), said
        assert not any(m.get("isError") or "**Error:**" in str(m.get("output")) for m in turn), turn
        llm.push(Answer(_planner_json("User", "Back after cancel."), chunks=3))
        after = client.ask("still there?")
    assert answers(after) == ["Back after cancel."]
