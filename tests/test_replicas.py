"""Two ``weaver ui`` replicas behind HAProxy, sharing one PostgreSQL and one app folder.

Everything is real and on 127.0.0.1: a throwaway PostgreSQL cluster (``tests/pg_cluster.py``), two
Chainlit servers with password login (users made by ``weaver user add``), and Debian's HAProxy
running ``deploy/haproxy.cfg`` in the foreground, each stopped by its own PID.

What a user would check: people land on different replicas and stay there; a login made on one
replica works on the other; failed logins count across replicas; one person's chat cap holds across
replicas; when a replica is killed its kernels die with it, and the page reconnects through the
proxy to the other replica, gets its chat back from the history and goes on with its variables;
when everyone has left no kernel is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import httpx
import pytest

from tests.pg_cluster import PgCluster, start_cluster
from tests.processes import stop_process
from tests.test_ui_auth import add_user
from tests.ui_harness import (
    REPO_ROOT,
    ChatClient,
    UIServer,
    answers,
    code_block,
    free_port,
    pid_alive,
    server_command,
    start_server,
    steps,
    stop_server,
    wait_until,
)
from ui.restore import TITLE as RESTORE_TITLE

pytestmark = pytest.mark.replicas

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
GRACE_S = 2.0
CAP = 2
ATTEMPTS = 3
STICKY = "WEAVER_REPLICA"
PASSWORDS = {"alice": "alice-password", "bob": "bob-password-2", "carol": "carol-password", "dave": "dave-password"}


@dataclass
class Layout:
    app_dir: Path
    replicas: dict[str, UIServer]  # by replica id ("a", "b")
    proxy_url: str
    proxy: subprocess.Popen[bytes]
    proxy_log: Path


def _kernel_pids(root_pid: int) -> set[int]:
    """Kernel processes (bwrap sandboxes and the kernels in them) descending from ``root_pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    kernels = set()
    for pid in found:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"bwrap" in argv or b"kernel_main" in argv or b"ipykernel" in argv:
            kernels.add(pid)
    return kernels


def _start_proxy(root: Path, port: int, replicas: dict[str, int]) -> tuple[subprocess.Popen[bytes], Path]:
    """HAProxy in the foreground (``-db``) with the deployed config, filled in from the environment.
    Missing HAProxy fails the test with what to install (CI installs it), as a missing PostgreSQL does."""
    if not os.access(HAPROXY, os.X_OK):
        pytest.fail("haproxy was not found; install it (Debian: apt-get install haproxy) - .ci/run does", pytrace=False)
    config = REPO_ROOT / "deploy" / "haproxy.cfg"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "WEAVER_PROXY_BIND": f"127.0.0.1:{port}",
        "WEAVER_PROXY_HOST": "127.0.0.1",
        "WEAVER_REPLICA_A": f"127.0.0.1:{replicas['a']}",
        "WEAVER_REPLICA_B": f"127.0.0.1:{replicas['b']}",
    }
    log_path = root / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log_path


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    pg = start_cluster()
    try:
        yield pg
    finally:
        pg.stop()


BIND_FAILED = ("address already in use", "cannot bind socket")  # uvicorn's and HAProxy's words


def _start_layout(
    root: Path,
    app_dir: Path,
    url: str,
    stoppers: list[Callable[[], None]],
    extra_env: Mapping[str, str] | None = None,
    grace_s: float = GRACE_S,
) -> Layout:
    """Both replicas and the proxy; how to stop each process started goes into ``stoppers`` at once,
    so the caller stops it (by its PID) whatever happens next. ``extra_env``: more settings for both
    replicas (tests/test_layout.py points them at a kernel gateway)."""
    ports = {"a": free_port(), "b": free_port()}
    proxy_port = free_port()
    origins = ",".join(f"http://127.0.0.1:{p}" for p in (proxy_port, *ports.values()))
    common = {
        "WEAVER_DATABASE_URL": url,
        "WEAVER_UI_AUTH": "password",
        "WEAVER_UI_ALLOWED_ORIGINS": origins,
        "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": str(CAP),
        "WEAVER_UI_LOGIN_ATTEMPTS_PER_USER": str(ATTEMPTS),
        "WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1",  # the proxy, as deploy/haproxy.cfg says to set it
        "WEAVER_UI_REPLICA_HEARTBEAT_S": "1",
        "WEAVER_EXECUTION__POOL_SIZE": "0",  # no warm kernels: every kernel belongs to a chat
        **(extra_env or {}),
    }

    def start(rid: str) -> UIServer:
        env = {**common, "WEAVER_UI_REPLICA_ID": rid}
        return start_server(app_dir, root / f"replica-{rid}.log", grace_s, env, port=ports[rid])

    replicas: dict[str, UIServer] = {}
    with ThreadPoolExecutor(2) as pool:
        futures = {rid: pool.submit(start, rid) for rid in ports}
        failures = []
        for rid, future in futures.items():
            try:
                server = replicas[rid] = future.result()
                stoppers.append(lambda server=server: stop_server(server))
            except AssertionError as exc:  # start_server stopped that one itself
                failures.append(exc)
        if failures:
            raise failures[0]
    proxy, proxy_log = _start_proxy(root, proxy_port, ports)
    stoppers.append(lambda: stop_process(proxy, signal.SIGTERM, timeout=10))
    proxy_url = f"http://127.0.0.1:{proxy_port}"

    def both_in_rotation() -> bool:
        if proxy.poll() is not None:
            raise AssertionError(f"haproxy exited:\n{proxy_log.read_text()[-2000:]}")
        seen = set()
        for _ in range(4):
            try:
                seen.add(httpx.get(f"{proxy_url}/health", timeout=2).headers.get("x-weaver-replica"))
            except httpx.HTTPError:
                return False
        return seen == {"a", "b"}

    wait_until(both_in_rotation, 30, "haproxy to route to both replicas", every=0.2)
    return Layout(app_dir, replicas, proxy_url, proxy, proxy_log)


@pytest.fixture(scope="module")
def layout(cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    root = tmp_path_factory.mktemp("weaver-replicas")
    app_dir = root / "app"  # the shared app folder: users.json, workspace/, files/
    for name, password in PASSWORDS.items():
        add_user(app_dir, name, password)
    url = cluster.create_database()
    stoppers: list[Callable[[], None]] = []
    try:
        for attempt in range(3):  # ports are chosen before the servers bind them (the origins name them)
            try:
                built = _start_layout(root, app_dir, url, stoppers)
                break
            except AssertionError as exc:
                if attempt == 2 or not any(words in str(exc) for words in BIND_FAILED):
                    raise
                _stop_all(stoppers)  # another program took a port meanwhile: again, on new ports
        yield built
    finally:
        _stop_all(stoppers)


def _stop_all(stoppers: list[Callable[[], None]]) -> None:
    """The proxy first, then the replicas (each stops its sessions on the way out)."""
    while stoppers:
        stoppers.pop()()


@dataclass
class Login:
    """A signed-in user's cookies (the access token, and the proxy's sticky cookie) and their replica."""

    name: str
    cookies: dict[str, str]
    replica: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def token_only(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items() if k != STICKY)}


def login(base_url: str, name: str, password: str | None = None) -> httpx.Response:
    return httpx.post(f"{base_url}/login", data={"username": name, "password": password or PASSWORDS[name]}, timeout=30)


def proxy_login(layout: Layout, name: str) -> Login:
    response = login(layout.proxy_url, name)
    assert response.status_code == 200, response.text
    assert STICKY in response.cookies, "the proxy names the replica in a cookie"
    return Login(name, dict(response.cookies.items()), response.headers["x-weaver-replica"])


def chat(layout: Layout, user: Login, **kwargs: object) -> ChatClient:
    """A chat through the proxy, as the page opens it (sticky cookie and login cookie)."""
    client = ChatClient(layout.proxy_url, **kwargs)  # type: ignore[arg-type]
    client.headers.update(user.headers)
    return client


def other(rid: str) -> str:
    return "b" if rid == "a" else "a"


def test_users_land_on_different_replicas_and_one_login_works_on_both(layout: Layout) -> None:
    assert not (layout.app_dir / ".auth_secret").exists(), "the login secret lives in the shared database"
    alice = proxy_login(layout, "alice")
    bob = wait_until(
        lambda: (b := proxy_login(layout, "bob")).replica != alice.replica and b, 20, "bob to land elsewhere"
    )
    assert {alice.replica, bob.replica} == {"a", "b"}
    for rid, server in layout.replicas.items():  # a cookie signed by one replica is good on the other
        me = httpx.get(f"{server.base_url}/user", headers=alice.token_only(), timeout=10)
        assert me.status_code == 200 and me.json()["identifier"] == "alice", (rid, me.text)
    with chat(layout, alice, transports=("polling", "websocket")) as page:  # polling too: every request sticks
        said = answers(page.ask(code_block("print('hello from', 40 + 2)")))
    assert any("hello from 42" in a for a in said), said
    assert "chainlit session " + page.session_id in layout.replicas[alice.replica].log()
    assert page.session_id not in layout.replicas[other(alice.replica)].log()


def test_failed_logins_count_on_every_replica(layout: Layout) -> None:
    a, b = layout.replicas["a"].base_url, layout.replicas["b"].base_url
    for base in (a, b, a)[:ATTEMPTS]:
        assert login(base, "dave", "wrong-password").status_code == 401
    refused = login(b, "dave")  # even the right password waits: the name is throttled everywhere
    assert refused.status_code == 429, refused.text
    assert login(a, "alice").status_code == 200  # nobody else is held up


def test_a_logout_on_one_replica_is_refused_on_the_other_within_seconds(layout: Layout) -> None:
    a, b = layout.replicas["a"].base_url, layout.replicas["b"].base_url
    response = login(a, "alice")
    cookie = {"Cookie": f"access_token={response.cookies['access_token']}"}
    assert httpx.get(f"{b}/user", headers=cookie, timeout=10).status_code == 200
    assert httpx.post(f"{a}/logout", headers=cookie, timeout=10).status_code == 200
    assert httpx.get(f"{a}/user", headers=cookie, timeout=10).status_code == 401  # here at once
    wait_until(  # there after its next refresh from the shared database (every 2 s)
        lambda: httpx.get(f"{b}/user", headers=cookie, timeout=10).status_code == 401, 15, "replica b to refuse it"
    )


def test_the_chat_cap_holds_across_replicas(layout: Layout) -> None:
    """Carol at her cap on her replica cannot open one more on the other; a chat she leaves frees
    its place for the other replica after the grace period, or at once for a new chat where it was."""
    carol = proxy_login(layout, "carol")
    home = layout.replicas[carol.replica]
    pages = [chat(layout, carol).connect() for _ in range(CAP)]
    elsewhere = ChatClient(layout.replicas[other(carol.replica)].base_url)
    elsewhere.headers.update(carol.token_only())
    late = chat(layout, carol)
    try:
        for page in pages:
            assert any("ok" in a for a in answers(page.ask(code_block("print('ok')"))))
        said = "\n".join(answers(elsewhere.connect().ask(code_block("print('one more')"))))
        assert f"You already have {CAP} chats open" in said, said

        pages[0].disconnect()  # a tab closed: after its grace period its place is free everywhere
        home.wait_log(rf"grace over for {pages[0].session_id}: browser gone", GRACE_S + 20)

        def got_in() -> bool:
            return any("now ok" in a for a in answers(elsewhere.ask(code_block("print('now ok')"))))

        wait_until(got_in, 20, "the freed place to count on the other replica", every=0.2)

        pages[1].disconnect()  # at the cap again; a new chat at home frees the disconnected one at once
        mark = home.log_size()
        assert any("home ok" in a for a in answers(late.connect().ask(code_block("print('home ok')"))))
        home.wait_log(rf"on all replicas: stopping disconnected chat {pages[1].session_id}", 10, mark)
    finally:
        for client in (*pages, elsewhere, late):
            client.disconnect()


def test_a_killed_replica_takes_its_kernels_and_the_chat_goes_on_elsewhere(layout: Layout) -> None:
    alice = proxy_login(layout, "alice")
    dying, survivor = layout.replicas[alice.replica], layout.replicas[other(alice.replica)]
    page = chat(layout, alice).connect()
    page.ask(code_block("x = 41"))
    thread_id = page.wait_for(page.thread_id, 30, "the chat's history id")
    kernels = _kernel_pids(dying.proc.pid)
    assert kernels, "the chat's kernel runs under its replica"

    def saved() -> bool:  # what the other replica can read: the chat and its code
        got = httpx.get(f"{survivor.base_url}/project/thread/{thread_id}", headers=alice.token_only(), timeout=10)
        return got.status_code == 200 and "x = 41" in str(got.json().get("steps"))

    wait_until(saved, 30, "the chat to be in the shared history")
    started = time.monotonic()
    dying.proc.send_signal(signal.SIGKILL)
    dying.proc.wait(timeout=10)
    wait_until(lambda: not any(pid_alive(p) for p in kernels), 20, "the dead replica's kernels to die with it")
    page.wait_for(lambda: not page.sio.connected, 30, "the page to notice the drop")

    # The page's socket.io client reconnects with the same session id and, for a chat begun in this
    # page, no thread id; the proxy's cookie still names the dead replica.
    again = chat(layout, alice, session_id=page.session_id)
    mark = survivor.log_size()
    again.connect(expect_chat_start=False)
    try:
        resumed = again.wait_for(
            lambda: next((d for n, d in again.events if n == "resume_thread"), None), 30, "the chat's history"
        )
        assert "x = 41" in str(resumed.get("steps")), resumed
        reconnected_s = time.monotonic() - started
        survivor.wait_log(rf"chat {page.session_id} reconnects from another replica", 10, mark)
        turn = again.ask(code_block("print(x + 1)"), timeout=120)
        said = "\n".join(answers(turn) + steps(turn, "CodeInterpreter"))
        assert "42" in said, said
        restore = [m for m in again.messages().values() if str(m.get("name")).startswith(RESTORE_TITLE)]
        assert restore, "the variables came back (snapshot, or the chat's code run again)"
        assert _kernel_pids(survivor.proc.pid), "the chat's new kernel runs under the surviving replica"
    finally:
        again.disconnect()
        page.disconnect()
    print(f"replica killed -> chat resumed on the other: {reconnected_s:.1f} s")
    wait_until(lambda: not _kernel_pids(survivor.proc.pid), GRACE_S + 30, "every kernel to stop after everyone left")


def test_a_dead_replicas_places_expire_and_its_chats_can_still_be_found(cluster: PgCluster, tmp_path: Path) -> None:
    """Straight on the shared tables: a replica that stops beating stops counting after three beats."""
    import asyncio

    from ui.history import open_history
    from ui.shared import EXPIRY_BEATS, LiveSessions

    url = cluster.create_database()

    async def scenario(folder: Path) -> None:
        layer = await open_history(folder, url)
        try:
            beat = 0.2
            dead = LiveSessions(lambda: layer.engine, "dead", heartbeat_s=beat)  # never beats: killed
            alive = LiveSessions(lambda: layer.engine, "alive", heartbeat_s=beat)
            await alive.start()
            try:
                assert await dead.claim("chat-1", "user:erin", limit=1)
                await dead.note_thread("chat-1", "thread-1")
                assert not await alive.claim("chat-2", "user:erin", limit=1), "the dead replica's chat still counts"
                expires = time.monotonic() + beat * EXPIRY_BEATS
                while not await alive.claim("chat-2", "user:erin", limit=1):
                    assert time.monotonic() < expires + 5, "the dead replica's place never expired"
                    await asyncio.sleep(0.05)
                assert await dead.thread_of("chat-1") == "thread-1", "its page can still reconnect into its chat"
                await asyncio.sleep(beat * (EXPIRY_BEATS + 1))  # the living replica's beat keeps its own place
                assert not await dead.claim("chat-3", "user:erin", limit=1)
                await alive.release("chat-2")
                assert await dead.claim("chat-3", "user:erin", limit=1)
            finally:
                await alive.stop()
        finally:
            await layer.close()

    asyncio.run(scenario(tmp_path))


def test_a_dead_replicas_gateway_kernel_is_adopted_once_or_deleted_once(cluster: PgCluster, tmp_path: Path) -> None:
    """Straight on the shared tables, with replicas racing: of two replicas adopting one chat's kernel
    only one gets it, and only after the dead replica's row expired; of two replicas reaping, each
    orphaned kernel is deleted once, after the adoption window, and a claimed kernel never."""
    import asyncio

    from ui.history import open_history
    from ui.shared import LiveSessions

    url = cluster.create_database()
    beat, window = 0.2, 0.4

    async def scenario(folder: Path) -> None:
        layer = await open_history(folder, url)
        try:
            dead, a, b = (LiveSessions(lambda: layer.engine, rid, beat, window) for rid in ("dead", "a", "b"))
            deleted: list[str] = []

            async def delete(kernel_id: str) -> None:
                await asyncio.sleep(0.05)  # a gateway round trip, during which the row stays locked
                deleted.append(kernel_id)

            a.delete_kernel = b.delete_kernel = delete
            await a.start()  # both beat, and reap at every beat
            await b.start()
            for n in (1, 2):
                assert await dead.claim(f"chat-{n}", "user:erin", limit=5)
                await dead.note_kernel(f"chat-{n}", f"s{n}", f"k{n}")
            started = time.monotonic()
            assert await a.adopt_kernel("chat-1", "s1", "user:mallory") is None  # not mallory's chat
            got = await asyncio.gather(
                a.adopt_kernel("chat-1", "s1", "user:erin"), b.adopt_kernel("chat-1", "s1", "user:erin")
            )
            assert got.count("k1") == 1 and got.count(None) == 1, got
            assert time.monotonic() - started >= beat * 2, "adopted before the dead replica's row expired"
            assert await a.adopt_kernel("chat-2", "wrong-session", "user:erin") is None
            winner = a if got[0] == "k1" else b
            assert await winner.claim("chat-1", "user:erin", limit=5)  # its heartbeat keeps the row fresh
            try:
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
            await layer.close()

    asyncio.run(scenario(tmp_path))


def test_killing_weaver_ui_takes_its_server_and_kernels_with_it(tmp_path: Path) -> None:
    """A replica run as ``weaver ui`` is two processes (the launcher and Chainlit's server); when an
    orchestrator SIGKILLs the launcher, the server and its kernels must not live on without it."""
    import sys

    port = free_port()
    (tmp_path / "app" / "plugins").mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "WEAVER_APP_DIR": str(tmp_path / "app"),
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_CHECK_MODEL_AT_START": "false",
        "WEAVER_EXECUTION__POOL_SIZE": "1",  # one warm kernel: something to outlive the server
    }
    with open(tmp_path / "launcher.log", "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server_pids: set[int] = set()
    try:

        def warm_kernel() -> set[int]:
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()
            return {p for p in _kernel_pids(launcher.pid) if b"kernel" in Path(f"/proc/{p}/cmdline").read_bytes()}

        kernels = wait_until(warm_kernel, 60, "the server's warm kernel", every=0.2)
        server_pids = {int(p) for p in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()}
        assert server_pids, "the launcher runs the server as its child"
        launcher.kill()
        launcher.wait(timeout=10)
        watched = server_pids | kernels
        wait_until(lambda: not any(pid_alive(p) for p in watched), 30, "the server and its kernel to die too")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        for pid in server_pids:  # only if the test failed: our own server, by its PID
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_unreachable_shared_database_stops_the_start_with_one_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CHAINLIT_AUTH_SECRET"}
    env.update(
        {
            "WEAVER_APP_DIR": str(tmp_path / "app"),
            "WEAVER_LLM__API_TYPE": "offline",
            "WEAVER_UI_AUTH": "password",
            "WEAVER_DATABASE_URL": f"postgresql+asyncpg://weaver@/weaver?host={tmp_path / 'no-server'}&port=5432",
        }
    )
    done = subprocess.run(
        server_command(free_port()), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "WEAVER_DATABASE_URL" in done.stderr and "CHAINLIT_AUTH_SECRET" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
