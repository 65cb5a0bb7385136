"""``GET /weaver/files/<object key>``: a stored chat file, for the user who owns its chat only.

Who asks is read from Chainlit's own login: the access-token cookie (or an ``Authorization:
Bearer`` header, as Chainlit accepts), a JWT signed with ``CHAINLIT_AUTH_SECRET``, decoded by
``chainlit.auth.jwt.decode_jwt``. Then the element stored under the key is looked up together
with its thread, and served only if the user is the thread's author.

Answers: 401 without a valid login (before anything is looked up); 404 both for a key that does
not exist and for another user's file, with the same body, so nobody learns which files exist;
the file otherwise, with its stored MIME type, ``Content-Disposition: attachment`` (for images
too: an ``<img>`` in the chat shows an attachment all the same, since the header only matters
when the URL is opened as a page, and then a user's SVG or HTML must not run on our origin),
``X-Content-Type-Options: nosniff``, a sandboxing CSP and ``Cache-Control: private, no-store``
(a deleted chat's files must not stay readable from a shared cache). The file is opened through
``core.safe_files`` (no link followed, a regular file with one name) and sent from that handle.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable, Union
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.safe_files import OpenedFile, UnsafeFile, open_file
from ui.audit_user import login_token
from ui.guards.downloads import DOWNLOAD_STATE
from ui.history.layer import WeaverDataLayer
from ui.history.storage import DEFAULT_URL_PREFIX, LocalFileStorage, UnsafeObjectKey, check_object_key, safe_file_name

logger = logging.getLogger("weaver.ui.history")

FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox; "
    "frame-ancestors 'none'",
    "Cache-Control": "private, no-store",
}
CHUNK_BYTES = 1024 * 1024
LayerSource = Union[WeaverDataLayer, Callable[[], Union[WeaverDataLayer, None]]]


async def request_user(request: Request) -> str | None:
    """The identifier of the user logged in by Chainlit's token, or None (missing, bad, expired, or a
    login that has ended). The token is checked by ``chainlit.auth.authenticate_user`` looked up at
    call time: the function every Chainlit route uses, with Weaver's revocation check around it
    (``ui.patches.revocation``), so this route refuses exactly what the others refuse."""
    import chainlit.auth as chainlit_auth
    from chainlit.auth.jwt import get_jwt_secret

    token = login_token(request)
    if not token or not get_jwt_secret():
        return None
    try:
        user = await chainlit_auth.authenticate_user(token)
    except Exception:
        return None
    identifier = getattr(user, "identifier", None)
    return str(identifier) if identifier else None


def _not_found() -> Response:
    return JSONResponse({"detail": "File not found"}, status_code=404, headers=FILE_HEADERS)


def attachment_header(name: str) -> str:
    """``Content-Disposition`` of a download named ``name`` (RFC 6266; non-ASCII as ``filename*``)."""
    quoted = quote(name)
    return f'attachment; filename="{name}"' if quoted == name else f"attachment; filename*=utf-8''{quoted}"


async def file_chunks(opened: OpenedFile) -> AsyncIterator[bytes]:
    """The file's bytes as checked when it was opened: no more than its size then."""
    left = opened.size
    try:
        while left > 0:
            chunk = await asyncio.to_thread(opened.file.read, min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        opened.close()


def file_endpoint(source: LayerSource) -> Callable[[Request], Any]:
    async def serve_file(request: Request) -> Response:
        user = await request_user(request)
        if user is None:
            return JSONResponse(
                {"detail": "Not authenticated"},
                status_code=401,
                headers={**FILE_HEADERS, "WWW-Authenticate": "Bearer"},
            )
        layer = source if isinstance(source, WeaverDataLayer) else source()
        if layer is None:
            return JSONResponse({"detail": "History is not available"}, status_code=503, headers=FILE_HEADERS)
        storage = layer.storage_provider
        key = request.path_params.get("object_key", "")
        try:
            check_object_key(key)
        except UnsafeObjectKey:
            return _not_found()
        if not isinstance(storage, LocalFileStorage):
            return _not_found()  # remote storage hands out its own (signed) URLs
        found = await layer.file_for(key, user)
        if found is None:
            return _not_found()
        try:  # served from the handle that was checked (no link followed), never a path opened again
            opened = await asyncio.to_thread(open_file, storage.root, key)
        except (UnsafeFile, OSError):
            return _not_found()
        # For the audit line the guards write when the answer starts (ui.guards.downloads).
        setattr(request.state, DOWNLOAD_STATE, {"user": user, "file": found["name"], "chat": found["thread_id"]})
        return StreamingResponse(
            file_chunks(opened),
            media_type=found["mime"],
            headers={
                **FILE_HEADERS,
                "Content-Length": str(opened.size),
                "Content-Disposition": attachment_header(safe_file_name(found["name"])),
            },
            background=BackgroundTask(opened.close),
        )

    return serve_file


def install_file_route(app: Any, data_layer: LayerSource, prefix: str = DEFAULT_URL_PREFIX) -> Route:
    """Serve ``GET {prefix}/{object_key:path}`` on Chainlit's FastAPI ``app``, ahead of its
    catch-all page route. ``data_layer`` may be the layer or a function returning it (or None
    while it is not open yet: 503). Safe to call twice: the route is installed once."""
    path = f"{prefix.rstrip('/')}/{{object_key:path}}"
    for route in app.router.routes:
        if isinstance(route, Route) and route.path == path:
            return route
    route = Route(path, file_endpoint(data_layer), methods=["GET", "HEAD"], name="weaver_file")
    app.router.routes.insert(0, route)
    return route
