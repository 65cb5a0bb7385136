"""Export and read-only sharing against a real server (password users alice and bob, SQLite,
``WEAVER_UI_SHARING=1``), with chats made through the socket as the page makes them.

What a user checks: alice's chat exports (``weaver export`` and the Export button's links) with its
code, outputs and her thumbs; bob cannot export it. Alice's Share button gives a link that bob,
signed in, reads (messages, steps, the figure the chat showed) without any way to send or reach
another file; anonymous visitors are refused; Stop sharing makes the link say it was revoked; a
server with sharing off refuses links made before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import nbformat
import pytest

from tests.test_ui_auth import PLUGINS, add_user
from tests.test_ui_history import client_of, cookie
from tests.ui_harness import REPO_ROOT, ChatClient, UIServer, answers, code_block, start_server, stop_server

ENV = {"WEAVER_UI_AUTH": "password", "WEAVER_UI_SHARING": "1"}
FIGURE = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\nprint('plotted', 3)"
SECOND = "total = 40 + 2\nprint('total is', total)\ntotal"
COMMENT = "the plot is what I asked for"
SHARE_LINK = r"\((/weaver/shared/[A-Za-z0-9_-]{32})\)"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weaver-ui-sharing")
    shutil.copytree(PLUGINS, folder / "app" / "plugins")
    add_user(folder / "app", "alice", "alice-password")
    add_user(folder / "app", "bob", "bob-password-2")
    return folder


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[UIServer]:
    srv = start_server(root / "app", root / "server.log", extra_env=ENV)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def alice(server: UIServer) -> dict[str, str]:
    return cookie(server, "alice", "alice-password")


@pytest.fixture(scope="module")
def bob(server: UIServer) -> dict[str, str]:
    return cookie(server, "bob", "bob-password-2")


@pytest.fixture(scope="module")
def chat(server: UIServer, alice: dict[str, str]) -> Iterator[ChatClient]:
    """Alice's live chat: a figure, then a sum."""
    with client_of(server, alice) as client:
        assert any("plotted 3" in a for a in answers(client.ask(code_block(FIGURE))))
        assert any("total is 42" in a for a in answers(client.ask(code_block(SECOND))))
        client.wait_for(client.thread_id, 30, "the chat's history id")
        yield client


def thread(server: UIServer, headers: dict[str, str], thread_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/project/thread/{thread_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def click(server: UIServer, headers: dict[str, str], client: ChatClient, name: str) -> httpx.Response:
    """Press a button of the chat as the page does (``POST /project/action`` with the socket's session)."""
    action = {"name": name, "payload": {}, "id": str(uuid.uuid4()), "label": name}
    body = {"sessionId": client.session_id, "action": action}
    return httpx.post(f"{server.base_url}/project/action", json=body, headers=headers, timeout=30)


def said(client: ChatClient, pattern: str) -> re.Match[str]:
    """Wait for a message of the chat matching ``pattern``."""
    rx = re.compile(pattern)

    def found() -> re.Match[str] | None:
        for message in client.messages().values():
            match = rx.search(str(message.get("output") or ""))
            if match:
                return match
        return None

    return client.wait_for(found, 30, f"a message matching {pattern!r}")


def share_links(client: ChatClient) -> set[str]:
    """Every share link the chat has shown."""
    found = (re.findall(SHARE_LINK, str(m.get("output") or "")) for m in client.messages().values())
    return {link for links in found for link in links}


def audit_events(server: UIServer) -> list[dict[str, Any]]:
    lines = (server.app_dir / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weaver_export(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ui.cli", "export", *args, "--app-dir", str(app_dir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )


def test_the_owner_exports_the_chat_with_its_feedback_from_the_cli_and_the_chat(
    server: UIServer, alice: dict[str, str], bob: dict[str, str], chat: ChatClient, tmp_path: Path
) -> None:
    thread_id = chat.thread_id()
    steps = thread(server, alice, thread_id)["steps"]
    plotted = [s for s in steps if s["type"] == "assistant_message" and "plotted 3" in (s.get("output") or "")]
    body = {"feedback": {"forId": plotted[-1]["id"], "value": 1, "comment": COMMENT}, "sessionId": chat.session_id}
    assert httpx.put(f"{server.base_url}/feedback", json=body, headers=alice, timeout=10).status_code == 200

    out = tmp_path / "chat.ipynb"
    done = weaver_export(server.app_dir, thread_id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    notebook = nbformat.read(out, as_version=4)
    nbformat.validate(notebook)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.source for c in cells] == [FIGURE, SECOND]
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in cells[0].outputs)
    assert [o.text for o in cells[1].outputs if o.output_type == "stream"] == ["total is 42\n"]
    assert [o.data["text/plain"] for o in cells[1].outputs if o.output_type == "execute_result"] == ["42"]
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert f"👍 on the answer — {COMMENT}" in markdown
    assert markdown.index(COMMENT) < markdown.index("## 2. User"), "the rating sits with the round it rates"

    text = weaver_export(server.app_dir, thread_id, "--format", "md", "-o", "-")
    assert text.returncode == 0, text.stderr
    assert f"```python\n{SECOND}\n```" in text.stdout and "total is 42" in text.stdout and COMMENT in text.stdout
    missing = weaver_export(server.app_dir, "no-such-chat")
    assert missing.returncode == 1 and "no chat 'no-such-chat'" in missing.stderr

    assert click(server, alice, chat, "weaver_export").status_code == 200
    link = said(chat, r"\((/weaver/export/[^)]+\.md)\)").group(1)
    assert link.endswith("/Python%3A%20import%20matplotlib.pyplot%20as%20plt.md"), "named after the chat"
    download = httpx.get(f"{server.base_url}{link}", headers=alice, timeout=30)
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert COMMENT in download.text and "total is 42" in download.text
    assert httpx.get(f"{server.base_url}{link}", headers=bob, timeout=30).status_code == 404
    assert httpx.get(f"{server.base_url}{link}", timeout=30).status_code == 401
    wrong = httpx.get(f"{server.base_url}{link[: -len('.md')]}.pdf", headers=alice, timeout=30)
    assert wrong.status_code == 400 and ".ipynb or .md" in wrong.text


def test_a_shared_link_is_read_only_for_another_user_and_dead_once_revoked(
    server: UIServer, alice: dict[str, str], bob: dict[str, str], chat: ChatClient
) -> None:
    thread_id = chat.thread_id()
    assert click(server, alice, chat, "weaver_share").status_code == 200
    path = said(chat, SHARE_LINK).group(1)
    url = f"{server.base_url}{path}"

    page = httpx.get(url, headers=bob, timeout=30)
    assert page.status_code == 200, page.text
    assert "Read-only" in page.text and "plotted 3" in page.text and "total is 42" in page.text
    assert "print(&#x27;total is&#x27;, total)" in page.text or "print('total is', total)" in page.text
    assert not re.search(r"<(form|textarea|input|script)\b", page.text), "nothing on the page can send"
    assert "Download this chat" not in page.text and path not in page.text, "the owner's own links stay hers"
    files = re.findall(r'src="(/weaver/shared-files/[^"]+)"', page.text)
    assert files, "the figure the chat showed is on the page"
    figure = httpx.get(f"{server.base_url}{files[0]}", headers=bob, timeout=30)
    assert figure.status_code == 200 and figure.content.startswith(b"\x89PNG")

    # nothing beyond what the link shows: not the chat itself, another chat's file, the kernel's folder
    assert httpx.get(f"{server.base_url}/project/thread/{thread_id}", headers=bob, timeout=10).status_code == 403
    with client_of(server, alice) as other:
        other.ask(code_block(f"open('secret.txt', 'w').write('alice only')\n{FIGURE}"))
        other_thread = other.wait_for(other.thread_id, 30, "the other chat's id")
    other_elements = thread(server, alice, other_thread).get("elements") or []
    assert other_elements, "alice's other chat shows a figure of its own"
    for element_id in [e["id"] for e in other_elements] + ["secret.txt", str(uuid.uuid4())]:
        refused = httpx.get(f"{server.base_url}{path.replace('/shared/', '/shared-files/')}/{element_id}", headers=bob)
        assert refused.status_code == 404 and b"alice only" not in refused.content, (element_id, refused.text[:300])
    assert httpx.get(url, timeout=10).status_code == 401, "anonymous visitors are refused"
    assert httpx.get(f"{server.base_url}{files[0]}", timeout=10).status_code == 401

    assert click(server, alice, chat, "weaver_unshare").status_code == 200
    said(chat, "no longer shared")
    gone = httpx.get(url, headers=bob, timeout=30)
    assert gone.status_code == 410 and "revoked" in gone.text and "plotted 3" not in gone.text
    assert httpx.get(f"{server.base_url}{files[0]}", headers=bob, timeout=30).status_code == 410
    unknown = httpx.get(f"{server.base_url}/weaver/shared/{'x' * 32}", headers=bob, timeout=30)
    assert unknown.status_code == 404 and "Link not found" in unknown.text

    events = [(e["event"], e.get("chat")) for e in audit_events(server) if e["event"].startswith("chat_")]
    assert ("chat_shared", thread_id) in events and ("chat_unshared", thread_id) in events
    shared = [e for e in audit_events(server) if e["event"] == "chat_shared"]
    assert [(e["user"], e["client"]) for e in shared] == [("alice", "127.0.0.1")]


def test_another_user_cannot_share_a_chat_that_is_not_theirs(
    server: UIServer, bob: dict[str, str], chat: ChatClient
) -> None:
    refused = click(server, bob, chat, "weaver_share")
    assert refused.status_code == 401  # Chainlit: the socket session is alice's
    assert not any(e["event"] == "chat_shared" and e["user"] == "bob" for e in audit_events(server))


def test_a_link_made_while_sharing_was_on_is_refused_once_it_is_off(
    root: Path, server: UIServer, alice: dict[str, str], bob: dict[str, str], chat: ChatClient
) -> None:
    before = share_links(chat)
    assert click(server, alice, chat, "weaver_share").status_code == 200
    (path,) = chat.wait_for(lambda: share_links(chat) - before, 30, "a new link")
    assert httpx.get(f"{server.base_url}{path}", headers=bob, timeout=30).status_code == 200
    chat.disconnect()
    stop_server(server)
    off = start_server(root / "app", root / "server-off.log", extra_env={"WEAVER_UI_AUTH": "password"})
    try:
        bob_again = cookie(off, "bob", "bob-password-2")
        refused = httpx.get(f"{off.base_url}{path}", headers=bob_again, timeout=30)
        assert refused.status_code == 404 and "Sharing is off" in refused.text and "plotted 3" not in refused.text
        # after the restart the chat still exports whole, from its session folder
        alice_again = cookie(off, "alice", "alice-password")
        exported = httpx.get(
            f"{off.base_url}/weaver/export/{chat.thread_id()}/c.ipynb", headers=alice_again, timeout=60
        )
        assert exported.status_code == 200, exported.text
        cells = [c for c in nbformat.reads(exported.text, as_version=4).cells if c.cell_type == "code"]
        assert [c.source for c in cells] == [FIGURE, SECOND] and "42" in str(cells[1].outputs)
    finally:
        stop_server(off)
