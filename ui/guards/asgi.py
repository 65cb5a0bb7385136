"""The ASGI vocabulary every guard shares: message types and header look-ups."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]


def header(headers: Headers, name: bytes) -> str | None:
    """The first value of header ``name`` (lowercase bytes), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def count(headers: Headers, name: bytes) -> int:
    """How many times header ``name`` arrived (a browser sends the ones we check once)."""
    return sum(1 for key, _ in headers if key.lower() == name)


def replayed(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that first hands over ``body`` (already read whole), then the real channel."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def watching_status(send: Send, seen: list[int]) -> Send:
    """A ``send`` that notes the response status in ``seen`` on its way out."""

    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start":
            seen.append(int(message["status"]))
        await send(message)

    return watched
