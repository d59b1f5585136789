"""The dashboard's figures: monitoring history per host, instance counts, burst spend.

Everything a caller may see comes from the service layer with their :class:`Caller`; the only
table read here directly is the monitor's sample history of hosts, which is infrastructure
every signed-in user may see (as ``targets.describe`` already shows every target).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from broker import model as m
from broker.runtime import Runtime
from broker.service.flavors import FlavorView
from broker.service.instances import InstanceView
from broker.service.policies import PolicyVersionView
from broker.service.targets import TargetView
from broker.snapshots import snapshot_targets
from broker.states import ON_TARGET

HISTORY_POINTS = 40


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    used_cpu: float
    used_memory_mb: int
    running: int


async def host_history(
    rt: Runtime, target_ids: Sequence[str], points: int = HISTORY_POINTS
) -> dict[str, list[Sample]]:
    """The last ``points`` monitor samples of each target, oldest first (one query)."""
    out: dict[str, list[Sample]] = {tid: [] for tid in target_ids}
    if not target_ids:
        return out
    stmt = (
        select(
            m.HostSample.target_id,
            m.HostSample.used_cpu,
            m.HostSample.used_memory_mb,
            m.HostSample.running,
        )
        .where(m.HostSample.target_id.in_(list(target_ids)))
        .order_by(m.HostSample.id.desc())
        .limit(points * len(target_ids))
    )
    async with rt.reader.connect() as conn:
        for tid, cpu, mem, running in await conn.execute(stmt):
            series = out[tid]
            if len(series) < points:
                series.append(Sample(float(cpu), int(mem), int(running)))
    for series in out.values():
        series.reverse()
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Allocated:
    cpu: int
    memory_mb: int


async def allocated(rt: Runtime) -> dict[str, Allocated]:
    """vCPUs and memory placement has handed out on each target (reservations included)."""
    async with rt.reader.connect() as conn:
        snaps = await snapshot_targets(conn)
    return {
        s.id: Allocated(
            max(0, s.total_cpu - s.free_cpu), max(0, s.total_memory_mb - s.free_memory_mb)
        )
        for s in snaps
    }


def where_label(view: InstanceView) -> str:
    """Local, the region's or the peer's name, or unplaced."""
    if view.target_kind is None:
        return "(not placed)"
    if view.target_kind == "host":
        return "local"
    return f"{view.target_kind} {view.target_name}"


def counts(items: Iterable[InstanceView]) -> tuple[dict[str, int], dict[str, int]]:
    by_state: Counter[str] = Counter()
    by_where: Counter[str] = Counter()
    for view in items:
        by_state[view.state.value] += 1
        by_where[where_label(view)] += 1
    return dict(sorted(by_state.items())), dict(sorted(by_where.items()))


@dataclasses.dataclass(frozen=True, slots=True)
class Spend:
    target: str
    instances: int
    spend_per_hour: float
    budget: float | None
    max_instances: int | None

    @property
    def over(self) -> bool:
        return self.budget is not None and self.spend_per_hour > self.budget


def _price(doc_target: Mapping[str, Any], flavor: str, catalog: Mapping[str, float]) -> float:
    fmap = doc_target.get("flavor_map") or {}
    mapped = str(fmap.get(flavor, flavor)) if isinstance(fmap, Mapping) else flavor
    prices = doc_target.get("prices") or {}
    if not isinstance(prices, Mapping):
        prices = {}
    value = prices.get(mapped, catalog.get(flavor, 0.0))
    return float(value) if isinstance(value, int | float) else 0.0


def burst_spend(
    policy: PolicyVersionView | None,
    targets: Sequence[TargetView],
    items: Iterable[InstanceView],
    flavors: Sequence[FlavorView],
) -> list[Spend]:
    """Spend per hour of what runs on each region and peer now, against the policy's budget."""
    doc_targets: dict[str, Mapping[str, Any]] = {}
    raw = policy.document.get("targets", []) if policy is not None else []
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            doc_targets[entry["name"]] = entry
    catalog = {f.name: f.price_per_hour for f in flavors}
    on: dict[str, list[InstanceView]] = {}
    for view in items:
        if view.target_name and view.target_kind != "host" and view.state in ON_TARGET:
            on.setdefault(view.target_name, []).append(view)
    out = []
    for t in targets:
        if t.kind == "host":
            continue
        entry = doc_targets.get(t.name, {})
        running = on.get(t.name, [])
        spend = sum(_price(entry, v.flavor, catalog) for v in running)
        budget = entry.get("max_spend_per_hour")
        limit = entry.get("max_instances")
        out.append(
            Spend(
                t.name,
                len(running),
                round(spend, 4),
                float(budget) if isinstance(budget, int | float) else None,
                int(limit) if isinstance(limit, int) else None,
            )
        )
    return out
