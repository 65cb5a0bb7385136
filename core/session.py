"""A Session: one user's conversation, with its own kernel, folder, variables and rounds."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional

from injector import Injector, inject

from core import metrics
from core.approval import Approval, ApprovalGate, Decision
from core.cancel import CancelToken, RoundCancelled
from core.compression import RoundCompressor, SummaryStore
from core.config import AppSessionConfig, LLMSettings
from core.datasets import DatasetCatalog
from core.errors import ConfigError, NothingToRerun, RoundInProgress, SessionFull, SessionStopped
from core.events import (
    EventEmitter,
    RoundEnded,
    RoundEventType,
    RoundStarted,
    SessionEventHandler,
)
from core.execution.backend import KernelBackend
from core.execution.kernel import KernelExecutor
from core.execution.limits import MB, incoming_bytes
from core.execution.pool import StartGate
from core.files import FileListing, add_files, files_in_prefix, files_prefix, list_files, split_files_prefix
from core.llm.base import ChatRequest, LLMBackend, LLMError
from core.llm.factory import ModelChoices
from core.llm.role_models import ROLE_SECTIONS, RoleModels
from core.memory import Memory, Post, Round
from core.plugins.api import MAX_SESSION_VAR_NAME
from core.plugins.catalog import PluginCatalog, describe_plugins
from core.plugins.selection import PluginSelector
from core.plugins.spec import PluginSpec
from core.rerun import RerunReport
from core.resume import Progress, ReplayReport, RestoreOutcome, load_rounds, restore
from core.roles.context import RoundContext, RoundFailed
from core.roles.protocol import PLANNER, USER
from core.roles.registry import RoleDeps, RoleRegistry
from core.snapshot import Snapshots, ran_code
from core.telemetry import SessionLog, TelemetryLogger
from core.tracing import Tracing
from core.usage import RoundUsage, round_usage
from core.workspace import Workspace

STOP_WAIT_S = 15.0


class _SessionLLM(LLMBackend):
    """The session's model: the choice in use, swapped by ``Session.set_llm`` between rounds."""

    def __init__(self, backend: LLMBackend, model_name: str) -> None:
        self.backend = backend
        self.model_name = model_name
        self.name = backend.name

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        return self.backend.stream_chat(request, cancel)

    def revises_code(self) -> bool:
        return self.backend.revises_code()

    def configured(self) -> LLMSettings | None:
        return self.backend.configured()

    def close(self) -> None:
        """The backends are the app's (shared by sessions); it closes them."""


class _SessionEmitter(EventEmitter):
    """Tells the model in use in each post's ``post_start`` (``PostStarted.model``), for the UI."""

    def __init__(self, llm: _SessionLLM, own_models: dict[str, str] | None = None) -> None:
        super().__init__()
        self._llm = llm
        self.own_models = own_models or {}  # role alias -> the model of its own llm_alias

    @property
    def model_name(self) -> str | None:
        return self._llm.model_name

    def model_for(self, role: str) -> str | None:
        return self.own_models.get(role, self._llm.model_name)


def _reported_usage(rnd: Round) -> RoundUsage | None:
    """The round's usage for ``RoundEnded``, None where no model server reported tokens (offline)."""
    usage = round_usage(rnd)
    return usage if usage.reported else None


def new_executor(
    session_id: str,
    cwd: Path,
    config: AppSessionConfig,
    plugins: PluginCatalog,
    start_gate: StartGate | None,
    backend: KernelBackend,
    attach_to: str | None = None,
) -> KernelExecutor:
    """The kernel executor of one session (or of a pooled kernel reserved for one), not started yet,
    its kernel made by the app's ``backend``; ``attach_to``: its kernel that another server started
    (where the backend's kernels outlive their server), to connect to first."""
    return KernelExecutor(
        session_id,
        cwd,
        plugins.specs,
        timeout=config.execution.timeout,
        start_timeout=config.execution.kernel_start_timeout,
        settings=config.execution,
        start_gate=start_gate,
        session_var_limits=(config.session.max_session_vars, config.session.max_session_var_chars),
        attach_to=attach_to,
        backend=backend,
    )


class Session:
    @inject
    def __init__(
        self,
        session_id: str,
        workspace: Workspace,
        app_injector: Injector,
        logger: TelemetryLogger,
        tracing: Tracing,
        config: AppSessionConfig,
        role_registry: RoleRegistry,
        start_gate: StartGate,
        kernel_backend: KernelBackend,
        executor: Optional[KernelExecutor] = None,
    ) -> None:
        """``executor``: a warm kernel from the app's pool, started for ``session_id`` and its folder."""
        self.session_id = session_id
        self.workspace = workspace.session_dir(session_id)
        self.cwd: Path = workspace.execution_cwd(session_id)  # the working folder, for Weaver's own code
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.execution_cwd: str = str(self.cwd)  # TaskWeaver's name and type
        self.logger = logger
        self.tracing = tracing
        self.config = config
        self.session_var: dict[str, str] = {}
        self.rounds: list[Round] = []
        self.memory = Memory(session_id, self.rounds)  # TaskWeaver's view of the same rounds
        self.replay_pending = False  # resumed with earlier rounds whose code has not been run again yet
        self._models: ModelChoices = app_injector.get(ModelChoices)
        self._llm = _SessionLLM(self._models.get(None), self._models.default_name)
        self._llm_next: tuple[str, float | None] | None = None  # set_llm's choice, taken at the next round
        self.llm_temperature: float | None = None  # None: the chosen model's own llm.temperature
        # Roles with their own <role>.llm_alias call that model; the others the session's (the picker's).
        role_models: RoleModels = app_injector.get(RoleModels)
        own = {alias: role_models.own_backend(alias) for alias in role_registry.aliases if alias in ROLE_SECTIONS}
        role_llms = {alias: backend for alias, backend in own.items() if backend is not None}
        own_names = {alias: role_models.settings_for_role(alias).model for alias in role_llms}
        self._own_models = own_names
        self.emitter: EventEmitter = _SessionEmitter(self._llm, own_names)
        self.log = SessionLog(self.workspace, session_id, parent=logger)
        plugins: PluginCatalog = app_injector.get(PluginCatalog)
        warm = executor is not None
        self.executor = executor or new_executor(session_id, self.cwd, config, plugins, start_gate, kernel_backend)
        self.executor.on_session_vars = self._merge_plugin_vars
        self._plugin_catalog = plugins
        self.roles = role_registry.create_roles(
            RoleDeps(
                llm=self._llm,
                role_llms=role_llms,
                config=config,
                executor=self.executor,
                plugins_prompt=self._plugins_prompt,
                workers=tuple(a for a in role_registry.aliases if a != PLANNER),
                plugin_specs=self._plugin_specs,
                plugin_selector=app_injector.get(PluginSelector),
                intros=role_registry.intros,
            )
        )
        self.summaries = SummaryStore(self.workspace)  # prompt compression's, per role; a resume loads them
        self._attach_compressors(role_models.own_backend("round_compressor") or self._llm)
        datasets = app_injector.get(DatasetCatalog).prompt(config.session.max_dataset_prompt_chars)
        for role in self.roles.values():
            prompt = getattr(role, "prompt", None)
            if prompt is not None and hasattr(prompt, "datasets"):
                prompt.datasets = datasets
        self._round_lock = threading.Lock()
        self._cancel: CancelToken | None = None
        # Kernels that outlive their server (a gateway's) are adopted instead; their files travel after
        # every run, and a snapshot with them would be copied each time.
        snapshot_mb = 0 if kernel_backend.kernels_outlive_server else config.session.snapshot_max_mb
        self.snapshots = Snapshots(self.executor, snapshot_mb, self.log.logger, self.cwd)
        self._restoring = False
        self._stopped = False
        self.last_rerun: RerunReport | None = None  # how the latest ``rerun`` brought the kernel back
        self.approvals = ApprovalGate()
        self.code_approval: bool | None = None  # this chat's choice; None: code_interpreter.require_confirmation
        self.log.logger.info(
            "session %s started in %s%s", session_id, self.cwd, " with a kernel handed over" if warm else ""
        )
        if config.execution.prewarm and not warm:
            threading.Thread(target=self._prewarm, name=f"prewarm-{session_id}", daemon=True).start()

    def _prewarm(self) -> None:
        """Start the kernel in the background so the first code runs without waiting for it."""
        try:
            self.executor.start()
        except Exception as exc:  # the first execution reports it to the user
            self.log.logger.warning("kernel pre-start failed: %s", exc)

    @property
    def plugin_errors(self) -> list[str]:
        """Plugins that failed to load, as sentences to show the user."""
        return self._plugin_catalog.errors + self.executor.plugin_errors

    def _plugin_specs(self) -> list[PluginSpec]:
        """The plugins the model may call: those that loaded in the kernel, once it has started."""
        if self.executor.pid:
            return list(self.executor.plugin_specs)
        return list(self._plugin_catalog.specs)

    def _plugins_prompt(self) -> str:
        return describe_plugins(self._plugin_specs())

    @property
    def is_stopped(self) -> bool:
        return self._stopped

    def update_session_var(self, variables: Dict[str, str]) -> None:
        """Merge ``variables`` into this session's variables; plugins read them before each execution."""
        if not isinstance(variables, dict):
            raise ValueError("session variables must be a dict of str to str")
        for key, value in variables.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"session variable {key!r} must map a str to a str")
        self.session_var.update(variables)

    def _merge_plugin_vars(self, changed: Dict[str, str]) -> None:
        """Take the variables plugins set in an execution (``ctx.set_session_var``); the kernel is not
        trusted, so the bounds are checked again here and anything past them is dropped and logged."""
        limits = self.config.session
        for key, value in changed.items():
            if not key or len(key) > MAX_SESSION_VAR_NAME or len(value) > limits.max_session_var_chars:
                self.log.logger.warning("session variable %.60r from a plugin dropped: too long", key)
            elif key not in self.session_var and len(self.session_var) >= limits.max_session_vars:
                self.log.logger.warning(
                    "session variable %.60r from a plugin dropped: session.max_session_vars reached", key
                )
            else:
                self.session_var[key] = value

    @property
    def llm_models(self) -> list[str]:
        """The names of the models this session may use (``llm.models``), the default first."""
        return self._models.names

    @property
    def role_models(self) -> dict[str, str]:
        """The roles that call a model of their own (``<role>.llm_alias``), with that model's name;
        the others call ``llm_name``."""
        return dict(self._own_models)

    @property
    def llm_name(self) -> str:
        """The model the next round uses (its name among ``llm_models``)."""
        return self._llm_next[0] if self._llm_next is not None else self._llm.model_name

    def set_llm(self, name: Optional[str] = None, temperature: Optional[float] = None) -> None:
        """Use the model ``name`` (one of ``llm_models``; None: the default) with ``temperature``
        (None: that model's ``llm.temperature``) from the next round of this session on; a round
        already running keeps its model. Raises ``ConfigError`` for an unknown name or a temperature
        outside 0..2."""
        try:
            self._models.get(name, temperature)  # made now, so a bad choice fails here, not mid-round
        except (KeyError, ValueError) as exc:
            raise ConfigError(str(exc.args[0]) if exc.args else str(exc)) from None
        self._llm_next = (name or self._models.default_name, temperature)

    def _take_llm_choice(self) -> None:
        if self._llm_next is None:
            return
        name, temperature = self._llm_next
        self._llm_next = None
        self._llm.backend = self._models.get(name, temperature)
        self._llm.model_name = name
        self._llm.name = self._llm.backend.name
        self.llm_temperature = temperature
        self.log.logger.info("session %s now uses model %s (temperature %s)", self.session_id, name, temperature)

    def send_message(
        self,
        message: str,
        event_handler: Optional[SessionEventHandler] = None,
        files: Optional[List[Dict[Literal["name", "path", "content"], Any]]] = None,
    ) -> Round:
        """Run one round for ``message``; refusals raise a ``WeaverError`` before it starts:
        ``BadFiles`` (``SessionFull``), ``SessionStopped``, ``RoundInProgress``.

        Once the round has started this never raises: failures set ``state`` and ``error``.
        """
        if self._stopped:
            raise SessionStopped(self.session_id)
        if not self._round_lock.acquire(blocking=False):
            raise RoundInProgress()
        try:
            if self._stopped:  # stop() ran between the first check and taking the lock
                raise SessionStopped(self.session_id)
            self._check_room(list(files or []))
            names = add_files(self.cwd, list(files or []), int(self.config.session.max_file_mb * 1e6))
            rnd = Round(user_query=files_prefix(names) + message)
            self.snapshots.code_may_run()
            with self._round_running(event_handler) as cancel:
                self._run_round(rnd, names, cancel)
            if ran_code(rnd):
                self.snapshots.round_ran_code(rnd.id)
            return rnd
        finally:
            self._round_lock.release()
            if not self._stopped:
                self.snapshots.in_background()  # the chat is idle: its variables are saved meanwhile

    @contextmanager
    def _round_running(self, event_handler: Optional[SessionEventHandler]) -> Iterator[CancelToken]:
        """While a round runs (the round lock held): its cancel token, for ``stop``, and the
        caller's event handler, registered for this round only."""
        self._cancel = cancel = CancelToken()
        if event_handler is not None:
            self.emitter.register(event_handler)
        try:
            yield cancel
        finally:
            if event_handler is not None:
                self.emitter.unregister(event_handler)
            self._cancel = None

    def rerun(
        self,
        round_id: Optional[str] = None,
        message: Optional[str] = None,
        event_handler: Optional[SessionEventHandler] = None,
        on_progress: Progress | None = None,
    ) -> Round:
        """Run a round again from the kernel state before it: regenerate the last answer
        (``round_id`` None) or re-run the round ``round_id`` with ``message`` (an edit; None: its
        own message). That round and every later one leave the session's memory and
        ``rounds.jsonl``; the kernel is replaced by a fresh one that gets the variables of the rounds
        kept (the snapshot taken before, else their code run again, as a resume does:
        ``core.resume``), so nothing the discarded rounds made is left in it. Files they wrote stay
        in the folder (they may be uploads, or already downloaded; same-named outputs are written
        again). ``last_rerun`` says how the variables came back (gaps included).

        Refusals raise before anything changes: ``NothingToRerun``, ``SessionStopped``,
        ``RoundInProgress``. Once started this never raises, as ``send_message``."""
        if self._stopped:
            raise SessionStopped(self.session_id)
        if not self._round_lock.acquire(blocking=False):
            raise RoundInProgress()
        try:
            if self._stopped:
                raise SessionStopped(self.session_id)
            index = self._rerun_index(round_id)
            old = self.rounds[index]
            prefix, _ = split_files_prefix(old.user_query)
            rnd = Round(user_query=old.user_query if message is None else prefix + message)
            with self._round_running(event_handler) as cancel:
                self.last_rerun = self._roll_back(index, cancel, on_progress)
                self._run_round(rnd, files_in_prefix(prefix), cancel)
            if ran_code(rnd):
                self.snapshots.round_ran_code(rnd.id)
            return rnd
        finally:
            self._round_lock.release()
            if not self._stopped:
                self.snapshots.in_background()

    def _rerun_index(self, round_id: str | None) -> int:
        if not self.rounds:
            raise NothingToRerun(round_id)
        if round_id is None:
            return len(self.rounds) - 1
        for index, rnd in enumerate(self.rounds):
            if rnd.id == round_id:
                return index
        raise NothingToRerun(round_id)

    def _roll_back(self, index: int, cancel: CancelToken, on_progress: Progress | None) -> RerunReport:
        """Drop the rounds from ``index`` on, in memory and on disk, and bring a fresh kernel to the
        state after the rounds kept."""
        discarded = tuple(r.id for r in self.rounds[index:])
        kept = self.rounds[:index]
        self.snapshots.code_may_run()  # a save still pending would be of the discarded state
        self.executor.new_kernel()
        self.rounds = kept
        self.replay_pending = False
        self.log.rewrite_rounds(kept)
        settings = self.config.session
        self._restoring = True
        try:
            report = restore(
                self.executor,
                kept,
                [spec.name for spec in self._plugin_catalog.specs],
                dict(self.session_var),
                settings.resume_replay_timeout,
                cancel,
                on_progress,
                use_snapshot=self.snapshots.enabled,
                run_code=settings.resume_replay,
                folder=self.cwd,
            )
        finally:
            self._restoring = False
        if report.outcome is not RestoreOutcome.COMPLETE:
            self.snapshots.stop_taking()  # a namespace with gaps must not pass for the whole chat
        elif report.ran and kept:
            self.snapshots.round_ran_code(kept[-1].id)
        else:
            self.snapshots.nothing_due()
        self.log.logger.info(
            "session %s re-runs from round %d (discarding %s): %s",
            self.session_id,
            index + 1,
            ", ".join(discarded),
            report.summary(),
        )
        return RerunReport(discarded=discarded, restore=report, kept_rounds=len(kept))

    def _check_room(self, files: list[Any]) -> None:
        """Refuse files that would take the session's folder past ``execution.disk_mb``."""
        if not files:
            return
        room = self.executor.disk_room()
        if room is None:
            return
        incoming = incoming_bytes(files)
        if incoming > room:
            raise SessionFull(
                f"The files need {incoming / MB:.1f} MB but this session's folder has only {room / MB:.1f} MB "
                f"left of its {self.config.execution.disk_mb} MB (execution.disk_mb); delete files to make room."
            )

    def files(self, limit: int = 200) -> FileListing:
        """The session folder's files (uploads and everything the code wrote), newest first, with
        the space they use and the folder's quota (``execution.disk_mb``; None when unlimited)."""
        quota_mb = self.config.execution.disk_mb
        return list_files(self.cwd, limit, int(quota_mb * MB) if quota_mb else None)

    def _attach_compressors(self, llm: LLMBackend) -> None:
        """A round compressor for each role whose ``<section>.prompt_compression`` is on, calling
        ``round_compressor.llm_alias``'s model, else the chat's (core/compression.py)."""
        for alias, role in self.roles.items():
            section = ROLE_SECTIONS.get(alias)
            if section is not None and getattr(getattr(self.config, section, None), "prompt_compression", False):
                role.compressor = RoundCompressor(alias, section, self.summaries, llm, self.config.round_compressor)

    def restore_history(self) -> None:
        """Take the earlier rounds of this session's folder back into memory (a resumed chat), and
        the summaries prompt compression made of them."""
        self.rounds[:] = load_rounds(self.log.rounds_path)  # the same list: session.memory shows them
        self.summaries.load()
        self.replay_pending = any(r.state == "finished" for r in self.rounds)
        self.log.logger.info("session %s resumed with %d earlier rounds", self.session_id, len(self.rounds))

    def replay_code(self, on_progress: Progress | None = None) -> ReplayReport:
        """Bring back the kernel's variables of earlier rounds: the last snapshot, then the code that
        succeeded in the rounds after it (see ``core.resume``); bounded by
        ``session.resume_replay_timeout``. Like a round, it cannot overlap one; ``skip_restore()``
        (or ``cancel()``) stops it and the chat goes on."""
        self.replay_pending = False
        settings = self.config.session
        if not settings.resume_replay and not self.snapshots.enabled:
            return ReplayReport(total=0)
        if self._stopped:
            raise SessionStopped(self.session_id)
        if not self._round_lock.acquire(blocking=False):
            raise RoundInProgress()
        try:
            self._cancel = CancelToken()
            self._restoring = True
            self.snapshots.code_may_run()
            report = restore(
                self.executor,
                self.rounds,
                [spec.name for spec in self._plugin_catalog.specs],
                dict(self.session_var),
                settings.resume_replay_timeout,
                self._cancel,
                on_progress,
                use_snapshot=self.snapshots.enabled,
                run_code=settings.resume_replay,
                folder=self.cwd,
            )
            if report.outcome in (RestoreOutcome.FAILED, RestoreOutcome.TIMED_OUT):
                self.snapshots.stop_taking()  # the older snapshot stays: the next resume tries the gaps again
            if report.ran and report.complete and self.rounds:
                self.snapshots.round_ran_code(self.rounds[-1].id)  # saved now, the next restore is fast
            self.log.logger.info("session %s restore: %s", self.session_id, report.summary())
            return report
        finally:
            self._restoring = False
            self._cancel = None
            self._round_lock.release()
            if not self._stopped:
                self.snapshots.in_background()

    def skip_restore(self) -> bool:
        """The user chose not to wait for the restore (``replay_code``): it stops where it is, and the
        chat goes on with the variables brought back so far (``RestoreOutcome.SKIPPED``, whose report
        names the missing ones). False when no restore is running."""
        return self._restoring and self.cancel()

    @property
    def approval_required(self) -> bool:
        """Whether generated code waits for the user's Run, Edit or Cancel in this chat."""
        if self.code_approval is not None:
            return self.code_approval
        return self.config.code_interpreter.require_confirmation

    def set_code_approval(self, required: bool | None) -> None:
        """This chat's own choice (from its next code on; None: the app's
        ``code_interpreter.require_confirmation``)."""
        self.code_approval = required

    def approve(self, post_id: str, decision: Decision, code: str | None = None) -> bool:
        """The user's answer to the code of post ``post_id`` waiting for approval (``post_approval_request``):
        ``Decision.RUN``, ``EDIT`` (run ``code`` instead) or ``CANCEL``. False when that code is not
        waiting (answered already, timed out, the round ended). Safe from any thread."""
        if decision is Decision.TIMED_OUT:
            raise ValueError("only the engine times an approval out")
        return self.approvals.answer(post_id, Approval(decision, code))

    def cancel(self) -> bool:
        """Cancel the running round from any thread: its model stream stops, its code is interrupted."""
        token = self._cancel
        if token is None:
            return False
        token.cancel()
        return True

    def _run_round(self, rnd: Round, files_added: list[str], cancel: CancelToken) -> None:
        started = time.monotonic()
        self._take_llm_choice()
        self.emitter.emit_round(RoundEventType.round_start, rnd.id, "Round started", RoundStarted(self._llm.model_name))
        rnd.add_post(Post(send_from=USER, send_to=PLANNER, message=rnd.user_query))
        ctx = RoundContext(
            session_id=self.session_id,
            round=rnd,
            history=list(self.rounds),
            emitter=self.emitter,
            cancel=cancel,
            cwd=self.cwd,
            session_vars=self.session_var,
            files_added=files_added,
            tracing=self.tracing,
            approvals=self.approvals if self.approval_required else None,
        )
        try:
            with self.tracing.span("weaver.round", {**ctx.trace_attributes(), "weaver.model": self._llm.model_name}):
                self._converse(ctx)
            rnd.state = "finished"
        except RoundCancelled:
            rnd.state, rnd.error = "cancelled", "The round was cancelled."
        except RoundFailed as exc:
            rnd.state, rnd.error = "failed", str(exc)
        except LLMError as exc:
            rnd.state, rnd.error = "failed", f"The language model could not be reached or failed: {exc}"
        except Exception as exc:  # a bug of ours: tell the user plainly, keep the details in the log
            self.log.logger.exception("round %s failed", rnd.id)
            rnd.state, rnd.error = (
                "failed",
                f"Something went wrong inside Weaver ({type(exc).__name__}); see the session log.",
            )
        if rnd.state == "failed":
            self.emitter.emit_round(RoundEventType.round_error, rnd.id, rnd.error or "")
        ended = RoundEnded(rnd.state, _reported_usage(rnd))
        self.emitter.emit_round(RoundEventType.round_end, rnd.id, rnd.state, ended)
        metrics.round_ended(rnd.state, time.monotonic() - started)
        self.rounds.append(rnd)
        # The state and Weaver's own error sentence, never the answer or the program's output (those
        # are the user's: rounds.jsonl keeps them).
        self.log.logger.info("round %s %s%s", rnd.id, rnd.state, f": {rnd.error[:300]}" if rnd.error else "")
        self.log.record_round(rnd)

    def _converse(self, ctx: RoundContext) -> None:
        """Pass the turn between roles until someone answers the user, within a bound on turns."""
        limit = self.config.session.max_internal_chat_round_num
        recipient: str = PLANNER
        for _ in range(limit):
            ctx.cancel.raise_if_cancelled()
            role = self.roles.get(recipient)
            if role is None:
                raise RoundFailed(f"The Planner addressed {recipient!r}, which is not a role of this session.")
            with ctx.tracing.span("weaver.role", {"weaver.role": recipient}):
                post = role.reply(ctx)
            ctx.round.add_post(post)
            if post.send_to == USER:
                return
            recipient = post.send_to
        raise RoundFailed(
            f"The agents took more than {limit} turns without answering you, so this round stopped. "
            "Try a more specific request."
        )

    def to_dict(self) -> Dict[str, str]:
        """TaskWeaver's summary of a session: its id, folder and working folder, as strings."""
        return {"session_id": self.session_id, "workspace": str(self.workspace), "execution_cwd": self.execution_cwd}

    def stop(self, keep_kernel: bool = False) -> None:
        """End the session: cancel a running round, shut the kernel down (its process is gone).
        ``keep_kernel`` (a draining web server): a kernel that outlives its server, as a gateway's
        does, is left running with its variables for the server the chat moves to; a local one stops."""
        if self._stopped:
            return
        self._stopped = True
        self.cancel()
        got_lock = self._round_lock.acquire(timeout=STOP_WAIT_S)
        try:
            if got_lock:
                self.snapshots.save_due()  # the variables of the last rounds, for the next kernel
            self.executor.stop(keep_kernel=keep_kernel)
        finally:
            if got_lock:
                self._round_lock.release()
            self.log.logger.info("session %s stopped", self.session_id)
            self.log.close()
