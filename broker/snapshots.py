"""One snapshot of every target for a placement cycle: capacity minus reservations minus what
instances already hold, plus the latest monitoring sample, as plain :class:`TargetSnapshot`s.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import model as m
from broker.protocols import TargetSnapshot
from broker.states import ON_TARGET

_HELD = tuple(s.value for s in ON_TARGET)


async def snapshot_targets(conn: AsyncConnection) -> list[TargetSnapshot]:
    held = {
        tid: (cpu or 0, mem or 0, disk or 0, n)
        for tid, cpu, mem, disk, n in await conn.execute(
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
    }
    latest = (
        select(m.HostSample.target_id, func.max(m.HostSample.id).label("sid"))
        .group_by(m.HostSample.target_id)
        .subquery()
    )
    samples = {
        tid: (load, free_disk)
        for tid, load, free_disk in await conn.execute(
            select(m.HostSample.target_id, m.HostSample.load, m.HostSample.free_disk_gb).join(
                latest, latest.c.sid == m.HostSample.id
            )
        )
    }
    rows = await conn.execute(
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
            m.Target.reserved_memory_mb,
            m.Target.simulated,
            m.Target.settings,
        )
        .outerjoin(m.Cluster, m.Cluster.id == m.Target.cluster_id)
        .order_by(m.Target.name)
    )
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
        rmem,
        simulated,
        settings,
    ) in rows:
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
            free_cpu=cpu - rcpu - int(used_cpu),
            free_memory_mb=mem - rmem - int(used_mem),
            free_disk_gb=int(min(free_disk, disk - used_disk) if disk else free_disk),
            running=running,
            load=load,
            price_per_hour=price,
            zone=cluster or "",
            simulated=simulated,
            attrs={
                "NAME": name,
                "KIND": kind,
                "HYPERVISOR": hypervisor,
                "CLUSTER": cluster or "",
                "TOTAL_CPU": cpu,
                "TOTAL_MEM": mem,
                "FREE_CPU": cpu - rcpu - int(used_cpu),
                "FREE_MEM": mem - rmem - int(used_mem),
                "RUNNING_VMS": running,
                "LOAD": load,
                "PRICE": price,
                "SIMULATED": simulated,
            },
        )
        out.append(snap)
    return out
