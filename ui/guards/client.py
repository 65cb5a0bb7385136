"""Who the client is: the peer's address, or the one a trusted proxy names in ``X-Forwarded-For``.

uvicorn replaces the peer's address by the last untrusted one in ``X-Forwarded-For`` when the peer
is in ``FORWARDED_ALLOW_IPS``, which it defaults to 127.0.0.1: every process on this machine could
then name any address it liked, and the login throttle would count each as a stranger. Weaver sets
``FORWARDED_ALLOW_IPS`` from ``WEAVER_UI_TRUSTED_PROXIES`` (empty by default: nobody is trusted)
before uvicorn reads it, so the address every guard and cap sees is the peer's unless the peer is a
proxy the operator named. A ``FORWARDED_ALLOW_IPS`` set by hand would say otherwise than the
setting; it is refused rather than silently overridden.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, MutableMapping

from ui.audit import scope_client

UVICORN_TRUST = "FORWARDED_ALLOW_IPS"


class ProxyTrustError(ValueError):
    """The environment sets uvicorn's proxy trust itself; the message says what to set instead."""


def trust_proxies(trusted: list[str], environ: MutableMapping[str, str] | None = None) -> None:
    """Make uvicorn follow ``X-Forwarded-For`` from ``trusted`` peers only (addresses or networks,
    already checked by ``ui.settings``). Must run before uvicorn builds its ``Config``."""
    env = os.environ if environ is None else environ
    wanted = ",".join(trusted)
    given = env.get(UVICORN_TRUST)
    if given is not None and given != wanted:
        raise ProxyTrustError(
            f"{UVICORN_TRUST}={given!r} is set; Weaver decides which proxies may name the client from "
            f"WEAVER_UI_TRUSTED_PROXIES (addresses or networks, e.g. 127.0.0.1): set that instead."
        )
    env[UVICORN_TRUST] = wanted  # empty: uvicorn trusts no peer's X-Forwarded-For


def client_address(environ: Mapping[str, Any] | None) -> str:
    """The client address of a socket (engine.io's ``REMOTE_ADDR`` is always 127.0.0.1 under ASGI)."""
    return scope_client((environ or {}).get("asgi.scope") or {})
