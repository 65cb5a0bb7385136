"""The guards in front of Chainlit, one module per concern.

Chainlit 2.x trusts its callers more than a multi-user server may (README, "Security model"). Each
module here closes one gap; ``middleware.GuardMiddleware`` runs them before any Chainlit handler:

* ``host_origin``: the ``Host`` allowlist (DNS rebinding) and the ``Origin`` allowlist for
  socket.io and every state-changing request; repeated headers are refused.
* ``uploads``: the body cap (413 before reading) and the files per message.
* ``login_throttle``: failed password logins per name and per address, counted by the name the
  login uses and reserved before the password is checked.
* ``client``: which peers may name the client in ``X-Forwarded-For`` (``WEAVER_UI_TRUSTED_PROXIES``).
* ``file_serving``: users' files served as downloads that cannot run, stored with an honest type.
* ``downloads``: every user's file that goes out is a line of the audit log (``ui.audit``).
* ``headers``: the security headers on every answer, and the guards' refusals.
* ``failover``: a page whose replica died comes back into its chat on another replica.

What has to reach into Chainlit's own code to do this (the socket ``connect`` handler, the stored
MIME type, the authorship check) lives in ``ui.patches``, behind its version check.
"""

from __future__ import annotations

from typing import Any

from ui.guards.client import ProxyTrustError, client_address, trust_proxies
from ui.guards.file_serving import FileServing, mime_agrees
from ui.guards.headers import ResponseHeaders, inline_scripts_of, page_csp
from ui.guards.host_origin import HostOrigin, host_name
from ui.guards.login_throttle import LoginGuard, LoginLimiter, LoginThrottle
from ui.guards.middleware import GuardMiddleware, GuardPolicy
from ui.guards.uploads import MULTIPART_SLACK_BYTES, UploadGuard, UploadLedger

__all__ = [
    "MULTIPART_SLACK_BYTES",
    "FileServing",
    "GuardMiddleware",
    "GuardPolicy",
    "HostOrigin",
    "LoginGuard",
    "LoginLimiter",
    "LoginThrottle",
    "ProxyTrustError",
    "ResponseHeaders",
    "UploadGuard",
    "UploadLedger",
    "client_address",
    "host_name",
    "inline_scripts_of",
    "install",
    "mime_agrees",
    "page_csp",
    "trust_proxies",
]


def install(app: Any, policy: GuardPolicy) -> None:
    """Put the guard middleware in front of Chainlit's ``app``, once per process, before it starts."""
    if getattr(app.state, "weaver_guard", None) is not None:
        return
    app.state.weaver_guard = policy
    app.add_middleware(GuardMiddleware, policy=policy)  # added last: the outermost
