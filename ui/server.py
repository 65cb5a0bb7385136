"""What this web server is: its engine, its settings, who may log in, where history lives, and the
guards in front of Chainlit. All of it is set up once, when ``ui/app.py`` (the Chainlit hooks)
imports this module at start; a setting that cannot be served safely stops the server here, with
one message saying what to set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
from typing import Any, Awaitable, Callable

import chainlit as cl
from chainlit.config import config as chainlit_config
from sqlalchemy.ext.asyncio import AsyncEngine

from core import Session, SessionNotFound, TaskWeaverApp
from core.config import load_config
from core.errors import WeaverError
from core.execution.backend import KernelBackend, backend_for
from core.experience import ExperienceStore
from core.workspace import default_app_dir
from ui import admin, drain, guards, ops_routes, patches, readiness
from ui.audit import AuditEvent
from ui.audit import record as record_audit
from ui.audit_user import request_user
from ui.bridge import in_background, run_in_thread
from ui.files_folder import server_files_dir
from ui.history import HistoryConfigError, OutageNotices, WeaverDataLayer, history_settings, open_history
from ui.history.write_behind import MB, OutagePolicy
from ui.lifecycle import SessionOwner
from ui.logins import AuthSetupError, LoginContext, TokenRevocations, install_login, make_login
from ui.logins.watch import EndedLogins
from ui.rerun import dispatch as rerun_dispatch
from ui.settings import UISettingsError, is_loopback, serving_hosts, serving_origins, ui_settings
from ui.shared import EXPIRY_BEATS, LiveSessions, SharedLoginThrottle, is_shared
from ui.sharing import EXPORT_PREFIX, SHARED_FILES_PREFIX
from ui.workers import this_worker

logger = logging.getLogger("weaver.ui.server")

_app: TaskWeaverApp | None = None
_app_lock = threading.Lock()


def weaver_app() -> TaskWeaverApp:
    """The process-wide engine, created on first use (its config and plugins load once)."""
    global _app
    with _app_lock:
        if _app is None:
            _app = TaskWeaverApp()
            logger.info("Weaver engine ready (app dir %s)", _app.app_dir)
        return _app


def upload_limit_mb(max_file_mb: float) -> int:
    """Chainlit's ``max_size_mb`` that accepts no file the engine refuses (with a floor of 1).

    The engine's limit is decimal (``max_file_mb * 10**6`` bytes). Chainlit's browser checks
    ``max_size_mb * 10**6`` bytes but its server checks ``max_size_mb * 2**20`` (MiB; see
    ``validate_file_size`` in chainlit/server.py), so the value must satisfy the server's reading.
    """
    return max(1, math.floor(max_file_mb * 1e6 / 2**20))


def sync_upload_limit(max_file_mb: float) -> int:
    """Make Chainlit's upload limit follow ``session.max_file_mb``; returns the value set."""
    upload = chainlit_config.features.spontaneous_file_upload
    limit = upload_limit_mb(max_file_mb)
    if upload is not None and upload.max_size_mb != limit:
        logger.info("uploads limited to %d MB (MiB) to match session.max_file_mb=%g", limit, max_file_mb)
        upload.max_size_mb = limit
    return limit


def new_session(user_name: str, resume_id: str | None = None, kernel_id: str | None = None) -> Session:
    """The chat's Weaver session, knowing who it works for (plugins read ``user_name``): the one
    named ``resume_id`` - live, or brought back from its folder (attached to its kernel ``kernel_id``
    when a replica that died left one) - else a fresh one."""
    app = weaver_app()
    session = None
    if resume_id:
        try:
            session = app.open_session(resume_id, kernel_id=kernel_id)
        except SessionNotFound:
            logger.info("weaver session %s is gone; the chat continues in a fresh one", resume_id)
    if session is None:
        session = app.get_session()
    session.update_session_var({"user_name": user_name})
    return session


def browser_connected(chainlit_session_id: str) -> bool:
    """True when a live socket currently serves this Chainlit session (it was restored)."""
    from chainlit.server import sio
    from chainlit.session import WebsocketSession

    ws = WebsocketSession.get_by_id(chainlit_session_id)
    return ws is not None and bool(sio.manager.is_connected(ws.socket_id, "/"))


def chat_cleared(chainlit_session_id: str) -> bool:
    """True when the browser asked for a new chat (``clear_session``): this chat will not return."""
    from chainlit.session import WebsocketSession

    ws = WebsocketSession.get_by_id(chainlit_session_id)
    return ws is None or bool(getattr(ws, "to_clear", False))


try:
    SETTINGS = ui_settings()
except UISettingsError as exc:
    raise SystemExit(f"Weaver UI: {exc}") from None

try:
    HISTORY_SETTINGS = history_settings()
except HistoryConfigError as exc:
    raise SystemExit(f"Weaver UI: {exc}") from None
HISTORY: WeaverDataLayer | None = None
HISTORY_OUTAGE = OutagePolicy(
    retry_first_s=SETTINGS.history_retry_first_s,
    retry_max_s=SETTINGS.history_retry_max_s,
    wait_s=SETTINGS.history_wait_s,
    spool_bytes=int(SETTINGS.history_spool_mb * MB),
    store_timeout_s=SETTINGS.history_store_timeout_s,
)
# Replicas sharing a PostgreSQL history share the login secret, the throttle and the session caps
# through it (``ui.shared``), and so do the workers of ``weaver ui --workers N`` through any history,
# the default SQLite file included; a server alone on a SQLite file keeps them in memory.
WORKER = this_worker()
SHARED = is_shared(HISTORY_SETTINGS.database_url) or WORKER is not None
REPLICA_ID = (SETTINGS.replica_id or f"{socket.gethostname()}:{chainlit_config.run.port}") + (
    f"/worker{WORKER.index}" if WORKER is not None else ""
)


def _history_engine() -> AsyncEngine | None:
    """The history's engine once it is open (at app start-up): the shared state's connection pool."""
    return HISTORY.engine if HISTORY is not None else None


# A dead replica's kernel (where kernels outlive it) waits to be adopted as long as a disconnected
# chat's kernel would.
ADOPT_WINDOW_S = max(SETTINGS.disconnect_grace_s, EXPIRY_BEATS * SETTINGS.replica_heartbeat_s)
LIVE = LiveSessions(_history_engine, REPLICA_ID, SETTINGS.replica_heartbeat_s, ADOPT_WINDOW_S) if SHARED else None

OWNER: SessionOwner[Session] = SessionOwner(
    new_session,
    browser_connected,
    grace_s=SETTINGS.disconnect_grace_s,
    is_abandoned=chat_cleared,
    max_per_client=SETTINGS.max_sessions_per_client,
    registry=LIVE,
)
HISTORY_FILES = f"{chainlit_config.run.root_path or ''}/weaver/files"


def _install_history_route() -> None:
    from chainlit.server import app as server_app

    # ahead of Chainlit's catch-all: the history's files, chat exports and share links (ui.sharing)
    patches.install("history_route", server_app, lambda: HISTORY, HISTORY_FILES, chainlit_config.run.root_path or "")
    patches.install(
        "history_ownership", server_app, lambda: HISTORY
    )  # feedback and element routes: the caller's rows only


try:
    patches.check()  # once more, for a server not started by ``ui/chainlit_main.py``
    guards.trust_proxies(SETTINGS.trusted_proxies)  # before uvicorn reads FORWARDED_ALLOW_IPS
    _install_history_route()
except (patches.PatchRefused, guards.ProxyTrustError) as exc:
    raise SystemExit(f"Weaver UI: {exc}") from None


@cl.data_layer
def data_layer() -> WeaverDataLayer:
    """Chainlit asks for it (synchronously) after start-up; it is opened in the server's loop there."""
    if HISTORY is None:
        raise RuntimeError("chat history is opened at app start-up")
    return HISTORY


async def _forget_weaver_session(thread_id: str, metadata: dict[str, Any]) -> None:
    """A chat was deleted: stop its session if it is live, and delete its folder."""
    record_audit(AuditEvent.CHAT_DELETED, user=request_user(), chat=thread_id)
    session_id = metadata.get("weaver_session_id")
    if isinstance(session_id, str) and session_id and _app is not None:
        await run_in_thread(_app.delete_session, session_id, name="weaver-delete-session")
        logger.info("deleted weaver session %s of deleted chat %s", session_id, thread_id)


def _upload_settings() -> Any:
    return chainlit_config.features.spontaneous_file_upload


def guard_policy() -> guards.GuardPolicy:
    """The guards' rules for this server, from ``WEAVER_UI_*`` and Chainlit's run and upload config."""
    from chainlit.server import get_html_template

    root = chainlit_config.run.root_path or ""
    hosts = serving_hosts(SETTINGS, chainlit_config.run.host)
    page = get_html_template(os.getenv("CHAINLIT_PARENT_ROOT_PATH", "") + os.getenv("CHAINLIT_ROOT_PATH", ""))
    return guards.GuardPolicy(
        host_origin=guards.HostOrigin(
            allowed_hosts=frozenset(hosts),
            allowed_origins=frozenset(serving_origins(SETTINGS, hosts, int(chainlit_config.run.port))),
            socket_path=f"{root}/ws/socket.io",
            user_header=SETTINGS.user_header,
        ),
        upload=guards.UploadGuard(
            path=f"{root}/project/file",
            max_bytes=lambda: int((_upload_settings().max_size_mb or 0) * 2**20) + guards.MULTIPART_SLACK_BYTES,
            max_files=lambda: int(_upload_settings().max_files or 1),
        ),
        files=guards.FileServing(
            (f"{root}/project/file/", f"{HISTORY_FILES}/", f"{root}{EXPORT_PREFIX}/", f"{root}{SHARED_FILES_PREFIX}/")
        ),
        headers=guards.ResponseHeaders(guards.page_csp(guards.inline_scripts_of(page)), SETTINGS.replica_id),
        login=guards.LoginGuard(f"{root}/login", LOGIN.throttle) if LOGIN.throttle is not None else None,
        thread_of_chat=LIVE.thread_of if LIVE is not None else None,
    )


async def _flush_history() -> None:
    """Store the history's pending writes (the drain does, before the sockets close)."""
    if HISTORY is not None:
        await HISTORY.flush_writes()


def _install_guards() -> guards.GuardPolicy:
    """The guard middleware, and the patches of Chainlit's own handlers the guards need."""
    from chainlit.server import app as server_app
    from chainlit.server import sio

    policy = guard_policy()
    guards.install(server_app, policy)
    try:
        patches.install("socket_connect", sio, policy)
        patches.install("upload_mime", lambda: _upload_settings().accept)
        patches.install("thread_author")
        patches.install("step_timestamps")
        patches.install("joined_writes")
        patches.install("files_dir", server_files_dir(default_app_dir()))  # this server's own
        chainlit_config.features.edit_message = edits_allowed()  # the browser shows the pencil only then
        patches.install("edit_message", sio, edits_allowed, rerun_dispatch)  # refused while editing is off
        drain.install(server_app, SETTINGS.drain_s, _flush_history, chainlit_config.run.root_path or "")
    except patches.PatchRefused as exc:
        raise SystemExit(f"Weaver UI: {exc}") from None
    return policy


def edits_allowed() -> bool:
    """Editing a sent message: on only if ``.chainlit/config.toml`` and ``WEAVER_UI_EDIT_MESSAGES`` both say so."""
    return bool(chainlit_config.features.edit_message) and SETTINGS.edit_messages


def _login_throttle() -> guards.LoginLimiter:
    """Failed logins counted in the shared database when there is one, else in this process."""
    limits = (SETTINGS.login_attempts_per_user, SETTINGS.login_attempts_per_address, SETTINGS.login_window_s)
    return SharedLoginThrottle(_history_engine, *limits) if SHARED else guards.LoginThrottle(*limits)


# Logged-out tokens are kept in the history database (opened at app start-up, hence the getter).
REVOCATIONS = TokenRevocations(lambda: HISTORY)
try:
    LOGIN = install_login(
        make_login(
            SETTINGS.auth,
            LoginContext(
                app_dir=default_app_dir(),
                loopback=is_loopback(chainlit_config.run.host),
                local_user=SETTINGS.local_user,
                user_header=SETTINGS.user_header,
                allowed_users=SETTINGS.allowed_users,
                admins=SETTINGS.admins,
                database_url=HISTORY_SETTINGS.database_url,
            ),
        ),
        revocations=REVOCATIONS,
        session_hours=SETTINGS.session_hours,
        throttle=_login_throttle(),
    )
except AuthSetupError as exc:
    raise SystemExit(f"Weaver UI: {exc}") from None
patches.install("revocation", LOGIN.tokens.refusal)
ENDED_LOGINS = EndedLogins(LOGIN.tokens, OWNER)
ADMIN = admin.AdminContext(
    LOGIN.mode, OWNER, lambda: HISTORY, chainlit_config.run.root_path or "", lambda: experience_store()
)


def _install_admin_routes() -> None:
    from chainlit.server import app as server_app

    admin.install(server_app, ADMIN)  # ahead of Chainlit's catch-all; the guards wrap them as every route


def is_admin(user_name: str) -> bool:
    """Whether this user may use the admin page now (asked of the login mode at every call)."""
    return LOGIN.mode.is_admin(user_name)


def greets_as_admin(user_name: str) -> bool:
    """Whether a new chat points this user to the admin page: an admin of a server used by several
    people (the one local user may open /admin too, but is not told so in every chat)."""
    return LOGIN.mode.serves_others and is_admin(user_name)


_install_admin_routes()


def _install_worker() -> None:
    """In a worker of ``weaver ui --workers N``: serve the connections the router hands over, and
    set the sticky cookie that brings each browser back (``ui/workers/``). Installed after the
    guards, so it is the outermost middleware and names the worker on every answer."""
    if WORKER is None:
        return
    from chainlit.server import app as server_app

    from ui.workers.handoff import HandedSockets
    from ui.workers.sticky import StickyWorker

    if os.environ.get("CHAINLIT_SSL_CERT"):
        raise SystemExit(
            "Weaver UI: --workers needs plain HTTP behind it (a TLS proxy in front); unset CHAINLIT_SSL_CERT"
        )
    if not patches.install("handed_sockets", HandedSockets(WORKER.fd)):
        raise SystemExit(
            f"Weaver UI: --workers needs {patches.UVICORN}, the version its router was "
            "written for (ui/patches/handed_sockets.py); install it, or serve with --workers 1"
        )
    server_app.add_middleware(StickyWorker, index=WORKER.index, root_path=chainlit_config.run.root_path or "")
    logger.info("worker %d of %d (%s)", WORKER.index, WORKER.count, REPLICA_ID)


OPS = ops_routes.install(lambda: _app, lambda: HISTORY)  # /ready, /metrics: inside the guards (installed next)
readiness.register("draining", lambda: "this server is draining (stopping)" if drain.is_draining() else None)
GUARD = _install_guards()
_install_worker()


def _refuse_unservable_kernels() -> None:
    """Before anything is served, the kernel backend the engine will use must be able to run users'
    code, and to run it isolated when several people use this server (a login other than local, or
    an address other machines can reach) unless the operator said otherwise by name. Otherwise stop
    here with the engine's one sentence (naming the key to set: ``execution.allow_unsandboxed``,
    ``execution.sandbox``, the gateway's address or token...). The engine checks again when it
    starts; a failure there is only logged by Chainlit."""
    reasons = []
    if LOGIN.mode.name != "local":
        reasons.append(f"with {LOGIN.mode.name} login")
    if not is_loopback(chainlit_config.run.host):
        reasons.append(f"on {chainlit_config.run.host}, which other machines can reach")
    try:
        kernels = backend_for(load_config(default_app_dir()).execution)
        if reasons:
            kernels.require_sandbox(" and ".join(reasons))
        kernels.check_startup()
    except WeaverError as exc:  # ConfigError, SandboxUnavailableError, GatewayError
        raise SystemExit(f"Weaver UI: {exc}") from None


_refuse_unservable_kernels()


async def open_chat_history(app: TaskWeaverApp) -> WeaverDataLayer:
    """Open (create or migrate) the history in the server's event loop, where its connections live."""
    global HISTORY
    HISTORY = await open_history(
        app.app_dir,
        HISTORY_SETTINGS.database_url,
        on_thread_deleted=_forget_weaver_session,
        file_storage=HISTORY_SETTINGS.file_storage,
        url_prefix=HISTORY_FILES,
        outage=HISTORY_OUTAGE,
        server_id=REPLICA_ID,
    )
    OutageNotices(HISTORY.writes, SETTINGS.history_notice_s).start()  # tells the chats the database keeps waiting
    await ENDED_LOGINS.start()
    if LIVE is not None:
        if app.kernel_backend.kernels_outlive_server:
            LIVE.delete_kernel = _kernel_deleter(app.kernel_backend)
        await LIVE.start()
        logger.info("replica %s shares login, throttle and session caps through the database", REPLICA_ID)
    return HISTORY


def _kernel_deleter(kernels: KernelBackend) -> Callable[[str], Awaitable[None]]:
    """Deletes one kernel a dead replica left, off the event loop (the backend's call blocks)."""

    async def delete(kernel_id: str) -> None:
        await run_in_thread(kernels.delete_kernel, kernel_id, name="weaver-delete-kernel")

    return delete


def track_kernel(chat: str, session: Session) -> None:
    """Keep the chat's row in the shared database naming its kernel, now and at every later kernel
    start (a restart after a crash), so another replica can adopt or delete it if this one dies.
    Kernels that die with their server (local ones) have nothing to note: nothing is done for them."""
    if LIVE is None or _app is None or not _app.kernel_backend.kernels_outlive_server:
        return
    loop = asyncio.get_running_loop()
    live = LIVE

    def note(kernel_id: str | None) -> None:  # on the loop
        in_background(live.note_kernel(chat, session.session_id, kernel_id), f"noting kernel {kernel_id}")

    session.executor.on_kernel_started = lambda kernel_id: loop.call_soon_threadsafe(note, kernel_id)
    current = session.executor.remote_kernel_id
    if current is not None:
        note(current)


def hands_over_kernels() -> bool:
    """At a drained stop: leave the chats' kernels running for the replicas their chats move to. Only
    where kernels outlive this server and the shared database names them for another replica to
    adopt; without one nobody could, and they would be left behind for good."""
    kernels = _app.kernel_backend if _app is not None else None
    return drain.is_draining() and LIVE is not None and kernels is not None and kernels.kernels_outlive_server


def experience_store() -> ExperienceStore:
    """The experience tips (``session.experience_dir``): the engine's, or from the config when the
    engine has not started (the admin page does not start it)."""
    if _app is not None:
        return _app.experience
    folder = load_config(default_app_dir()).session.experience_dir
    assert folder is not None  # placed by load_config
    return ExperienceStore(folder)


def running_engine() -> TaskWeaverApp | None:
    """The engine if it was started (without starting it)."""
    return _app
