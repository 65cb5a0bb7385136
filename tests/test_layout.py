"""The whole layout at once: HAProxy, two ``weaver ui`` replicas, one PostgreSQL, one kernel gateway.

Every process is real, on 127.0.0.1, started here and stopped by its own PID: a throwaway PostgreSQL
(``tests/pg_cluster.py``), a ``jupyter kernelgateway`` with a token (``tests/gateway_server.py``),
two replicas whose kernels all run on that gateway (``WEAVER_EXECUTION__GATEWAY_URL``/``_TOKEN``)
and Debian's HAProxy with ``deploy/haproxy.cfg``. Everything is asked through the proxy with the
socket.io client the UI tests use, as a user would: where code runs, uploads, charts, Stop, which
replica serves whom, a replica killed mid-chat (its chats adopt their kernels elsewhere, the
kernels nobody comes back for are deleted), and no kernel left when everyone has gone.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from tests.gateway_server import KERNEL_NAME, Gateway, start_gateway
from tests.pg_cluster import start_cluster
from tests.test_replicas import BIND_FAILED, Layout, Login, _start_layout, _stop_all, chat, other
from tests.test_ui_auth import add_user
from tests.ui_harness import ChatClient, answers, code_block, steps, wait_until
from ui.restore import TITLE as RESTORE_TITLE

pytestmark = [pytest.mark.layout, pytest.mark.replicas, pytest.mark.gateway, pytest.mark.timeout(240)]

GRACE_S = 2.0
HEARTBEAT_S = 1.0
# A dead replica's rows expire after 3 beats; its kernels wait max(grace, 3 beats) more to be
# adopted; the next beat of the survivor deletes them. Bound, with slack for a busy 2-core machine.
ORPHAN_BOUND_S = 3 * HEARTBEAT_S + max(GRACE_S, 3 * HEARTBEAT_S) + 15
PASSWORD = "layout-password"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("layout-gateway"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def layout(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    root = tmp_path_factory.mktemp("weaver-layout")
    app_dir = root / "app"
    for name in ("alice", "bob"):
        add_user(app_dir, name, PASSWORD)
    pg = start_cluster()
    stoppers: list[Callable[[], None]] = [pg.stop]
    gateway_env = {
        "WEAVER_EXECUTION__GATEWAY_URL": gateway.url,
        "WEAVER_EXECUTION__GATEWAY_TOKEN": gateway.token,
        "WEAVER_EXECUTION__GATEWAY_KERNEL_NAME": KERNEL_NAME,
        "WEAVER_UI_REPLICA_HEARTBEAT_S": str(HEARTBEAT_S),
    }
    try:
        url = pg.create_database()
        for attempt in range(3):
            try:
                built = _start_layout(root, app_dir, url, stoppers, gateway_env, grace_s=GRACE_S)
                break
            except AssertionError as exc:
                if attempt == 2 or not any(words in str(exc) for words in BIND_FAILED):
                    raise
                _stop_all(stoppers[1:])
                del stoppers[1:]
        yield built
    finally:
        _stop_all(stoppers)  # proxy, replicas, then PostgreSQL


def login(layout: Layout, name: str) -> Login:
    response = httpx.post(f"{layout.proxy_url}/login", data={"username": name, "password": PASSWORD}, timeout=30)
    assert response.status_code == 200, response.text
    return Login(name, dict(response.cookies.items()), response.headers["x-weaver-replica"])


def parent_of(pid: int) -> int:
    """A process's parent, from ``/proc/<pid>/stat`` (the field after the command name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kernel_pid(page: ChatClient) -> int:
    """The pid of the kernel that runs this chat's code, as the code itself prints it."""
    said = "\n".join(answers(page.ask(code_block("import os\nprint('KPID', os.getpid())"))))
    return int(said.split("KPID", 1)[1].split()[0])


def kernel_ids(gw: Gateway) -> set[str]:
    return {str(k["id"]) for k in gw.kernels()}


def test_two_users_on_two_replicas_run_their_code_in_kernels_the_gateway_started(
    layout: Layout, gateway: Gateway
) -> None:
    alice = login(layout, "alice")
    bob = wait_until(lambda: (b := login(layout, "bob")).replica != alice.replica and b, 20, "bob to land elsewhere")
    assert {alice.replica, bob.replica} == {"a", "b"}
    replica_pids = {server.proc.pid for server in layout.replicas.values()}
    for user in (alice, bob):
        with chat(layout, user) as page:
            pid = kernel_pid(page)
        assert parent_of(pid) == gateway.pid, "the kernel is the gateway's child"
        assert parent_of(pid) not in replica_pids and pid not in replica_pids


def test_uploads_charts_and_stop_through_the_proxy(layout: Layout, gateway: Gateway) -> None:
    alice = login(layout, "alice")
    with chat(layout, alice) as page:
        file_id = page.upload("sales.csv", b"region,units,price\nnorth,3,2.5\nsouth,5,1.0\neast,7,4.25\n")
        turn = page.ask("profile this file", [file_id])
        assert "shape: 3 rows × 3 columns" in "\n".join(steps(turn, "CodeInterpreter"))
        assert any("3 rows x 3 columns" in a for a in answers(turn)), answers(turn)

        page.ask(
            code_block(
                "kept = 41\nimport matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
                "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"
            )
        )
        images = [e for e in page.elements() if e.get("type") == "image"]
        assert images, page.event_names()
        got = page.fetch_element(images[0])  # through the proxy
        assert got.status_code == 200 and got.headers["content-type"] == "image/png", got.text[:200]
        assert got.content.startswith(b"\x89PNG")

        loop_id = page.send(code_block("open('looping', 'w').close()\nwhile True:\n    pass"))
        wait_until(lambda: list(gateway.root.glob("weaver-*/looping")), 60, "the loop to run in the remote kernel")
        page.stop()
        turn = page.wait_turn(loop_id, timeout=10)  # a few seconds: the interrupt goes through the gateway
        assert any("Round cancelled." in a for a in answers(turn)), answers(turn)
        after = page.ask(code_block("print('after', kept + 1)"))
        assert any("after 42" in a for a in answers(after)), answers(after)


def test_a_killed_replicas_chat_adopts_its_kernel_elsewhere_and_nothing_is_left(
    layout: Layout, gateway: Gateway
) -> None:
    # The chats of the tests before have ended: their kernels go after the grace period.
    wait_until(lambda: not kernel_ids(gateway), GRACE_S + 20, "the earlier chats' kernels to leave the gateway")
    alice = login(layout, "alice")
    dying, survivor = layout.replicas[alice.replica], layout.replicas[other(alice.replica)]
    page = chat(layout, alice).connect()
    left_behind = chat(layout, alice).connect()  # a second chat whose page never comes back
    try:
        pid = kernel_pid(page)
        page.ask(code_block("x = 41"))
        kernel_pid(left_behind)
        thread_id = page.wait_for(page.thread_id, 30, "the chat's history id")
        before = kernel_ids(gateway)
        assert len(before) == 2

        def saved() -> bool:
            got = httpx.get(f"{survivor.base_url}/project/thread/{thread_id}", headers=alice.token_only(), timeout=10)
            return got.status_code == 200 and "x = 41" in str(got.json().get("steps"))

        wait_until(saved, 30, "the chat to be in the shared history")
        os.kill(dying.proc.pid, signal.SIGKILL)
        dying.proc.wait(timeout=10)
        assert kernel_ids(gateway) == before, "the gateway's kernels outlive the replica"
        page.wait_for(lambda: not page.sio.connected, 30, "the page to notice the drop")

        again = chat(layout, alice, session_id=page.session_id)
        again.connect(expect_chat_start=False)
        try:
            resumed = again.wait_for(
                lambda: next((d for n, d in again.events if n == "resume_thread"), None), 30, "the chat's history"
            )
            assert "x = 41" in str(resumed.get("steps")), resumed
            turn = again.ask(code_block("import os\nprint('x+1 =', x + 1, 'in', os.getpid())"), timeout=60)
            said = "\n".join(answers(turn))
            assert f"x+1 = 42 in {pid}" in said, said  # the same kernel, its variables kept
            assert not [m for m in again.messages().values() if str(m.get("name")).startswith(RESTORE_TITLE)]
            survivor.wait_log(rf"chat {page.session_id}: adopting gateway kernel", 5)

            # The left-behind chat's kernel: nobody adopts it, so the survivor deletes it.
            survivor.wait_log(r"deleted gateway kernel \S+ of chat " + left_behind.session_id, ORPHAN_BOUND_S)
            assert len(kernel_ids(gateway)) == 1
        finally:
            again.disconnect()
    finally:
        page.disconnect()
        left_behind.disconnect()
    wait_until(lambda: not kernel_ids(gateway), GRACE_S + 20, "every kernel to leave the gateway after everyone left")
