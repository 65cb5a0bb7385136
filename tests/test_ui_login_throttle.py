"""The login throttle (``ui.guards.login_throttle``, ``ui.shared.SharedLoginThrottle``), first on its own,
then against real password-login servers the way an attacker tries to walk around it.

Hostile requests here are harmless if the throttle fails: they go to 127.0.0.1 only, guess wrong
passwords of test users in a temp folder, and are bounded (a dozen at most).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.test_ui_auth import PLUGINS, add_user, run_server_expecting_refusal
from tests.ui_harness import UIServer, start_server, stop_server

PASSWORDS = {"alice": "alice-password", "bob": "bob-password-2", "carol": "carol-password", "dave": "dave-password"}
PER_USER = 5
PER_ADDRESS = 3
_addresses = (f"10.9.{i // 250}.{i % 250 + 1}" for i in itertools.count())


def stranger() -> str:
    """A browser address never used before (named by the test, which plays the proxy)."""
    return next(_addresses)


# ------------------------------------------------------------------ the throttle on its own


def test_login_throttle_counts_per_user_and_per_address() -> None:
    from ui.guards import LoginThrottle

    throttle = LoginThrottle(per_user=2, per_address=3, window_s=60)
    throttle.failed("bob", "10.0.0.1")
    assert throttle.retry_after("bob", "10.0.0.9") == 0
    throttle.failed("BOB", "10.0.0.2")
    assert throttle.retry_after("bob", "10.0.0.9") > 0  # names are compared without case
    throttle.failed("carol", "10.0.0.1")
    throttle.failed("dave", "10.0.0.1")
    assert throttle.retry_after("erin", "10.0.0.1") > 0 and throttle.retry_after("erin", "10.0.0.3") == 0
    throttle.succeeded_as("bob", "10.0.0.2")
    assert throttle.retry_after("bob", "10.0.0.9") == 0


def test_login_throttle_forgets_expired_names_when_it_grows() -> None:
    """Failed logins with ever new names must not grow the server's memory without end."""
    from ui.guards import LoginThrottle

    throttle = LoginThrottle(per_user=5, per_address=1000, window_s=60, max_keys=50)
    for i in range(40):
        throttle.failed(f"user{i}", "10.0.0.1")
    for key in list(throttle._failures):  # their window has passed
        throttle._failures[key] = [t - 120 for t in throttle._failures[key]]
    for i in range(40, 100):
        throttle.failed(f"user{i}", "10.0.0.2")
    assert not any(k in throttle._failures for k in ("user:user0", "user:user39", "addr:10.0.0.1"))  # expired: gone
    assert len(throttle._failures) == 60 + 1  # the live names and their address stay counted
    assert throttle.retry_after("user99", "10.0.0.2") == 0  # the live ones are still counted
    throttle.failed("user99", "10.0.0.2")
    assert "user:user99" in throttle._failures and len(throttle._failures["user:user99"]) == 2


def test_attempts_are_reserved_before_the_check_and_refunded_on_success() -> None:
    """Twelve attempts at once: the first five are reserved (counted as failures before the password is
    checked), the other seven refused; a success forgets the name's failures and refunds its address."""
    from ui.guards import LoginThrottle

    throttle = LoginThrottle(per_user=5, per_address=100, window_s=60)

    async def scenario() -> None:
        attempts = await asyncio.gather(*(throttle.attempt("carol", f"10.0.0.{i}") for i in range(12)))
        assert [a.retry_after == 0 for a in attempts] == [True] * 5 + [False] * 7
        assert throttle.retry_after("carol", "10.0.0.99") > 0
        ok = await throttle.attempt("erin", "10.0.0.1")
        assert len(throttle._failures["addr:10.0.0.1"]) == 2
        await throttle.succeeded(ok)
        assert throttle._failures["addr:10.0.0.1"] == [attempts[1].token] and "user:erin" not in throttle._failures

    asyncio.run(scenario())


def login_scope(content_type: str | None) -> dict:
    headers = [(b"host", b"127.0.0.1")] + ([(b"content-type", content_type.encode())] if content_type else [])
    return {"type": "http", "method": "POST", "path": "/login", "headers": headers}


def test_a_throttled_pair_is_said_once_per_throttle_period_and_the_memory_is_bounded() -> None:
    """Each throttled try names what it likes: written once per (name, address) and period, so the
    audit and server logs cannot be flooded; the pairs kept are bounded."""
    from ui.guards.login_throttle import RefusalsSaid

    said = RefusalsSaid(max_keys=3)
    assert said.first("alice", "10.0.0.1", 60, now=0)
    assert not said.first("Alice", "10.0.0.1", 60, now=30)  # the name as the throttle counts it
    assert said.first("alice", "10.0.0.2", 60, now=30)  # another address: its own line
    assert said.first("alice", "10.0.0.1", 60, now=61)  # a new period: said again
    for n in range(10):
        said.first(f"name-{n}", "10.0.0.3", 60, now=62)
    assert len(said._until) == 3


def test_the_name_counted_is_the_name_the_login_parses() -> None:
    """Parsed by Starlette's form parser, as Chainlit's login parses it: urlencoded and multipart
    alike. A form naming the user (or the password) twice, or a body that is no form, is refused."""
    from ui.guards.login_throttle import login_name

    form = "application/x-www-form-urlencoded"
    boundary = "b0undary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="username"\r\n\r\nAlice\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="password"\r\n\r\nx\r\n--{boundary}--\r\n'
    ).encode()

    async def scenario() -> None:
        assert await login_name(login_scope(form), b"username=al%69ce&password=x") == "alice"
        assert await login_name(login_scope(form), b"username=a+b&password=x") == "a b"
        assert await login_name(login_scope(f"multipart/form-data; boundary={boundary}"), multipart) == "Alice"
        for content_type, body, reason in (
            (form, b"username=decoy&username=alice&password=x", "username more than once"),
            (form, b"username=alice&password=x&password=y", "password more than once"),
            ("application/json", b'{"username": "alice"}', "a login is a form"),
            (None, b"username=alice", "a login is a form"),
            ("multipart/form-data", b"--zz\r\n", "cannot be read"),  # no boundary
        ):
            with pytest.raises(ValueError, match=reason):
                await login_name(login_scope(content_type), body)

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    from tests.pg_cluster import start_cluster

    cluster = start_cluster()
    try:
        yield cluster.create_database()
    finally:
        cluster.stop()


def test_the_shared_throttle_reserves_attempts_atomically_across_connections(postgres_url: str) -> None:
    """Twelve attempts at once on separate connections (as on several replicas): five are reserved,
    seven refused; a success refunds its address's reservation only."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from ui.history import migrate
    from ui.shared import SharedLoginThrottle

    async def scenario() -> None:
        engine = create_async_engine(postgres_url, pool_size=12)
        try:
            await migrate(engine)
            throttle = SharedLoginThrottle(lambda: engine, per_user=5, per_address=100, window_s=60)
            attempts = await asyncio.gather(*(throttle.attempt("carol", f"10.0.0.{i}") for i in range(12)))
            assert sorted(a.retry_after == 0 for a in attempts) == [False] * 7 + [True] * 5
            assert (await throttle.attempt("Carol", "10.0.0.99")).retry_after > 0  # names compared without case
            first = await throttle.attempt("erin", "10.0.0.50")
            second = await throttle.attempt("frank", "10.0.0.50")
            await throttle.succeeded(first)
            async with engine.connect() as conn:
                from sqlalchemy import text

                rows = (await conn.execute(text('SELECT "key", "at" FROM weaver_login_failures'))).all()
            keys = [k for k, _ in rows]
            assert "user:erin" not in keys and keys.count("user:carol") == 5
            assert [at for k, at in rows if k == "addr:10.0.0.50"] == [second.token]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# ------------------------------------------------------------------ against real servers


def password_server(tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> UIServer:
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(PLUGINS, root / "app" / "plugins")
    for user, password in PASSWORDS.items():
        add_user(root / "app", user, password)
    base = {
        "WEAVER_UI_AUTH": "password",
        "WEAVER_UI_LOGIN_ATTEMPTS_PER_USER": str(PER_USER),
        "WEAVER_UI_LOGIN_ATTEMPTS_PER_ADDRESS": str(PER_ADDRESS),
    }
    return start_server(root / "app", root / "server.log", extra_env={**base, **env})


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """A server that trusts 127.0.0.1 as its proxy: the test names each browser's address."""
    server = password_server(tmp_path_factory, "weaver-throttle-proxied", {"WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1"})
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """A server with the default: no proxy is trusted."""
    server = password_server(tmp_path_factory, "weaver-throttle-direct", {})
    try:
        yield server
    finally:
        stop_server(server)


def login(server: UIServer, fields: object, address: str | None = None, **kw: object) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.post(f"{server.base_url}/login", data=fields, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def fail_until_throttled(server: UIServer, user: str) -> None:
    for _ in range(PER_USER):
        assert login(server, {"username": user, "password": "wrong-password"}, stranger()).status_code == 401


def test_a_repeated_name_field_does_not_get_past_the_throttle(behind_proxy: UIServer) -> None:
    """``username=decoy&username=alice``: counted as decoy, checked as alice, it let alice in."""
    fail_until_throttled(behind_proxy, "alice")
    sneaky = login(behind_proxy, {"username": ["decoy", "alice"], "password": PASSWORDS["alice"]}, stranger())
    assert sneaky.status_code == 400 and "set-cookie" not in sneaky.headers, sneaky.text
    assert "more than once" in sneaky.json()["detail"]
    plain = login(behind_proxy, {"username": "alice", "password": PASSWORDS["alice"]}, stranger())
    assert plain.status_code == 429 and "Too many failed logins" in plain.json()["detail"]


def test_a_multipart_login_is_counted_by_its_name(behind_proxy: UIServer) -> None:
    """A multipart form's name was read as nobody's, so it was never throttled."""
    as_multipart = {"files": {"unused": ("x.txt", b"x", "text/plain")}}  # makes httpx send multipart/form-data
    for _ in range(PER_USER):
        wrong = login(behind_proxy, {"username": "bob", "password": "wrong-password"}, stranger(), **as_multipart)
        assert wrong.status_code == 401, wrong.text
    right = login(behind_proxy, {"username": "bob", "password": PASSWORDS["bob"]}, stranger(), **as_multipart)
    assert right.status_code == 429 and "set-cookie" not in right.headers, right.text
    assert login(behind_proxy, {"username": "bob", "password": PASSWORDS["bob"]}, stranger()).status_code == 429


def test_wrong_passwords_sent_at_once_are_each_counted(behind_proxy: UIServer) -> None:
    """Twelve wrong passwords at once (each from its own address): none was refused before; now every
    one past the limit gets 429, and the right password afterwards is refused while throttled."""

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=behind_proxy.base_url, timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/login",
                        data={"username": "carol", "password": f"wrong-{i}"},
                        headers={"X-Forwarded-For": stranger()},
                    )
                    for i in range(12)
                )
            )
        return sorted(a.status_code for a in answers)

    assert asyncio.run(burst()) == [401] * PER_USER + [429] * (12 - PER_USER)
    right = login(behind_proxy, {"username": "carol", "password": PASSWORDS["carol"]}, stranger())
    assert right.status_code == 429 and "set-cookie" not in right.headers
    assert login(behind_proxy, {"username": "dave", "password": PASSWORDS["dave"]}, stranger()).status_code == 200


def test_a_trusted_proxy_names_the_address_counted(behind_proxy: UIServer) -> None:
    """From a trusted proxy, each browser address is counted on its own."""
    rotating = [
        login(behind_proxy, {"username": f"nobody{i}", "password": "x"}, stranger()) for i in range(PER_ADDRESS + 1)
    ]
    assert [r.status_code for r in rotating] == [401] * (PER_ADDRESS + 1)  # new addresses: none is throttled
    one = stranger()
    same = [login(behind_proxy, {"username": f"someone{i}", "password": "x"}, one) for i in range(PER_ADDRESS + 1)]
    assert [r.status_code for r in same] == [401] * PER_ADDRESS + [429]


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(direct: UIServer) -> None:
    """Any process on the machine could name a new address per guess; by default no peer is trusted,
    so all its guesses count against its own address."""
    rotating = [login(direct, {"username": f"nobody{i}", "password": "x"}, stranger()) for i in range(PER_ADDRESS + 1)]
    assert [r.status_code for r in rotating] == [401] * PER_ADDRESS + [429]
    assert login(direct, {"username": "alice", "password": PASSWORDS["alice"]}, stranger()).status_code == 429


def test_a_hand_set_uvicorn_proxy_trust_refuses_to_start(tmp_path: Path) -> None:
    """``FORWARDED_ALLOW_IPS`` would say otherwise than ``WEAVER_UI_TRUSTED_PROXIES``: one line, naming it."""
    said = run_server_expecting_refusal(tmp_path, "127.0.0.1", {"FORWARDED_ALLOW_IPS": "*"})
    assert "Weaver UI: FORWARDED_ALLOW_IPS='*' is set" in said and "WEAVER_UI_TRUSTED_PROXIES" in said, said


def test_refused_logins_are_counted_in_the_metrics(direct: UIServer) -> None:
    """``weaver_login_failures_total`` by reason, as an operator's alert would read it (loopback scrape)."""

    def failures() -> dict[str, float]:
        text = httpx.get(f"{direct.base_url}/metrics", timeout=30).text
        found = re.findall(r'^weaver_login_failures_total\{reason="(\w+)"\} ([0-9.]+)$', text, re.MULTILINE)
        return {reason: float(value) for reason, value in found}

    before = failures()
    assert login(direct, {"username": "metrics-user", "password": "wrong-password"}).status_code in (401, 429)
    assert login(direct, {"username": ["a", "b"], "password": "x"}).status_code == 400
    after = failures()
    assert after["password"] + after["throttled"] == before["password"] + before["throttled"] + 1
    assert after["bad_form"] == before["bad_form"] + 1
