"""Auto plugin selection (TaskWeaver's ``code_generator.enable_auto_plugin_selection``).

With it on, the CodeInterpreter's prompt lists only the ``auto_plugin_selection_topk`` plugins the
app's ranker (core/retrieval.py) finds most relevant to the request, plus every plugin its code
already called earlier in the chat, as TaskWeaver keeps a running pool of the plugins it used.
That pool is read from the chat's own rounds rather than kept beside them, so a resumed chat, or
one whose last round was regenerated, offers exactly what its remaining rounds used.
The Planner's view is not filtered: it is told about every plugin, as in TaskWeaver.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from core.config import CodeInterpreterSettings, LLMSettings
from core.plugins.spec import PluginSpec
from core.retrieval import Ranker, create_ranker


def plugin_document(spec: PluginSpec) -> str:
    """What the ranker reads of a plugin: its name, description, and each argument's and return
    value's name and description (not the examples: their code would match any request)."""
    parts = [spec.name, spec.description]
    for param in [*spec.parameters, *spec.returns]:
        parts += [param.name, param.description]
    return "\n".join(p for p in parts if p)


def used_plugins(specs: Sequence[PluginSpec], code: Iterable[str]) -> list[str]:
    """Names of the plugins that ``code`` refers to (as a name, not as an attribute), in catalog order."""
    text = "\n".join(code)
    return [s.name for s in specs if re.search(rf"(?<![\w.]){re.escape(s.name)}\b", text)]


@dataclass(frozen=True)
class Selection:
    """The plugins offered for one CodeInterpreter request, and why."""

    offered: list[PluginSpec]
    picked: list[str]  # the ranker's top-k for this request
    kept: list[str]  # called by earlier code in the chat, offered whatever the request
    ranker: str  # "bm25", or "embedding:<type>"
    available: int  # plugins there were to choose from

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.offered]

    def details(self) -> dict[str, Any]:
        """The attachment's ``extra``: how the list was made, for the UIs and exports."""
        return {"picked": self.picked, "kept": self.kept, "ranker": self.ranker, "available": self.available}


class PluginSelector:
    """One per app: the ranker is chosen once (an embedding ranker keeps each plugin's vector)."""

    def __init__(self, settings: CodeInterpreterSettings, llm: LLMSettings) -> None:
        self.enabled = settings.enable_auto_plugin_selection
        self.top_k = settings.auto_plugin_selection_topk
        self._llm = llm
        self._ranker: Ranker | None = None
        self._lock = threading.Lock()

    @property
    def ranker(self) -> Ranker:
        """Built at first use, so an app with selection off never creates an embedding client."""
        with self._lock:
            if self._ranker is None:
                self._ranker = create_ranker(self._llm)
            return self._ranker

    def select(self, specs: Sequence[PluginSpec], query: str, earlier_code: Iterable[str]) -> Selection:
        """The plugins to offer for ``query``: the top-k of all by relevance (ties in catalog order),
        as TaskWeaver picks them, and those ``earlier_code`` used; listed in the catalog's order."""
        kept = used_plugins(specs, earlier_code)
        ranker = self.ranker
        picked = [specs[i].name for i in ranker.top(query, [plugin_document(s) for s in specs], self.top_k)]
        chosen = set(kept) | set(picked)
        return Selection(
            offered=[s for s in specs if s.name in chosen],
            picked=picked,
            kept=kept,
            ranker=ranker.name,
            available=len(specs),
        )

    def close(self) -> None:
        with self._lock:
            if self._ranker is not None:
                self._ranker.close()
                self._ranker = None
