"""TaskWeaverApp: loads config and plugins once, wires services with ``injector``, owns live sessions."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

from injector import Injector, Module, provider, singleton

from core import metrics
from core.config import AppConfig, load_config
from core.datasets import Dataset, DatasetCatalog
from core.errors import SessionLimitReached, SessionNotFound
from core.execution.backend import KernelBackend, backend_for
from core.execution.kernel import live_kernels
from core.execution.pool import KernelPool, StartGate, WarmKernel
from core.experience import ExperienceStore, Tip, save_experience
from core.ids import create_id
from core.llm.base import LLMBackend
from core.llm.factory import ModelChoices, create_backend
from core.llm.role_models import RoleModels
from core.logs import formatter
from core.plugins.catalog import PluginCatalog
from core.plugins.selection import PluginSelector
from core.resume import load_rounds
from core.roles.registry import RoleRegistry, build_role_registry
from core.session import Session, new_executor
from core.startup_check import data_folder
from core.telemetry import TelemetryLogger
from core.tracing import Tracing
from core.workspace import Workspace, default_app_dir, discover_app_dir

# Ids made by ``create_id`` (and the pool): safe as a folder name, never a path.
SESSION_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")


class _AppModule(Module):
    def __init__(
        self,
        config: AppConfig,
        workspace: Workspace,
        datasets: DatasetCatalog,
        kernels: KernelBackend,
        roles: RoleRegistry,
    ) -> None:
        self.config = config
        self.roles = roles
        self.workspace = workspace
        self.datasets = datasets
        self.kernels = kernels

    def configure(self, binder: Any) -> None:
        binder.bind(AppConfig, to=self.config)
        binder.bind(KernelBackend, to=self.kernels)
        binder.bind(Workspace, to=self.workspace)
        binder.bind(DatasetCatalog, to=self.datasets)
        binder.bind(TelemetryLogger, to=TelemetryLogger("weaver"), scope=singleton)
        binder.bind(Tracing, to=Tracing(self.config.tracing.enabled), scope=singleton)
        binder.bind(RoleRegistry, to=self.roles, scope=singleton)
        binder.bind(StartGate, to=StartGate(self.config.execution.max_concurrent_starts), scope=singleton)

    @singleton
    @provider
    def llm_backend(self) -> LLMBackend:
        return create_backend(self.config.llm, self.datasets.datasets)

    @singleton
    @provider
    def model_choices(self, default: LLMBackend) -> ModelChoices:
        return ModelChoices(self.config.llm, default, self.datasets.datasets)

    @singleton
    @provider
    def role_models(self, default: LLMBackend) -> RoleModels:
        return RoleModels(self.config, default, self.datasets.datasets)

    @singleton
    @provider
    def plugin_selector(self) -> PluginSelector:
        return PluginSelector(self.config.code_interpreter, self.config.llm)

    @singleton
    @provider
    def plugins(self) -> PluginCatalog:
        return PluginCatalog.load(self.config.plugin_dir or self.workspace.plugin_dir)


class TaskWeaverApp:
    """The entry point: ``TaskWeaverApp(app_dir).get_session().send_message("...")``."""

    def __init__(
        self,
        app_dir: str | Path | None = None,
        use_local_uri: bool | None = None,
        config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """TaskWeaver's signature. ``use_local_uri`` (``code_interpreter.use_local_uri``, default true):
        artifact_paths hold absolute paths; false: paths within the session's working folder."""
        self.app_dir = Path(app_dir) if app_dir else default_app_dir()
        self.app_dir.mkdir(parents=True, exist_ok=True)
        given = {**(config or {}), **kwargs}
        if use_local_uri is not None:
            given["code_interpreter.use_local_uri"] = use_local_uri
        self.config = load_config(self.app_dir, given)
        logging.getLogger("weaver").setLevel(self.config.logging.level.upper())
        self._log_handler = _file_log_handler(self.app_dir, self.config)
        # Where kernels run, chosen once; everything that starts or asks about kernels asks it.
        self.kernel_backend = backend_for(self.config.execution)
        # A wrong gateway token, an unreachable gateway or execution.sandbox = "bwrap" without
        # bwrap stops the app here.
        self.kernel_backend.check_startup()
        self.config.execution.data_dir = data_dir = data_folder(self.config, self.app_dir)
        # A bad data/datasets.yaml stops the app here, with the file named.
        self.dataset_catalog = DatasetCatalog.load(data_dir, str(self.kernel_backend.data_mount(data_dir)))
        self.kernel_backend.sweep_stale()
        # Shown by the UI to operators; None when every kernel is isolated.
        self.sandbox_warning: str | None = self.kernel_backend.sandbox_warning()
        if self.sandbox_warning:
            logging.getLogger("weaver").warning("!!! %s", self.sandbox_warning)
        self.workspace = Workspace(self.app_dir)
        # session.roles' workers, from core/roles/<name>/ and <app_dir>/roles/<name>/: a broken role
        # file or an unknown name stops the app here, with the file or the name said.
        self.role_registry = build_role_registry(self.config, self.app_dir)
        module = _AppModule(self.config, self.workspace, self.dataset_catalog, self.kernel_backend, self.role_registry)
        self.injector = Injector([module])
        self.injector.binder.bind(Injector, to=self.injector)
        self.plugins = self.injector.get(PluginCatalog)
        for error in self.plugins.errors:
            logging.getLogger("weaver").warning("plugin not loaded: %s", error)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._being_built = 0  # new sessions under construction, counted against the cap
        self.kernel_starts = self.injector.get(StartGate)
        execution = self.config.execution
        self.pool = KernelPool(
            execution.pool_size,
            self._reserve_kernel,
            self._discard_kernel,
            quiet_s=execution.pool_refill_quiet_s,
            fillers=self.kernel_starts.limit,
        ).start()
        _watch_metrics(self)

    @property
    def datasets(self) -> list[Dataset]:
        """The project's datasets (``<app_dir>/data/``), each with name, file, path in the kernel,
        description, column notes and size: for a welcome screen."""
        return list(self.dataset_catalog.datasets)

    @property
    def models(self) -> list[str]:
        """The model names a chat may pick with ``Session.set_llm`` (``llm.models``), the default first."""
        return self.config.llm.model_names

    @staticmethod
    def discover_app_dir(app_dir: str | None = None) -> tuple[str, bool, bool]:
        """TaskWeaver's: ``(folder, has a valid taskweaver_config.json, is empty)`` for ``app_dir``,
        or the nearest app folder above the current one (``core.workspace.discover_app_dir``)."""
        return discover_app_dir(app_dir)

    def backend_for_role(self, role: str) -> LLMBackend:
        """The model ``role`` calls (``planner``, ``code_interpreter``/``code_generator``,
        ``round_compressor``, ``experience``): its ``<role>.llm_alias`` entry of
        ``ext_llms.llm_configs``, else the primary ``llm.*`` model. Made once per alias."""
        return self.injector.get(RoleModels).backend_for_role(role)

    @property
    def experience(self) -> ExperienceStore:
        """The tips of ``session.experience_dir``, where chats are saved as experience."""
        assert self.config.session.experience_dir is not None  # placed by load_config
        return ExperienceStore(self.config.session.experience_dir)

    def save_experience(self, session_id: str) -> Tip:
        """Save the chat of session ``session_id`` as experience (core/experience.py): its rounds, live
        or from its folder, summarised by the experience model (``experience.llm_alias``). Blocks on
        the model: call it off an event loop."""
        if not SESSION_ID.match(session_id):
            raise SessionNotFound(f"no session {session_id!r}")
        with self._lock:
            live = self._sessions.get(session_id)
        saved = self.workspace.session_dir(session_id) / "rounds.jsonl"
        rounds = list(live.rounds) if live is not None else load_rounds(saved)
        return save_experience(self.config, self.backend_for_role("experience"), session_id, rounds)

    def _reserve_kernel(self) -> WarmKernel:
        """A new session id and folder, and an unstarted kernel for them (the pool starts it)."""
        session_id = create_id(unguessable=True)
        cwd = self.workspace.execution_cwd(session_id)
        cwd.mkdir(parents=True, exist_ok=True)
        executor = new_executor(session_id, cwd, self.config, self.plugins, self.kernel_starts, self.kernel_backend)
        return WarmKernel(session_id, executor)

    def _discard_kernel(self, session_id: str) -> None:
        """Remove the folder reserved for a pooled kernel that no session took."""
        shutil.rmtree(self.workspace.session_dir(session_id), ignore_errors=True)

    def get_session(self, session_id: str | None = None) -> Session:
        """The live session ``session_id``, or a new one when no id is given (within the cap).

        A new session is built outside the app's lock, its place under the cap reserved first: a
        hundred users starting chats together build theirs side by side, not one after another."""
        with self._lock:
            self._forget_stopped()
            if session_id is not None:
                session = self._sessions.get(session_id)
                if session is None:
                    raise SessionNotFound(f"no live session {session_id!r}")
                return session
            limit = self.config.session.max_live_sessions
            if len(self._sessions) + self._being_built >= limit:
                raise SessionLimitReached(limit)
            self._being_built += 1
        try:
            warm = self.pool.take()
            try:
                new_id = warm.session_id if warm else create_id(unguessable=True)
                kwargs: dict[str, Any] = {"session_id": new_id, "executor": warm.executor if warm else None}
                session = self.injector.create_object(Session, additional_kwargs=kwargs)
            except BaseException:
                if warm is not None:
                    warm.executor.stop()  # never handed to anyone else
                    self._discard_kernel(warm.session_id)
                raise
        except BaseException:
            with self._lock:
                self._being_built -= 1
            raise
        with self._lock:
            self._being_built -= 1
            self._sessions[new_id] = session
        return session

    def open_session(self, session_id: str, kernel_id: str | None = None) -> Session:
        """The live session ``session_id``, or that session brought back from its folder: its earlier
        rounds in memory and its files in place, with a new kernel (``Session.replay_code`` rebuilds
        its variables). For a chat opened again after its kernel stopped, or after a restart.

        ``kernel_id`` (where the kernel backend's kernels outlive their server, as on a gateway): the
        session's kernel that another server started and can no longer drive (it died). It is
        attached to here, before this returns, so its variables survive with nothing to replay
        (``Session.replay_pending`` is False); if it is gone, a new kernel starts and the replay is
        pending as usual."""
        executor = None
        with self._lock:
            self._forget_stopped()
            live = self._sessions.get(session_id)
            if live is not None:
                return live
            if (
                not SESSION_ID.match(session_id)
                or not (self.workspace.session_dir(session_id) / "rounds.jsonl").is_file()
            ):
                raise SessionNotFound(f"no session {session_id!r} to resume")
            limit = self.config.session.max_live_sessions
            if len(self._sessions) + self._being_built >= limit:
                raise SessionLimitReached(limit)
            if kernel_id and self.kernel_backend.kernels_outlive_server:
                cwd = self.workspace.execution_cwd(session_id)
                executor = new_executor(
                    session_id, cwd, self.config, self.plugins, self.kernel_starts, self.kernel_backend, kernel_id
                )
            session = self.injector.create_object(
                Session, additional_kwargs={"session_id": session_id, "executor": executor}
            )
            session.restore_history()
            self._sessions[session_id] = session
        if executor is not None:  # outside the app's lock: a remote round trip, or a new kernel's start
            try:
                executor.start()  # attaches, or starts a new kernel if that one is gone
            except Exception as exc:  # the first execution tries again and reports it
                logging.getLogger("weaver").warning("session %s: its kernel did not start: %s", session_id, exc)
            session.replay_pending = session.replay_pending and not executor.adopted
        return session

    def delete_session(self, session_id: str) -> None:
        """Forget a session for good (its chat was deleted): stop it if live, delete its folder."""
        if not SESSION_ID.match(session_id):
            raise SessionNotFound(f"no session {session_id!r}")
        with self._lock:
            live = self._sessions.pop(session_id, None)
        if live is not None:
            live.stop()
        shutil.rmtree(self.workspace.session_dir(session_id), ignore_errors=True)

    @property
    def sessions(self) -> list[Session]:
        with self._lock:
            self._forget_stopped()
            return list(self._sessions.values())

    def _forget_stopped(self) -> None:
        """Drop sessions stopped from outside (e.g. by the UI), so their rounds can be freed."""
        for session_id in [sid for sid, s in self._sessions.items() if s.is_stopped]:
            del self._sessions[session_id]

    def stop(self) -> None:
        """Stop every live session and the pool's kernels, and release the model client."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        self.pool.close()
        for session in sessions:
            session.stop()
        self.injector.get(ModelChoices).close()
        self.injector.get(RoleModels).close()
        self.injector.get(LLMBackend).close()  # type: ignore[type-abstract]  # bound to a concrete backend
        self.injector.get(PluginSelector).close()
        self.kernel_backend.close()
        if self._log_handler is not None:
            logging.getLogger("weaver").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def _watch_metrics(app: TaskWeaverApp) -> None:
    """``/metrics`` reads this app's live sessions and kernels when scraped (the app is held weakly:
    a stopped app is not kept alive by its metrics)."""
    metrics.configure(app.config.metrics.enabled, _configured_models(app.config))
    ref = weakref.ref(app)

    def live_sessions() -> int | None:
        found = ref()
        return len(found.sessions) if found is not None else None

    def pooled_kernels() -> int | None:
        found = ref()
        return found.pool.ready_count if found is not None else None

    metrics.watch("weaver_sessions_live", "gauge", "Live sessions (chats holding a kernel or about to)", live_sessions)
    metrics.watch("weaver_kernels_pooled", "gauge", "Warm kernels waiting in the pool for a new chat", pooled_kernels)
    metrics.watch("weaver_kernels_live", "gauge", "Kernels started, not stopped (pooled ones too)", live_kernels)


def _configured_models(config: AppConfig) -> list[tuple[str, str]]:
    """(provider, model) of every model the configuration names: the primary, each ``llm.models``
    choice and each ``ext_llms.llm_configs`` entry (the token counter's bounded labels)."""
    found = [config.llm.for_model(name) for name in config.llm.model_names]
    found += [config.llm_for_alias(alias) for alias in config.ext_llms.llm_configs]
    pairs = []
    for settings in found:
        api_type = settings.resolved_api_type
        pairs.append((api_type, "offline" if api_type == "offline" else settings.model))
    return list(dict.fromkeys(pairs))


def _file_log_handler(app_dir: Path, config: AppConfig) -> logging.Handler | None:
    """TaskWeaver's ``logging.log_folder`` / ``logging.log_file``: the app's log also goes to
    ``<app_dir>/<log_folder>/<log_file>`` (defaults ``logs``, ``task_weaver.log``) when either is set."""
    settings = config.logging
    if settings.log_folder is None and settings.log_file is None:
        return None
    folder = app_dir / (settings.log_folder or "logs")
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / (settings.log_file or "task_weaver.log"), encoding="utf-8")
    handler.setFormatter(formatter())  # WEAVER_LOG_FORMAT, as the server's own log
    logging.getLogger("weaver").addHandler(handler)
    return handler
