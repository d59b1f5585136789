"""Placement rankers: among the targets that passed the filters, which is best (higher wins).

One small class per ranker, as nova's ``scheduler/weights``: packing (fill the busiest target
first), striping (spread), load-aware (most free CPU), cost (cheapest per hour for the
instance's flavor) and a custom rank expression. ``volatile`` says whether a target's score
changes as the cycle fills it, so the framework knows which scores to refresh after each
placement. :func:`normalise` maps raw scores onto 0..1 for explanations and combinations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from broker.errors import InvalidRequest
from broker.protocols import PlacementRequest, TargetSnapshot
from policies import expr
from policies.filters import DYNAMIC_NAMES, Free, target_prices


class Ranker(Protocol):
    name: str
    volatile: bool

    def score(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float: ...


class Packing:
    """Fill the busiest target first, so fewer hosts are in use (OpenNebula: RUNNING_VMS)."""

    name = "packing"
    volatile = True

    def score(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return float(free.running)


class Striping:
    """Spread: the target with the fewest instances first (OpenNebula: -RUNNING_VMS)."""

    name = "striping"
    volatile = True

    def score(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return -float(free.running)


class LoadAware:
    """The target with the most free CPU first (OpenNebula: FREE_CPU)."""

    name = "load-aware"
    volatile = True

    def score(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return float(free.cpu)


def price_of(target: TargetSnapshot, flavor: str) -> float:
    """USD per hour of one instance of ``flavor`` on the target."""
    return float(target_prices(target).get(flavor, target.price_per_hour))


class Cheapest:
    """The cheapest target per hour for the instance's flavor."""

    name = "cost"
    volatile = False

    def score(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return -price_of(target, req.flavor)


class RankExpression:
    """An operator's or instance's rank expression over the target's attributes."""

    name = "rank"

    def __init__(self, text: str) -> None:
        compiled = expr.parse_rank(text)
        self.text = text
        self._fn: Callable[[Mapping[str, Any]], float] = compiled.evaluate
        self.volatile = bool(compiled.names & DYNAMIC_NAMES)

    def score(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return self._fn(free.attrs)


PRESETS: dict[str, Callable[[], Ranker]] = {
    "packing": Packing,
    "striping": Striping,
    "load-aware": LoadAware,
    "cost": Cheapest,
}


def make_ranker(preset: str = "packing", rank: str = "") -> Ranker:
    """A rank expression if given, else the preset; raise InvalidRequest on bad input."""
    if rank.strip():
        return RankExpression(rank)
    factory = PRESETS.get(preset)
    if factory is None:
        known = ", ".join(PRESETS)
        raise InvalidRequest(f"unknown ranking preset {preset!r} (one of {known})", field="preset")
    return factory()


def normalise(scores: Sequence[float]) -> list[float]:
    """Min-max onto 0..1 (all equal: all 1.0), as nova normalises weights."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [1.0] * len(scores)
    span = hi - lo
    return [(s - lo) / span for s in scores]
