"""The sampling keys a chat sends beside temperature, and one warning per key a provider lacks.

Every backend asks ``sampling_options`` for what the user set (unset keys are never sent, so a
provider's own defaults stay) and maps the names onto its wire format. A key its provider has no
field for is dropped with one warning per (provider, key) for the life of the process: a config
shared between providers must not fill the log at every round.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Collection

from core.config import LLMSettings

logger = logging.getLogger("weaver.llm")

SAMPLING_KEYS = ("top_p", "top_k", "seed", "stop_token", "frequency_penalty", "presence_penalty")

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def sampling_options(settings: LLMSettings) -> dict[str, Any]:
    """The sampling keys set in ``settings`` (Weaver's names; ``stop_token`` is a list)."""
    options = {key: getattr(settings, key) for key in SAMPLING_KEYS}
    return {key: value for key, value in options.items() if value is not None and value != []}


def supported_options(settings: LLMSettings, provider: str, supported: Collection[str]) -> dict[str, Any]:
    """``sampling_options`` limited to what ``provider`` accepts; the rest is warned about once."""
    options = sampling_options(settings)
    for key in sorted(set(options) - set(supported)):
        warn_unsupported(provider, key)
        del options[key]
    return options


def warn_unsupported(provider: str, key: str) -> None:
    """Log once per process that ``provider`` has no ``llm.<key>``, so the setting is not sent."""
    with _warned_lock:
        if (provider, key) in _warned:
            return
        _warned.add((provider, key))
    logger.warning("llm.%s is not sent: the %s API has no such setting", key, provider)
