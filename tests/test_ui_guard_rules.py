"""The guards' rules on their own (``ui.guards.host_origin``, ``ui.guards.file_serving``, ``ui.settings``): no
server needed. The same rules against a real server: ``tests/test_ui_security.py``."""

from __future__ import annotations

import pytest

from ui.guards import HostOrigin, ProxyTrustError, host_name, mime_agrees, trust_proxies
from ui.ids import is_canonical_uuid
from ui.settings import UISettings, UISettingsError, serving_hosts, serving_origins, ui_settings

ACCEPT = {
    "text/*": [".csv", ".txt"],
    "application/vnd.ms-excel": [".xls", ".csv"],
    "application/octet-stream": [".csv"],
}


def policy(**kw: object) -> HostOrigin:
    base: dict[str, object] = dict(
        allowed_hosts=frozenset({"127.0.0.1", "localhost"}),
        allowed_origins=frozenset({"http://127.0.0.1:8000"}),
        socket_path="/ws/socket.io",
    )
    base.update(kw)
    return HostOrigin(**base)  # type: ignore[arg-type]


def scope(method: str = "GET", path: str = "/", kind: str = "http", **headers: str) -> dict:
    return {
        "type": kind,
        "method": method,
        "path": path,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def test_host_names_are_compared_without_port() -> None:
    assert host_name("127.0.0.1:8000") == "127.0.0.1"
    assert host_name("[::1]:8000") == "[::1]" and host_name("LOCALHOST") == "localhost"
    assert host_name(None) == "" and host_name("[::1") == ""


def test_refusals() -> None:
    p = policy(user_header="X-User")
    assert p.refusal(scope(host="127.0.0.1:8000")) is None
    assert p.refusal(scope(host="evil.example:8000"))[0] == 400
    assert p.refusal(scope()) is not None  # no Host at all
    assert p.refusal(scope("POST", "/auth/header", host="localhost", origin="http://evil.example"))[0] == 403
    assert p.refusal(scope("POST", "/auth/header", host="localhost", origin="null"))[0] == 403
    assert p.refusal(scope("POST", "/auth/header", host="localhost", origin="http://127.0.0.1:8000")) is None
    assert p.refusal(scope("POST", "/auth/header", host="localhost")) is None  # not a browser: no Origin
    assert p.refusal(scope("GET", "/ws/socket.io/", host="localhost", origin="http://evil.example"))[0] == 403
    assert p.refusal(scope("GET", "/anything", "websocket", host="localhost", origin="http://evil.example"))[0] == 403
    assert p.refusal(scope("GET", "/page", host="localhost", origin="http://evil.example")) is None  # a plain read
    doubled = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"localhost"), (b"x-user", b"a"), (b"x-user", b"b")],
    }
    assert "more than once" in p.refusal(doubled)[1]
    two_hosts = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"localhost"), (b"host", b"evil")]}
    assert p.refusal(two_hosts)[0] == 400


def test_session_ids_must_be_canonical_uuids() -> None:
    assert is_canonical_uuid("0b8e7a3c-4b4f-4a55-9a5e-51d9c3a0f0aa")
    for bad in (
        "",
        "..",
        "../x",
        "/tmp/x",
        "0B8E7A3C-4B4F-4A55-9A5E-51D9C3A0F0AA",
        "0b8e7a3c4b4f4a559a5e51d9c3a0f0aa",
        None,
        5,
    ):
        assert not is_canonical_uuid(bad), bad


def test_mime_must_agree_with_the_extension() -> None:
    assert mime_agrees("a.csv", "text/csv", ACCEPT)
    assert mime_agrees("a.csv", "application/vnd.ms-excel", ACCEPT)
    assert mime_agrees("a.png", "image/png", ACCEPT) and mime_agrees("x", "application/octet-stream", ACCEPT)
    assert not mime_agrees("report.csv", "text/html", ACCEPT)  # accepted by text/*, but not a CSV
    assert not mime_agrees("a.png", "image/svg+xml", ACCEPT)
    assert not mime_agrees("noext", "text/html", ACCEPT)


def test_default_hosts_and_origins_follow_the_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WEAVER_UI_ALLOWED_HOSTS", "WEAVER_UI_ALLOWED_ORIGINS"):
        monkeypatch.delenv(key, raising=False)
    settings = UISettings()
    assert serving_hosts(settings, "127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert serving_hosts(settings, "::1") == ["localhost", "127.0.0.1", "[::1]"]
    assert serving_hosts(settings, "10.1.2.3")[-1] == "10.1.2.3"
    assert serving_hosts(settings, "0.0.0.0") == ["localhost", "127.0.0.1", "[::1]"]  # a wildcard names no host
    assert "http://localhost:8000" in serving_origins(settings, ["localhost"], 8000)
    assert serving_origins(settings, ["example.org"], 443) == ["http://example.org:443", "https://example.org"]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAVER_UI_ALLOWED_HOSTS", "Chat.Example.org, localhost")
    monkeypatch.setenv("WEAVER_UI_ALLOWED_ORIGINS", "https://chat.example.org/")
    settings = UISettings()
    assert settings.allowed_hosts == ["chat.example.org", "localhost"]
    assert serving_origins(settings, settings.allowed_hosts, 8000) == ["https://chat.example.org"]
    monkeypatch.setenv("WEAVER_UI_ALLOWED_ORIGINS", "*")
    ui_settings.cache_clear()
    try:
        with pytest.raises(UISettingsError, match="WEAVER_UI_ALLOWED_ORIGINS"):
            ui_settings()
    finally:
        ui_settings.cache_clear()


def test_trusted_proxies_are_addresses_or_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEAVER_UI_TRUSTED_PROXIES", raising=False)
    assert UISettings().trusted_proxies == []  # nobody's X-Forwarded-For counts by default
    monkeypatch.setenv("WEAVER_UI_TRUSTED_PROXIES", "127.0.0.1, 10.1.2.3/16, ::1")
    assert UISettings().trusted_proxies == ["127.0.0.1", "10.1.0.0/16", "::1"]  # as uvicorn compares them
    for bad in ("*", "proxy.example", "10.0.0.0/99"):
        monkeypatch.setenv("WEAVER_UI_TRUSTED_PROXIES", bad)
        ui_settings.cache_clear()
        try:
            with pytest.raises(UISettingsError, match="WEAVER_UI_TRUSTED_PROXIES"):
                ui_settings()
        finally:
            ui_settings.cache_clear()


def test_uvicorn_is_told_whom_to_trust_and_a_hand_set_trust_is_refused() -> None:
    env: dict[str, str] = {}
    trust_proxies([], env)
    assert env == {"FORWARDED_ALLOW_IPS": ""}  # uvicorn then trusts no peer (its default is 127.0.0.1)
    trust_proxies(["127.0.0.1", "10.0.0.0/8"], env := {})
    assert env["FORWARDED_ALLOW_IPS"] == "127.0.0.1,10.0.0.0/8"
    with pytest.raises(ProxyTrustError, match="WEAVER_UI_TRUSTED_PROXIES"):
        trust_proxies([], {"FORWARDED_ALLOW_IPS": "*"})
