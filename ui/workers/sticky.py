"""The sticky cookie: each worker's HTTP responses tell the browser which worker serves it.

Like HAProxy's ``cookie SERVERID insert``: a response to a request that does not already carry
``weaver_worker=<this worker>`` sets it (``HttpOnly``, ``SameSite=Lax``, for the server's root
path, ending with the browser session), so the page's later requests, its socket.io connection
(long-polling requests and the websocket alike: Chainlit's page sends cookies with them), its
uploads (``/project/file``) and its element downloads reach the same worker through the router.
Every response also names its worker (``X-Weaver-Worker``), for operators and tests. The cookie
only routes: a forged one sends a browser to another worker of the same site, which treats it as
any page whose server went away.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable

from ui.workers import COOKIE, HEADER

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def cookie_value(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``weaver_worker`` cookie a request carries, if any."""
    for name, value in headers:
        if name.lower() != b"cookie" or COOKIE.encode() not in value:
            continue
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value.decode("latin-1"))
        except CookieError:
            continue
        if COOKIE in jar:
            return jar[COOKIE].value
    return None


class StickyWorker:
    """ASGI middleware: set the sticky cookie when the request lacks this worker's, name the worker."""

    def __init__(self, app: ASGIApp, index: int, root_path: str = "") -> None:
        self.app = app
        self.index = str(index)
        self._named = (HEADER.lower().encode(), self.index.encode())
        path = root_path.rstrip("/") or "/"
        self._cookie = (b"set-cookie", f"{COOKIE}={index}; Path={path}; HttpOnly; SameSite=Lax".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stick = cookie_value(scope.get("headers", [])) != self.index

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), self._named]
                if stick:
                    headers.append(self._cookie)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_named)
