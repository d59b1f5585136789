"""Migration: an operator moves an instance to another host of its cluster.

Only an admin may ask, for a running instance (live, where both ends allow it) or one powered
off (its definition moves). The destination must be another enabled host of the same cluster,
driven by the same driver and with room for the instance (what placement would count: its
capacity minus reservations minus what it holds). The request is recorded as the instance's
intent with the destination, in one transaction with its checks; the scheduler carries it out
on the source host and, when the hypervisor is done, the instance's target becomes the
destination. A failed migration leaves the instance where it was, with the reason as an event.
"""

from __future__ import annotations

from sqlalchemy import select, update

from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import InvalidRequest, InvalidState, NoCapacity, NotFound
from broker.events import audit, record
from broker.model import utcnow
from broker.runtime import Runtime
from broker.service import instances
from broker.service.common import check_ids
from broker.snapshots import snapshot_targets
from broker.states import Action, State

MOVABLE = (State.RUNNING.value, State.POWEROFF.value)


async def migrate(rt: Runtime, caller: Caller, rid: str, host: str) -> instances.InstanceView:
    require_admin(caller)
    check_ids("instance", [rid], "instance")
    async with rt.engine.begin() as conn:
        row = (
            await conn.execute(
                select(
                    m.Instance.state,
                    m.Instance.intent,
                    m.Instance.target_id,
                    m.Instance.vcpus,
                    m.Instance.memory_mb,
                )
                .where(m.Instance.id == rid)
                .with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound(f"the instance '{rid}' does not exist", resource="instance", field=rid)
        state, intent, source_id, vcpus, memory_mb = row
        if state not in MOVABLE or intent is not None or source_id is None:
            busy = f" (busy with '{intent}')" if intent else ""
            raise InvalidState(
                f"the instance '{rid}' is {state}{busy}; only a running or powered-off instance "
                "can migrate",
                resource="instance",
                state=state,
            )
        targets = {
            t.id: t
            for t in await snapshot_targets(conn)
            if t.name == host or t.id in (host, source_id)
        }
        source = targets[source_id]
        dest = next((t for t in targets.values() if host in (t.name, t.id)), None)
        if dest is None:
            raise NotFound(f"the host '{host}' does not exist", resource="target", field=host)
        if dest.id == source.id:
            raise InvalidRequest(f"the instance '{rid}' already runs on {dest.name}", field="host")
        if dest.kind != "host" or dest.driver != source.driver or dest.cluster != source.cluster:
            raise InvalidRequest(
                f"{dest.name} is not a {source.driver} host of the cluster "
                f"'{source.cluster}' where the instance runs",
                field="host",
            )
        if dest.state != "enabled":
            raise InvalidState(
                f"the host {dest.name} is {dest.state}", resource="target", state=dest.state
            )
        if dest.free_cpu < vcpus or dest.free_memory_mb < memory_mb:
            raise NoCapacity(
                f"{dest.name} has {dest.free_cpu} CPUs and {dest.free_memory_mb} MB free; the "
                f"instance needs {vcpus} and {memory_mb}"
            )
        await conn.execute(
            update(m.Instance)
            .where(m.Instance.id == rid)
            .values(
                intent=Action.MIGRATE.value,
                intent_at=utcnow(),
                intent_target=dest.id,
                state_reason=f"migrating to {dest.name}",
            )
        )
        await record(
            conn,
            [audit(rid, caller.name, "migration asked", source=source.name, target=dest.name)],
        )
    rt.wake_scheduler()
    return await instances.get(rt, caller, rid)
