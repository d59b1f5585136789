"""Unmanaged instances: ones a region or peer runs with our broker's tag but no record of ours.

The monitor reports each once, as an ``unmanaged`` event on the target carrying the backend's
reference. The operator lists them, then decides for each: *adopt* it (it becomes an instance
of ours, owned by the user named, with the flavor and image named, on that target under that
reference; from the next monitor cycle on it is reconciled like any other), or *terminate* it on
the target. Each decision is an audit event on the target with the reference, which takes it
off the list; a reference already decided, or never reported, is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

from sqlalchemy import insert, select

from broker import ids
from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import InvalidRequest, NotFound
from broker.events import audit, record, transition
from broker.model import utcnow
from broker.runtime import Runtime
from broker.service import targets
from broker.states import Action, State

DECIDED = ("unmanaged adopted", "unmanaged terminated")
ACT_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class UnmanagedView:
    target: str
    ref: str
    reported_at: dt.datetime
    message: str


async def describe(rt: Runtime, caller: Caller, target: str) -> list[UnmanagedView]:
    """What ``target`` was reported to run for us without a record, and nobody decided yet."""
    require_admin(caller)
    view = await targets.get(rt, caller, target)
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(m.Event.kind, m.Event.message, m.Event.detail, m.Event.at)
                .where(
                    m.Event.resource_id == view.id,
                    (m.Event.kind == "unmanaged")
                    | ((m.Event.kind == "audit") & m.Event.message.in_(DECIDED)),
                )
                .order_by(m.Event.id)
            )
        ).all()
    found: dict[str, UnmanagedView] = {}
    for kind, message, detail, at in rows:
        ref = str((detail or {}).get("ref", ""))
        if kind == "unmanaged":
            found[ref] = UnmanagedView(view.name, ref, at, message)
        else:
            found.pop(ref, None)
    return list(found.values())


async def _reported(rt: Runtime, caller: Caller, target: str, ref: str) -> targets.TargetView:
    view = await targets.get(rt, caller, target)
    if ref not in {u.ref for u in await describe(rt, caller, target)}:
        raise NotFound(
            f"'{target}' has no unmanaged instance '{ref}' waiting for a decision",
            resource="unmanaged",
            field=ref,
        )
    return view


async def adopt(
    rt: Runtime, caller: Caller, target: str, ref: str, *, user: str, flavor: str, image: str
) -> str:
    """Make ``ref`` on ``target`` an instance of ours owned by ``user``; returns its id."""
    require_admin(caller)
    async with rt.engine.connect() as conn:
        owner = (
            await conn.execute(
                select(m.User.id, m.User.group_id).where(
                    (m.User.name == user) | (m.User.id == user)
                )
            )
        ).first()
        size = (
            await conn.execute(
                select(m.Flavor.vcpus, m.Flavor.memory_mb, m.Flavor.disk_gb).where(
                    m.Flavor.name == flavor
                )
            )
        ).first()
        image_id = await conn.scalar(select(m.Image.id).where(m.Image.id == image))
    if owner is None:
        raise NotFound(f"the user '{user}' does not exist", resource="user", field=user)
    if size is None:
        raise InvalidRequest(f"the flavor '{flavor}' does not exist", field="flavor")
    if image_id is None:
        raise InvalidRequest(f"the image '{image}' does not exist", field="image")
    view = await _reported(rt, caller, target, ref)
    rid, now = ids.new_id("instance"), utcnow()
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(m.Instance).values(
                id=rid,
                owner_id=owner[0],
                group_id=owner[1],
                reservation_id=ids.new_id("reservation"),
                image_id=image_id,
                flavor=flavor,
                vcpus=size[0],
                memory_mb=size[1],
                disk_gb=size[2],
                state=State.RUNNING.value,
                state_reason=f"adopted from {view.name} by {caller.name}",
                target_id=view.id,
                backend_ref=ref,
                zone=view.cluster,
                hostname=rid,
                created_at=now,
                launched_at=now,
                updated_at=now,
            )
        )
        await record(
            conn,
            [
                transition(rid, "", State.RUNNING.value, caller.name, "adopted", ref=ref),
                audit(view.id, caller.name, "unmanaged adopted", ref=ref, instance=rid),
            ],
        )
    rt.monitor_wake.set()
    return rid


async def terminate(rt: Runtime, caller: Caller, target: str, ref: str) -> None:
    """Terminate ``ref`` on ``target``; recorded only once the target has accepted."""
    require_admin(caller)
    view = await _reported(rt, caller, target, ref)
    assert rt.backends is not None
    backend = await rt.backends.get(view.id)
    await asyncio.wait_for(backend.act(ref, Action.TERMINATE), ACT_TIMEOUT)
    async with rt.engine.begin() as conn:
        await record(conn, [audit(view.id, caller.name, "unmanaged terminated", ref=ref)])
