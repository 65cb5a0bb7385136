"""Which model each role calls: TaskWeaver's ``<role>.llm_alias`` over ``ext_llms.llm_configs``.

A role with an alias calls that named model, one backend per alias made on first use and shared by
every session (closed with the app); a role without one calls the session's model, which the chat
settings' picker (``llm.models``) chooses. So the picker overrides exactly the roles that have no
alias of their own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Sequence

from core.compat.config_keys import OWN_MODEL_ROLES
from core.config import ROLE_MODEL_SECTIONS, AppConfig, LLMSettings
from core.llm.base import LLMBackend
from core.llm.factory import create_backend

if TYPE_CHECKING:
    from core.datasets import Dataset

# The names a caller may use for a role: its config section, TaskWeaver's code_generator, or a
# session's role alias (``core.roles.protocol``).
ROLE_SECTIONS = {
    **{section: section for section in (*ROLE_MODEL_SECTIONS, *OWN_MODEL_ROLES)},
    "code_generator": "code_interpreter",
    "Planner": "planner",
    "CodeInterpreter": "code_interpreter",
    "ImageReader": "image_reader",  # core/roles/image_reader/: image_reader.llm_alias, a vision model
}


class RoleModels:
    """The backends of the roles that name their own model; the app's default for the others."""

    def __init__(self, config: AppConfig, default: LLMBackend, datasets: Sequence[Dataset] = ()) -> None:
        self.config = config
        self.default = default
        self.datasets = list(datasets)
        self._made: dict[str, LLMBackend] = {}
        self._lock = threading.Lock()

    @staticmethod
    def section_of(role: str) -> str:
        """The config section of ``role``; ``KeyError`` for a name no role or section has."""
        try:
            return ROLE_SECTIONS[role]
        except KeyError:
            raise KeyError(f"no role {role!r} (known: {', '.join(ROLE_SECTIONS)})") from None

    def alias_of(self, role: str) -> str | None:
        """The ``llm_alias`` of ``role``, None when it calls the primary (or the picked) model."""
        return self.config.llm_alias_of(self.section_of(role))

    def settings_for_role(self, role: str) -> LLMSettings:
        alias = self.alias_of(role)
        return self.config.llm if alias is None else self.config.llm_for_alias(alias)

    def own_backend(self, role: str) -> LLMBackend | None:
        """The backend of ``role``'s alias, or None when it has none (it follows the session's model)."""
        alias = self.alias_of(role)
        if alias is None:
            return None
        with self._lock:
            backend = self._made.get(alias)
            if backend is None:
                backend = self._made[alias] = create_backend(self.config.llm_for_alias(alias), self.datasets)
            return backend

    def backend_for_role(self, role: str) -> LLMBackend:
        """The backend ``role`` calls outside a chat's choice: its alias's, else the app's default."""
        return self.own_backend(role) or self.default

    def distinct_models(self) -> dict[str, LLMSettings]:
        """Every configured model a role may call, by name: the primary ``llm.*`` as ``llm``, then
        each ``ext_llms.llm_configs`` entry (for ``weaver check``)."""
        found = {"llm": self.config.llm}
        for alias in self.config.ext_llms.llm_configs:
            found[f"ext_llms.llm_configs.{alias}"] = self.config.llm_for_alias(alias)
        return found

    def close(self) -> None:
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for backend in made:
            backend.close()
