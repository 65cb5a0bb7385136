"""The web UI's own settings (``WEAVER_UI_*``), read once with pydantic-settings.

The engine's settings live in ``core.config``; these only concern the web server: who may drive
it (hosts, origins, the proxy's user header), how long a dropped chat keeps its kernel, and the
per-client and per-event limits that keep one browser from crowding out the others. A bad value
stops the server at start with one message naming the variable.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ui.drain import DEFAULT_DRAIN_S

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class UISettingsError(ValueError):
    """A ``WEAVER_UI_*`` value is invalid; the message names the variable."""


def _comma_list(value: Any) -> Any:
    """``"a, b"`` → ``["a", "b"]``; an empty string is an empty list (the default applies)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class UISettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEAVER_UI_", extra="ignore")

    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins whose pages may drive the server; default: its own"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host header values answered; default: loopback names and the bound host"
    )
    auth: str | None = Field(
        None,
        description="login mode (a name in ui.logins.MODES); default: header with user_header, else local on loopback",
    )
    session_hours: float = Field(
        24.0, gt=0, le=24 * 366, description="how long a login lasts; logout, removal and a new password end it sooner"
    )
    local_user: str | None = Field(None, description="the local user's name; default: the OS user")
    allowed_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="OAuth: names, @domains, or * for anyone the provider accepts"
    )
    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="header/OAuth login: the identifiers that are admins (comma list)"
    )
    login_attempts_per_user: int = Field(5, gt=0, description="failed logins per user within the window")
    login_attempts_per_address: int = Field(20, gt=0, description="failed logins per address within the window")
    login_window_s: float = Field(300.0, gt=0, description="the login throttle's window")
    user_header: str | None = Field(None, description="header a trusted proxy puts the user name in")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="peers (addresses or networks) whose X-Forwarded-For names the client; default: none",
    )
    disconnect_grace_s: float = Field(120.0, ge=0, description="how long a dropped chat keeps its kernel")
    max_sessions_per_client: int = Field(
        5, gt=0, description="live sessions one user (or one address, without login) may hold"
    )
    check_model_at_start: bool = Field(
        True, description="run `weaver check` at start when a model is configured (a few small requests)"
    )
    edit_messages: bool = Field(
        True,
        description="users may edit a sent message (it runs again from the kernel state before it); "
        "off: the server refuses edits",
    )
    max_event_chars: int = Field(100_000, ge=1000, description="largest text of one step or message sent")
    max_attached_mb: int = Field(
        100,
        ge=1,
        description="largest total of files one answer or one Files panel attaches (they are read into memory "
        "until Chainlit has stored them); the rest are named, not attached",
    )
    replica_id: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="this replica's name, sent as X-Weaver-Replica and kept with its shared rows; default host:port",
    )
    replica_heartbeat_s: float = Field(
        10.0, gt=0, description="how often a replica renews its live sessions in a shared database (3 beats = expiry)"
    )
    history_retry_first_s: float = Field(
        0.5, gt=0, description="while the history database fails: the first wait before storing again (doubling)"
    )
    history_retry_max_s: float = Field(10.0, gt=0, description="...up to this wait between tries")
    history_wait_s: float = Field(
        5.0, ge=0, description="the longest a read of the history waits for unsaved changes while the database fails"
    )
    history_spool_mb: float = Field(
        256.0,
        gt=0,
        description="the most unsaved chat changes kept while the database fails (the spool file, and memory)",
    )
    history_store_timeout_s: float = Field(
        15.0, gt=0, description="a history store not done after this long failed: the database does not answer"
    )
    history_notice_s: float = Field(
        5.0, ge=0, description="a chat unsaved this long (the database failing) tells its user so"
    )
    sharing: bool = Field(False, description="read-only share links of chats for signed-in users (ui.sharing)")
    export_max_image_mb: float = Field(
        20.0, gt=0, description="a figure larger than this is named in a chat's export, not embedded"
    )
    export_max_files: int = Field(200, gt=0, description="files of a chat named at the end of its export")
    drain_s: float = Field(
        DEFAULT_DRAIN_S,
        ge=0,
        description="on SIGTERM/SIGINT, how long running rounds may still finish (0: stop at once)",
    )

    _split_lists = field_validator(
        "allowed_origins", "allowed_hosts", "allowed_users", "admins", "trusted_proxies", mode="before"
    )(_comma_list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, proxies: list[str]) -> list[str]:
        """Each an IP address or network (``10.0.0.0/8``), written the way uvicorn compares them."""
        parsed = []
        for proxy in proxies:
            try:
                parsed.append(
                    str(ipaddress.ip_network(proxy, strict=False) if "/" in proxy else ipaddress.ip_address(proxy))
                )
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or network (names and '*' are not allowed)") from None
        return parsed

    @field_validator("user_header", "auth", "local_user", "replica_id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("auth")
    @classmethod
    def _known_mode(cls, value: str | None) -> str | None:
        from ui.logins import MODES

        if value is not None and value.lower() not in MODES:
            raise ValueError(f"{value!r} is not one of {', '.join(MODES)}")
        return value.lower() if value is not None else None

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_bare(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*" or "://" not in origin or origin.rstrip("/").count("/") > 2:
                raise ValueError(f"{origin!r} is not an origin like http://host:port ('*' is not allowed)")
        return [o.rstrip("/").lower() for o in origins]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_lower(cls, hosts: list[str]) -> list[str]:
        return [h.lower() for h in hosts]


@lru_cache(maxsize=1)
def ui_settings() -> UISettings:
    """The process's UI settings; raises ``UISettingsError`` naming the bad variable."""
    try:
        return UISettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"WEAVER_UI_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise UISettingsError(f"invalid web UI setting: {problems}") from None


def host_literal(host: str) -> str:
    """How a bound host appears in a ``Host`` header: IPv6 literals in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def is_loopback(host: str) -> bool:
    """True for an address or name that only this machine can reach."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def serving_hosts(settings: UISettings, bound_host: str) -> list[str]:
    """Host names the server answers to: ``allowed_hosts``, else loopback names and the bound host.

    A wildcard bind (0.0.0.0, ::) names no host, so then only loopback names are answered until
    the operator lists the public name: secure by default, and the refusal says which setting.
    """
    if settings.allowed_hosts:
        return list(settings.allowed_hosts)
    hosts = list(LOOPBACK_HOSTS)
    if bound_host not in ("", "0.0.0.0", "::"):
        hosts.append(host_literal(bound_host).lower())
    return list(dict.fromkeys(hosts))


def serving_origins(settings: UISettings, hosts: list[str], port: int) -> list[str]:
    """Origins of our own pages: ``allowed_origins``, else each served host on this port (http, https)."""
    if settings.allowed_origins:
        return list(settings.allowed_origins)
    origins = []
    for host in hosts:
        for scheme, default_port in (("http", 80), ("https", 443)):
            origins.append(f"{scheme}://{host}" if port == default_port else f"{scheme}://{host}:{port}")
    return origins
