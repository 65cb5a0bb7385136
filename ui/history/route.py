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
(a deleted chat's files must not stay readable from a shared cache).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Union

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ui.history.layer import WeaverDataLayer
from ui.history.storage import DEFAULT_URL_PREFIX, LocalFileStorage, UnsafeObjectKey, check_object_key, safe_file_name

logger = logging.getLogger("weaver.ui.history")

FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox; "
    "frame-ancestors 'none'",
    "Cache-Control": "private, no-store",
}
LayerSource = Union[WeaverDataLayer, Callable[[], Union[WeaverDataLayer, None]]]


def request_user(request: Request) -> str | None:
    """The identifier of the user logged in by Chainlit's token, or None (missing, bad, expired)."""
    from chainlit.auth import get_token_from_cookies
    from chainlit.auth.jwt import decode_jwt, get_jwt_secret

    token = get_token_from_cookies(dict(request.cookies))
    if not token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    if not token or not get_jwt_secret():
        return None
    try:
        user = decode_jwt(token)
    except Exception:
        return None
    identifier = getattr(user, "identifier", None)
    return str(identifier) if identifier else None


def _not_found() -> Response:
    return JSONResponse({"detail": "File not found"}, status_code=404, headers=FILE_HEADERS)


def file_endpoint(source: LayerSource) -> Callable[[Request], Any]:
    async def serve_file(request: Request) -> Response:
        user = request_user(request)
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
        path = storage.existing_file(key) if found else None
        if found is None or path is None:
            return _not_found()
        return FileResponse(
            path,
            media_type=found["mime"],
            filename=safe_file_name(found["name"]),
            content_disposition_type="attachment",
            headers=FILE_HEADERS,
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
