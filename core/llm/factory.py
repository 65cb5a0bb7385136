"""Pick the LLM backend named by the configuration."""

from __future__ import annotations

from core.config import LLMSettings
from core.llm.base import LLMBackend, LLMError


def create_backend(settings: LLMSettings) -> LLMBackend:
    """``offline`` → the scripted offline backend; ``openai``/``azure`` → ``OpenAIBackend``.

    Imports are lazy so the offline path never loads the ``openai`` package.
    """
    api_type = settings.resolved_api_type
    if api_type == "offline":
        from core.llm.offline import OfflineBackend

        return OfflineBackend()
    if api_type in ("openai", "azure"):
        from core.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    raise LLMError(f"unknown llm.api_type {api_type!r} (expected offline, openai or azure)")
