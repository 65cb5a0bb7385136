"""``weaver ui --workers 2``: two Chainlit servers behind one port, each browser kept on its own.

Everything is real and on 127.0.0.1: the ``weaver ui`` command (its router hands each accepted
connection to a worker), two worker processes sharing the default SQLite history and one app
folder, password login (users made by ``weaver user add``), real kernels, and Debian's Chromium
for the browser test. Each process is stopped by its PID.

What a user would check: people land on both workers and each chat stays with its browser (its
kernel, its variables, its uploads and downloads); a login made through one worker is good on the
other, a logout is honoured by both, failed logins and the chat cap count on both; each worker has
its own files folder, and stopping one leaves the other's alone and brings it back; SIGTERM to
``weaver ui`` stops every worker and kernel.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.processes import stop_process
from tests.test_ui_auth import add_user
from tests.ui_harness import (
    EXECUTION_TIMEOUT_S,
    KERNEL_ID_CODE,
    REPO_ROOT,
    ChatClient,
    answers,
    code_block,
    free_port,
    kernel_pid_in,
    pid_alive,
    steps,
    wait_until,
)
from ui.workers import COOKIE, HEADER, INDEX_ENV

GRACE_S = 2.0
CAP = 2
ATTEMPTS = 3
PASSWORDS = {"alice": "alice-password", "bob": "bob-password-2", "carol": "carol-password", "dave": "dave-password"}
WORKER_HEADER = HEADER.lower()


@dataclass
class Workers:
    """A running ``weaver ui --workers 2``."""

    base_url: str
    app_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[int, int]:
        """The live worker processes: index -> PID (children of ``weaver ui`` that carry an index)."""
        found = {}
        for pid in _children(self.proc.pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(f"{INDEX_ENV}=".encode()):
                    found[int(item.split(b"=", 1)[1])] = pid
        return found


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def _children(pid: int) -> list[int]:
    return [child for child, parent in _parents().items() if parent == pid and pid_alive(child)]


def _descendants(pid: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _worker_of(pid: int, workers: Workers) -> int | None:
    """The worker a process (a kernel) descends from."""
    by_pid = {p: i for i, p in workers.pids().items()}
    parents = _parents()
    while pid in parents and pid > 1:
        if pid in by_pid:
            return by_pid[pid]
        pid = parents[pid]
    return None


def _health_of(base_url: str, index: int) -> int | None:
    try:
        response = httpx.get(f"{base_url}/health", headers={"Cookie": f"{COOKIE}={index}"}, timeout=2)
    except httpx.HTTPError:
        return None
    return int(response.headers[WORKER_HEADER]) if response.status_code == 200 else None


def start_workers(root: Path, count: int = 2) -> Workers:
    app_dir = root / "app"
    (app_dir / "plugins").mkdir(parents=True, exist_ok=True)
    for name, password in PASSWORDS.items():
        add_user(app_dir, name, password)
    port = free_port()
    env = {
        **os.environ,
        "WEAVER_UI_AUTH": "password",
        "WEAVER_UI_DISCONNECT_GRACE_S": str(GRACE_S),
        "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": str(CAP),
        "WEAVER_UI_LOGIN_ATTEMPTS_PER_USER": str(ATTEMPTS),
        "WEAVER_UI_REPLICA_HEARTBEAT_S": "1",
        "WEAVER_UI_DRAIN_S": "5",
        "WEAVER_EXECUTION__TIMEOUT": str(EXECUTION_TIMEOUT_S),
        "WEAVER_EXECUTION__POOL_SIZE": "0",  # every kernel belongs to a chat
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_CHECK_MODEL_AT_START": "false",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("OPENAI_API_KEY", "LITERAL_API_KEY", "DATABASE_URL", "CHAINLIT_AUTH_SECRET", "WEAVER_DATABASE_URL"):
        env.pop(key, None)
    log_path = root / "weaver-ui.log"
    cmd = [
        sys.executable,
        "-m",
        "ui.cli",
        "ui",
        "--port",
        str(port),
        "--app-dir",
        str(app_dir),
        "--workers",
        str(count),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    workers = Workers(f"http://127.0.0.1:{port}", app_dir, log_path, proc)

    def all_ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"weaver ui exited with {proc.returncode}:\n{workers.log()[-3000:]}")
        return all(_health_of(workers.base_url, i) == i for i in range(count))

    try:
        wait_until(all_ready, 90, "every worker to answer /health", every=0.2)
    except BaseException:
        stop_process(proc, signal.SIGTERM, timeout=30)
        raise
    return workers


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    server = start_workers(tmp_path_factory.mktemp("weaver-workers"))
    try:
        yield server
    finally:
        stop_process(server.proc, signal.SIGTERM, timeout=60)


@dataclass
class Login:
    name: str
    cookies: dict[str, str]

    @property
    def worker(self) -> int:
        return int(self.cookies[COOKIE])

    def headers(self, worker: int | None = None) -> dict[str, str]:
        """The login's cookies as the browser sends them; ``worker``: with the sticky cookie changed."""
        cookies = {**self.cookies, **({COOKIE: str(worker)} if worker is not None else {})}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


def login(base_url: str, name: str, password: str | None = None, worker: int | None = None) -> httpx.Response:
    headers = {"Cookie": f"{COOKIE}={worker}"} if worker is not None else {}
    data = {"username": name, "password": password or PASSWORDS[name]}
    return httpx.post(f"{base_url}/login", data=data, headers=headers, timeout=30)


def signed_in(workers: Workers, name: str, worker: int | None = None) -> Login:
    response = login(workers.base_url, name, worker=worker)
    assert response.status_code == 200, response.text
    cookies = dict(response.cookies.items())
    if worker is None:
        assert cookies.get(COOKIE) == response.headers[WORKER_HEADER], "the answering worker sets the sticky cookie"
    else:  # the browser already holds it: not set again
        assert COOKIE not in cookies and response.headers[WORKER_HEADER] == str(worker)
    return Login(name, {COOKIE: response.headers[WORKER_HEADER], **cookies})


def chat(workers: Workers, user: Login, **kwargs: object) -> ChatClient:
    client = ChatClient(workers.base_url, **kwargs)  # type: ignore[arg-type]
    client.headers.update(user.headers())
    return client


def _said(turn: list[dict[str, object]]) -> str:
    return "\n".join(answers(turn) + steps(turn, "CodeInterpreter"))


def test_the_router_reads_the_sticky_cookie_of_the_first_request_only() -> None:
    from ui.workers.router import Choice, head_complete, sticky_index

    head = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; weaver_worker=1; b=2\r\n\r\n"
    head += b"GET / HTTP/1.1\r\nCookie: weaver_worker=0"  # a pipelined second request does not count
    assert head_complete(head) and sticky_index(head) == 1
    assert sticky_index(b"GET / HTTP/1.1\r\nCookie: weaver_worker=x\r\n\r\n") is None  # not a worker number
    assert sticky_index(b"GET /?weaver_worker=1 HTTP/1.1\r\nX-Note: weaver_worker=1\r\n\r\n") is None
    assert not head_complete(b"GET / HTTP/1.1\r\nCookie: weaver_")
    assert sticky_index(b"GET / HTTP/1.1\r\nCookie: weaver_worker=" + b"9" * 5000 + b"\r\n\r\n") is None
    choice = Choice()
    assert [choice.pick(None, [0, 1]) for _ in range(4)] == [0, 1, 0, 1]  # new browsers take turns
    assert choice.pick(1, [0, 1]) == 1 and choice.pick(1, [0]) == 0  # a worker that is down: the next live one
    assert choice.pick(0, []) is None


def _raw_request(base_url: str, head: bytes) -> bytes:
    """Send one request as raw bytes and return the status line of its answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            piece = sock.recv(4096)
            if not piece:
                break
            answer += piece
    return answer.split(b"\r\n", 1)[0]


def test_hostile_connections_do_not_stop_the_router(workers: Workers) -> None:
    """Whatever a client sends the router (a sticky cookie of thousands of digits, a negative or
    unknown worker, bytes that are no HTTP, nothing at all, half a header block), other browsers
    are still routed, and each hostile request gets its answer from a live worker or is closed."""
    silent = [socket.create_connection(("127.0.0.1", int(workers.base_url.rsplit(":", 1)[1]))) for _ in range(20)]
    half = socket.create_connection(("127.0.0.1", int(workers.base_url.rsplit(":", 1)[1])))
    half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: weaver_wor")
    try:
        for value in (b"9" * 5000, b"-1", b"99", b"1\x00", "\u0661".encode()):
            head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + COOKIE.encode() + b"=" + value
            status = _raw_request(workers.base_url, head + b"\r\nConnection: close\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 "), (value[:20], status)
        assert _raw_request(workers.base_url, b"\x16\x03\x01garbage\r\n\r\n") != b"HTTP/1.1 200 OK"
        for index in (0, 1):  # the browsers of both workers are still served, with the others pending
            assert _health_of(workers.base_url, index) == index
        assert workers.proc.poll() is None, workers.log()[-2000:]
    finally:
        for sock in [*silent, half]:
            sock.close()


def test_the_worker_count_is_checked_by_the_command() -> None:
    for bad in ("0", "65", "two"):
        done = subprocess.run(
            [sys.executable, "-m", "ui.cli", "ui", "--workers", bad], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and "--workers" in done.stderr, done.stderr
    from ui.cli import _worker_count

    assert _worker_count("auto") == len(os.sched_getaffinity(0))


def test_on_the_sqlite_history_workers_share_caps_and_adopt_a_gateway_kernel_once(tmp_path: Path) -> None:
    """Straight on the shared tables in the default SQLite file, each worker with its own connection
    pool as in its own process: a dead worker's place expires; of two workers adopting its chat's
    gateway kernel only one gets it, after the row expired; an orphaned kernel is deleted once."""
    import asyncio

    from ui.history import open_history
    from ui.shared import LiveSessions

    beat, window = 0.2, 0.4

    async def scenario() -> None:
        layers = [await open_history(tmp_path, None) for _ in range(3)]  # <app_dir>/weaver.db, three pools
        try:
            dead, a, b = (
                LiveSessions(lambda layer=layer: layer.engine, rid, beat, window)
                for layer, rid in zip(layers, ("dead", "w0", "w1"), strict=True)
            )
            deleted: list[str] = []

            async def delete(kernel_id: str) -> None:
                await asyncio.sleep(0.05)  # a gateway round trip, inside the transaction
                deleted.append(kernel_id)

            a.delete_kernel = b.delete_kernel = delete
            await a.start()
            await b.start()
            try:
                for n in (1, 2):
                    assert await dead.claim(f"chat-{n}", "user:erin", limit=2)
                    await dead.note_kernel(f"chat-{n}", f"s{n}", f"k{n}")
                assert not await a.claim("chat-3", "user:erin", limit=2), "the dead worker's chats still count"
                started = time.monotonic()
                got = await asyncio.gather(
                    a.adopt_kernel("chat-1", "s1", "user:erin"), b.adopt_kernel("chat-1", "s1", "user:erin")
                )
                assert got.count("k1") == 1 and got.count(None) == 1, got
                assert time.monotonic() - started >= beat * 2, "adopted before the dead worker's row expired"
                winner = a if got[0] == "k1" else b
                assert await winner.claim("chat-1", "user:erin", limit=2)
                assert await a.claim("chat-3", "user:erin", limit=2), "the dead worker's places expired"
                expires = time.monotonic() + beat * 3 + window + 5
                while "k2" not in deleted:
                    assert time.monotonic() < expires, "the orphaned kernel was never deleted"
                    await asyncio.gather(a.reap_orphans(), b.reap_orphans())
                    await asyncio.sleep(0.05)
                await asyncio.sleep(window + beat * 3)
                await asyncio.gather(a.reap_orphans(), b.reap_orphans())
                assert deleted == ["k2"], "deleted once, and never the adopted kernel"
            finally:
                await a.stop()
                await b.stop()
        finally:
            for layer in layers:
                await layer.close()

    asyncio.run(scenario())


def test_browsers_land_on_both_workers_and_each_chat_stays_with_its_browser(workers: Workers) -> None:
    alice = signed_in(workers, "alice")
    bob = wait_until(
        lambda: (b := signed_in(workers, "bob")).worker != alice.worker and b, 20, "bob to land on the other worker"
    )
    for user, transports in ((alice, ("polling", "websocket")), (bob, ("websocket",))):  # polling: every request sticks
        with chat(workers, user, transports=transports) as page:
            code = f"{KERNEL_ID_CODE}\nimport random\nx = random.random()\nprint('x', x)"
            first = _said(page.ask(code_block(code)))
            found = re.search(r"x ([0-9.e-]+)", first)
            assert found, first
            kernel, x = kernel_pid_in(first), found.group(1)
            assert _worker_of(kernel, workers) == user.worker, "the chat's kernel runs under the browser's worker"

            content = f"notes of {user.name}".encode()
            file_id = page.upload("notes.txt", content)
            url, params = f"{workers.base_url}/project/file/{file_id}", {"session_id": page.session_id}
            fetched = httpx.get(url, params=params, headers=page.headers)
            assert fetched.status_code == 200 and fetched.content == content
            assert int(fetched.headers[WORKER_HEADER]) == user.worker
            # the other worker has neither the chat nor its file
            elsewhere = httpx.get(url, params=params, headers=user.headers(1 - user.worker))
            assert elsewhere.status_code != 200 and int(elsewhere.headers[WORKER_HEADER]) == 1 - user.worker

            # A random number is not made again by a replay: the same value means the same kernel.
            second = _said(page.ask(code_block("print('again', x, open('notes.txt').read())"), [file_id]))
            assert f"again {x} notes of {user.name}" in second, second
        assert f"chainlit session {page.session_id}" in workers.log()


def test_a_login_through_one_worker_is_good_on_the_other_and_a_logout_ends_it_on_both(workers: Workers) -> None:
    assert (workers.app_dir / ".auth_secret").exists(), "the workers share the app folder's login secret"
    user = signed_in(workers, "alice", worker=0)
    assert user.worker == 0
    for worker in (0, 1):
        me = httpx.get(f"{workers.base_url}/user", headers=user.headers(worker), timeout=10)
        assert me.status_code == 200 and me.json()["identifier"] == "alice", (worker, me.text)
        assert int(me.headers[WORKER_HEADER]) == worker
    assert httpx.post(f"{workers.base_url}/logout", headers=user.headers(0), timeout=10).status_code == 200
    assert httpx.get(f"{workers.base_url}/user", headers=user.headers(0), timeout=10).status_code == 401
    wait_until(  # the other worker reads the revocation from the shared SQLite history (every 2 s)
        lambda: httpx.get(f"{workers.base_url}/user", headers=user.headers(1), timeout=10).status_code == 401,
        15,
        "worker 1 to refuse the logged-out login",
    )


def test_failed_logins_count_on_both_workers(workers: Workers) -> None:
    for worker in (0, 1, 0)[:ATTEMPTS]:
        assert login(workers.base_url, "dave", "wrong-password", worker=worker).status_code == 401
    refused = login(workers.base_url, "dave", worker=1)  # even the right password waits, on either worker
    assert refused.status_code == 429, refused.text
    assert login(workers.base_url, "bob", worker=1).status_code == 200  # nobody else is held up


def test_the_chat_cap_holds_across_workers(workers: Workers) -> None:
    carol = signed_in(workers, "carol", worker=0)
    pages = [chat(workers, carol).connect() for _ in range(CAP)]
    elsewhere = ChatClient(workers.base_url)
    elsewhere.headers.update(carol.headers(1))
    try:
        for page in pages:
            assert "ok" in _said(page.ask(code_block("print('ok')")))
        said = "\n".join(answers(elsewhere.connect().ask(code_block("print('one more')"))))
        assert f"You already have {CAP} chats open" in said, said
        pages[0].disconnect()  # a tab closed: after its grace period its place is free on the other worker too

        def got_in() -> bool:
            return "now ok" in _said(elsewhere.ask(code_block("print('now ok')")))

        wait_until(got_in, GRACE_S + 30, "the freed place to count on the other worker", every=0.5)
    finally:
        for client in (*pages, elsewhere):
            client.disconnect()


def test_each_worker_has_its_own_files_folder_and_a_stopped_one_comes_back(workers: Workers) -> None:
    pids = workers.pids()
    assert sorted(pids) == [0, 1]
    folders = {i: next(p for p in workers.app_dir.glob(f".files-{pid}-*") if p.is_dir()) for i, pid in pids.items()}
    assert folders[0] != folders[1]

    user = signed_in(workers, "bob", worker=0)
    with chat(workers, user) as page:  # a file shown in worker 0's chat
        file_id = page.upload("kept.txt", b"still here")
        url, params = f"{workers.base_url}/project/file/{file_id}", {"session_id": page.session_id}
        assert httpx.get(url, params=params, headers=page.headers).content == b"still here"

        mark = len(workers.log())
        os.kill(pids[1], signal.SIGTERM)  # worker 1 stops (and deletes its own folder)
        wait_until(lambda: not pid_alive(pids[1]), 60, "worker 1 to stop")
        assert not folders[1].exists()
        assert folders[0].is_dir(), "stopping worker 1 left worker 0's files alone"
        assert httpx.get(url, params=params, headers=page.headers).content == b"still here"

        said = r"worker 1 exited with code 0: starting it again"
        wait_until(lambda: re.search(said, workers.log()[mark:]), 10, "weaver ui to start worker 1 again")
        wait_until(lambda: _health_of(workers.base_url, 1) == 1, 90, "worker 1 to be back")
        assert workers.pids()[1] != pids[1]


def test_a_killed_workers_chat_goes_on_through_the_router_and_the_worker_comes_back(workers: Workers) -> None:
    from ui.restore import TITLE as RESTORE_TITLE

    alice = signed_in(workers, "alice", worker=1)
    page = chat(workers, alice).connect()
    again = chat(workers, alice, session_id=page.session_id)
    try:
        assert "set" in _said(page.ask(code_block(f"{KERNEL_ID_CODE}\nx = 41\nprint('set')")))
        kernel = kernel_pid_in(_said(page.ask(code_block(KERNEL_ID_CODE))))
        thread_id = page.wait_for(page.thread_id, 30, "the chat's history id")

        def saved() -> bool:  # what worker 0 can read: the chat and its code
            url = f"{workers.base_url}/project/thread/{thread_id}"
            got = httpx.get(url, headers=alice.headers(0), timeout=10)
            return got.status_code == 200 and "x = 41" in str(got.json().get("steps"))

        wait_until(saved, 30, "the chat to be in the shared history")
        mark = len(workers.log())
        os.kill(workers.pids()[1], signal.SIGKILL)
        wait_until(lambda: not pid_alive(kernel), 20, "the killed worker's kernel to die with it")
        page.wait_for(lambda: not page.sio.connected, 30, "the page to notice the drop")

        # The page reconnects with the same session id; its cookie still names the dead worker.
        again.connect(expect_chat_start=False)
        resumed = again.wait_for(
            lambda: next((d for n, d in again.events if n == "resume_thread"), None), 30, "the chat's history"
        )
        assert "x = 41" in str(resumed.get("steps")), resumed
        said = _said(again.ask(code_block("print(x + 1)"), timeout=120))
        assert "42" in said, said
        restore = [m for m in again.messages().values() if str(m.get("name")).startswith(RESTORE_TITLE)]
        assert restore, "the variables came back (the chat's code run again)"
        assert re.search(r"worker 1 exited with code -9: starting it again", workers.log()[mark:])
        wait_until(lambda: _health_of(workers.base_url, 1) == 1, 90, "worker 1 to be back")
    finally:
        again.disconnect()
        page.disconnect()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_in_chromium_a_chat_with_an_upload_keeps_its_kernel_on_the_pages_worker(
    workers: Workers, tmp_path: Path
) -> None:
    """The real page through the router: its polling and websocket requests, its upload and its
    second message all reach the worker whose kernel holds the variable of the first message."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_ui_browser import _browser_page

    expect = sync_api.expect
    notes = tmp_path / "notes.txt"
    notes.write_text("written by the browser\n")
    with _browser_page() as page:
        page.goto(workers.base_url)
        page.locator("#email").fill("alice")
        page.locator("#password").fill(PASSWORDS["alice"])
        page.locator("#password").press("Enter")
        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()
        chat_input.fill(
            f"```python\n{KERNEL_ID_CODE}\nimport random\nw = random.randint(10**8, 10**9 - 1)\nprint('w', w)\n```"
        )
        page.locator("#chat-submit").click()
        shown = page.get_by_text(re.compile(r"\bw \d{9}\b")).first  # in the answer's "Stdout: ..." block
        expect(shown).to_be_visible(timeout=90_000)
        found = re.search(r"\bw (\d{9})\b", shown.inner_text())
        assert found, shown.inner_text()
        w = found.group(1)
        worker = int(next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE))
        kernel = kernel_pid_in(page.locator("body").inner_text())
        assert _worker_of(kernel, workers) == worker, "the page's kernel runs under the page's worker"

        page.set_input_files("#upload-button-input", str(notes))
        expect(page.get_by_text("notes.txt").first).to_be_visible()
        chat_input.fill("```python\nprint('again', w, open('notes.txt').read().strip())\n```")
        submit = page.locator("#chat-submit")
        expect(submit).to_be_enabled()
        submit.click()
        expect(page.get_by_text(f"again {w} written by the browser").last).to_be_visible(timeout=90_000)
        assert int(next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)) == worker


def test_sigterm_to_weaver_ui_stops_every_worker_and_kernel(workers: Workers) -> None:
    user = signed_in(workers, "alice")
    page = chat(workers, user).connect()
    assert "ready" in _said(page.ask(code_block("print('ready')")))
    everything = _descendants(workers.proc.pid)
    assert len(workers.pids()) == 2 and len(everything) > 2, "two workers and at least one kernel"
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(timeout=90) == 0, workers.log()[-3000:]
    page.disconnect()
    left = [pid for pid in everything if pid_alive(pid)]
    assert not left, f"left running after weaver ui stopped: {left}"
    assert not [p for p in workers.app_dir.glob(".files-*") if p.is_dir()], "every worker removed its files folder"


def test_killing_weaver_ui_outright_takes_every_worker_and_kernel_with_it(tmp_path: Path) -> None:
    """SIGKILL leaves ``weaver ui`` no time to stop anything: Linux tells each worker (its parent
    died), which stops, and its kernels die with it."""
    server = start_workers(tmp_path)
    try:
        user = signed_in(server, "bob")
        page = chat(server, user).connect()
        assert "up" in _said(page.ask(code_block("print('up')")))
        everything = _descendants(server.proc.pid)
        assert len(server.pids()) == 2 and len(everything) > 2
        server.proc.kill()
        server.proc.wait(timeout=10)
        page.disconnect()
        wait_until(lambda: not any(pid_alive(p) for p in everything), 60, "every worker and kernel to stop")
    finally:
        stop_process(server.proc, signal.SIGTERM, timeout=30)
