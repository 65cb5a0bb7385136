"""Test harness for the web UI: a real Chainlit server subprocess and a socket.io client.

``ui_server`` starts ``python -m ui.chainlit_main run ui/app.py --headless`` on a free 127.0.0.1 port with
the repo root as cwd (so .chainlit/config.toml, chainlit.md and public/ are the real ones), an
app dir in a temp folder, a short disconnect grace and the offline model. It waits until
``/health`` answers and stops the server by its own PID at teardown.

``ChatClient`` talks to it the way the Chainlit frontend does (``/ws/socket.io`` with
``auth={clientType, sessionId, threadId, userEnv, chatProfile}``, ``connection_successful``,
``client_message`` with ``fileReferences``, uploads as multipart POST ``/project/file?session_id=``)
and records every event so tests can wait on conditions instead of sleeping.

``start_server(..., extra_env=, port=)`` adds environment variables (e.g. to turn on header login);
``ChatClient.login_with_header`` logs in the way the frontend does when header auth is on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import httpx
import pytest
import socketio

from tests.conftest import pid_alive  # noqa: F401  (re-exported for the UI tests)
from tests.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 3.0
EXECUTION_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0
MAX_FILE_MB = 1
T = TypeVar("T")


# The kernel's pid as the host sees it: inside its PID namespace a sandboxed kernel is pid 2, but the
# path of its connection file is the same on both sides.
KERNEL_ID_CODE = "import ipykernel.connect\nprint('KERNEL', ipykernel.connect.get_connection_file())"


def kernel_pid_in(text: str) -> int:
    """The host pid of the kernel whose ``KERNEL_ID_CODE`` output is in ``text``."""
    from core.execution.kernel_procs import kernel_host_pid

    match = re.search(r"KERNEL (\S+\.json)", text)
    assert match, f"no kernel connection file in {text!r}"
    pid = kernel_host_pid(match.group(1))
    assert pid is not None, f"no kernel process for {match.group(1)}"
    return pid


def gated_code(tag: str, then: str) -> str:
    """Code that signals it runs, waits for the test to open its gate, then runs ``then``. Both
    files live in the session's own folder: a sandboxed kernel sees nothing else."""
    return code_block(
        f"import os, time\nopen('started-{tag}', 'w').close()\n"
        f"while not os.path.exists('gate-{tag}'):\n    time.sleep(0.05)\n{then}"
    )


def wait_started(server: "UIServer", tag: str, timeout: float = 60) -> Path:
    """Wait until ``gated_code(tag)`` runs; returns its gate, to open with ``write_text``."""
    sessions = Path(server.app_dir, "workspace", "sessions")
    started = wait_until(lambda: next(sessions.glob(f"*/cwd/started-{tag}"), None), timeout, f"code {tag} to run")
    return started.with_name(f"gate-{tag}")


def server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """``chainlit run ui/app.py`` as ``weaver ui`` runs it (from the repo root, see ``ui/chainlit_main.py``)."""
    argv = ["run", "ui/app.py", "--headless", "--host", host, "--port", str(port)]
    return [sys.executable, "-m", "ui.chainlit_main", *argv]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class UIServer:
    """A running server: where to reach it, where its sessions live, what it logged."""

    base_url: str
    app_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    grace_s: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """Wait for a server log line matching ``pattern`` at or after byte offset ``start``."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()[start:]), timeout, f"server log {pattern!r}")

    def log_size(self) -> int:
        return len(self.log())

    def client(self, session_id: str | None = None) -> "ChatClient":
        return ChatClient(self.base_url, session_id)


def start_server(
    app_dir: Path,
    log_path: Path,
    grace_s: float = GRACE_S,
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> UIServer:
    port = port or free_port()
    (app_dir / "plugins").mkdir(parents=True, exist_ok=True)  # an empty plugin folder, as a real install has
    env = {
        **os.environ,
        "WEAVER_APP_DIR": str(app_dir),
        "WEAVER_UI_DISCONNECT_GRACE_S": str(grace_s),
        "WEAVER_EXECUTION__TIMEOUT": str(EXECUTION_TIMEOUT_S),
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_SESSION__MAX_FILE_MB": str(MAX_FILE_MB),
        # The model check at start would take the scripted model server's queued answers.
        "WEAVER_UI_CHECK_MODEL_AT_START": "false",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("OPENAI_API_KEY", "LITERAL_API_KEY", "DATABASE_URL", "CHAINLIT_AUTH_SECRET"):
        env.pop(key, None)
    env.update(extra_env or {})
    cmd = server_command(port)
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    server = UIServer(f"http://127.0.0.1:{port}", app_dir, log_path, proc, grace_s)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            return httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, START_TIMEOUT_S, "the UI server to answer /health", every=0.2)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: UIServer) -> None:
    """Stop the server we started (by its PID only); it stops its sessions on the way out."""
    stop_process(server.proc, signal.SIGINT, timeout=20)


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    root = tmp_path_factory.mktemp("weaver-ui")
    server = start_server(root / "app", root / "server.log")
    try:
        yield server
    finally:
        stop_server(server)


def login_cookie(base_url: str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"Cookie": ...}`` of a login the way the page does it (``POST /auth/header``); empty when refused.

    With the default local login everyone who asks is the local user; with header login the test
    plays the proxy and passes the header in ``headers``.
    """
    response = httpx.post(f"{base_url}/auth/header", headers=dict(headers or {}), timeout=30)
    if response.status_code != 200 or not response.cookies:
        return {}
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in response.cookies.items())}


class ChatClient:
    """A python-socketio client that behaves like Chainlit's web frontend and records everything."""

    def __init__(
        self,
        base_url: str,
        session_id: str | None = None,
        resume_thread_id: str = "",
        transports: tuple[str, ...] = ("websocket",),
    ) -> None:
        self.base_url = base_url
        # ("polling", "websocket") starts on long-polling and upgrades, as the browser does: every
        # request of it must reach the same server (behind a proxy, through its sticky cookie).
        self.transports = list(transports)
        self.resume_thread_id = resume_thread_id  # an old chat to open, as the sidebar does
        self.session_id = session_id or str(uuid.uuid4())
        self.headers: dict[str, str] = {}  # sent with the socket handshake and uploads (the login cookie)
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", self._record)

    def _record(self, event: str, data: Any = None) -> None:
        with self._cond:
            self.events.append((event, data))
            self._cond.notify_all()

    # -- connection ---------------------------------------------------------------------------
    def connect(self, expect_chat_start: bool = True, timeout: float = 30) -> "ChatClient":
        if "Cookie" not in self.headers:  # log in as the page would (local login: no questions asked)
            self.headers.update(login_cookie(self.base_url))
        self.sio.connect(
            self.base_url,
            socketio_path="/ws/socket.io",
            transports=self.transports,
            auth={
                "clientType": "webapp",
                "sessionId": self.session_id,
                "threadId": self.resume_thread_id,
                "userEnv": "{}",
                "chatProfile": "",
            },
            headers=dict(self.headers),  # engine.io moves the Cookie header out of the dict it gets
            wait_timeout=timeout,
        )
        self.sio.emit("connection_successful")
        if expect_chat_start:
            self.wait_for(lambda: self._run_done("on_chat_start"), timeout, "on_chat_start to finish")
        return self

    def login_with_header(self, header: str | None = None, value: str | None = None) -> httpx.Response:
        """``POST /auth/header`` as the frontend does when header auth is on (here the test plays the
        proxy and adds ``header: value``); on success keep the access-token cookie it sets."""
        headers = {header: value} if header and value is not None else {}
        response = httpx.post(f"{self.base_url}/auth/header", headers=headers, timeout=30)
        if response.status_code == 200 and response.cookies:
            self.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
        else:
            self.headers["Cookie"] = ""  # refused: connect must not log in on its own
        return response

    def disconnect(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()

    def __enter__(self) -> "ChatClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # -- actions ------------------------------------------------------------------------------
    def upload(self, name: str, content: bytes, mime: str = "text/csv") -> str:
        response = httpx.post(
            f"{self.base_url}/project/file",
            params={"session_id": self.session_id},
            files={"file": (name, content, mime)},
            headers=self.headers,
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def send(self, text: str, file_ids: list[str] | tuple[str, ...] = ()) -> str:
        message_id = str(uuid.uuid4())
        message = {
            "threadId": "",
            "id": message_id,
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "metadata": {},
        }
        self.sio.emit("client_message", {"message": message, "fileReferences": [{"id": f} for f in file_ids]})
        return message_id

    def stop(self) -> None:
        self.sio.emit("stop")

    def new_chat(self) -> None:
        """What the "New chat" button does: mark the session for clearing, then drop the socket.

        python-socketio's client aborts its transport on disconnect and may drop a packet still
        queued, so wait for the server's ack of ``clear_session`` first (the browser flushes).
        """
        self.sio.call("clear_session", timeout=10)
        self.sio.disconnect()

    # -- reading what arrived -----------------------------------------------------------------
    def messages(self) -> dict[str, dict[str, Any]]:
        """Every step/message by id, as the frontend would hold it after applying the events."""
        with self._cond:
            events = list(self.events)
        items: dict[str, dict[str, Any]] = {}
        for name, data in events:
            if name in ("new_message", "stream_start", "update_message") and isinstance(data, dict):
                items[data["id"]] = {**items.get(data["id"], {}), **data}
            elif name == "delete_message" and isinstance(data, dict):
                items.pop(data.get("id"), None)
            elif name == "stream_token" and isinstance(data, dict) and data.get("id") in items:
                item = items[data["id"]]
                key = "input" if data.get("isInput") else "output"
                item[key] = data["token"] if data.get("isSequence") else (item.get(key) or "") + data["token"]
        return items

    def elements(self) -> list[dict[str, Any]]:
        with self._cond:
            return [data for name, data in self.events if name == "element"]

    def fetch_element(self, element: dict[str, Any]) -> httpx.Response:
        """The file behind a shown element, fetched as the page does: with its chat's id and the login cookie."""
        return httpx.get(
            f"{self.base_url}/project/file/{element['chainlitKey']}",
            params={"session_id": self.session_id},
            headers=self.headers,
            timeout=10,
        )

    def thread_id(self) -> str:
        """The chat's id in the history, which the server announces at its first interaction."""
        with self._cond:
            for name, data in self.events:
                if name == "first_interaction" and isinstance(data, dict) and data.get("thread_id"):
                    return str(data["thread_id"])
        return ""

    def event_names(self) -> list[str]:
        with self._cond:
            return [name for name, _ in self.events]

    def turn(self, message_id: str) -> list[dict[str, Any]]:
        """Steps and messages that belong to one user message, in arrival order."""
        items = self.messages()
        run_ids = {i for i, m in items.items() if m.get("name") == "on_message" and m.get("parentId") == message_id}
        return [m for m in items.values() if m.get("parentId") in run_ids]

    def turn_done(self, message_id: str) -> bool:
        items = self.messages()
        return any(
            m.get("name") == "on_message" and m.get("parentId") == message_id and m.get("end") for m in items.values()
        )

    def wait_turn(self, message_id: str, timeout: float = 90) -> list[dict[str, Any]]:
        self.wait_for(lambda: self.turn_done(message_id), timeout, f"turn {message_id} to finish")
        return self.turn(message_id)

    def ask(self, text: str, file_ids: list[str] | tuple[str, ...] = (), timeout: float = 90) -> list[dict[str, Any]]:
        return self.wait_turn(self.send(text, file_ids), timeout)

    def _run_done(self, name: str) -> bool:
        return any(m.get("name") == name and m.get("end") for m in self.messages().values())

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """Wait, woken by each new event, until ``predicate()`` is truthy."""
        deadline = time.monotonic() + timeout
        with self._cond:  # an RLock: the predicate may read the events too
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:.0f}s waiting for {what}; last events: {self.event_names()[-15:]}"
                    )
                self._cond.wait(min(left, 1.0))


def answers(turn: list[dict[str, Any]]) -> list[str]:
    """The assistant messages of a turn (final answers, notices, errors)."""
    return [str(m.get("output") or "") for m in turn if m.get("type") == "assistant_message"]


def role_of(step: dict[str, Any]) -> str:
    """The role a step belongs to: its name, before the " · summary" a finished step gets."""
    return str(step.get("name") or "").split(" · ", 1)[0]


def steps(turn: list[dict[str, Any]], name: str) -> list[str]:
    """The outputs of a turn's steps of role ``name``."""
    return [str(m.get("output") or "") for m in turn if role_of(m) == name and m.get("type") != "assistant_message"]


def code_block(code: str) -> str:
    return f"```python\n{code}\n```"
