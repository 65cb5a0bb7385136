"""Token usage and cost of a round, summed from its model calls (``Round.llm_calls``).

The counts are what the model servers reported (OpenAI's ``usage``, Ollama's ``prompt_eval_count`` /
``eval_count``); a call whose server reported none adds nothing. Cost comes only from the prices set
for a model (``llm.price_per_1k_prompt_tokens`` and ``llm.price_per_1k_completion_tokens``, also per
``llm.models`` entry and per ``ext_llms.llm_configs`` entry): Weaver keeps no price table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from core.config import LLMSettings
    from core.memory import Round


def cost_of(settings: LLMSettings | None, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """The price of one call, None unless both prices are set for its model."""
    if settings is None:
        return None
    prompt_price, completion_price = settings.price_per_1k_prompt_tokens, settings.price_per_1k_completion_tokens
    if prompt_price is None or completion_price is None:
        return None
    return ((prompt_tokens or 0) * prompt_price + (completion_tokens or 0) * completion_price) / 1000


@dataclass
class UsageLine:
    """The calls of one role to one model within a round."""

    role: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float | None = None  # None: no price is set for this model

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RoundUsage:
    """A round's tokens and cost, per role and model, and in total."""

    lines: list[UsageLine] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(line.prompt_tokens for line in self.lines)

    @property
    def completion_tokens(self) -> int:
        return sum(line.completion_tokens for line in self.lines)

    @property
    def cost(self) -> float | None:
        """The sum of the priced lines; None when no line has a price."""
        priced = [line.cost for line in self.lines if line.cost is not None]
        return sum(priced) if priced else None

    @property
    def reported(self) -> bool:
        """Whether any model server reported tokens in this round."""
        return self.prompt_tokens + self.completion_tokens > 0

    def by_model(self) -> dict[str, tuple[int, int, float | None]]:
        """(prompt, completion, cost) per model, the roles merged."""
        out: dict[str, tuple[int, int, float | None]] = {}
        for line in self.lines:
            prompt, completion, cost = out.get(line.model, (0, 0, None))
            if line.cost is not None:
                cost = (cost or 0.0) + line.cost
            out[line.model] = (prompt + line.prompt_tokens, completion + line.completion_tokens, cost)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"lines": [line.to_dict() for line in self.lines]}


def usage_of_calls(calls: Iterable[Mapping[str, Any]]) -> RoundUsage:
    """Sum ``LLMCallRecord.to_dict()`` records per (role, model), in the order first seen."""
    lines: dict[tuple[str, str], UsageLine] = {}
    for call in calls:
        key = (str(call.get("role") or ""), str(call.get("model") or ""))
        line = lines.setdefault(key, UsageLine(*key))
        line.calls += 1
        line.prompt_tokens += int(call.get("prompt_tokens") or 0)
        line.completion_tokens += int(call.get("completion_tokens") or 0)
        cost = call.get("cost")
        if cost is not None:
            line.cost = (line.cost or 0.0) + float(cost)
    return RoundUsage(list(lines.values()))


def round_usage(rnd: Round) -> RoundUsage:
    """The usage of ``rnd``'s model calls."""
    return usage_of_calls(rnd.llm_calls)
