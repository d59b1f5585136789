"""Targets: the hosts, regions and peers placement chooses among, and their operator controls.

Adding a target asks its backend to validate the settings and reach it once, so a wrong URI or
credential is refused at ``host add`` with the backend's own reason. A target with instances on
it cannot be removed; draining stops new placements while existing instances stay.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from broker import ids
from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import AlreadyExists, InvalidRequest, NotFound
from broker.events import audit, record, transition
from broker.model import utcnow
from broker.protocols import TargetConfig
from broker.runtime import Runtime
from broker.service.instances import release
from broker.states import ON_TARGET

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = {"host", "region", "peer"}
STATES = ("enabled", "disabled", "draining", "error")


@dataclasses.dataclass(frozen=True, slots=True)
class TargetView:
    id: str
    name: str
    kind: str
    driver: str
    hypervisor: str
    cluster: str | None
    state: str
    state_reason: str
    simulated: bool
    total_cpu: int
    total_memory_mb: int
    total_disk_gb: int
    reserved_cpu: int
    reserved_memory_mb: int
    reserved_cpu_pct: float
    reserved_memory_pct: float
    cpu_cost: float
    memory_cost: float
    last_seen_at: dt.datetime | None
    settings: Mapping[str, Any]
    instances: int = 0


_COLS = (
    m.Target.id,
    m.Target.name,
    m.Target.kind,
    m.Target.driver,
    m.Target.hypervisor,
    m.Cluster.name,
    m.Target.state,
    m.Target.state_reason,
    m.Target.simulated,
    m.Target.total_cpu,
    m.Target.total_memory_mb,
    m.Target.total_disk_gb,
    m.Target.reserved_cpu,
    m.Target.reserved_memory_mb,
    m.Target.reserved_cpu_pct,
    m.Target.reserved_memory_pct,
    m.Target.cpu_cost,
    m.Target.memory_cost,
    m.Target.last_seen_at,
    m.Target.settings,
)


async def ensure_cluster(conn: Any, name: str) -> str:
    cid = await conn.scalar(select(m.Cluster.id).where(m.Cluster.name == name))
    if cid is None:
        cid = ids.new_id("cluster")
        await conn.execute(insert(m.Cluster).values(id=cid, name=name))
    return str(cid)


async def add(
    rt: Runtime,
    caller: Caller,
    *,
    name: str,
    kind: str,
    driver: str,
    hypervisor: str = "",
    cluster: str | None = None,
    settings: Mapping[str, Any] | None = None,
    secret: Mapping[str, Any] | None = None,
    simulated: bool = False,
    validate: bool = True,
) -> TargetView:
    require_admin(caller)
    if not NAME.match(name):
        raise InvalidRequest(f"invalid target name '{name[:64]}'", field="name")
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(sorted(KINDS))}", field="kind")
    assert rt.backends is not None
    factory = rt.backends.factory(driver)
    tid = ids.new_id("target")
    config = TargetConfig(
        id=tid,
        name=name,
        kind=kind,
        driver=driver,
        hypervisor=hypervisor,
        settings=dict(settings or {}),
        secret=dict(secret or {}),
        data_dir=str(rt.config.data_path),
    )
    async with rt.engine.connect() as conn:
        if await conn.scalar(select(m.Target.id).where(m.Target.name == name)):
            raise AlreadyExists(f"a target named '{name}' exists", resource="target")
    if validate:
        await factory.validate(config)
    async with rt.engine.begin() as conn:
        cid = await ensure_cluster(conn, cluster) if cluster else None
        await conn.execute(
            insert(m.Target).values(
                id=tid,
                name=name,
                kind=kind,
                driver=driver,
                hypervisor=hypervisor,
                cluster_id=cid,
                settings=dict(settings or {}),
                simulated=simulated,
                secret_enc=rt.box.seal(json.dumps(dict(secret))) if secret else None,
            )
        )
        await record(
            conn, [audit(tid, caller.name, "target added", name=name, kind=kind, driver=driver)]
        )
    rt.monitor_wake.set()
    return await get(rt, caller, name)


async def describe(
    rt: Runtime, caller: Caller, name: str | None = None, kind: str | None = None
) -> list[TargetView]:
    del caller  # targets are infrastructure: any authenticated user may see the list
    stmt = select(*_COLS).outerjoin(m.Cluster, m.Cluster.id == m.Target.cluster_id)
    if name is not None:
        stmt = stmt.where((m.Target.name == name) | (m.Target.id == name))
    if kind is not None:
        stmt = stmt.where(m.Target.kind == kind)
    counts_stmt = (
        select(m.Instance.target_id, func.count())
        .where(m.Instance.state.in_([s.value for s in ON_TARGET]))
        .group_by(m.Instance.target_id)
    )
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(m.Target.name))).all()
        counts = {tid: n for tid, n in await conn.execute(counts_stmt)}
    return [TargetView(*r, instances=counts.get(r[0], 0)) for r in rows]  # type: ignore[misc]


async def get(rt: Runtime, caller: Caller, name: str) -> TargetView:
    found = await describe(rt, caller, name)
    if not found:
        raise NotFound(f"the target '{name}' does not exist", resource="target", field=name)
    return found[0]


async def set_state(rt: Runtime, caller: Caller, name: str, state: str) -> TargetView:
    """enable, disable or drain a target (error is the monitor's to set and clear)."""
    require_admin(caller)
    if state not in ("enabled", "disabled", "draining"):
        raise InvalidRequest("state must be enabled, disabled or draining", field="state")
    target = await get(rt, caller, name)
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(m.Target)
            .where(m.Target.id == target.id)
            .values(state=state, state_reason="set by " + caller.name)
        )
        await record(conn, [audit(target.id, caller.name, f"target {state}", name=target.name)])
    rt.wake_scheduler()
    return await get(rt, caller, name)


async def set_costs(
    rt: Runtime,
    caller: Caller,
    name: str,
    *,
    cpu_cost: float | None = None,
    memory_cost: float | None = None,
) -> TargetView:
    """A local host's price per vCPU-hour and per GiB-hour (OpenNebula's CPU_COST and
    MEMORY_COST), which accounting charges for instances running there."""
    require_admin(caller)
    values = {
        k: v for k, v in (("cpu_cost", cpu_cost), ("memory_cost", memory_cost)) if v is not None
    }
    if not values:
        raise InvalidRequest("give a cpu_cost or a memory_cost (or both)")
    for key, value in values.items():
        if not 0 <= value <= 1_000_000:
            raise InvalidRequest(f"{key} must be between 0 and 1000000 per hour", field=key)
    target = await get(rt, caller, name)
    if target.kind != "host":
        raise InvalidRequest(f"'{name}' is a {target.kind}: its prices come from its price table")
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Target).where(m.Target.id == target.id).values(**values))
        await record(conn, [audit(target.id, caller.name, "host costs set", **values)])
    return await get(rt, caller, name)


async def remove(rt: Runtime, caller: Caller, name: str, *, force: bool = False) -> list[str]:
    """Remove a target that runs nothing; with ``force``, mark what still runs there failed
    ("left on NAME") and release it here, leaving it to the target. Returns those ids."""
    require_admin(caller)
    target = await get(rt, caller, name)
    if target.instances and not force:
        raise InvalidRequest(
            f"the target '{name}' still runs {target.instances} instance(s); "
            "drain it and move or terminate them first"
        )
    async with rt.engine.begin() as conn:
        rows = (
            await conn.execute(
                select(m.Instance.id, m.Instance.state, m.Instance.backend_ref).where(
                    m.Instance.target_id == target.id,
                    m.Instance.state.in_([s.value for s in ON_TARGET]),
                )
            )
        ).all()
        if rows and not force:
            raise InvalidRequest(f"the target '{name}' is not empty")
        left = [r[0] for r in rows]
        if left:
            now = utcnow()
            for rid, _old, ref in rows:
                await conn.execute(
                    update(m.Instance)
                    .where(m.Instance.id == rid)
                    .values(
                        state="failed",
                        intent=None,
                        ended_at=now,
                        updated_at=now,
                        state_reason=f"left on {name} ({ref or 'no reference'})",
                    )
                )
            await record(
                conn,
                [
                    transition(
                        rid, old, "failed", caller.name, f"left on {name} when it was removed"
                    )
                    for rid, old, _ in rows
                ],
            )
            await release(conn, left)
        await conn.execute(
            update(m.Instance).where(m.Instance.target_id == target.id).values(target_id=None)
        )
        await conn.execute(
            update(m.Volume).where(m.Volume.target_id == target.id).values(target_id=None)
        )
        await conn.execute(delete(m.HostSample).where(m.HostSample.target_id == target.id))
        await conn.execute(delete(m.Target).where(m.Target.id == target.id))
        await record(conn, [audit(target.id, caller.name, "target removed", name=name)])
    if rt.backends is not None:
        await rt.backends.drop(target.id)
    return left
