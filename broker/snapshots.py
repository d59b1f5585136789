"""One snapshot of every target for a placement cycle: capacity minus reservations (the host's
own, else its cluster's; absolute or percent) minus what instances already hold, plus the latest
monitoring sample, as plain :class:`TargetSnapshot`s; and the pending instances as
:class:`PlacementRequest`s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Final

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import model as m
from broker.protocols import PlacementRequest, TargetSnapshot
from broker.service.reservations import effective, pick
from broker.states import ON_TARGET, State

_HELD = tuple(s.value for s in ON_TARGET)


_LATEST: Final = (
    select(m.HostSample.target_id, func.max(m.HostSample.id).label("sid"))
    .group_by(m.HostSample.target_id)
    .subquery()
)
# what a cycle reads, built once (building a statement costs more than running it here)
_HELD_BY_TARGET: Final = (
    select(
        m.Instance.target_id,
        func.sum(m.Instance.vcpus),
        func.sum(m.Instance.memory_mb),
        func.sum(m.Instance.disk_gb),
        func.count(),
    )
    .where(m.Instance.state.in_(_HELD), m.Instance.target_id.is_not(None))
    .group_by(m.Instance.target_id)
)
_LATEST_SAMPLES: Final = select(
    m.HostSample.target_id, m.HostSample.load, m.HostSample.free_disk_gb
).join(_LATEST, _LATEST.c.sid == m.HostSample.id)
_HELD_BY_FLAVOR: Final = (
    select(m.Instance.target_id, m.Instance.flavor, func.count())
    .join(m.Target, m.Target.id == m.Instance.target_id)
    .where(m.Instance.state.in_(_HELD), m.Target.kind != "host")
    .group_by(m.Instance.target_id, m.Instance.flavor)
)
_TARGETS: Final = (
    select(
        m.Target.id,
        m.Target.name,
        m.Target.kind,
        m.Target.driver,
        m.Target.hypervisor,
        m.Cluster.name,
        m.Target.state,
        m.Target.total_cpu,
        m.Target.total_memory_mb,
        m.Target.total_disk_gb,
        m.Target.reserved_cpu,
        m.Target.reserved_cpu_pct,
        m.Target.reserved_memory_mb,
        m.Target.reserved_memory_pct,
        m.Cluster.reserved_cpu,
        m.Cluster.reserved_cpu_pct,
        m.Cluster.reserved_memory_mb,
        m.Cluster.reserved_memory_pct,
        m.Target.simulated,
        m.Target.settings,
    )
    .outerjoin(m.Cluster, m.Cluster.id == m.Target.cluster_id)
    .order_by(m.Target.name)
)


async def snapshot_targets(conn: AsyncConnection) -> list[TargetSnapshot]:
    rows = (await conn.execute(_TARGETS)).all()
    held = {
        tid: (cpu or 0, mem or 0, disk or 0, n)
        for tid, cpu, mem, disk, n in await conn.execute(_HELD_BY_TARGET)
    }
    samples = {
        tid: (load, free_disk) for tid, load, free_disk in await conn.execute(_LATEST_SAMPLES)
    }
    by_flavor: dict[str, dict[str, int]] = {}
    if any(r[2] != "host" for r in rows):  # only burst targets count their flavors
        for tid, flavor, n in await conn.execute(_HELD_BY_FLAVOR):
            by_flavor.setdefault(str(tid), {})[flavor] = n
    out = []
    for (
        tid,
        name,
        kind,
        driver,
        hypervisor,
        cluster,
        state,
        cpu,
        mem,
        disk,
        rcpu,
        rcpu_pct,
        rmem,
        rmem_pct,
        ccpu,
        ccpu_pct,
        cmem,
        cmem_pct,
        simulated,
        settings,
    ) in rows:
        free_cpu = cpu - int(effective(cpu, *pick((rcpu, rcpu_pct), (ccpu or 0, ccpu_pct or 0))))
        free_mem = mem - int(effective(mem, *pick((rmem, rmem_pct), (cmem or 0, cmem_pct or 0))))
        used_cpu, used_mem, used_disk, running = held.get(tid, (0, 0, 0, 0))
        load, free_disk = samples.get(tid, (0.0, float(disk)))
        settings = settings or {}
        price = float(settings.get("price_per_hour", 0.0))
        snap = TargetSnapshot(
            id=tid,
            name=name,
            kind=kind,
            driver=driver,
            hypervisor=hypervisor,
            cluster=cluster or "",
            state=state,
            total_cpu=cpu,
            total_memory_mb=mem,
            free_cpu=free_cpu - int(used_cpu),
            free_memory_mb=free_mem - int(used_mem),
            free_disk_gb=int(min(free_disk, disk - used_disk) if disk else free_disk),
            running=running,
            load=load,
            price_per_hour=price,
            zone=cluster or "",
            simulated=simulated,
            prices={str(k): float(v) for k, v in (settings.get("prices") or {}).items()},
            running_by_flavor=by_flavor.get(tid, {}) if kind != "host" else None,
            attrs={
                "NAME": name,
                "KIND": kind,
                "HYPERVISOR": hypervisor,
                "CLUSTER": cluster or "",
                "TOTAL_CPU": cpu,
                "TOTAL_MEM": mem,
                "FREE_CPU": free_cpu - int(used_cpu),
                "FREE_MEM": free_mem - int(used_mem),
                "RUNNING_VMS": running,
                "LOAD": load,
                "PRICE": price,
                "SIMULATED": simulated,
            },
        )
        out.append(snap)
    return out


_PENDING: Final = (
    select(
        m.Instance.id,
        m.Instance.owner_id,
        m.Instance.group_id,
        m.Instance.vcpus,
        m.Instance.memory_mb,
        m.Instance.disk_gb,
        m.Instance.flavor,
        m.Instance.image_id,
        m.Image.hypervisor,
        m.Image.arch,
        m.Instance.zone,
        m.Instance.requirements,
        m.Instance.rank,
        m.Instance.hops,
        m.Image.mappings,
        m.Instance.created_at,
    )
    .join(m.Image, m.Image.id == m.Instance.image_id)
    .where(m.Instance.state == State.PENDING.value)
    .order_by(m.Instance.created_at, m.Instance.id)
    .limit(bindparam("b_batch"))
)
_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(PlacementRequest))[:14]


async def pending_requests(
    conn: AsyncConnection, batch: int, now: dt.datetime
) -> list[PlacementRequest]:
    """The oldest ``batch`` pending instances, as placement sees them."""
    out = []
    for row in await conn.execute(_PENDING, {"b_batch": batch}):
        mappings = {str(k): str(v) for k, v in (row[14] or {}).items()}
        age = max(0.0, (now - row[15]).total_seconds())
        fields: dict[str, Any] = dict(zip(_REQUEST_FIELDS, row[:14], strict=True))
        out.append(PlacementRequest(**fields, image_mappings=mappings, pending_seconds=age))
    return out
