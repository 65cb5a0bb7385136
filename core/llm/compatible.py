"""Groq, Qwen (DashScope) and ZhipuAI through their OpenAI-compatible endpoints.

TaskWeaver reaches these with each vendor's own SDK (``groq``, ``dashscope``, ``zhipuai``); all
three also serve the OpenAI chat-completions wire format, so here each is the OpenAI backend with
the vendor's default ``api_base``, its usual key variable, and the sampling keys it accepts: no
extra package. ``llm.api_type`` and ``llm.<type>.*`` keep TaskWeaver's names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import SecretStr

from core.config import LLMSettings
from core.llm.base import LLMError
from core.llm.openai_backend import OpenAIBackend


@dataclass(frozen=True)
class Provider:
    """What differs between the OpenAI-compatible vendors."""

    name: str
    api_base: str
    key_env: str  # read when llm.api_key is unset, as the vendor's SDK does
    sampling: frozenset[str]


_OPENAI_KEYS = frozenset({"top_p", "seed", "stop_token", "frequency_penalty", "presence_penalty"})

PROVIDERS: dict[str, Provider] = {
    "groq": Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", _OPENAI_KEYS),
    # DashScope's compatible mode takes top_k beside the OpenAI keys; it has no frequency_penalty.
    "qwen": Provider(
        "qwen",
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        "DASHSCOPE_API_KEY",
        frozenset({"top_p", "top_k", "seed", "stop_token", "presence_penalty"}),
    ),
    # GLM's chat API samples with temperature, top_p and stop only.
    "zhipuai": Provider(
        "zhipuai", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", frozenset({"top_p", "stop_token"})
    ),
}


def resolved_settings(settings: LLMSettings) -> LLMSettings:
    """``settings`` with the vendor's base and key filled in where unset, as OpenAI-type settings.

    A missing key is an error here: the OpenAI client would otherwise send ``OPENAI_API_KEY`` to
    another vendor."""
    provider = PROVIDERS[settings.resolved_api_type]
    key = settings.api_key or (SecretStr(os.environ[provider.key_env]) if os.environ.get(provider.key_env) else None)
    if key is None:
        raise LLMError(f"llm.api_type {provider.name} needs llm.api_key (or the {provider.key_env} variable)")
    base = settings.api_base or provider.api_base
    return settings.model_copy(update={"api_type": "openai", "api_base": base, "api_key": key})


class CompatibleBackend(OpenAIBackend):
    """The OpenAI backend speaking to a vendor's compatible endpoint under the vendor's name
    (which warnings about unsupported sampling keys and error messages use)."""

    def __init__(self, settings: LLMSettings) -> None:
        provider = PROVIDERS[settings.resolved_api_type]
        super().__init__(resolved_settings(settings))
        self.name = provider.name
        self.sampling_keys = provider.sampling
