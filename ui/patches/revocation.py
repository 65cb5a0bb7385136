"""Runtime patch of Chainlit 2.12: login tokens that Weaver revoked are refused.

Chainlit trusts any token with a good signature and an unexpired ``exp``; it has no way to end a
login early. Two of its functions decide, and both are wrapped here:

* ``chainlit.auth.authenticate_user`` (async): every authenticated HTTP route (through
  ``get_current_user``, e.g. ``GET /user``, uploads, threads, files) and the socket.io ``connect``
  (``chainlit.socket._authenticate_connection``) call it. A refused token gets Chainlit's own 401
  ("Invalid authentication token"), so the page shows the login again; a socket is refused.
* ``chainlit.server.decode_jwt`` (the name only ``POST /auth/jwt`` calls): that route trades a
  token for a fresh login (new id, new lifetime) that a logout of the original would not end, so
  it refuses every token; Weaver's page never uses it.
* ``chainlit.server.create_jwt`` (every login): Chainlit's tokens carry only the user and whole
  seconds, so two logins of one user within a second got the same token, and logging one out
  ended both (or a login right after a logout got the revoked token back). Each token gets a
  random ``login_id`` in its user metadata; the copy stored in the database is not changed.

``refusal(token)`` (``ui.logins.TokenGate.refusal``) reads memory only, so the check costs no query.
Chainlit looks both names up in their modules at call time (``get_current_user`` calls the module
global ``authenticate_user``; the route calls ``chainlit.server``'s ``decode_jwt``), so replacing
the module attributes reaches every caller. Written for Chainlit 2.12.0.
"""

from __future__ import annotations

import copy
import logging
import secrets
from typing import Any, Callable

logger = logging.getLogger("weaver.ui.auth")

CHAINLIT_VERSION = "2.12"
_MARK = "__weaver_revocation__"


def install(refusal: Callable[[str], object | None]) -> None:
    """Make Chainlit refuse every token for which ``refusal(token)`` is not None (idempotent)."""
    import chainlit.auth as chainlit_auth
    import chainlit.server as chainlit_server
    import jwt
    from fastapi import HTTPException

    original_create = getattr(chainlit_server.create_jwt, _MARK, chainlit_server.create_jwt)
    original_authenticate = getattr(chainlit_auth.authenticate_user, _MARK, chainlit_auth.authenticate_user)
    original_decode = getattr(chainlit_server.decode_jwt, _MARK, chainlit_server.decode_jwt)

    async def authenticate_user(token: str = "") -> Any:  # Chainlit passes it by position
        why = refusal(token) if token else None
        if why is not None:
            logger.info("login token refused: %s", why)
            raise HTTPException(status_code=401, detail="Invalid authentication token")
        return await original_authenticate(token)

    def decode_jwt(token: str) -> Any:  # noqa: ARG001 (Chainlit's signature)
        # Only ``POST /auth/jwt`` calls it: a login made from a token, which Weaver's page never
        # uses; it would turn any token, a copied one included, into a fresh login (new id, new
        # lifetime) that the original's logout does not end. Refused whatever the token.
        logger.info("POST /auth/jwt refused: Weaver does not make logins from tokens")
        raise jwt.InvalidTokenError("logins from tokens are not accepted")

    def create_jwt(data: Any) -> str:
        unique = copy.copy(data)
        unique.metadata = {**(data.metadata or {}), "login_id": secrets.token_urlsafe(12)}
        return str(original_create(unique))

    setattr(create_jwt, _MARK, original_create)
    setattr(authenticate_user, _MARK, original_authenticate)
    setattr(decode_jwt, _MARK, original_decode)
    chainlit_auth.authenticate_user = authenticate_user
    chainlit_server.decode_jwt = decode_jwt
    chainlit_server.create_jwt = create_jwt
