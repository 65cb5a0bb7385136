"""``/ready`` and ``/metrics``: what operators' tools ask of a running server.

Answered by a small ASGI middleware inside the guards (``ui.guards`` check the ``Host`` first, as
for every request) and ahead of Chainlit's routes, which end in a catch-all page route.

Who may read them: ``/metrics`` (and the details of ``/ready``, which may name hosts and errors)
is served to a loopback client, or to anyone sending ``Authorization: Bearer <WEAVER_METRICS_TOKEN>``.
A request that came through a proxy is not a loopback client even when the proxy runs on this
machine: one carrying ``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP`` needs the token (and
behind a trusted proxy uvicorn already reports the browser's address, not the proxy's). Anyone who
may reach the server gets ``/ready``'s verdict and the names of the checks, which is what a load
balancer needs.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from typing import Any, Callable

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core import TaskWeaverApp, metrics
from core.metrics import Kind
from ui.guards.asgi import header
from ui.readiness import Readiness, readiness

logger = logging.getLogger("weaver.ui.ops")

MIN_TOKEN_CHARS = 16
FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


class OpsSettingsError(ValueError):
    """A setting of these routes is invalid; the message names the variable."""


class OpsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEAVER_", extra="ignore")

    metrics_token: SecretStr | None = Field(
        None, description="Bearer token that lets non-loopback clients read /metrics and /ready's details"
    )
    ui_ready_timeout_s: float = Field(2.0, gt=0, le=60, description="how long one /ready check may take")
    ui_ready_db_grace_s: float = Field(
        60.0, ge=0, description="how long a silent database stays a note while the history spools writes"
    )
    ui_ready_cache_s: float = Field(1.0, ge=0, le=60, description="how long one /ready answer is reused")

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 24`)")
        return value


def ops_settings() -> OpsSettings:
    """This process's settings; ``OpsSettingsError`` naming the variable when one is bad."""
    try:
        return OpsSettings()
    except ValidationError as exc:
        problems = "; ".join(f"WEAVER_{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors())
        raise OpsSettingsError(f"invalid setting: {problems}") from None


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
    return address.is_loopback and not any(header(scope.get("headers", []), name) for name in FORWARDING_HEADERS)


def _bearer_ok(scope: Scope, token: SecretStr | None) -> bool:
    given = header(scope.get("headers", []), b"authorization") or ""
    scheme, _, value = given.partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode())


class OpsRoutes:
    """The middleware answering ``{root}/ready`` and ``{root}/metrics`` (GET or HEAD)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: OpsSettings,
        root_path: str,
        engine: Callable[[], TaskWeaverApp | None],
        history: Callable[[], AsyncEngine | None],
    ) -> None:
        self.app = app
        self.settings = settings
        self.ready_path = f"{root_path}/ready"
        self.metrics_path = f"{root_path}/metrics"
        self.engine = engine
        self.history = history
        # The last /ready verdict and when it was made (monotonic): /ready is open to anyone, so a
        # flood of it reuses one answer a second instead of opening a database connection per hit.
        self._last: tuple[float, Readiness] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in (self.ready_path, self.metrics_path):
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            response: Response = _json(405, {"detail": "GET only"}, {"Allow": "GET, HEAD"})
        elif path == self.ready_path:
            response = await self._ready(scope)
        else:
            response = self._metrics(scope)
        await response(scope, receive, send)

    def _trusted(self, scope: Scope) -> bool:
        return _loopback(scope) or _bearer_ok(scope, self.settings.metrics_token)

    async def _ready(self, scope: Scope) -> Response:
        found = await self._readiness()
        return _json(200 if found.ready else 503, found.body(self._trusted(scope)), {"Cache-Control": "no-store"})

    async def _readiness(self) -> Readiness:
        """The checks' verdict, made at most once per ``WEAVER_UI_READY_CACHE_S``."""
        async with self._lock:  # concurrent hits wait for the one running check
            if self._last is not None and time.monotonic() - self._last[0] < self.settings.ui_ready_cache_s:
                return self._last[1]
            found = await readiness(
                self.engine, self.history, self.settings.ui_ready_timeout_s, self.settings.ui_ready_db_grace_s
            )
            self._last = (time.monotonic(), found)
        if not found.ready:
            failed = ", ".join(name for name, result in found.checks.items() if not result["ok"])
            logger.warning("not ready: %s", failed)
        return found

    def _metrics(self, scope: Scope) -> Response:
        if not self._trusted(scope):
            if self.settings.metrics_token is None:
                why = "/metrics is served to loopback clients only; set WEAVER_METRICS_TOKEN to let others in"
                return _json(403, {"detail": why})
            if header(scope.get("headers", []), b"authorization"):
                return _json(403, {"detail": "wrong metrics token (WEAVER_METRICS_TOKEN)"})
            return _json(
                401,
                {"detail": "/metrics needs Authorization: Bearer <WEAVER_METRICS_TOKEN>"},
                {"WWW-Authenticate": 'Bearer realm="weaver-metrics"'},
            )
        if not metrics.enabled():
            return _json(404, {"detail": "metrics are off (metrics.enabled = false, WEAVER_METRICS__ENABLED)"})
        body, content_type = metrics.render()
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def install(engine: Callable[[], TaskWeaverApp | None], history: Callable[[], Any]) -> OpsSettings:
    """Answer ``/ready`` and ``/metrics`` on Chainlit's app; call it before the guards are installed,
    so that they stay outermost. ``history``: the chat history's data layer (or None). A bad setting
    stops the server here, with one line naming it."""
    from chainlit.config import config as chainlit_config
    from chainlit.server import app as server_app

    try:
        settings = ops_settings()
    except OpsSettingsError as exc:
        raise SystemExit(f"Weaver UI: {exc}") from None
    root_path = chainlit_config.run.root_path or ""
    server_app.add_middleware(
        OpsRoutes,
        settings=settings,
        root_path=root_path,
        engine=engine,
        history=lambda: getattr(history(), "engine", None),
    )
    _watch_web_tier(history)
    return settings


def _watch_web_tier(history: Callable[[], Any]) -> None:
    """The web tier's states, read at each scrape: connected users, the history's write queue."""

    def connected_users() -> float | None:
        from chainlit.server import sio
        from chainlit.session import ws_sessions_id

        users = set()
        for session in list(ws_sessions_id.values()):
            user = getattr(session, "user", None)
            if user is not None and sio.manager.is_connected(session.socket_id, "/"):
                users.add(getattr(user, "identifier", None))
        return float(len(users))

    def writes() -> Any:
        """The history's write-behind (ui/history/write_behind.py), by whichever name the layer gives it."""
        layer = history()
        return getattr(layer, "writes", None) or getattr(layer, "_writes", None)

    def number(name: str) -> Callable[[], float | None]:
        """An int the write-behind keeps, read defensively: absent (an older history), no series."""

        def read() -> float | None:
            value = getattr(writes(), name, None)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return read

    def outage_seconds() -> float | None:
        found = writes()
        if found is None or not hasattr(found, "failing_since"):
            return None
        since = found.failing_since
        return max(0.0, time.time() - since) if isinstance(since, (int, float)) else 0.0

    readings: tuple[tuple[str, Kind, str, Callable[[], float | None]], ...] = (
        ("weaver_users_connected", "gauge", "Distinct users with a connected page", connected_users),
        ("weaver_history_queue_depth", "gauge", "History rows waiting to be stored", number("pending")),
        ("weaver_history_write_failures", "counter", "History stores that failed", number("failed_writes")),
        ("weaver_history_dropped_rows", "counter", "History changes not kept (spool full)", number("dropped_rows")),
        (
            "weaver_history_spooled_bytes",
            "gauge",
            "Unsaved history kept while its database fails",
            number("spooled_bytes"),
        ),
        (
            "weaver_history_outage_seconds",
            "gauge",
            "How long the history's database has failed (0: it answers)",
            outage_seconds,
        ),
    )
    for name, kind, documentation, read in readings:
        metrics.watch(name, kind, documentation, read)
