"""Weaver's web chat: the Chainlit entry point (``chainlit run ui/app.py`` from the repo root).

A thin adapter over ``core``'s public API. One ``TaskWeaverApp`` per server process; one Weaver
``Session`` per browser chat, owned by ``ui.lifecycle.SessionOwner`` (read its docstring for why
a disconnect stops the kernel only after a grace period). Each message runs its round on a
worker thread; ``ui.render`` brings the events back to the event loop and draws them as steps.
Who the user is comes from the login mode (``ui.auth``); the signed-in identity is every
session's ``user_name``. What a request may do is checked first by ``ui.guard``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Awaitable, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `chainlit run ui/app.py` puts ui/ on the path, not the repo root
    sys.path.insert(0, str(REPO_ROOT))

import chainlit as cl  # noqa: E402
from chainlit.config import config as chainlit_config  # noqa: E402

from core import Session, SessionNotFound, TaskWeaverApp, WeaverError  # noqa: E402
from core.config import ConfigError, load_config  # noqa: E402
from core.execution.sandbox import SandboxUnavailableError, require_sandbox  # noqa: E402
from core.workspace import default_app_dir  # noqa: E402
from ui import guard  # noqa: E402
from ui.auth import AuthSetupError, LoginThrottle, choose_mode, install_login  # noqa: E402
from ui.bridge import run_in_thread  # noqa: E402
from ui.files import uploads_from_elements  # noqa: E402
from ui.history import HistoryConfigError, WeaverDataLayer, history_settings, install_file_route, open_history  # noqa: E402
from ui.lifecycle import SessionOwner, session_error_text  # noqa: E402
from ui.render import RoundRenderer, pump_round  # noqa: E402
from ui.settings import UISettingsError, is_loopback, serving_hosts, serving_origins, ui_settings  # noqa: E402

logger = logging.getLogger("weaver.ui.app")
T = TypeVar("T")

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


def new_session(user_name: str, resume_id: str | None = None) -> Session:
    """The chat's Weaver session, knowing who it works for (plugins read ``user_name``): the one
    named ``resume_id`` - live, or brought back from its folder - else a fresh one."""
    app = weaver_app()
    session = None
    if resume_id:
        try:
            session = app.open_session(resume_id)
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

OWNER = SessionOwner(
    new_session,
    browser_connected,
    grace_s=SETTINGS.disconnect_grace_s,
    is_abandoned=chat_cleared,
    max_per_client=SETTINGS.max_sessions_per_client,
)


try:
    HISTORY_SETTINGS = history_settings()
except HistoryConfigError as exc:
    raise SystemExit(f"Weaver UI: {exc}") from None
HISTORY: WeaverDataLayer | None = None
HISTORY_FILES = f"{chainlit_config.run.root_path or ''}/weaver/files"


def _install_history_route() -> None:
    from chainlit.server import app as server_app

    install_file_route(server_app, lambda: HISTORY, prefix=HISTORY_FILES)  # ahead of Chainlit's catch-all


_install_history_route()


@cl.data_layer
def data_layer() -> WeaverDataLayer:
    """Chainlit asks for it (synchronously) after start-up; it is opened in the server's loop there."""
    if HISTORY is None:
        raise RuntimeError("chat history is opened at app start-up")
    return HISTORY


async def _forget_weaver_session(thread_id: str, metadata: dict[str, Any]) -> None:
    """A chat was deleted: stop its session if it is live, and delete its folder."""
    session_id = metadata.get("weaver_session_id")
    if isinstance(session_id, str) and session_id and _app is not None:
        await run_in_thread(_app.delete_session, session_id, name="weaver-delete-session")
        logger.info("deleted weaver session %s of deleted chat %s", session_id, thread_id)


def _upload_settings() -> Any:
    return chainlit_config.features.spontaneous_file_upload


def guard_policy() -> guard.GuardPolicy:
    """The guard's rules for this server, from ``WEAVER_UI_*`` and Chainlit's run and upload config."""
    from chainlit.server import get_html_template

    root = chainlit_config.run.root_path or ""
    hosts = serving_hosts(SETTINGS, chainlit_config.run.host)
    page = get_html_template(os.getenv("CHAINLIT_PARENT_ROOT_PATH", "") + os.getenv("CHAINLIT_ROOT_PATH", ""))
    return guard.GuardPolicy(
        allowed_hosts=frozenset(hosts),
        allowed_origins=frozenset(serving_origins(SETTINGS, hosts, int(chainlit_config.run.port))),
        socket_path=f"{root}/ws/socket.io",
        upload_path=f"{root}/project/file",
        file_path_prefix=f"{root}/project/file/",
        history_file_prefix=f"{HISTORY_FILES}/",
        max_upload_bytes=lambda: int((_upload_settings().max_size_mb or 0) * 2**20) + guard.MULTIPART_SLACK_BYTES,
        max_files=lambda: int(_upload_settings().max_files or 1),
        page_csp=guard.page_csp(guard.inline_scripts_of(page)),
        user_header=SETTINGS.user_header,
        throttle=LOGIN.throttle,
    )


def _install_guard() -> guard.GuardPolicy:
    from chainlit.server import app as server_app
    from chainlit.server import sio

    policy = guard_policy()
    guard.install(server_app, sio, policy, accept=lambda: _upload_settings().accept)
    return policy


try:
    LOGIN = install_login(
        choose_mode(SETTINGS.auth, SETTINGS.user_header, is_loopback(chainlit_config.run.host)),
        default_app_dir(),
        local_user=SETTINGS.local_user,
        user_header=SETTINGS.user_header,
        allowed_users=SETTINGS.allowed_users,
        throttle=LoginThrottle(
            SETTINGS.login_attempts_per_user, SETTINGS.login_attempts_per_address, SETTINGS.login_window_s
        ),
    )
except AuthSetupError as exc:
    raise SystemExit(f"Weaver UI: {exc}") from None
GUARD = _install_guard()


def _refuse_unsandboxed_sharing() -> None:
    """When several people use this server (a login other than local, or an address other machines
    can reach), users' code must run sandboxed unless the operator said otherwise by name: refuse
    to start, saying why, before anything is served."""
    reasons = []
    if LOGIN.mode != "local":
        reasons.append(f"with {LOGIN.mode} login")
    if not is_loopback(chainlit_config.run.host):
        reasons.append(f"on {chainlit_config.run.host}, which other machines can reach")
    if not reasons:
        return
    try:
        require_sandbox(load_config(default_app_dir()), " and ".join(reasons))
    except (SandboxUnavailableError, ConfigError) as exc:
        raise SystemExit(f"Weaver UI: {exc}") from None


_refuse_unsandboxed_sharing()


def _key() -> str:
    return str(cl.context.session.id)


def _user_name() -> str:
    user = cl.user_session.get("user")
    return str(getattr(user, "identifier", "") or "anonymous")


def _client() -> str:
    """Who holds this chat, for the per-client cap: the logged-in user, else the peer address."""
    user = cl.user_session.get("user")
    if user is not None and getattr(user, "identifier", ""):
        return f"user:{user.identifier}"
    return f"addr:{guard.client_address(getattr(cl.context.session, 'environ', None))}"


def _setup_logging() -> None:
    """Make our INFO lines visible in the server log unless someone configured logging already."""
    weaver = logging.getLogger("weaver")
    if not weaver.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        weaver.addHandler(handler)
        if weaver.level == logging.NOTSET:
            weaver.setLevel(logging.INFO)


@cl.on_app_startup
async def on_app_startup() -> None:
    _setup_logging()
    logger.info("login %s", LOGIN.description)
    logger.info(
        "answering hosts %s; pages from %s may use it",
        ", ".join(sorted(GUARD.allowed_hosts)),
        ", ".join(sorted(GUARD.allowed_origins)),
    )
    app = await asyncio.to_thread(weaver_app)
    sync_upload_limit(app.config.session.max_file_mb)
    OWNER.idle_s = app.config.session.idle_timeout
    global HISTORY
    HISTORY = await open_history(
        app.app_dir,
        HISTORY_SETTINGS.database_url,
        on_thread_deleted=_forget_weaver_session,
        file_storage=HISTORY_SETTINGS.file_storage,
        url_prefix=HISTORY_FILES,
    )


@cl.on_app_shutdown
async def on_app_shutdown() -> None:
    await OWNER.close_all()
    if _app is not None:
        await asyncio.to_thread(_app.stop)


@cl.set_starters
async def starters(user: Any = None, language: str | None = None) -> list[cl.Starter]:
    return [
        cl.Starter(label="Run Python", message="```python\nimport math\nprint(math.factorial(10))\n```"),
        cl.Starter(
            label="Draw a chart",
            message="```python\nimport matplotlib.pyplot as plt\nxs = [x / 10 for x in range(-50, 51)]\n"
            "plt.plot(xs, [x * x for x in xs])\nplt.title('y = x²')\nplt.show()\n```",
        ),
        cl.Starter(label="What can you do?", message="What can you do?"),
    ]


async def _or_report(get: Awaitable[T]) -> T | None:
    """Await ``get`` (which may create a session); on failure tell the user plainly. A refusal
    (``WeaverError``) is expected and logged in a line; anything else with its traceback."""
    try:
        return await get
    except Exception as exc:
        if isinstance(exc, WeaverError):
            logger.info("no session for this chat: %s", exc)
        else:
            logger.exception("could not create a Weaver session")
        await cl.ErrorMessage(content=session_error_text(exc)).send()
        return None


@cl.on_chat_start
async def on_chat_start() -> None:
    """No session is started here: a chat gets its session and kernel with its first message, so a
    socket that never sends one holds no kernel (see ``SessionOwner.acquire``). Users are told at
    once if their code would run unsandboxed."""
    warning = _app.sandbox_warning if _app is not None else None
    if warning:
        await cl.Message(content=f"**Warning:** {warning}", author=chainlit_config.ui.name).send()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    GUARD.uploads.message_sent(_key())
    resume_id = cl.user_session.get("weaver_session_id")
    lease = await _or_report(OWNER.acquire_async(_key(), _user_name(), _client(), resume_id=resume_id))
    if lease is None:
        return
    session = lease.session
    cl.user_session.set("weaver_session", session)
    if lease.created:
        await _remember_session(session.session_id)
        for problem in getattr(session, "plugin_errors", []) or []:
            await cl.Message(content=f"Warning: {problem}", author=chainlit_config.ui.name).send()
        if session.replay_pending:
            await _restore(session)
        elif resume_id and resume_id != session.session_id:
            await cl.Message(
                content="Note: this chat's earlier Python session could not be brought back, so this is a "
                "fresh one: variables and files from before are gone.",
                author=chainlit_config.ui.name,
            ).send()
    files = uploads_from_elements(message.elements)
    text = message.content or ""
    parent = cl.context.current_step
    renderer = RoundRenderer(
        parent_id=parent.id if parent else message.id,
        execution_cwd=Path(session.execution_cwd),
        author=chainlit_config.ui.name,
        max_event_chars=SETTINGS.max_event_chars,
        max_table_rows=session.config.execution.max_table_rows,
        max_table_columns=session.config.execution.max_table_columns,
    )
    async with lease.round_lock:  # one round at a time per chat; core refuses overlapping rounds
        await pump_round(
            lambda handler: session.send_message(text, event_handler=handler, files=files or None),
            renderer,
            session.cancel,
        )


async def _remember_session(session_id: str) -> None:
    """Note the chat's Weaver session in the chat itself, at once (Chainlit would only save it when
    the socket closes, and a crash before that would lose the way back)."""
    cl.user_session.set("weaver_session_id", session_id)
    thread_id = getattr(cl.context.session, "thread_id", None)
    if HISTORY is not None and thread_id:
        try:
            await HISTORY.update_thread(thread_id, metadata={"weaver_session_id": session_id})
        except Exception:
            logger.exception("could not note weaver session %s in chat %s", session_id, thread_id)


async def _restore(session: Session) -> None:
    """Run a resumed chat's earlier code again, with a visible step saying how it goes."""
    loop = asyncio.get_running_loop()
    step = cl.Step(name="Restoring your session", type="tool", default_open=True, show_input=False)
    step.output = "Running your earlier code again to rebuild its variables…"
    await step.send()

    def progress(done: int, total: int) -> None:
        text = f"Running your earlier code again to rebuild its variables… step {done} of {total}"
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(step.stream_token(text, is_sequence=True)))

    try:
        report = await run_in_thread(session.replay_code, progress, name="weaver-restore")
        step.output = report.summary()
        step.is_error = not report.complete
    except WeaverError as exc:
        step.output, step.is_error = str(exc), True
    except Exception:
        logger.exception("restoring weaver session %s failed", session.session_id)
        step.output, step.is_error = (
            "Your earlier variables could not be restored; the chat goes on without them.",
            True,
        )
    await step.update()


@cl.on_chat_resume
async def on_chat_resume(thread: dict[str, Any]) -> None:
    """An old chat was opened: remember its Weaver session; it comes back with the next message."""
    metadata = thread.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata or "{}")
    session_id = metadata.get("weaver_session_id") if isinstance(metadata, dict) else None
    if isinstance(session_id, str) and session_id:
        cl.user_session.set("weaver_session_id", session_id)


@cl.on_stop
async def on_stop() -> None:
    """Stop button: cancel this chat's round. ``Session.cancel`` only sets an event, so it runs
    right here on the loop rather than waiting for a free worker thread."""
    session = cl.user_session.get("weaver_session")
    if session is not None:
        session.cancel()


@cl.on_chat_end
async def on_chat_end() -> None:
    # Chainlit sets to_clear when the user asked for a new chat: that chat will never come back.
    cleared = bool(getattr(cl.context.session, "to_clear", False))
    if cleared:
        GUARD.uploads.message_sent(_key())
    OWNER.release(_key(), immediate=cleared)
