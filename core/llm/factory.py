"""Pick the LLM backend named by the configuration."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Sequence

from core.config import LLMSettings
from core.llm.base import LLMBackend, LLMError

if TYPE_CHECKING:
    from core.datasets import Dataset


def create_backend(settings: LLMSettings, datasets: Sequence[Dataset] = ()) -> LLMBackend:
    """The backend of ``settings``; with ``llm.use_mock``, behind the recorder (``core/llm/mock.py``),
    which builds it only when a call must reach the model."""
    if settings.use_mock:
        from core.llm.mock import RecordReplayBackend

        return RecordReplayBackend(settings, lambda: _model_backend(settings, datasets))
    return _model_backend(settings, datasets)


def _model_backend(settings: LLMSettings, datasets: Sequence[Dataset]) -> LLMBackend:
    """``offline`` → the scripted offline backend; ``openai``/``azure``/``azure_ad`` → ``OpenAIBackend``;
    ``ollama`` → ``OllamaBackend`` (native API); ``groq``/``qwen``/``zhipuai`` → ``CompatibleBackend``;
    ``anthropic`` → ``AnthropicBackend``; ``google_genai`` → ``GeminiBackend`` (Gemini).

    Imports are lazy so the offline path never loads the ``openai`` package. ``datasets`` lets
    the offline backend profile a project dataset by name.
    """
    api_type = settings.resolved_api_type
    if api_type == "offline":
        from core.llm.offline import OfflineBackend

        return OfflineBackend(list(datasets))
    if api_type in ("openai", "azure", "azure_ad"):
        from core.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    if api_type == "ollama":
        from core.llm.ollama_backend import OllamaBackend

        return OllamaBackend(settings)
    if api_type in ("groq", "qwen", "zhipuai"):
        from core.llm.compatible import CompatibleBackend

        return CompatibleBackend(settings)
    if api_type == "anthropic":
        from core.llm.anthropic_backend import AnthropicBackend

        return AnthropicBackend(settings)
    if api_type == "google_genai":
        from core.llm.gemini_backend import GeminiBackend

        return GeminiBackend(settings)
    raise LLMError(
        f"unknown llm.api_type {api_type!r} (expected offline, openai, azure, azure_ad, ollama, groq, qwen, "
        "zhipuai, anthropic or google_genai)"
    )


class ModelChoices:
    """The backends of ``llm.models``: one per (name, temperature) a chat picked, made on first use
    and shared by every session; the default one is the app's own backend."""

    def __init__(self, settings: LLMSettings, default: LLMBackend, datasets: Sequence[Dataset] = ()) -> None:
        self.settings = settings
        self.default = default
        self.datasets = list(datasets)
        self._made: dict[tuple[str, float | None], LLMBackend] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Every model a chat may pick, the default first."""
        return self.settings.model_names

    @property
    def default_name(self) -> str:
        return self.settings.default_model_name

    def get(self, name: str | None, temperature: float | None = None) -> LLMBackend:
        """The backend of the named choice (None: the default), with ``temperature`` if given.
        An unknown name raises ``KeyError``; a temperature outside 0..2 raises ``ValueError``."""
        name = name or self.default_name
        if temperature is not None and not 0 <= temperature <= 2:
            raise ValueError(f"temperature {temperature} is outside 0..2 (llm.temperature)")
        settings = self.settings.for_model(name)
        if temperature is None or temperature == settings.temperature:
            if name == self.default_name:
                return self.default
            temperature = None
        key = (name, temperature)
        with self._lock:
            backend = self._made.get(key)
            if backend is None:
                chosen = settings if temperature is None else settings.model_copy(update={"temperature": temperature})
                backend = self._made[key] = create_backend(chosen, self.datasets)
            return backend

    def close(self) -> None:
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for backend in made:
            backend.close()
