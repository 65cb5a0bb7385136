"""Read-only share links (``WEAVER_UI_SHARING=1``; off by default) and the chat export download.

Routes, ahead of Chainlit's catch-all page route, answered only to a signed-in user (Chainlit's
login token, checked as every Chainlit route checks it: ``ui.history.request_user``):

* ``GET /weaver/export/<chat>/<name>.ipynb`` (or ``.md``) - the chat as a notebook or Markdown, to
  its owner only (404 for anyone else's chat or none, the same answer, as ``/weaver/files``). The
  name is the download's: the guards send every user file as a bare ``attachment`` (no filename),
  so the browser names it from the address.
* ``GET /weaver/shared/<token>`` - a server-made page with the chat's messages and steps and the
  files it showed, to any signed-in user while the link is live: no composer, no socket, no
  kernel. A revoked link answers 410 and a page saying so; an unknown one 404.
* ``GET /weaver/shared-files/<token>/<element id>`` - one file the chat showed (an element of that
  chat), through the link; nothing else of the chat's folder is reachable.

With sharing off every shared route answers 404 with a page saying sharing is off. Links are made
and revoked by the owner from the chat (``ui.chat_menu``), never by a URL a page could be tricked
into loading; both are audit lines.
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import Any, Callable, Mapping, Union
from urllib.parse import quote

from markdown_it import MarkdownIt
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.export import ExportFormat, export_chat
from core.safe_files import UnsafeFile, open_file
from core.workspace import Workspace
from ui.chat_export import ExportLimits, record_from_thread
from ui.guards.downloads import DOWNLOAD_STATE
from ui.history.layer import WeaverDataLayer
from ui.history.route import FILE_HEADERS, attachment_header, file_chunks, request_user
from ui.history.storage import LocalFileStorage, check_object_key, safe_file_name
from ui.settings import ui_settings

logger = logging.getLogger("weaver.ui.sharing")

EXPORT_PREFIX = "/weaver/export"
SHARED_PREFIX = "/weaver/shared"
SHARED_FILES_PREFIX = "/weaver/shared-files"
LayerSource = Callable[[], Union[WeaverDataLayer, None]]
WorkspaceSource = Callable[[], Workspace]
PAGE_HEADERS = {"Cache-Control": "private, no-store", "X-Robots-Tag": "noindex"}
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def sharing_enabled() -> bool:
    """``WEAVER_UI_SHARING`` (``ui.settings``): read-only share links on; off by default."""
    return ui_settings().sharing


def share_path(token: str, root_path: str = "") -> str:
    return f"{root_path}{SHARED_PREFIX}/{token}"


def export_path(thread_id: str, title: str, fmt: ExportFormat, root_path: str = "") -> str:
    """The download address of a chat's export, ending in the file's name (``<title>.<format>``)."""
    name = safe_file_name(f"{title or 'chat'}.{fmt.value}")
    return f"{root_path}{EXPORT_PREFIX}/{thread_id}/{quote(name)}"


# -- pages ---------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
.banner{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;margin-bottom:1.5rem}
.msg{border-radius:8px;padding:.5rem 1rem;margin:.8rem 0}
.user_message{background:#eef4ff}.assistant_message{background:#f6f8fa}
.who{font-size:.8rem;color:#57606a;font-weight:600}
details{margin:.4rem 0 .4rem 1rem;border-left:3px solid #d0d7de;padding-left:.6rem}
pre{background:#f6f8fa;padding:.6rem;overflow:auto}img{max-width:100%}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(text, status_code=status, headers=PAGE_HEADERS)


def _refusal(status: int, title: str, words: str) -> HTMLResponse:
    return _page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(words)}</p>", status)


def _sharing_off() -> HTMLResponse:
    return _refusal(404, "Sharing is off", "Read-only chat links are turned off on this server.")


def _not_signed_in() -> HTMLResponse:
    return _refusal(
        401, "Sign in first", "A shared chat is shown to signed-in users only: sign in, then open the link again."
    )


def _no_link() -> HTMLResponse:
    return _refusal(404, "Link not found", "There is no shared chat at this link. Check that it was copied whole.")


def _revoked() -> HTMLResponse:
    return _refusal(410, "Link revoked", "The owner of this chat stopped sharing it: the link no longer works.")


def _markdown(text: str) -> str:
    return _MARKDOWN.render(text or "")


MENU_NOTE = "weaver_chat_menu"  # metadata of the owner's notes (ui.chat_menu): a shared page leaves them out


def _owners_note(step: Mapping[str, Any]) -> bool:
    """A note only the owner should see: their links to download or share the chat."""
    metadata = step.get("metadata")
    return isinstance(metadata, Mapping) and bool(metadata.get(MENU_NOTE))


def render_shared(thread: Mapping[str, Any], token: str, root_path: str = "") -> str:
    """The page body of a shared chat: its messages in order, each with its steps folded under it,
    and the images and files it showed (served through the link)."""
    steps = sorted(
        (s for s in thread.get("steps") or [] if isinstance(s, Mapping) and not _owners_note(s)),
        key=lambda s: str(s.get("createdAt") or ""),
    )
    elements = [e for e in thread.get("elements") or [] if isinstance(e, Mapping)]
    children: dict[str, list[Mapping[str, Any]]] = {}
    for step in steps:
        if step.get("parentId"):
            children.setdefault(str(step["parentId"]), []).append(step)
    files_base = f"{root_path}{SHARED_FILES_PREFIX}/{token}"
    shown: set[str] = set()

    def files_of(step_id: str) -> str:
        parts = []
        for element in elements:
            if str(element.get("forId") or "") != step_id or not element.get("id"):
                continue
            shown.add(str(element["id"]))
            url = html.escape(f"{files_base}/{element['id']}")
            name = html.escape(str(element.get("name") or "file"))
            if element.get("type") == "image":
                parts.append(f'<figure><img src="{url}" alt="{name}"><figcaption>{name}</figcaption></figure>')
            else:
                parts.append(_file_link(element, files_base))
        return "".join(parts)

    def step_html(step: Mapping[str, Any]) -> str:
        step_id = str(step.get("id") or "")
        own = _markdown(str(step.get("output") or "")) + files_of(step_id)
        below = "".join(step_html(c) for c in children.get(step_id, []))
        kind = str(step.get("type") or "")
        if kind == "run":  # Chainlit's wrapper of a hook (on_message): what it sent shows at its level
            return below
        if kind == "user_message":  # the round it started follows it, as in the chat
            return f'<div class="msg user_message"><div class="who">User</div>{own}</div>{below}'
        if kind == "assistant_message":
            who = html.escape(str(step.get("name") or "Assistant"))
            return f'<div class="msg assistant_message"><div class="who">{who}</div>{own}{below}</div>'
        return f"<details><summary>{html.escape(str(step.get('name') or 'step'))}</summary>{own}{below}</details>"

    ids = {str(s.get("id")) for s in steps}
    messages = "".join(step_html(s) for s in steps if str(s.get("parentId") or "") not in ids)
    loose = "".join(_file_link(e, files_base) for e in elements if str(e.get("id")) not in shown and e.get("id"))
    title = html.escape(str(thread.get("name") or "Shared chat"))
    owner = html.escape(str(thread.get("userIdentifier") or "its owner"))
    banner = (
        f'<div class="banner"><strong>Read-only</strong>: a chat shared by {owner}. '
        "You can read it; you cannot send messages or reach its Python kernel.</div>"
    )
    return f"<h1>{title}</h1>{banner}{messages}{loose}"


def _file_link(element: Mapping[str, Any], files_base: str) -> str:
    url = html.escape(f"{files_base}/{element.get('id')}")
    return f'<p>📎 <a href="{url}">{html.escape(str(element.get("name") or "file"))}</a></p>'


# -- routes --------------------------------------------------------------------------------------


def _layer(source: LayerSource) -> WeaverDataLayer | None:
    return source()


def export_endpoint(source: LayerSource, workspace: WorkspaceSource) -> Callable[[Request], Any]:
    async def export(request: Request) -> Response:
        user = await request_user(request)
        if user is None:
            return JSONResponse({"detail": "Not authenticated"}, status_code=401, headers=FILE_HEADERS)
        layer = _layer(source)
        if layer is None:
            return JSONResponse({"detail": "History is not available"}, status_code=503, headers=FILE_HEADERS)
        file_name = request.path_params.get("file_name", "")
        try:
            fmt = ExportFormat(file_name.rsplit(".", 1)[-1] if "." in file_name else "")
        except ValueError:
            return JSONResponse({"detail": "the name must end in .ipynb or .md"}, status_code=400, headers=FILE_HEADERS)
        thread_id = request.path_params.get("thread_id", "")
        if await layer.get_thread_author(thread_id) != user:  # "" for none: not yours and not there look alike
            return JSONResponse({"detail": "Chat not found"}, status_code=404, headers=FILE_HEADERS)
        await layer.flush_writes()
        thread = await layer.get_thread(thread_id)
        if thread is None:
            return JSONResponse({"detail": "Chat not found"}, status_code=404, headers=FILE_HEADERS)
        limits = ExportLimits.from_settings(ui_settings())
        record = await asyncio.to_thread(record_from_thread, thread, workspace(), limits)
        body = await asyncio.to_thread(export_chat, record, fmt)
        name = safe_file_name(file_name)
        setattr(request.state, DOWNLOAD_STATE, {"user": user, "file": name, "chat": thread_id})
        return Response(
            body, media_type=fmt.media_type, headers={**FILE_HEADERS, "Content-Disposition": attachment_header(name)}
        )

    return export


async def _shared_thread(request: Request, source: LayerSource) -> tuple[Any, Response | None]:
    """The live link's chat and the caller, or the refusal to answer."""
    if not sharing_enabled():
        return None, _sharing_off()
    user = await request_user(request)
    if user is None:
        return None, _not_signed_in()
    layer = _layer(source)
    if layer is None:
        return None, _refusal(503, "Try again soon", "The chat history is not available right now.")
    link = await layer.share_link(request.path_params.get("token", ""))
    if link is None:
        return None, _no_link()
    if link.revoked:
        return None, _revoked()
    thread = await layer.get_thread(link.thread_id)
    if thread is None:
        return None, _no_link()
    return (layer, link, thread, user), None


def shared_page_endpoint(source: LayerSource, root_path: str) -> Callable[[Request], Any]:
    async def shared_page(request: Request) -> Response:
        found, refusal = await _shared_thread(request, source)
        if refusal is not None:
            return refusal
        _, link, thread, user = found
        logger.info("%r reads chat %s shared by %r", user, link.thread_id, link.owner)
        return _page(str(thread.get("name") or "Shared chat"), render_shared(thread, link.token, root_path))

    return shared_page


def shared_file_endpoint(source: LayerSource) -> Callable[[Request], Any]:
    async def shared_file(request: Request) -> Response:
        found, refusal = await _shared_thread(request, source)
        if refusal is not None:
            return JSONResponse({"detail": "File not found"}, status_code=refusal.status_code, headers=FILE_HEADERS)
        layer, link, thread, user = found
        element_id = request.path_params.get("element_id", "")
        element = next((e for e in thread.get("elements") or [] if str(e.get("id")) == element_id), None)
        storage = layer.storage_provider
        key = str((element or {}).get("objectKey") or "")
        if element is None or not key or not isinstance(storage, LocalFileStorage):
            return JSONResponse({"detail": "File not found"}, status_code=404, headers=FILE_HEADERS)
        try:
            check_object_key(key)
            opened = await asyncio.to_thread(open_file, storage.root, key)
        except (UnsafeFile, OSError, ValueError):
            return JSONResponse({"detail": "File not found"}, status_code=404, headers=FILE_HEADERS)
        name = str(element.get("name") or "file")
        setattr(request.state, DOWNLOAD_STATE, {"user": user, "file": name, "chat": link.thread_id, "shared": "yes"})
        return StreamingResponse(
            file_chunks(opened),
            media_type=str(element.get("mime") or "application/octet-stream"),
            headers={
                **FILE_HEADERS,
                "Content-Length": str(opened.size),
                "Content-Disposition": attachment_header(safe_file_name(name)),
            },
        )

    return shared_file


def install_chat_routes(app: Any, source: LayerSource, workspace: WorkspaceSource, root_path: str = "") -> None:
    """The export and share routes on Chainlit's FastAPI ``app``, ahead of its catch-all. Safe to call twice."""
    routes = [
        Route(
            f"{root_path}{EXPORT_PREFIX}/{{thread_id}}/{{file_name}}",
            export_endpoint(source, workspace),
            methods=["GET"],
        ),
        Route(f"{root_path}{SHARED_PREFIX}/{{token}}", shared_page_endpoint(source, root_path), methods=["GET"]),
        Route(
            f"{root_path}{SHARED_FILES_PREFIX}/{{token}}/{{element_id}}", shared_file_endpoint(source), methods=["GET"]
        ),
    ]
    present = {r.path for r in app.router.routes if isinstance(r, Route)}
    for route in reversed(routes):
        if route.path not in present:
            app.router.routes.insert(0, route)
