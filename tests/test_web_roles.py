"""WebSearch and WebExplorer: off unless their ``<role>.enabled`` says so; WebSearch asks a
search engine speaking SearXNG's, Bing's or Google's API and hands titles, URLs and snippets to
the Planner; WebExplorer reads one page's text and refuses what would make the server a proxy into
its own network. Everything runs against real HTTP servers on 127.0.0.1 started here (a fake search
engine and a fake web site, tests/fake_http.py) and the scripted model server (tests/llm_server.py).
The hostile cases aim only at 127.0.0.1, so a failed defence reaches nothing else."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import TaskWeaverApp
from core.errors import ConfigError
from core.memory import Round
from core.roles.web_explorer.fetch import public
from core.startup_check import check_app_files
from tests.fake_http import FakeHandler, FakeServer, Seen
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer

SCRIPTED_PAGE = b"""<!doctype html><html><head><title>The Weaver Page</title>
<style>body { color: red } .STYLE-LEAK {}</style>
<script>var secret = "SCRIPT-LEAK";</script></head>
<body><h1>Weaving</h1><p>Looms   interlace the warp
and the weft.</p><noscript>NOSCRIPT-LEAK</noscript><ul><li>one thread</li><li>two threads</li></ul></body></html>"""


class WebHandler(FakeHandler):
    """The fake search engines (SearXNG, Bing, Google) and the fake web site, one server."""

    def route_get(self, seen: Seen) -> None:
        self.server.fake.record(seen)
        base = self.server.fake.base
        rows = [
            ("Weaving - Wikipedia", "https://en.wikipedia.org/wiki/Weaving", "Weaving is a method of textiles"),
            ("Loom", "https://example.org/loom", "A loom is a device used to weave cloth"),
            ("Warp and weft", "https://example.org/warp", "The warp runs lengthwise"),
            ("Loom again", "https://example.org/loom", "a duplicate"),
        ]
        if seen.path == "/search":  # SearXNG
            self.send_json(200, {"results": [{"title": t, "url": u, "content": c} for t, u, c in rows]})
        elif seen.path == "/v7.0/search":  # Bing
            if seen.headers.get("ocp-apim-subscription-key") != "bing-key":
                self.send_json(401, {"error": "bad key"})
                return
            self.send_json(200, {"webPages": {"value": [{"name": t, "url": u, "snippet": c} for t, u, c in rows]}})
        elif seen.path == "/customsearch/v1":  # Google
            self.send_json(200, {"items": [{"title": t, "link": u, "snippet": c} for t, u, c in rows]})
        elif seen.path == "/page":
            self.send_body(200, SCRIPTED_PAGE, "text/html; charset=utf-8")
        elif seen.path == "/plain":
            self.send_body(200, b"just   text\n\n\nmore", "text/plain")
        elif seen.path == "/big":
            self.send_body(200, b"<p>" + b"x" * 20_000 + b"</p>", "text/html")
        elif seen.path == "/binary":
            self.send_body(200, b"\x00\x01", "application/octet-stream")
        elif seen.path == "/to-localhost":  # a redirect to the same server under a name not allowlisted
            port = base.rsplit(":", 1)[1]
            self.send_body(302, b"", "text/plain", {"Location": f"http://localhost:{port}/page"})
        elif seen.path == "/loop":
            self.send_body(302, b"", "text/plain", {"Location": "/loop"})
        elif seen.path in ("/slow", "/slow/search"):  # headers only after a while: the client's timeout ends it
            self.pause(5)
        elif seen.path == "/huge/search":
            self.send_json(200, {"results": [{"title": "t" * 1000, "url": f"https://e.org/{i}"} for i in range(8)]})
        elif seen.path == "/to-page":
            self.send_body(301, b"", "text/plain", {"Location": "/page"})
        else:
            self.send_json(404, {"error": "no such page"})


class WebServer(FakeServer[Any]):
    handler = WebHandler
    thread_name = "fake-web"


@pytest.fixture(scope="module")
def web() -> Iterator[WebServer]:
    server = WebServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["work", "report"], "current_plan_step": "work", "send_to": send_to}
    return Answer(json.dumps({**body, "message": message}))


def last_of(request: RecordedRequest) -> str:
    return str(request.body["messages"][-1]["content"])


def make_app(tmp_path: Path, settings: dict[str, Any], llm: ScriptedLLMServer | None = None) -> TaskWeaverApp:
    """An app whose taskweaver_config.json holds ``settings`` (TaskWeaver's keys), on the scripted
    model when given, else offline."""
    app_dir = tmp_path / "app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "taskweaver_config.json").write_text(json.dumps(settings))
    model: dict[str, Any] = {"llm.api_type": "offline"}
    if llm is not None:
        model = {"llm.api_type": "openai", "llm.api_base": llm.base_url, "llm.api_key": "t", "llm.model": "scripted"}
    quiet = {"llm.max_retries": 0, "execution.prewarm": False, "execution.pool_size": 0}
    return TaskWeaverApp(app_dir=app_dir, config={**model, **quiet})


def one_round(app: TaskWeaverApp, message: str) -> Round:
    session = app.get_session()
    try:
        return session.send_message(message)
    finally:
        session.stop()


def post_from(rnd: Round, alias: str) -> Any:
    return next(p for p in rnd.post_list if p.send_from == alias)


def search_settings(web: WebServer, **more: Any) -> dict[str, Any]:
    return {
        "session.roles": ["planner", "web_search"],
        "web_search.enabled": True,
        "web_search.api_provider": "searxng",
        "web_search.api_base": web.base,
        **more,
    }


def explorer_settings(**more: Any) -> dict[str, Any]:
    return {"session.roles": ["planner", "web_explorer"], "web_explorer.enabled": True, **more}


# -- the permission


@pytest.mark.parametrize("role", ["web_search", "web_explorer"])
def test_a_web_role_is_refused_at_start_without_its_permission(tmp_path: Path, role: str, web: WebServer) -> None:
    with pytest.raises(ConfigError) as refused:
        make_app(tmp_path, {"session.roles": ["planner", role], "web_search.api_base": web.base})
    assert f"{role}.enabled is true" in str(refused.value)


def test_an_enabled_web_role_is_said_loudly_at_start(
    tmp_path: Path, web: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    make_app(tmp_path, {**search_settings(web), **explorer_settings(), "session.roles": ["web_search", "web_explorer"]})
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("!!! web_search is enabled") for m in warned), warned
    assert any(m.startswith("!!! web_explorer is enabled") for m in warned), warned


@pytest.mark.parametrize(
    ("more", "said"),
    [
        ({"web_search.api_provider": "duckduckgo"}, "'duckduckgo' is not available"),
        ({"web_search.api_provider": "bing"}, "web_search.api_key (or web_search.bing_api_key) is needed for bing"),
        ({"web_search.api_provider": "google", "web_search.google_api_key": "k"}, "google_search_engine_id is needed"),
        ({"web_search.api_base": "ftp://x"}, "web_search.api_base: the searxng server's http(s) address is needed"),
        ({"web_search.result_count": 0}, "web_search.result_count: must be at least 1"),
        ({"web_search.timeout": 0}, "web_search.timeout and web_search.max_response_kb: must be more than 0"),
        ({"web_search.result_count": "3"}, "web_search.result_count: expected int, got '3'"),
    ],
)
def test_web_search_settings_are_checked_at_start(
    tmp_path: Path, web: WebServer, more: dict[str, Any], said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        make_app(tmp_path, search_settings(web, **more))
    assert said in str(refused.value)


# -- WebSearch


def test_web_search_results_go_to_the_planner(tmp_path: Path, web: WebServer, llm: ScriptedLLMServer) -> None:
    """Two queries ("|"), result_count per query, duplicates dropped: the Planner's next request
    holds each title, URL and snippet; the engine saw the queries."""
    app = make_app(tmp_path, search_settings(web, **{"web_search.result_count": 2}), llm)
    start = len(llm.requests)
    llm.push(planner("WebSearch", "weaving looms | warp"), planner("User", "Looms weave cloth."))
    rnd = one_round(app, "what is weaving?")
    assert rnd.state == "finished", rnd.error
    first, second = llm.wait_for_requests(start + 2)[start:]
    assert "- WebSearch: WebSearch searches the web" in str(first.body["messages"][0]["content"])
    told = last_of(second)
    assert told.startswith("From WebSearch: WebSearch found 2 results for: weaving looms | warp")
    assert "1. Weaving - Wikipedia\n   URL: https://en.wikipedia.org/wiki/Weaving\n   Weaving is a method" in told
    assert "2. Loom\n   URL: https://example.org/loom\n   A loom is a device" in told
    assert "Warp and weft" not in told  # result_count = 2
    queries = [s.query["q"] for s in web.requests("/search")[-2:]]
    assert queries == ["weaving looms", "warp"] and web.requests("/search")[-1].query["format"] == "json"
    assert rnd.reply_text == "Looms weave cloth."


@pytest.mark.parametrize("provider", ["bing", "google"])
def test_web_search_speaks_bing_and_google(tmp_path: Path, web: WebServer, provider: str) -> None:
    """TaskWeaver's key names (``bing_api_key``, ``google_api_key``, ``google_search_engine_id``)."""
    keys = {
        "bing": {"web_search.bing_api_key": "bing-key"},
        "google": {"web_search.google_api_key": "g-key", "web_search.google_search_engine_id": "cx1"},
    }[provider]
    app = make_app(tmp_path, search_settings(web, **{"web_search.api_provider": provider, **keys}))
    session = app.get_session()
    try:
        role = session.roles["WebSearch"]
        answer = role.answer("loom")  # type: ignore[attr-defined]
    finally:
        session.stop()
    assert "found 3 results" in answer and "URL: https://example.org/warp" in answer
    if provider == "google":
        seen = web.requests("/customsearch/v1")[-1]
        assert seen.query == {"key": "g-key", "cx": "cx1", "q": "loom", "num": "3"}


def test_offline_search_the_web_goes_to_web_search(tmp_path: Path, web: WebServer) -> None:
    app = make_app(tmp_path, search_settings(web))
    rnd = one_round(app, "search the web for weaving")
    assert rnd.state == "finished", rnd.error
    assert post_from(rnd, "WebSearch").message.startswith("WebSearch found 3 results for: weaving")
    assert "https://en.wikipedia.org/wiki/Weaving" in rnd.reply_text
    assert web.requests("/search")[-1].query["q"] == "weaving"


# -- WebExplorer


def explorer_read(tmp_path: Path, message: str, **more: Any) -> str:
    """What WebExplorer answers ``message`` with, in a session of an app with ``more`` settings."""
    app = make_app(tmp_path, explorer_settings(**more))
    session = app.get_session()
    try:
        return str(session.roles["WebExplorer"].read(message))  # type: ignore[attr-defined]
    finally:
        session.stop()


def test_web_explorer_reads_a_page_for_the_planner(tmp_path: Path, web: WebServer, llm: ScriptedLLMServer) -> None:
    """The page's title and text go to the Planner; its scripts, styles and noscript do not."""
    app = make_app(tmp_path, explorer_settings(**{"web_explorer.allowed_hosts": ["127.0.0.1"]}), llm)
    start = len(llm.requests)
    llm.push(planner("WebExplorer", f"Read {web.base}/page."), planner("User", "It is about looms."))
    rnd = one_round(app, "what does the page say?")
    assert rnd.state == "finished", rnd.error
    told = last_of(llm.wait_for_requests(start + 2)[start + 1])
    assert told.startswith(f'From WebExplorer: WebExplorer read {web.base}/page ("The Weaver Page"):')
    assert "Weaving\nLooms interlace the warp and the weft.\none thread\ntwo threads" in told
    for leak in ("SCRIPT-LEAK", "STYLE-LEAK", "NOSCRIPT-LEAK", "color: red"):
        assert leak not in told


def test_web_explorer_follows_a_checked_redirect_and_reads_plain_text(tmp_path: Path, web: WebServer) -> None:
    allowed = {"web_explorer.allowed_hosts": "127.0.0.1"}  # TaskWeaver's comma-separated text form
    assert "Looms interlace the warp" in explorer_read(tmp_path, f"{web.base}/to-page", **allowed)
    assert explorer_read(tmp_path, f"open {web.base}/plain", **allowed).endswith(":\n\njust text\nmore")


def test_web_explorer_refuses_loopback_when_not_allowlisted(tmp_path: Path, web: WebServer) -> None:
    before = len(web.requests("/page"))
    said = explorer_read(tmp_path, f"{web.base}/page")
    assert "resolves to a private, loopback, link-local or reserved address (127.0.0.1)" in said
    assert "web_explorer.allowed_hosts" in said
    said = explorer_read(tmp_path, f"http://localhost:{web.base.rsplit(':', 1)[1]}/page")  # a name, resolved first
    assert "localhost resolves to a private" in said
    assert len(web.requests("/page")) == before  # nothing was fetched


def test_web_explorer_refuses_a_redirect_to_a_private_address(tmp_path: Path, web: WebServer) -> None:
    """127.0.0.1 is allowlisted, "localhost" is not: its redirect there is checked and refused."""
    before = len(web.requests("/page"))
    said = explorer_read(tmp_path, f"{web.base}/to-localhost", **{"web_explorer.allowed_hosts": ["127.0.0.1"]})
    assert "did not read" in said and "localhost resolves to a private" in said
    assert len(web.requests("/to-localhost")) >= 1 and len(web.requests("/page")) == before


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("file:///etc/hostname", "only http and https URLs are fetched, not file"),
        ("ftp://127.0.0.1/page", "only http and https URLs are fetched, not ftp"),
        ("http://user:pw@127.0.0.1/page", "a URL with a user name or password is not fetched"),
    ],
)
def test_web_explorer_refuses_other_schemes(tmp_path: Path, url: str, said: str) -> None:
    assert said in explorer_read(tmp_path, url, **{"web_explorer.allowed_hosts": ["127.0.0.1"]})


def test_web_explorer_refuses_an_oversize_page_and_other_types(tmp_path: Path, web: WebServer) -> None:
    more = {"web_explorer.allowed_hosts": ["127.0.0.1"], "web_explorer.max_page_kb": 8}
    said = explorer_read(tmp_path, f"{web.base}/big", **more)
    assert "is larger than 8 KB (web_explorer.max_page_kb); it was not read" in said and "xxxx" not in said
    said = explorer_read(tmp_path, f"{web.base}/binary", **more)
    assert "is application/octet-stream; only text/html and text/plain are read" in said
    assert "was sent no URL" in explorer_read(tmp_path, "read the page please", **more)


def test_web_explorer_cuts_long_text(tmp_path: Path, web: WebServer) -> None:
    more = {"web_explorer.allowed_hosts": ["127.0.0.1"], "web_explorer.max_text_chars": 10}
    said = explorer_read(tmp_path, f"{web.base}/page", **more)
    assert "\n\nWeaving\nLo\n" in said and "cut at 10 characters: web_explorer.max_text_chars" in said


def test_web_explorer_connects_to_the_address_it_checked(tmp_path: Path, web: WebServer) -> None:
    """An allowlisted name is resolved once and the connection goes to that address, the name kept
    in the Host header (what a second, different DNS answer could not change)."""
    port = web.base.rsplit(":", 1)[1]
    said = explorer_read(tmp_path, f"http://LocalHost:{port}/page", **{"web_explorer.allowed_hosts": ["localhost"]})
    assert "Looms interlace the warp" in said
    assert web.requests("/page")[-1].headers["host"] == f"LocalHost:{port}"


def test_web_explorer_says_when_a_page_cannot_be_reached(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was just free: nothing listens there once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    said = explorer_read(tmp_path, f"http://127.0.0.1:{port}/", **{"web_explorer.allowed_hosts": ["127.0.0.1"]})
    assert said.startswith(f"WebExplorer did not read http://127.0.0.1:{port}/: ") and "could not be reached" in said


@pytest.mark.parametrize(
    ("address", "is_public"),
    [
        ("169.254.169.254", False),  # the cloud metadata address (link-local)
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),  # shared (carrier-grade NAT)
        ("0.0.0.0", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("::ffff:93.184.215.14", True),
        ("fe80::1", False),
        ("fd00::1", False),
        ("224.0.0.1", False),
        ("93.184.215.14", True),
        ("2606:4700::6810:85e5", True),
    ],
)
def test_only_public_addresses_pass_the_check(address: str, is_public: bool) -> None:
    """The rule itself, on address values only (nothing is connected to)."""
    assert public(ipaddress.ip_address(address)) is is_public


def test_web_explorer_limits_redirects_and_time(tmp_path: Path, web: WebServer) -> None:
    more = {"web_explorer.allowed_hosts": ["127.0.0.1"], "web_explorer.max_redirects": 2, "web_explorer.timeout": 0.5}
    before = len(web.requests("/loop"))
    said = explorer_read(tmp_path, f"{web.base}/loop", **more)
    assert "more than 2 redirects (web_explorer.max_redirects)" in said
    assert len(web.requests("/loop")) == before + 3
    said = explorer_read(tmp_path, f"{web.base}/slow", **more)
    assert "did not answer within 0.5 s (web_explorer.timeout)" in said


def test_web_search_limits_time_and_size(tmp_path: Path, web: WebServer) -> None:
    for base, said in [
        (f"{web.base}/slow", "the searxng server did not answer within 0.5 s (web_search.timeout)"),
        (f"{web.base}/huge", "the searxng answer was larger than 2 KB (web_search.max_response_kb)"),
    ]:
        more = {"web_search.api_base": base, "web_search.timeout": 0.5, "web_search.max_response_kb": 2}
        app = make_app(tmp_path, search_settings(web, **more))
        session = app.get_session()
        try:
            answer = session.roles["WebSearch"].answer("loom")  # type: ignore[attr-defined]
        finally:
            session.stop()
        assert answer.startswith("WebSearch found 0 results for: loom") and f"The search for loom: {said}." in answer


def test_offline_read_a_url_goes_to_web_explorer(tmp_path: Path, web: WebServer) -> None:
    app = make_app(tmp_path, explorer_settings(**{"web_explorer.allowed_hosts": ["127.0.0.1"]}))
    rnd = one_round(app, f"read {web.base}/page")
    assert rnd.state == "finished", rnd.error
    assert post_from(rnd, "WebExplorer").message.startswith(f"WebExplorer read {web.base}/page")
    assert "Looms interlace the warp" in rnd.reply_text and "SCRIPT-LEAK" not in rnd.reply_text


@pytest.mark.parametrize(
    ("more", "said"),
    [
        ({"web_explorer.max_page_kb": 0}, "web_explorer.max_page_kb: must be more than 0"),
        ({"web_explorer.max_redirects": -1}, "web_explorer.max_redirects: must be 0 or more"),
        ({"web_explorer.allowed_hosts": [1]}, "web_explorer.allowed_hosts: expected a list of host names"),
        ({"web_explorer.enabled": "yes"}, "web_explorer.enabled: expected bool, got 'yes'"),
    ],
)
def test_web_explorer_settings_are_checked_at_start(tmp_path: Path, more: dict[str, Any], said: str) -> None:
    """By ``weaver ui`` / ``weaver chat``'s check of the app's files too, before anything is served."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "taskweaver_config.json").write_text(json.dumps({**explorer_settings(), **more}))
    with pytest.raises(ConfigError) as refused:
        check_app_files(app_dir)
    assert said in str(refused.value)
