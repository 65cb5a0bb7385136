"""The ``/metrics`` figures at a glance: every ``weaver_*`` series read from the process's own
Prometheus registry (``core.metrics``), not over HTTP, summed over its labels with the non-zero
label values beside it; a histogram as its count and mean."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY


@dataclass(frozen=True)
class Figure:
    name: str
    documentation: str
    value: str  # as shown
    detail: str  # the non-zero values by label, or ""


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def glance() -> list[Figure]:
    """Every Weaver series now, by name."""
    found = []
    for family in REGISTRY.collect():
        if not family.name.startswith("weaver_"):
            continue
        if family.type == "histogram":
            count = sum(s.value for s in family.samples if s.name.endswith("_count"))
            total = sum(s.value for s in family.samples if s.name.endswith("_sum"))
            value = f"{_number(count)} (mean {total / count:.3g} s)" if count else "0"
            found.append(Figure(family.name, family.documentation, value, ""))
            continue
        samples = [s for s in family.samples if s.name in (family.name, f"{family.name}_total")]
        detail = ", ".join(
            f"{'/'.join(s.labels.values())}: {_number(s.value)}" for s in samples if s.labels and s.value
        )
        found.append(Figure(family.name, family.documentation, _number(sum(s.value for s in samples)), detail))
    return sorted(found, key=lambda figure: figure.name)
