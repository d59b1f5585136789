"""Reservations: the CPU and memory an operator holds back from placement on a host or cluster.

A reservation is absolute (CPUs, MiB) or a percent of the host's total, and negative means
overcommit: placement may then hand out more than the host has. A host's own reservation of a
resource wins over its cluster's; a host that sets none for that resource (zero absolute and
zero percent) takes its cluster's. Setting one form clears the other, and "0" clears both.
Placement sees ``free = total - reserved - held`` (:func:`effective`, in broker/snapshots.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sqlalchemy import func, select, update

from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import InvalidRequest, NotFound
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service import targets
from broker.service.targets import TargetView

_AMOUNT = re.compile(r"^(?P<value>-?\d+(?:\.\d+)?)(?P<pct>%?)$")
PERCENT_RANGE = (-1000.0, 100.0)  # at most tenfold overcommit; never more than everything
LIMITS = {"cpu": 100_000, "memory": 1 << 30}  # CPUs, MiB: past these a value is a typo


@dataclasses.dataclass(frozen=True, slots=True)
class Amount:
    """A parsed reservation: ``value`` CPUs or MiB, or ``value`` percent of the total."""

    value: float
    percent: bool

    def columns(self, resource: str) -> dict[str, float]:
        absolute, pct = _COLUMNS[resource]
        return {absolute: 0 if self.percent else self.value, pct: self.value if self.percent else 0}


_COLUMNS = {
    "cpu": ("reserved_cpu", "reserved_cpu_pct"),
    "memory": ("reserved_memory_mb", "reserved_memory_pct"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterView:
    id: str
    name: str
    reserved_cpu: float
    reserved_memory_mb: float
    reserved_cpu_pct: float
    reserved_memory_pct: float
    hosts: int


def parse(text: str, resource: str) -> Amount:
    """``"2"``, ``"-4"``, ``"25%"`` or ``"-50%"``: refused with the field's name otherwise."""
    found = _AMOUNT.match(text.strip())
    if found is None:
        raise InvalidRequest(
            f"{resource} reservation '{text}' is not a number or a percent such as 2, -4, 25%",
            field=resource,
        )
    value, percent = float(found["value"]), bool(found["pct"])
    if percent:
        low, high = PERCENT_RANGE
        if not low <= value <= high:
            raise InvalidRequest(
                f"{resource} reservation {text} is outside {low:g}% .. {high:g}%", field=resource
            )
    else:
        if value != int(value):
            raise InvalidRequest(
                f"an absolute {resource} reservation is a whole number, not {text}", field=resource
            )
        if abs(value) > LIMITS[resource]:
            raise InvalidRequest(
                f"{resource} reservation {text} is beyond ±{LIMITS[resource]}", field=resource
            )
    return Amount(value, percent)


def effective(total: int, absolute: float, pct: float) -> float:
    """What is held back of ``total``: the absolute amount plus the percent of the total."""
    return absolute + total * pct / 100.0


def pick(own: tuple[float, float], cluster: tuple[float, float]) -> tuple[float, float]:
    """The host's own (absolute, percent) if it set either, else its cluster's."""
    return own if own[0] or own[1] else cluster


def _amounts(cpu: str | None, memory: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for resource, text in (("cpu", cpu), ("memory", memory)):
        if text is not None:
            values.update(parse(text, resource).columns(resource))
    if not values:
        raise InvalidRequest("give a cpu or a memory reservation (or both)")
    return values


async def set_for_host(
    rt: Runtime, caller: Caller, name: str, *, cpu: str | None = None, memory: str | None = None
) -> TargetView:
    require_admin(caller)
    values = _amounts(cpu, memory)
    target = await targets.get(rt, caller, name)
    if target.kind != "host":
        raise InvalidRequest(f"'{name}' is a {target.kind}: only hosts have reservations")
    for key in ("reserved_cpu", "reserved_memory_mb"):
        if key in values:
            values[key] = int(values[key])
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Target).where(m.Target.id == target.id).values(**values))
        await record(conn, [audit(target.id, caller.name, "host reservation set", **values)])
    rt.wake_scheduler()
    return await targets.get(rt, caller, name)


async def describe_clusters(
    rt: Runtime, caller: Caller, name: str | None = None
) -> list[ClusterView]:
    del caller  # clusters are infrastructure: any authenticated user may see them
    hosts = (
        select(m.Target.cluster_id, func.count().label("n"))
        .group_by(m.Target.cluster_id)
        .subquery()
    )
    stmt = (
        select(
            m.Cluster.id,
            m.Cluster.name,
            m.Cluster.reserved_cpu,
            m.Cluster.reserved_memory_mb,
            m.Cluster.reserved_cpu_pct,
            m.Cluster.reserved_memory_pct,
            func.coalesce(hosts.c.n, 0),
        )
        .outerjoin(hosts, hosts.c.cluster_id == m.Cluster.id)
        .order_by(m.Cluster.name)
    )
    if name is not None:
        stmt = stmt.where((m.Cluster.name == name) | (m.Cluster.id == name))
    async with rt.engine.connect() as conn:
        return [ClusterView(*row) for row in await conn.execute(stmt)]


async def get_cluster(rt: Runtime, caller: Caller, name: str) -> ClusterView:
    found = await describe_clusters(rt, caller, name)
    if not found:
        raise NotFound(f"the cluster '{name}' does not exist", resource="cluster", field=name)
    return found[0]


async def set_for_cluster(
    rt: Runtime, caller: Caller, name: str, *, cpu: str | None = None, memory: str | None = None
) -> ClusterView:
    require_admin(caller)
    values = _amounts(cpu, memory)
    cluster = await get_cluster(rt, caller, name)
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Cluster).where(m.Cluster.id == cluster.id).values(**values))
        await record(conn, [audit(cluster.id, caller.name, "cluster reservation set", **values)])
    rt.wake_scheduler()
    return await get_cluster(rt, caller, name)
