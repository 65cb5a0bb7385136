"""Where kernels run, chosen once from the config: one ``KernelBackend`` answers every question that
depends on it.

In the spirit of jupyter_client's KernelManager and JupyterHub's Spawner: the app builds one backend
(``backend_for``, keyed by ``execution.backend``) and hands it to everything that starts kernels or
asks about them (sessions, the pool, resume, ``weaver check``, the web server's start-up checks and
its replicas' kernel adoption). Nothing else asks "local or gateway?".

Adding a backend is one class and one name: subclass ``KernelBackend`` (only ``new_kernel`` is
required; every other answer has a default that fits a backend without a sandbox of its own) and
register it with ``@register_backend("name")``; ``execution.backend = "name"`` selects it. The
built-in ones (``local_backend.LocalBackend``, ``gateway_backend.GatewayBackend``) are registered
by import path, so the gateway's HTTP and websocket libraries load only when it is chosen.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

from core.config import ExecutionSettings
from core.errors import ConfigError
from core.execution.handle import KernelHandle


@dataclass(frozen=True)
class BackendStatus:
    """What ``weaver check`` reports about the kernels: a verdict, one detail, the key to change."""

    backend: str  # the ``execution.backend`` value
    ok: bool
    detail: str
    key: str | None = None  # the config key to change when not ok


class KernelBackend(ABC):
    """One way of running sessions' kernels; one instance per app, built from its execution settings."""

    name: ClassVar[str] = ""  # set by ``register_backend``
    # Kernels live on after this server exits (another replica may adopt or must delete them by
    # the id their handle reports as ``kernel_id``); local kernels die with their server.
    kernels_outlive_server: ClassVar[bool] = False

    def __init__(self, settings: ExecutionSettings) -> None:
        self.settings = settings

    @abstractmethod
    def new_kernel(
        self,
        session_id: str,
        cwd: Path,
        extra_env: dict[str, str],
        start_timeout: float,
        read_only: list[Path],
        attach_to: str | None = None,
    ) -> KernelHandle:
        """An unlaunched kernel for one session working in ``cwd``; ``read_only``: folders (plugins)
        it must read; ``attach_to``: the ``kernel_id`` of this session's kernel that another server
        started, to connect to at the first launch (only where ``kernels_outlive_server``)."""

    def check_startup(self) -> None:
        """Raise the typed error (``SandboxUnavailableError``, ``GatewayUnavailable``, ``GatewayAuthError``)
        that makes the app refuse to start, before anyone is served; return when kernels can run."""
        return None

    def sweep_stale(self) -> None:
        """Clean up what kernels of an earlier server left behind (at app start)."""
        return None

    def data_mount(self, data_dir: Path) -> Path:
        """Where kernels read the project's datasets folder (by default: its own path)."""
        return data_dir.resolve()

    def sandbox_warning(self) -> str | None:
        """The sentence to show operators when users' code runs without isolation; None when isolated
        (or when isolation is not Weaver's to give, as on a gateway)."""
        return None

    def require_sandbox(self, reason: str) -> None:
        """Refuse (``SandboxUnavailableError``) to serve ``reason`` (e.g. "with login on") with kernels
        that are not isolated from each other; by default isolation is the backend's own business."""
        return None

    def status(self) -> BackendStatus:
        """``weaver check``'s verdict on the kernels (it may ask a remote service once)."""
        try:
            self.check_startup()
        except Exception as exc:  # noqa: BLE001 - any refusal is the verdict
            return BackendStatus(self.name, False, str(exc))
        return BackendStatus(self.name, True, "kernels can start")

    def readiness(self, timeout: float) -> BackendStatus:
        """Whether kernels can start now, asked often (``/ready``): cheap, within about ``timeout`` s.
        ``ok`` with a ``detail`` (a degraded but working state) is still ready; ``detail`` "" when all is well."""
        return BackendStatus(self.name, True, "")

    def delete_kernel(self, kernel_id: str) -> None:
        """Stop a kernel another server started and left behind (only where ``kernels_outlive_server``)."""
        raise NotImplementedError(f"the {self.name!r} kernel backend's kernels do not outlive their server")

    def close(self) -> None:
        """Release what the backend holds for the app (at app stop); kernels are stopped by their sessions."""
        return None


B = TypeVar("B", bound=type[KernelBackend])

# ``execution.backend`` value -> the class, or its "module:Class" path (imported when chosen).
_REGISTRY: dict[str, type[KernelBackend] | str] = {
    "local": "core.execution.local_backend:LocalBackend",
    "gateway": "core.execution.gateway_backend:GatewayBackend",
}


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: ``execution.backend = name`` selects the decorated ``KernelBackend``."""

    def add(cls: B) -> B:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[KernelBackend]:
    """The class registered as ``name``; ``ConfigError`` naming ``execution.backend`` if there is none."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"execution.backend: no kernel backend {name!r}; known: {', '.join(backend_names())}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        cls: type[KernelBackend] = getattr(importlib.import_module(module), attr)
        cls.name = name
        _REGISTRY[name] = entry = cls
    return entry


def backend_for(settings: ExecutionSettings) -> KernelBackend:
    """The backend ``settings`` choose (``execution.backend``, by default from the other keys)."""
    return backend_class(settings.backend_name)(settings)
