"""Weaver's web chat: the Chainlit entry point (``chainlit run ui/app.py`` from the repo root).

A thin adapter over ``core``'s public API. One ``TaskWeaverApp`` per server process; one Weaver
``Session`` per browser chat, owned by ``ui.lifecycle.SessionOwner`` (read its docstring for why
a disconnect stops the kernel only after a grace period). Each message runs its round on a
worker thread; ``ui.render`` brings the events back to the event loop and draws them as steps.
Who the user is comes from the login mode (``ui.logins``); the signed-in identity is every
session's ``user_name``. What a request may do is checked first by ``ui.guards``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, TypeVar, cast

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `chainlit run ui/app.py` puts ui/ on the path, not the repo root
    sys.path.insert(0, str(REPO_ROOT))

import chainlit as cl  # noqa: E402
from chainlit.chat_context import chat_context  # noqa: E402
from chainlit.config import config as chainlit_config  # noqa: E402
from chainlit.input_widget import Select, Slider, Switch  # noqa: E402
from chainlit.types import ThreadDict  # noqa: E402

from core import (  # noqa: E402
    NothingToRerun,
    Round,
    RoundInProgress,
    Session,
    SessionEventHandler,
    TaskWeaverApp,
    WeaverError,
)
from core.tracing import shutdown_tracing  # noqa: E402
from core.usage import RoundUsage  # noqa: E402
from ui import approval, chat_menu, server  # noqa: E402  (importing ``server`` sets this server up)
from ui import rerun as rerun_ui  # noqa: E402
from ui import shutdown_steps as shutdown  # noqa: E402
from ui.bridge import in_background, run_in_thread  # noqa: E402
from ui.check import CheckReport, run_check_async  # noqa: E402
from ui.drain import DRAIN  # noqa: E402
from ui.files import uploads_from_elements  # noqa: E402
from ui.guards import client_address  # noqa: E402
from ui.heap import freeze_startup_objects  # noqa: E402
from ui.history.usage import add_usage  # noqa: E402
from ui.lifecycle import idle_note, session_error_text  # noqa: E402
from ui.log_setup import setup as setup_log  # noqa: E402
from ui.outputs import ACTION as OUTPUTS_ACTION  # noqa: E402
from ui.outputs import Folder, files_action, session_folder, show_outputs, stored_folder  # noqa: E402
from ui.render import RoundRenderer, pump_round  # noqa: E402
from ui.reopen import last_answer_id, remove_stop_notice  # noqa: E402
from ui.restore import SKIP_ACTION as SKIP_RESTORE  # noqa: E402
from ui.restore import restore_session  # noqa: E402
from ui.restore import skip as skip_restore  # noqa: E402
from ui.startup import stop_server_on_failure  # noqa: E402
from ui.view import model_picker_note, safe_markdown  # noqa: E402
from ui.welcome import EXPAND_STEPS_NOTE, dataset_starters, send_welcome  # noqa: E402

logger = logging.getLogger("weaver.ui.app")
MODEL_CHECK: CheckReport | None = None  # the model check made at start, when a model is configured
# Answer first: each user's choice to see every step expanded (for this server's lifetime).
EXPANDED_BY_USER: dict[str, bool] = {}
# Each user's choice to approve code before it runs (None: code_interpreter.require_confirmation).
APPROVAL_BY_USER: dict[str, bool] = {}
T = TypeVar("T")


def _key() -> str:
    return str(cl.context.session.id)


def _user_name() -> str:
    user = cl.user_session.get("user")
    return str(getattr(user, "identifier", "") or "anonymous")


def _client() -> str:
    """Who holds this chat, for the per-client cap: the logged-in user, else the peer address."""
    identifier = getattr(cl.user_session.get("user"), "identifier", None)
    if identifier:
        return f"user:{identifier}"
    return f"addr:{client_address(getattr(cl.context.session, 'environ', None))}"


def _setup_logging() -> None:
    """Our INFO lines in the server log, every line (uvicorn's too) in ``WEAVER_LOG_FORMAT``."""
    setup_log()


@cl.on_app_startup
@stop_server_on_failure  # a start that fails ends the process (Chainlit would serve a broken app)
async def on_app_startup() -> None:
    _setup_logging()
    logger.info("login %s; a login lasts %g h", server.LOGIN.description, server.SETTINGS.session_hours)
    logger.info(
        "answering hosts %s; pages from %s may use it",
        ", ".join(sorted(server.GUARD.allowed_hosts)),
        ", ".join(sorted(server.GUARD.allowed_origins)),
    )
    app = await asyncio.to_thread(server.weaver_app)
    server.sync_upload_limit(app.config.session.max_file_mb)
    server.OWNER.idle_s = app.config.session.idle_timeout
    await server.open_chat_history(app)
    if app.config.llm.resolved_api_type != "offline" and server.SETTINGS.check_model_at_start:
        in_background(_check_model(app), "the model check at start")
    freeze_startup_objects()  # last: everything start-up made is alive by now


async def _check_model(app: TaskWeaverApp) -> None:
    """Check the model connection once at start, so a broken set-up is a banner in every chat,
    not a failure at someone's first message."""
    global MODEL_CHECK
    try:
        MODEL_CHECK = await run_check_async(app.config)
    except Exception:
        logger.exception("the model check at start failed to run")
        return
    (logger.info if MODEL_CHECK.ok else logger.warning)("%s", MODEL_CHECK.summary)


@cl.on_app_shutdown
async def on_app_shutdown() -> None:
    # Each step logs its own failure and the slow ones are bounded (ui/shutdown_steps.py): Chainlit
    # closes the history after this hook, and not at all if it raises.
    await shutdown.step("the ended-logins watcher", server.ENDED_LOGINS.stop())
    keep = server.hands_over_kernels()  # after a drain, with a gateway: another replica adopts them
    await shutdown.step("stopping the sessions", server.OWNER.close_all(keep_kernels=keep), shutdown.SESSIONS_STOP_S)
    if server.LIVE is not None:
        await shutdown.step("the live-chat registry", server.LIVE.stop(hand_over=keep), shutdown.LIVE_STOP_S)
    engine = server.running_engine()
    if engine is not None:
        await shutdown.step("stopping the engine", asyncio.to_thread(engine.stop), shutdown.ENGINE_STOP_S)
    flush = asyncio.to_thread(shutdown_tracing, shutdown.TRACING_FLUSH_S)  # Chainlit's os._exit skips the SDK's
    await shutdown.step("sending queued spans", flush, shutdown.TRACING_FLUSH_S + 1)


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
    ] + dataset_starters(engine.datasets if (engine := server.running_engine()) is not None else [])


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
    engine = server.running_engine()
    warning = engine.sandbox_warning if engine is not None else None
    if warning:
        await cl.Message(content=f"**Warning:** {warning}", author=chainlit_config.ui.name).send()
    if MODEL_CHECK is not None and not MODEL_CHECK.ok:
        await cl.ErrorMessage(
            content=f"{MODEL_CHECK.summary} Ask the operator to run `weaver check`.", author=chainlit_config.ui.name
        ).send()
    if server.greets_as_admin(_user_name()):
        root = chainlit_config.run.root_path or ""
        await cl.Message(
            content=f"You are an administrator: users, live sessions, feedback and figures are on "
            f"[the admin page]({root}/admin).",
            author=chainlit_config.ui.name,
        ).send()
    if engine is None:
        return
    await send_welcome(engine.datasets, engine.config.llm.resolved_api_type == "offline")
    await _send_chat_settings(engine)


async def _send_chat_settings(engine: TaskWeaverApp) -> None:
    """The gear in the composer: how steps are shown (the user's choice, for all their chats) and,
    with several models, the chat's model and temperature."""
    widgets: list[Any] = [
        Switch(
            id="expand_steps",
            label="Show every step expanded",
            description=EXPAND_STEPS_NOTE,
            initial=EXPANDED_BY_USER.get(_user_name(), False),
        ),
        Switch(
            id=approval.SETTING,
            label="Approve code before it runs",
            description="Generated code waits for your Run, Edit or Cancel (in all your chats).",
            initial=_code_approval(engine),
        ),
    ]
    if len(engine.models) > 1:
        widgets += [
            Select(
                id="model",
                label="Model",
                values=engine.models,
                initial_index=0,
                description=model_picker_note(engine.config),
            ),
            Slider(
                id="temperature", label="Temperature", initial=engine.config.llm.temperature, min=0, max=2, step=0.1
            ),
        ]
    await cl.ChatSettings(widgets).send()


def _code_approval(engine: TaskWeaverApp) -> bool:
    """The chat's approval switch: its own choice, else ``code_interpreter.require_confirmation``."""
    chosen = APPROVAL_BY_USER.get(_user_name())
    return bool(engine.config.code_interpreter.require_confirmation if chosen is None else chosen)


@cl.on_settings_update
async def on_settings_update(settings: dict[str, Any]) -> None:
    """A chat chose another model or temperature (from its next round), or how steps are shown
    (remembered for the user's next chats too)."""
    if "expand_steps" in settings:
        EXPANDED_BY_USER[_user_name()] = bool(settings["expand_steps"])
    if approval.SETTING in settings:
        APPROVAL_BY_USER[_user_name()] = bool(settings[approval.SETTING])
        if (session := cl.user_session.get("weaver_session")) is not None:
            session.set_code_approval(bool(settings[approval.SETTING]))
    if "model" not in settings:
        return
    cl.user_session.set("weaver_llm", (settings.get("model"), settings.get("temperature")))
    session = cl.user_session.get("weaver_session")
    if session is not None:
        await _apply_llm(session)


async def _apply_llm(session: Session) -> None:
    choice = cl.user_session.get("weaver_llm")
    if not choice:
        return
    name, temperature = choice
    try:
        session.set_llm(name, None if temperature is None else round(float(temperature), 1))
    except (WeaverError, TypeError, ValueError) as exc:  # the values come from the browser
        cl.user_session.set("weaver_llm", None)
        await cl.ErrorMessage(
            content=f"That model setting cannot be used: {exc}", author=chainlit_config.ui.name
        ).send()


@cl.on_message
@DRAIN.one_round  # a round the drain waits for; none starts while draining
async def on_message(message: cl.Message) -> None:
    server.GUARD.uploads.message_sent(_key())
    if server.ENDED_LOGINS.refused(_key()):  # signed out, removed or a new password since this socket connected
        return
    resume_id = cl.user_session.get("weaver_session_id")
    lease = await _or_report(server.OWNER.acquire_async(_key(), _user_name(), _client(), resume_id=resume_id))
    if lease is None:
        return
    session = lease.session
    cl.user_session.set("weaver_session", session)
    await _apply_llm(session)
    session.set_code_approval(APPROVAL_BY_USER.get(_user_name()))
    if lease.created:
        server.track_kernel(_key(), session)
        _remember_session(session.session_id)
        for problem in getattr(session, "plugin_errors", []) or []:
            await cl.Message(content=f"Warning: {problem}", author=chainlit_config.ui.name).send()
        if lease.after_idle and server.OWNER.idle_s:
            note = idle_note(server.OWNER.idle_s, session.replay_pending)
            await cl.Message(content=note, author=chainlit_config.ui.name).send()
        if session.replay_pending:
            await _restore(session, lease.round_lock)
        elif resume_id and resume_id != session.session_id:
            await cl.Message(
                content="Note: this chat's earlier Python session could not be brought back, so this is a "
                "fresh one: variables and files from before are gone.",
                author=chainlit_config.ui.name,
            ).send()
    # core's file entries are keyed by Literal names; ui.files builds them with those keys as str
    files = cast(list[dict[Literal["name", "path", "content"], Any]], uploads_from_elements(message.elements))
    text = message.content or ""
    parent = cl.context.current_step
    await _draw_round(
        session,
        lease.round_lock,
        parent.id if parent else message.id,
        message.id,
        lambda handler: session.send_message(text, event_handler=handler, files=files or None),
    )


async def _draw_round(
    session: Session,
    round_lock: asyncio.Lock,
    parent_id: str,
    message_id: str,
    send: Callable[[SessionEventHandler], Round],
) -> None:
    """Run one round (``send``: ``send_message`` or ``rerun``) and draw it under the user's message."""
    renderer = RoundRenderer(
        parent_id=parent_id,
        execution_cwd=Path(session.execution_cwd),
        author=chainlit_config.ui.name,
        max_event_chars=server.SETTINGS.max_event_chars,
        max_attached_bytes=server.SETTINGS.max_attached_mb * 2**20,
        max_table_rows=session.config.execution.max_table_rows,
        max_table_columns=session.config.execution.max_table_columns,
        max_output_chars=session.config.execution.max_output_chars,
        # Each step names its model where models differ: a choice of models, or roles with their own.
        show_model=len(getattr(session, "llm_models", [])) > 1 or bool(getattr(session, "role_models", None)),
        expand_steps=EXPANDED_BY_USER.get(_user_name(), False),
    )
    regenerate: list[cl.Action] = []

    async def closing() -> list[cl.Action]:
        round_id = renderer.outcome.round_id if renderer.outcome is not None else None
        regenerate[:] = [rerun_ui.regenerate_action(round_id)] if round_id else []
        return regenerate + await _files_action(session)

    renderer.closing_actions = closing
    renderer.on_approval = lambda post_id, request: approval.ask(session, post_id, request, chainlit_config.ui.name)
    async with round_lock:  # one round at a time per chat; core refuses overlapping rounds
        outcome = await pump_round(send, renderer, session.cancel)
    if outcome.round_id is not None:
        steps = [state.step for state in renderer.steps.values()]
        if renderer.usage_step is not None:
            steps.append(renderer.usage_step)
        await rerun_ui.remember(
            rerun_ui.DrawnRound(outcome.round_id, message_id, steps, regenerate[0] if regenerate else None)
        )
    if outcome.state == "cancelled":  # the round said so itself
        await remove_stop_notice()
    if outcome.usage is not None:
        await _count_usage(_user_name(), outcome.usage)


async def _count_usage(user: str, usage: RoundUsage) -> None:
    """Add the round's tokens to the user's totals in the history (admins read them); a database
    that does not answer costs the count, never the round."""
    history = server.HISTORY
    if history is None or not usage.reported:
        return
    try:
        await add_usage(history, user, usage)
    except Exception:
        logging.getLogger("weaver.ui").warning("the round's token usage was not stored", exc_info=True)


async def _rerun(message_id: str | None, text: str | None) -> None:
    """Regenerate the last answer (``message_id`` None) or re-run an edited message: its round and
    every later one are removed from the page and the history, then run again by the engine from
    the kernel state before it (``Session.rerun``)."""
    if server.ENDED_LOGINS.refused(_key()):
        return
    session = cl.user_session.get("weaver_session")
    lease = await _or_report(server.OWNER.acquire_async(_key(), _user_name(), _client())) if session else None
    if lease is not None and lease.round_lock.locked():
        await cl.ErrorMessage(content=str(RoundInProgress()), author=chainlit_config.ui.name).send()
        return
    index = rerun_ui.find(message_id)
    if lease is None or index is None:
        await cl.ErrorMessage(
            content="This message cannot be run again: it was not sent in this visit to the chat. "
            "Send it as a new message instead.",
            author=chainlit_config.ui.name,
        ).send()
        return
    entry = rerun_ui.drawn()[index]
    round_id = entry.round_id
    if round_id not in {r.id for r in session.rounds}:  # checked before the page loses anything
        await cl.ErrorMessage(content=str(NothingToRerun(round_id)), author=chainlit_config.ui.name).send()
        return
    await cl.context.emitter.task_start()  # the page shows the round running, with its Stop button
    try:
        if text is not None:
            for message in chat_context.get():
                if message.id == entry.message_id:
                    message.content = text
                    await message.update()
        await rerun_ui.erase_from(index)
        async with cl.Step(name="on_message", type="run", parent_id=entry.message_id) as run:  # as a sent message's
            await _draw_round(
                session,
                lease.round_lock,
                run.id,
                entry.message_id,
                lambda handler: session.rerun(round_id, text, event_handler=handler),
            )
    finally:
        await cl.context.emitter.task_end()
    redrawn = rerun_ui.drawn()
    if redrawn and redrawn[-1].message_id == entry.message_id:
        redrawn[-1].steps.append(run)  # a later re-run removes this one too
    report = session.last_rerun
    if report is not None and report.note():
        await cl.Message(content=safe_markdown(report.note(), 20_000), author=chainlit_config.ui.name).send()


@rerun_ui.on_edit
@DRAIN.one_round
async def on_edit(message_id: str, text: str) -> None:
    """A sent message was edited (the ``edit_message`` patch, only while editing is on)."""
    await _rerun(message_id, text)


@cl.action_callback(rerun_ui.ACTION)
async def on_regenerate(action: cl.Action) -> None:
    """The "Regenerate" button under the last answer. The round runs as the chat's task (Chainlit
    calls actions from an HTTP request, which would otherwise wait for the whole round), so Stop
    reaches it as it reaches a sent message."""
    last = rerun_ui.drawn()[-1].round_id if rerun_ui.drawn() else None
    if action.payload.get("round") != last:
        await cl.ErrorMessage(
            content="Only the last answer can be regenerated; edit its message to run an earlier one again.",
            author=chainlit_config.ui.name,
        ).send()
        return
    cl.context.session.current_task = asyncio.ensure_future(_regenerate())


@DRAIN.one_round
async def _regenerate() -> None:
    try:
        await _rerun(None, None)
    except asyncio.CancelledError:  # Stop: the engine was told (on_stop); the round ends by itself
        pass


async def _files_action(session: Session) -> list[cl.Action]:
    """The "Files (N)" button under a round's last message (the chat's files, counted now), and the
    chat's Export and Share buttons (``ui.chat_menu``)."""
    listing = await run_in_thread(session.files, 0, name="weaver-count-files")
    return ([files_action(listing.total_files)] if listing.total_files else []) + chat_menu.menu_actions()


@cl.action_callback(chat_menu.EXPORT_ACTION)
async def on_export(action: cl.Action) -> None:
    """The "Export" button: download links for this chat as a notebook and as Markdown (owner only)."""
    if not server.ENDED_LOGINS.refused(_key()):
        await chat_menu.export_links(server.HISTORY)


@cl.action_callback(chat_menu.SHARE_ACTION)
async def on_share(action: cl.Action) -> None:
    """The "Share" button: this chat's read-only link (owner only; ``WEAVER_UI_SHARING``)."""
    if not server.ENDED_LOGINS.refused(_key()):
        await chat_menu.share(server.HISTORY)


@cl.action_callback(chat_menu.UNSHARE_ACTION)
async def on_unshare(action: cl.Action) -> None:
    """The "Stop sharing" button: the chat's link is revoked."""
    if not server.ENDED_LOGINS.refused(_key()):
        await chat_menu.unshare(server.HISTORY)


@cl.action_callback(chat_menu.EXPERIENCE_ACTION)
async def on_save_experience(action: cl.Action) -> None:
    """The "Save as experience" button: the chat summarised into a tip (owner only)."""
    if not server.ENDED_LOGINS.refused(_key()):
        await chat_menu.save_experience(server.HISTORY, server.weaver_app)


@cl.action_callback(OUTPUTS_ACTION)
async def on_files(action: cl.Action) -> None:
    """The "Files" button: the chat's files in the side panel."""
    if server.ENDED_LOGINS.refused(_key()):
        return
    session = cl.user_session.get("weaver_session")
    folder = session_folder(session) if session is not None else _stored_folder()
    if folder is None:
        await cl.Message(content="This chat has no files yet.", author=chainlit_config.ui.name).send()
        return
    await show_outputs(folder, server.SETTINGS.max_attached_mb * 2**20)


def _stored_folder() -> Folder | None:
    """The folder of a reopened chat's Weaver session, before its next message brings it back."""
    engine, session_id = server.running_engine(), cl.user_session.get("weaver_session_id")
    if engine is None or not isinstance(session_id, str):
        return None
    return stored_folder(engine.workspace.execution_cwd, session_id, engine.config.execution.disk_mb)


def _remember_session(session_id: str) -> None:
    """Note the chat's Weaver session in the chat itself, at once (Chainlit would only save it when
    the socket closes, and a crash before that would lose the way back). The write goes on beside
    the round rather than before it: on SQLite it may wait for the write lock, and the user's
    first step should not."""
    cl.user_session.set("weaver_session_id", session_id)
    thread_id = getattr(cl.context.session, "thread_id", None)
    if server.HISTORY is not None and thread_id:
        in_background(_note_session(thread_id, session_id, _key()), f"noting session {session_id} in chat {thread_id}")


async def _note_session(thread_id: str, session_id: str, key: str) -> None:
    if server.HISTORY is not None:
        await server.HISTORY.update_thread(thread_id, metadata={"weaver_session_id": session_id})
    if server.LIVE is not None:  # so the page can reconnect into this chat on another replica
        await server.LIVE.note_thread(key, thread_id)


async def _restore(session: Session, round_lock: asyncio.Lock) -> None:
    """Bring a resumed chat's variables back, shown as a step with a "Skip restore" button (``ui.restore``)."""
    await restore_session(session, chainlit_config.ui.name, round_lock)


@cl.action_callback(SKIP_RESTORE)
async def on_skip_restore(action: cl.Action) -> None:
    """The "Skip restore" button: the chat goes on without waiting for its earlier variables."""
    if not server.ENDED_LOGINS.refused(_key()):
        skip_restore(cl.user_session.get("weaver_session"))


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    """An old chat was opened: remember its Weaver session (it comes back with the next message), and
    show at once the chat settings and the "Files (N)" button under its last answer."""
    metadata: Any = thread.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata or "{}")
    session_id = metadata.get("weaver_session_id") if isinstance(metadata, dict) else None
    if isinstance(session_id, str) and session_id:
        cl.user_session.set("weaver_session_id", session_id)
    engine = server.running_engine()
    if engine is not None:  # what a chat shows after a message, shown before one too
        await _send_chat_settings(engine)
    folder = _stored_folder()
    answer_id = last_answer_id(thread)
    if folder is not None and answer_id:
        count = (await run_in_thread(folder.list, 0, name="weaver-count-files")).total_files
        if count:
            await files_action(count).send(for_id=answer_id)
    if answer_id:
        for menu_action in chat_menu.menu_actions():
            await menu_action.send(for_id=answer_id)


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
        server.GUARD.uploads.message_sent(_key())
    server.OWNER.release(_key(), immediate=cleared)
