"""The web server's guards (``ui/guards/``, with the patches of ``ui/patches/`` they need) against a real
``weaver ui`` server, as an attacker tries.

Every hostile request here is harmless if a guard fails: folders named by hostile session ids
are temp folders (or are never cleared), bodies are sent to 127.0.0.1 only, and sizes are small
multiples of a 1 MB limit. Each test also checks the honest path still works, so a guard that
refuses everything would fail too.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import socketio

from tests.ui_harness import (
    REPO_ROOT,
    ChatClient,
    UIServer,
    answers,
    code_block,
    login_cookie,
    start_server,
    steps,
    stop_server,
)

EVIL = "http://evil.example"
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
SESSIONS_LOG = r"owns weaver session"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-ui-guard")
    srv = start_server(root / "app", root / "server.log")
    try:
        yield srv
    finally:
        stop_server(srv)


def _socket(
    server: UIServer, transport: str, headers: dict[str, str], session_id: str | None = None
) -> socketio.Client:
    """A socket.io client sending exactly these headers (websocket-client would add its own Origin
    and Host beside ours, and the guard refuses any repeated Origin or Host anyway)."""
    options = {}
    if transport == "websocket":
        headers = dict(headers)
        options = {key.lower(): headers.pop(key) for key in list(headers) if key.lower() in ("origin", "host")}
    client = socketio.Client(reconnection=False, websocket_extra_options=options)
    headers = {**login_cookie(server.base_url), **headers}  # logged in: what is refused is the guard's doing
    client.connect(
        server.base_url,
        socketio_path="/ws/socket.io",
        transports=[transport],
        headers=headers,
        auth={
            "clientType": "webapp",
            "sessionId": str(uuid.uuid4()) if session_id is None else session_id,
            "threadId": "",
            "userEnv": "{}",
            "chatProfile": "",
        },
        wait_timeout=10,
    )
    return client


def _rss_kb(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match.group(1))


def _session_count(server: UIServer) -> int:
    return len(re.findall(SESSIONS_LOG, server.log()))


# ------------------------------------------------------------------ origin and host


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_a_foreign_page_cannot_open_a_socket(server: UIServer, transport: str) -> None:
    before = _session_count(server)
    with pytest.raises(socketio.exceptions.ConnectionError):
        _socket(server, transport, {"Origin": EVIL})
    own = _socket(server, transport, {"Origin": server.base_url})  # the page's own origin still connects
    assert own.connected
    own.disconnect()
    assert "requests from other web sites are refused" in server.log()
    with pytest.raises(socketio.exceptions.ConnectionError):  # nor by adding a second Origin of its own
        socketio.Client(reconnection=False).connect(
            server.base_url,
            socketio_path="/ws/socket.io",
            transports=["websocket"],
            headers={"Origin": EVIL},
            auth={"clientType": "webapp", "sessionId": str(uuid.uuid4())},
            wait_timeout=10,
        )
    assert _session_count(server) == before, "no session may exist for a refused socket"


def test_a_foreign_page_gets_no_cors_and_cannot_post(server: UIServer) -> None:
    page = httpx.get(
        f"{server.base_url}/project/settings", params={"language": "en-US"}, headers={"Origin": EVIL}, timeout=10
    )
    assert "access-control-allow-origin" not in page.headers, "other sites may not read our answers"
    post = httpx.post(f"{server.base_url}/auth/header", headers={"Origin": EVIL}, timeout=10)
    assert post.status_code == 403 and "other web sites" in post.json()["detail"]
    upload = httpx.post(
        f"{server.base_url}/project/file",
        params={"session_id": str(uuid.uuid4())},
        files={"file": ("a.csv", b"a\n1\n", "text/csv")},
        headers={"Origin": EVIL},
        timeout=10,
    )
    assert upload.status_code == 403


def test_a_rebinding_host_name_is_refused(server: UIServer) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, so the browser sends Host: evil.example."""
    port = server.base_url.rsplit(":", 1)[1]
    for path in ("/", "/health", "/project/settings?language=en-US", "/ws/socket.io/?EIO=4&transport=polling"):
        response = httpx.get(f"{server.base_url}{path}", headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert response.status_code == 400, path
        assert "host name" in response.json()["detail"]
    with pytest.raises(socketio.exceptions.ConnectionError):
        _socket(server, "websocket", {"Host": f"evil.example:{port}"})
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(f"{server.base_url}/health", headers={"Host": host}, timeout=10).status_code == 200


# ------------------------------------------------------------------ session ids


@pytest.mark.parametrize("kind", ["absolute", "parent", "empty", "dotdot", "not canonical"])
def test_a_session_id_that_is_not_a_uuid_is_refused_and_touches_no_folder(
    server: UIServer, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "x"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    session_id = {
        "absolute": str(target),
        "parent": "../x",
        "empty": "",
        "dotdot": "..",
        "not canonical": str(uuid.uuid4()).upper(),
    }[kind]
    files_dir = REPO_ROOT / ".files"
    before = sorted(p.name for p in files_dir.iterdir()) if files_dir.is_dir() else []
    try:
        client = _socket(server, "websocket", {}, session_id=session_id)
    except socketio.exceptions.ConnectionError:
        client = None
    if client is not None:  # the guard failed: leave without "New chat", so nothing is deleted
        client.disconnect()
        pytest.fail(f"sessionId {session_id!r} was accepted")
    upload = httpx.post(
        f"{server.base_url}/project/file",
        params={"session_id": session_id},
        files={"file": ("a.csv", b"a\n1\n", "text/csv")},
        headers=login_cookie(server.base_url),
        timeout=10,
    )
    assert upload.status_code == 404  # no such chat: nothing is written anywhere
    assert (target / "keep.txt").read_text() == "mine" and sorted(target.iterdir()) == [target / "keep.txt"]
    assert not (REPO_ROOT.parent / "x").exists()
    after = sorted(p.name for p in files_dir.iterdir()) if files_dir.is_dir() else []
    assert after == before


# ------------------------------------------------------------------ uploads


def _upload(server: UIServer, client: ChatClient, name: str, content: bytes, mime: str = "text/csv") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/project/file",
        params={"session_id": client.session_id},
        files={"file": (name, content, mime)},
        headers=client.headers,
        timeout=30,
    )


def _raw_post_head(server: UIServer, path: str, content_length: int) -> str:
    """Send a POST's head declaring ``content_length`` bytes, and none of them; return the answer."""
    host, port = server.base_url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer.decode(errors="replace")


def test_an_oversize_body_is_refused_before_it_is_read(server: UIServer) -> None:
    """50 MB against the harness's 1 MB limit: refused with 413, and the server does not hold it."""
    with server.client() as client:
        chat = client.session_id
        rss_before = _rss_kb(server.proc.pid)
        declared = _raw_post_head(server, f"/project/file?session_id={chat}", 50 * 2**20)  # only the head is sent
        assert declared.startswith("HTTP/1.1 413") and "larger than the limit" in declared, declared

        def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known as it streams
            head = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
                b"Content-Type: text/csv\r\n\r\n"
            )
            yield head
            block = b"1," * (2**19)
            for _ in range(50):
                yield block

        try:
            streamed = httpx.post(
                f"{server.base_url}/project/file",
                params={"session_id": chat},
                content=chunks(),
                headers={**client.headers, "Content-Type": "multipart/form-data; boundary=b"},
                timeout=60,
            )
            assert streamed.status_code == 413, streamed.text
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server answered 413 and closed while we were still sending: also a refusal
        grown_mb = (_rss_kb(server.proc.pid) - rss_before) / 1024
        assert grown_mb < 8, f"the server grew by {grown_mb:.0f} MB"
        stored = list((REPO_ROOT / ".files" / chat).glob("*")) if (REPO_ROOT / ".files" / chat).exists() else []
        assert stored == []
        ok = _upload(server, client, "small.csv", b"a,b\n1,2\n")
        assert ok.status_code == 200


def test_html_sent_as_csv_is_stored_and_served_as_plain_bytes(server: UIServer) -> None:
    with server.client() as client:
        hostile = _upload(server, client, "report.csv", b"<script>alert(1)</script>", mime="text/html")
        honest = _upload(server, client, "data.csv", b"a,b\n1,2\n", mime="text/csv")
        assert hostile.status_code == honest.status_code == 200
        served = httpx.get(
            f"{server.base_url}/project/file/{hostile.json()['id']}",
            params={"session_id": client.session_id},
            headers=client.headers,
            timeout=10,
        )
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/octet-stream"
        assert served.headers["content-disposition"] == "attachment"
        assert served.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in served.headers["content-security-policy"]
        csv = httpx.get(
            f"{server.base_url}/project/file/{honest.json()['id']}",
            params={"session_id": client.session_id},
            headers=client.headers,
            timeout=10,
        )
        assert csv.headers["content-type"].startswith("text/csv") and csv.headers["content-disposition"] == "attachment"
        # The chat still reads the hostile file as what its name says, with its name intact.
        turn = client.ask("", [hostile.json()["id"]])
        assert "report.csv" in "\n".join(answers(turn) + steps(turn, "CodeInterpreter"))


def test_files_per_message_are_capped_on_the_server(server: UIServer) -> None:
    """config.toml's max_files is 10: the browser enforces it, and now the server does too."""
    with server.client() as client:
        codes = [_upload(server, client, f"f{i}.csv", b"a\n1\n").status_code for i in range(40)]
        assert codes[:10] == [200] * 10 and set(codes[10:]) == {429}
        refused = _upload(server, client, "more.csv", b"a\n1\n")
        assert "at most 10 files" in refused.json()["detail"]
        # naming another chat first does not move the count: Chainlit stores into the chat named last
        twice = httpx.post(
            f"{server.base_url}/project/file",
            params=[("session_id", str(uuid.uuid4())), ("session_id", client.session_id)],
            files={"file": ("sneaky.csv", b"a\n1\n", "text/csv")},
            headers=client.headers,
            timeout=30,
        )
        assert twice.status_code == 400, twice.text
        client.ask(code_block("print('sent')"))
        assert _upload(server, client, "next.csv", b"a\n1\n").status_code == 200  # a new message, a new allowance
    assert len(list((REPO_ROOT / ".files" / client.session_id).glob("*"))) <= 11


# ------------------------------------------------------------------ pages


def test_every_page_carries_security_headers(server: UIServer) -> None:
    page = httpx.get(f"{server.base_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"].startswith("'self' 'sha256-") and "unsafe" not in directives["script-src"]
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["x-content-type-options"] == "nosniff"
    # Every inline script of the page is allowed by its hash, and only those.
    import base64
    import hashlib

    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline}
    assert inline and hashes == set(re.findall(r"'sha256-[^']+'", directives["script-src"]))
    api = httpx.get(f"{server.base_url}/project/settings", params={"language": "en-US"}, timeout=10)
    assert api.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ output limits


def test_a_huge_table_is_shown_within_its_caps(server: UIServer) -> None:
    code = "import pandas as pd\ndf = pd.DataFrame({f'c{i}': range(400_000) for i in range(60)})\ndf"
    with server.client() as client:
        rss_before = _rss_kb(server.proc.pid)
        turn = client.ask(code_block(code), timeout=120)
        grown_mb = (_rss_kb(server.proc.pid) - rss_before) / 1024
    coder = "\n".join(steps(turn, "CodeInterpreter"))
    assert "showing 20 of 400,000 rows" in coder and "showing 30 of 60 columns" in coder, coder[-800:]
    table_lines = [line for line in coder.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 22  # header, rule, 20 rows
    assert grown_mb < 20, f"the server grew by {grown_mb:.0f} MB for one table"


def test_a_forged_table_payload_is_clipped_too(server: UIServer) -> None:
    code = (
        "from IPython.display import display\n"
        "rows = [[str(i)] * 300 for i in range(5000)]\n"
        "display({'application/vnd.weaver.table+json': {'columns': [f'c{i}' for i in range(300)], 'rows': rows,"
        " 'shape': [5000, 300]}, 'text/plain': 'forged'}, raw=True)"
    )
    with server.client() as client:
        turn = client.ask(code_block(code), timeout=120)
    coder = "\n".join(steps(turn, "CodeInterpreter"))
    assert "showing 20 of 5,000 rows" in coder and "showing 30 of 300 columns" in coder
    assert len(coder) < 30_000


def test_fifteen_hundred_images_are_listed_within_the_cap(server: UIServer) -> None:
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        f"png = base64.b64decode({TINY_PNG!r})\n"
        "for _ in range(1500):\n    display(Image(data=png))"
    )
    with server.client() as client:
        turn = client.ask(code_block(code), timeout=180)
        client.ask(code_block("print('barrier')"))
        images = [e for e in client.elements() if e.get("type") == "image"]
    said = "\n".join(answers(turn))
    assert "showing 20 of 1,500 files" in said, said[-500:]
    assert len(said) < 5000, len(said)
    assert len(images) == 20


# ------------------------------------------------------------------ session slots


def test_one_client_cannot_exhaust_the_sessions(tmp_path: Path) -> None:
    """Cap 3 per client: sockets without a message hold nothing, extra chats are refused plainly,
    a disconnected chat's slot is reclaimed, and another user still gets in."""
    server = start_server(
        tmp_path / "app",
        tmp_path / "server.log",
        grace_s=60,
        extra_env={"WEAVER_UI_MAX_SESSIONS_PER_CLIENT": "3", "WEAVER_SESSION__MAX_LIVE_SESSIONS": "5"},
    )
    idle = [server.client().connect() for _ in range(8)]  # never send a message
    active = [server.client().connect() for _ in range(4)]
    try:
        assert _session_count(server) == 0, "a socket that never sent a message holds no kernel"
        for client in active[:3]:
            assert any("ok" in a for a in answers(client.ask(code_block("print('ok')"))))
        said = "\n".join(answers(active[3].ask(code_block("print('ok')"))))
        assert "You already have 3 chats open" in said, said
        assert _session_count(server) == 3
        mark = server.log_size()
        active[0].disconnect()  # a tab closed: its slot waits out the grace period...
        server.wait_log(r"chat end for", timeout=10, start=mark)
        again = active[3].ask(code_block("print('now ok')"))  # ...unless the same client needs it
        assert any("now ok" in a for a in answers(again)), answers(again)
        server.wait_log(r"at its 3 sessions: stopping disconnected chat", timeout=10, start=mark)
        assert _session_count(server) == 4
    finally:
        for client in idle + active:
            client.disconnect()
        stop_server(server)


# ------------------------------------------------------------------ rendering, event size


def test_model_output_cannot_load_an_image_or_flood_the_page(tmp_path: Path) -> None:
    from markdown_it import MarkdownIt

    from tests.llm_server import Answer, ScriptedLLMServer

    render = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    shapes = [
        "- item\n  ```\n  code\n\n![a](http://127.0.0.1:9/1)\n",
        "<http://a`b>![b](http://127.0.0.1:9/2)`",
        '<a title="`">![c](http://127.0.0.1:9/3)</a>`',
    ]
    llm = ScriptedLLMServer().start()
    env = {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": llm.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MAX_RETRIES": "0",
        "WEAVER_UI_MAX_EVENT_CHARS": "5000",
    }
    srv = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        with srv.client() as client:
            for shape in shapes:
                message = json.dumps(
                    {
                        "thought": shape,
                        "plan": ["answer"],
                        "current_plan_step": "answer",
                        "send_to": "User",
                        "message": shape,
                    }
                )
                llm.push(Answer(message, chunks=4))
                turn = client.ask("show me")
                for item in turn:
                    assert "<img" not in render.render(str(item.get("output") or "")), item.get("output")
            flood = "word " * 20_000
            llm.push(
                Answer(
                    json.dumps(
                        {"thought": "t", "plan": ["a"], "current_plan_step": "a", "send_to": "User", "message": flood}
                    ),
                    chunks=20,
                )
            )
            turn = client.ask("a long one")
            said = answers(turn)
            assert len(said) == 1 and len(said[0]) < 5200 and "showing 5,000 of 100,000 characters" in said[0]
    finally:
        stop_server(srv)
        llm.stop()


def test_bad_ui_setting_stops_the_server_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="WEAVER_UI_ALLOWED_ORIGINS"):
        start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_UI_ALLOWED_ORIGINS": "*"})


def test_an_unsandboxed_server_says_so_in_every_chat(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "app", tmp_path / "server.log", extra_env={"WEAVER_EXECUTION__SANDBOX": "none"})
    try:
        with srv.client() as client:
            said = client.wait_for(
                lambda: [
                    str(m.get("output"))
                    for m in client.messages().values()
                    if "WITHOUT a sandbox" in str(m.get("output"))
                ],
                30,
                "the sandbox warning",
            )
        assert said[0].startswith("**Warning:** Users' code runs WITHOUT a sandbox because execution.sandbox is 'none'")
        assert "!!! Users' code runs WITHOUT a sandbox" in srv.log()
    finally:
        stop_server(srv)


def test_a_thread_id_that_is_not_a_uuid_is_refused_at_connect(server: UIServer) -> None:
    for hostile in ("../x", "1' OR '1'='1", "/tmp/x"):
        client = socketio.Client(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(
                server.base_url,
                socketio_path="/ws/socket.io",
                transports=["websocket"],
                headers=login_cookie(server.base_url),
                auth={"clientType": "webapp", "sessionId": str(uuid.uuid4()), "threadId": hostile},
                wait_timeout=10,
            )
    assert "threadId" in server.log() and "is not a UUID" in server.log()
