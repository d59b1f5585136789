"""Reads the service layer does not offer yet (the EC2 frontend's own, read-only).

Availability zones are the broker's clusters; this lists their names with one Core query.
Move it to ``broker/service`` when another frontend needs it.
"""

from __future__ import annotations

from sqlalchemy import select

from broker import model as m
from broker.runtime import Runtime


async def zone_names(rt: Runtime) -> list[str]:
    """Every cluster name, sorted (each is one availability zone)."""
    async with rt.engine.connect() as conn:
        return list((await conn.scalars(select(m.Cluster.name).order_by(m.Cluster.name))).all())


async def target_zones(rt: Runtime) -> dict[str, str]:
    """Target id -> the name of its cluster, for targets in a cluster."""
    stmt = select(m.Target.id, m.Cluster.name).join(m.Cluster, m.Cluster.id == m.Target.cluster_id)
    async with rt.reader.connect() as conn:
        return {tid: name for tid, name in await conn.execute(stmt)}
