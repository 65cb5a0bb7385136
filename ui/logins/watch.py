"""Live chats of logins that ended are stopped: their kernel goes, and the page is told plainly.

A chat's socket was authenticated once, at connect, with the login token Chainlit keeps on its
session (``WebsocketSession.token``). Every ``every_s`` seconds this replica merges the stored
revocations of all replicas (``TokenRevocations.refresh``) and asks the token checks
(``TokenGate.refusal``) about the token of each chat holding a session here; a message checks its
own chat first (``refused``), so a removed user cannot start one more round in the meantime.
Ending a chat stops its session at once (``SessionOwner.end``) and sends the page one plain message
saying why; a reload then shows the login form, since every request with that token is refused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ui import audit
from ui.guards.client import client_address
from ui.lifecycle import SessionOwner
from ui.logins.base import Refusal
from ui.logins.tokens import Refused, TokenGate

logger = logging.getLogger("weaver.ui.auth")

DEFAULT_EVERY_S = 2.0

_WHY = {
    Refusal.SIGNED_OUT: "You signed out",
    Refusal.EXPIRED: "Your login has expired",
    Refusal.USER_REMOVED: "Your user account was removed",
    Refusal.PASSWORD_CHANGED: "Your password was changed",
    Refusal.USER_DISABLED: "Your user account was disabled by an administrator",
}


def ended_text(refused: Refused) -> str:
    """What the page of an ended chat is told."""
    return (
        f"{_WHY[refused.why]}, so this chat was closed and its Python session stopped (its variables are gone). "
        "Reload the page to sign in again."
    )


def _audit_end(key: str, refused: Refused) -> None:
    """The audit line of a chat stopped because its login ended (an admin's removal or new password,
    a logout elsewhere, an expiry), with the chat's client as its socket saw it."""
    from chainlit.session import WebsocketSession

    ws = WebsocketSession.get_by_id(key)
    audit.record(
        audit.AuditEvent.SESSION_ENDED,
        user=refused.user,
        client=client_address(getattr(ws, "environ", None)),
        reason=refused.why.name.lower(),
        chat=str(getattr(ws, "thread_id", "") or ""),
    )


class EndedLogins:
    """Stops this replica's live chats whose login no longer holds."""

    def __init__(self, tokens: TokenGate, owner: SessionOwner[Any], every_s: float = DEFAULT_EVERY_S) -> None:
        self.tokens = tokens
        self.owner = owner
        self.every_s = every_s
        self._loop: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Read the stored revocations once (a restart keeps every logout), then watch."""
        await self.tokens.revocations.refresh()
        self._loop = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        if self._ending:
            await asyncio.gather(*list(self._ending), return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.tokens.revocations.refresh()
            except Exception:  # a database blip: this replica's own revocations still hold
                logger.exception("reading the revoked logins failed")
            try:
                self.sweep()
            except Exception:
                logger.exception("checking the logins of live chats failed")

    def sweep(self) -> int:
        """End every live chat here whose login ended; returns how many."""
        ended = 0
        for key in self.owner.live_keys():
            refused = self._refusal_of(key)
            if refused is not None:
                self._end(key, refused)
                ended += 1
        return ended

    def refused(self, key: str) -> bool:
        """True (and the chat ended) when the login of chat ``key`` no longer holds."""
        refused = self._refusal_of(key)
        if refused is None:
            return False
        self._end(key, refused)
        return True

    def _refusal_of(self, key: str) -> Refused | None:
        from chainlit.session import WebsocketSession

        ws = WebsocketSession.get_by_id(key)
        token = getattr(ws, "token", None)
        return self.tokens.refusal(token) if token else None

    def _end(self, key: str, refused: Refused) -> None:
        logger.info("%s: ending chat %s and stopping its session", refused, key)
        _audit_end(key, refused)
        self.owner.end(key)
        task = asyncio.ensure_future(self._tell(key, refused))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _tell(self, key: str, refused: Refused) -> None:
        """In a task of its own: Chainlit's context of that chat is set here, not in the caller's.

        The message is also stored in the chat, so it is there when its user signs in again: a page
        whose next HTTP request is refused moves to the login form at once, maybe before this
        arrives. The socket is left open on purpose (closing it makes the page reconnect, be refused
        and jump to the login form before anyone could read why); what it could still ask for goes
        through ``ui.app``'s hooks, which check the login first (``refused``)."""
        import chainlit as cl
        from chainlit.config import config as chainlit_config
        from chainlit.context import init_ws_context
        from chainlit.session import WebsocketSession

        ws = WebsocketSession.get_by_id(key)
        if ws is None:
            return
        try:
            init_ws_context(ws)
            cl.user_session.set("weaver_session", None)
            await cl.ErrorMessage(content=ended_text(refused), author=chainlit_config.ui.name).send()
        except Exception:
            logger.exception("could not tell chat %s that its login ended", key)
