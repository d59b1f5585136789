"""Snapshots of an instance's VM on its target: take, list, revert to and delete, by name.

Decides:

* Who: anyone who may see the instance lists its snapshots; taking, reverting and deleting
  need the right to change it (its owner, a group admin of its group, an admin). An instance
  the caller may not see is reported as not found, as :func:`broker.auth.authorize` does.
* Which instances: one placed on a target, whose VM is there and settled: running, powered
  off or suspended, with no action of the broker in flight (a stop, a migration...). Pending
  and held ones are not placed yet; stopped, terminated or failed ones have no VM; all are
  refused with ``InvalidState``, as are ones in ``unknown`` (their target does not answer).
* Where: the work is the target's driver's, through :class:`broker.protocols.SnapshotBackend`.
  A driver without it (EC2 regions, peers) is refused with ``Unsupported`` before anything is
  asked of the target, never a silent success.
* Names: 1 to 64 characters of letters, digits, ``.``, ``_`` and ``-``, starting with a letter
  or digit: safe in vSphere, in libvirt's XML and in URLs. A name is unique per instance (vSphere
  would take a second snapshot of the same name and leave the name ambiguous): taking one again
  is ``AlreadyExists``; reverting to or deleting one the instance has not is ``NotFound``.
* Unlike the lifecycle actions, these are done now, not by the scheduler: the call waits for
  the target (at most :data:`TIMEOUT` seconds) and says whether it worked. No transaction is held
  open meanwhile. Each snapshot taken, reverted to or deleted is an audit event on the instance
  once the target has done it; a refusal by the target is an ``error`` event with the reason.
  A revert may change the VM's power state (vSphere powers a VM off when its snapshot holds no
  memory): the monitor is woken to read it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable
from typing import TypeVar

from sqlalchemy import select

from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import (
    AlreadyExists,
    BackendTimeout,
    BrokerError,
    InvalidRequest,
    InvalidState,
    NotFound,
    Unsupported,
)
from broker.events import EventRecord, audit, record
from broker.protocols import SnapshotBackend, keeps_snapshots
from broker.runtime import Runtime
from broker.service.common import check_ids
from broker.states import State

T = TypeVar("T")
TIMEOUT = 300.0
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_DESCRIPTION = 256
SETTLED = frozenset({State.RUNNING, State.POWEROFF, State.SUSPENDED})


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotView:
    instance_id: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Placed:
    rid: str
    ref: str
    target_name: str
    backend: SnapshotBackend


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise InvalidRequest(
            f"'{shown}' is not a valid snapshot name: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            resource="snapshot",
            field="name",
        )
    return name


async def _placed(rt: Runtime, caller: Caller, rid: str, *, change: bool) -> _Placed:
    """The instance's target backend and reference, after every check the module names."""
    check_ids("instance", [rid], "instance")
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    m.Instance.owner_id,
                    m.Instance.group_id,
                    m.Instance.state,
                    m.Instance.intent,
                    m.Instance.target_id,
                    m.Instance.backend_ref,
                    m.Target.name,
                    m.Target.driver,
                )
                .outerjoin(m.Target, m.Target.id == m.Instance.target_id)
                .where(m.Instance.id == rid)
            )
        ).first()
    if row is None:
        raise NotFound(f"the instance '{rid}' does not exist", resource="instance", field=rid)
    owner, group, state, intent, target_id, ref, target_name, driver = row
    authorize(caller, Ownership(owner, group), change=change, what="instance", rid=rid)
    state = State(state)
    if state not in SETTLED or intent is not None or target_id is None or not ref:
        busy = f" (busy with '{intent}')" if intent else ""
        raise InvalidState(
            f"the instance '{rid}' is {state.value}{busy}; snapshots need a running, "
            "powered-off or suspended instance on its target",
            resource="instance",
            state=state.value,
        )
    if rt.backends is None or not keeps_snapshots(rt.backends.factory(driver)):
        raise Unsupported(
            f"the instance '{rid}' runs on '{target_name}', whose {driver} driver keeps no "
            "snapshots",
            resource="snapshot",
        )
    backend = await rt.backends.get(target_id)
    if not keeps_snapshots(backend):  # a factory that builds something else than its class
        raise Unsupported(f"the {driver} driver of '{target_name}' keeps no snapshots")
    return _Placed(rid, ref, target_name, backend)  # type: ignore[arg-type]


async def _bounded(work: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(work, TIMEOUT)
    except TimeoutError:
        raise BackendTimeout(f"{what}: the target did not answer in {TIMEOUT:.0f} s") from None


async def _call(
    rt: Runtime, caller: Caller, placed: _Placed, doing: str, done: str, work: Awaitable[None]
) -> None:
    """Run one change on the target, and record how it went."""
    try:
        await _bounded(work, doing)
    except BrokerError as exc:
        failed = EventRecord(
            placed.rid,
            "error",
            caller.name,
            message=f"could not {doing}: {exc.message}",
            detail={"target": placed.target_name},
        )
        async with rt.engine.begin() as conn:
            await record(conn, [failed])
        raise
    async with rt.engine.begin() as conn:
        await record(conn, [audit(placed.rid, caller.name, done, target=placed.target_name)])


async def _names(placed: _Placed) -> list[str]:
    return await _bounded(placed.backend.snapshots(placed.ref), "list the snapshots")


def _missing(rid: str, name: str) -> NotFound:
    return NotFound(
        f"the instance '{rid}' has no snapshot named '{name}'", resource="snapshot", field=name
    )


async def describe(rt: Runtime, caller: Caller, rid: str) -> list[SnapshotView]:
    """The instance's snapshots, oldest first."""
    placed = await _placed(rt, caller, rid, change=False)
    return [SnapshotView(rid, n) for n in await _names(placed)]


async def create(
    rt: Runtime, caller: Caller, rid: str, name: str, description: str = ""
) -> SnapshotView:
    """Take a snapshot named ``name`` of the instance's VM (its disks, not its memory)."""
    check_name(name)
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"the description is text of at most {MAX_DESCRIPTION} characters",
            field="description",
        )
    placed = await _placed(rt, caller, rid, change=True)
    if name in await _names(placed):
        raise AlreadyExists(
            f"the instance '{rid}' already has a snapshot named '{name}'",
            resource="snapshot",
            field=name,
        )
    work = placed.backend.snapshot(placed.ref, name, description)
    await _call(rt, caller, placed, f"take snapshot '{name}'", f"snapshot '{name}' taken", work)
    return SnapshotView(rid, name)


async def revert(rt: Runtime, caller: Caller, rid: str, name: str) -> SnapshotView:
    """Bring the instance's VM back to the snapshot ``name``."""
    check_name(name)
    placed = await _placed(rt, caller, rid, change=True)
    if name not in await _names(placed):
        raise _missing(rid, name)
    work = placed.backend.revert_snapshot(placed.ref, name)
    await _call(
        rt, caller, placed, f"revert to snapshot '{name}'", f"reverted to snapshot '{name}'", work
    )
    rt.monitor_wake.set()
    return SnapshotView(rid, name)


async def delete(rt: Runtime, caller: Caller, rid: str, name: str) -> None:
    """Delete the snapshot ``name`` (its children, if any, stay)."""
    check_name(name)
    placed = await _placed(rt, caller, rid, change=True)
    if name not in await _names(placed):
        raise _missing(rid, name)
    work = placed.backend.delete_snapshot(placed.ref, name)
    await _call(rt, caller, placed, f"delete snapshot '{name}'", f"snapshot '{name}' deleted", work)
