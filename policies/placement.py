"""Placement: filters remove targets that cannot take an instance, rankers order the rest.

Pure and synchronous over snapshots. The framework accounts for what this cycle has already
placed (so a batch never overfills a target), normalises nothing it does not need to, and
records for each instance which filter removed which target and what each survivor ranked, so
``cloudbroker explain`` can say why an instance went where it went.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from broker.protocols import Decision, PlacementRequest, TargetSnapshot
from policies import expr


@dataclasses.dataclass(slots=True)
class Free:
    """What is left on a target during one cycle."""

    cpu: int
    memory_mb: int
    disk_gb: int
    running: int


class Filter(Protocol):
    name: str

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool: ...


class Ranker(Protocol):
    name: str

    def rank(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float: ...


class Usable:
    name = "state"

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return target.state == "enabled"


class EnoughCapacity:
    name = "capacity"

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return (
            free.cpu >= req.vcpus
            and free.memory_mb >= req.memory_mb
            and free.disk_gb >= req.disk_gb
        )


class HypervisorMatch:
    name = "hypervisor"

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        if not req.image_hypervisor or target.kind != "host":
            return True
        return req.image_hypervisor == target.hypervisor


class ZoneMatch:
    name = "zone"

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return req.zone is None or target.zone == req.zone


class Requirements:
    """The operator's requirements expression, and the instance's own, both must hold."""

    name = "requirements"

    def __init__(self, default: str = "") -> None:
        self._default = expr.parse_requirements(default)
        self._cache: dict[str, Callable[[Mapping[str, Any]], bool]] = {}

    def _compiled(self, text: str) -> Callable[[Mapping[str, Any]], bool]:
        fn = self._cache.get(text)
        if fn is None:
            if len(self._cache) > 1024:
                self._cache.clear()
            try:
                fn = expr.parse_requirements(text)
            except expr.ExprError:
                fn = _never
            self._cache[text] = fn
        return fn

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        attrs = _attrs(target, free)
        if not self._default(attrs):
            return False
        return not req.requirements or self._compiled(req.requirements)(attrs)


def _never(_attrs: Mapping[str, Any]) -> bool:
    return False


def _attrs(target: TargetSnapshot, free: Free) -> dict[str, Any]:
    attrs = dict(target.attrs)
    attrs.update(FREE_CPU=free.cpu, FREE_MEM=free.memory_mb, RUNNING_VMS=free.running)
    return attrs


class Packing:
    """Fill the busiest target first (fewer hosts in use)."""

    name = "packing"

    def rank(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return float(free.running)


class Striping:
    """Spread: the target with the fewest instances first."""

    name = "striping"

    def rank(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return -float(free.running)


class LoadAware:
    """The target with the most free CPU first."""

    name = "load-aware"

    def rank(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return float(free.cpu) - target.load


class Cheapest:
    name = "cost"

    def rank(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return -target.price_per_hour


class RankExpression:
    name = "rank"

    def __init__(self, text: str) -> None:
        self._fn = expr.parse_rank(text)

    def rank(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> float:
        return self._fn(_attrs(target, free))


PRESETS: dict[str, Callable[[], Ranker]] = {
    "packing": Packing,
    "striping": Striping,
    "load-aware": LoadAware,
    "cost": Cheapest,
}


class DefaultPolicy:
    """Filters in order, then the preset ranker; local hosts before regions and peers."""

    def __init__(self, *, preset: str = "packing", requirements: str = "", rank: str = "") -> None:
        self.filters: list[Filter] = [
            Usable(),
            ZoneMatch(),
            HypervisorMatch(),
            EnoughCapacity(),
            Requirements(requirements),
        ]
        self.ranker: Ranker = RankExpression(rank) if rank else PRESETS[preset]()

    def place(
        self, requests: Sequence[PlacementRequest], targets: Sequence[TargetSnapshot]
    ) -> list[Decision]:
        free = {
            t.id: Free(t.free_cpu, t.free_memory_mb, t.free_disk_gb, t.running) for t in targets
        }
        out = []
        for req in requests:
            considered: dict[str, str] = {}
            best: tuple[tuple[int, float], TargetSnapshot] | None = None
            for t in targets:
                left = free[t.id]
                removed = next((f.name for f in self.filters if not f.passes(t, left, req)), None)
                if removed is not None:
                    considered[t.name] = f"removed by {removed}"
                    continue
                score = (0 if t.kind == "host" else -1, self.ranker.rank(t, left, req))
                considered[t.name] = f"rank {score[1]:g}"
                if best is None or score > best[0]:
                    best = (score, t)
            if best is None:
                why = "no target can take it" if targets else "no targets are configured"
                out.append(Decision(req.instance_id, None, why, considered))
                continue
            chosen = best[1]
            left = free[chosen.id]
            left.cpu -= req.vcpus
            left.memory_mb -= req.memory_mb
            left.disk_gb -= req.disk_gb
            left.running += 1
            out.append(
                Decision(
                    req.instance_id,
                    chosen.id,
                    f"{chosen.name}: best by {self.ranker.name}",
                    considered,
                )
            )
        return out
