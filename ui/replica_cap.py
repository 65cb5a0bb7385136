"""The per-client cap on live chats counted across replicas, for ``ui.lifecycle.SessionOwner``.

With several replicas sharing a database, ``ui.shared.LiveSessions`` (a ``LiveRegistry``) counts each
client's live chats on all of them. Before a chat's session is made, ``prepare`` waits for a late
release of that chat's previous session (it must not undo the new claim), takes over the gateway
kernel the chat held on a replica that died (``adopt_kernel``), and claims the chat's place, asking
the owner to free one of its disconnected chats while the count is full. ``give_back`` frees the
place when the chat no longer holds a session. Runs on the event loop; imports no Chainlit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Protocol

logger = logging.getLogger("weaver.ui.lifecycle")


class LiveRegistry(Protocol):
    """Live chats per client across replicas (``ui.shared.LiveSessions``)."""

    async def claim(self, chat: str, client: str, limit: int) -> bool: ...

    async def release(self, chat: str) -> None: ...

    async def adopt_kernel(self, chat: str, session_id: str, client: str) -> str | None: ...


class ReplicaCap:
    """Claims and gives back chats' places in the shared count; ``tasks`` collects the releases in
    flight, so the owner's shutdown waits for them."""

    def __init__(self, registry: LiveRegistry, tasks: set[asyncio.Task[None]]) -> None:
        self.registry = registry
        self._tasks = tasks
        self._releases: dict[str, asyncio.Task[None]] = {}  # releases in flight, by chat

    async def prepare(
        self, key: str, client: str, resume_id: str | None, limit: int, free_one: Callable[[], str]
    ) -> str | None:
        """Claim the chat's place; returns the gateway kernel to attach to, if one was adopted.
        ``free_one`` stops this replica's longest-disconnected chat of the client and returns its
        key, or raises (``TooManyChats``) when there is none to free."""
        pending = self._releases.get(key)
        if pending is not None:  # a late release of this chat's last session must not undo the claim
            await asyncio.gather(pending, return_exceptions=True)
        kernel_id = await self._adoptable(key, resume_id, client) if resume_id else None
        while not await self.registry.claim(key, client, limit):
            released = self._releases.get(free_one())
            if released is not None:
                await asyncio.gather(released, return_exceptions=True)
        return kernel_id

    async def _adoptable(self, key: str, resume_id: str, client: str) -> str | None:
        """The gateway kernel this chat held on a replica that is gone, now ours; None on any failure
        (the chat then gets a new kernel and its code is replayed, as without a gateway)."""
        try:
            return await self.registry.adopt_kernel(key, resume_id, client)
        except Exception:
            logger.exception("could not look for chat %s's kernel in the shared database", key)
            return None

    def give_back(self, key: str) -> None:
        """The chat holds no session any more: its place in the shared count is free (in the background)."""
        task = asyncio.ensure_future(self._release(key))
        self._tasks.add(task)
        self._releases[key] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: self._releases.pop(key, None) if self._releases.get(key) is done else None)

    async def _release(self, key: str) -> None:
        try:
            await self.registry.release(key)
        except Exception:  # the row expires with this replica's heartbeat if it cannot be given back
            logger.exception("could not release chat %s in the shared database", key)
