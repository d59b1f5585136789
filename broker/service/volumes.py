"""Volumes and snapshots: sizes, zones, which instance a volume may join, and when it may go.

A volume has a size of 1 to 16384 GiB and lives in a zone (a cluster, as for instances); one
made from a snapshot is at least the snapshot's size. It attaches to one of the owner's live
instances under a device name (``/dev/sdf``, ``/dev/xvdf``, ``/dev/vdb``...; the ``a`` disks are
the root's) that is unique on that instance, and only in the instance's zone when it has one
(the zone asked for at launch, or else the cluster of the target it was placed on).

Attaching and detaching are carried out on the instance's target by the scheduler
(:mod:`broker.volumework`): the service checks, then records ``attach_state='attaching'`` (the
volume ``in-use``) or ``'detaching'`` and answers at once, as EC2 does; the target's disk is
made on the first attach, and from then on the volume lives on that target and attaches only
to instances there. An instance on a target whose driver holds no volumes is refused with
Unsupported, never recorded as attached. Deleting a volume that a target holds (it has a
``backend_ref``) marks it ``deleting`` for the scheduler to remove there, as terminating an
instance does for its delete-on-termination volumes; one no target holds goes at once.

Snapshots are recorded here and ``completed`` at once: no backend copies a disk yet, so a
volume made from a snapshot starts empty with the snapshot's size. Snapshots are private to
their owner. Deleting one is always allowed: EC2 refuses only when an AMI is registered from
it, and images here never come from snapshots; volumes made from it are independent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import InvalidRequest, InvalidState, NotFound, Unsupported
from broker.events import audit, record
from broker.protocols import stores_volumes
from broker.runtime import Runtime
from broker.service import quotas
from broker.service.common import (
    Page,
    TagFilter,
    check_ids,
    check_limit,
    check_values,
    decode_token,
    encode_token,
    split_page,
    tag_conditions,
    tags_for,
)
from broker.service.tags import check_tags, drop_tags, insert_tags

MIN_SIZE_GB, MAX_SIZE_GB = 1, 16384
MAX_DESCRIPTION = 255
DEVICE = re.compile(r"^/dev/(?:sd|xvd|vd|hd)[b-z][a-z]?$")
#: Instance states in which a volume may be attached.
ATTACHABLE = ("running", "poweroff", "boot", "suspended")


@dataclasses.dataclass(frozen=True, slots=True)
class VolumeView:
    id: str
    owner_id: str
    size_gb: int
    zone: str
    state: str
    snapshot_id: str | None
    instance_id: str | None
    device: str | None
    attach_state: str | None
    delete_on_termination: bool
    created_at: dt.datetime
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class AttachmentView:
    volume_id: str
    instance_id: str
    device: str
    state: str  # attaching | attached | detaching | detached
    delete_on_termination: bool


@dataclasses.dataclass(frozen=True, slots=True)
class VolumeFilter:
    """``ids`` must all exist (VolumeId.N); the rest filter."""

    ids: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    zones: tuple[str, ...] = ()
    instance_ids: tuple[str, ...] = ()  # attachment.instance-id
    snapshot_ids: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotView:
    id: str
    owner_id: str
    volume_id: str
    size_gb: int
    state: str
    description: str
    created_at: dt.datetime
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotFilter:
    """``ids`` must all exist (SnapshotId.N); ``owners`` takes user ids or "self"."""

    ids: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    volume_ids: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()


_COLS = (
    m.Volume.id,
    m.Volume.owner_id,
    m.Volume.size_gb,
    m.Volume.zone,
    m.Volume.state,
    m.Volume.snapshot_id,
    m.Volume.instance_id,
    m.Volume.device,
    m.Volume.attach_state,
    m.Volume.delete_on_termination,
    m.Volume.created_at,
)
_SNAP_COLS = (
    m.Snapshot.id,
    m.Snapshot.owner_id,
    m.Snapshot.volume_id,
    m.Snapshot.size_gb,
    m.Snapshot.state,
    m.Snapshot.description,
    m.Snapshot.created_at,
)


def _scope(caller: Caller) -> list[Any]:
    if caller.is_admin:
        return []
    if caller.role == "groupadmin":
        return [m.Volume.group_id == caller.group_id]
    return [m.Volume.owner_id == caller.user_id]


def _not_found(what: str, rid: str) -> NotFound:
    return NotFound(f"the {what} '{rid}' does not exist", resource=what, field=rid)


# --- volumes -------------------------------------------------------------------------------------


async def create(
    rt: Runtime,
    caller: Caller,
    zone: str,
    size_gb: int | None = None,
    *,
    snapshot_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> VolumeView:
    """A new volume in ``zone``: empty, or a copy of one of the caller's snapshots."""
    if size_gb is None and snapshot_id is None:
        raise InvalidRequest("give a size or a snapshot", resource="volume", field="Size")
    if size_gb is not None and not MIN_SIZE_GB <= size_gb <= MAX_SIZE_GB:
        raise InvalidRequest(
            f"the size must be {MIN_SIZE_GB} to {MAX_SIZE_GB} GiB", resource="volume", field="Size"
        )
    if snapshot_id is not None:
        check_ids("snapshot", [snapshot_id], "snapshot")
    check_tags(tags or {})
    vid = ids.new_id("volume")
    async with rt.engine.begin() as conn:
        if await conn.scalar(select(m.Cluster.id).where(m.Cluster.name == zone)) is None:
            raise InvalidRequest(
                f"the availability zone '{zone[:64]}' does not exist",
                resource="volume",
                field="zone",
            )
        size = size_gb
        if snapshot_id is not None:
            snap = await _snapshot(conn, caller, snapshot_id)
            size = snap[1] if size is None else size
            if size < snap[1]:
                raise InvalidRequest(
                    f"the volume must be at least the snapshot's {snap[1]} GiB",
                    resource="volume",
                    field="Size",
                )
        await quotas.admit(conn, caller, "volumes", 1, "volume")
        await quotas.admit(conn, caller, "volume_gb", size or 0, "volume")
        await conn.execute(
            insert(m.Volume).values(
                id=vid,
                owner_id=caller.user_id,
                group_id=caller.group_id,
                size_gb=size,
                zone=zone,
                state="available",
                snapshot_id=snapshot_id,
            )
        )
        await insert_tags(conn, caller.user_id, vid, "volume", tags or {})
        await record(
            conn,
            [
                audit(
                    vid,
                    caller.name,
                    "volume created",
                    size_gb=size,
                    zone=zone,
                    snapshot=snapshot_id,
                )
            ],
        )
    return await get(rt, caller, vid)


async def _check_present(conn: AsyncConnection, caller: Caller, vids: tuple[str, ...]) -> None:
    if not vids:
        return
    found = set(
        (
            await conn.scalars(select(m.Volume.id).where(m.Volume.id.in_(vids), *_scope(caller)))
        ).all()
    )
    for vid in vids:
        if vid not in found:
            raise _not_found("volume", vid)


async def describe(
    rt: Runtime,
    caller: Caller,
    flt: VolumeFilter = VolumeFilter(),
    *,
    limit: int | None = None,
    token: str | None = None,
) -> Page[VolumeView]:
    """One page of the caller's volumes matching ``flt``, ordered by id."""
    size = check_limit(limit)
    after = decode_token(token)
    for name in ("ids", "states", "sizes", "zones", "instance_ids", "snapshot_ids"):
        check_values(name, getattr(flt, name))
    check_ids("volume", flt.ids, "volume")
    conds = _scope(caller)
    pairs: tuple[tuple[Any, tuple[Any, ...]], ...] = (
        (m.Volume.id, flt.ids),
        (m.Volume.state, flt.states),
        (m.Volume.size_gb, flt.sizes),
        (m.Volume.zone, flt.zones),
        (m.Volume.instance_id, flt.instance_ids),
        (m.Volume.snapshot_id, flt.snapshot_ids),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    conds.extend(tag_conditions(m.Volume.id, flt.tags))
    if after is not None:
        conds.append(m.Volume.id > after)
    stmt = select(*_COLS).where(*conds).order_by(m.Volume.id).limit(size + 1)
    async with rt.engine.connect() as conn:
        await _check_present(conn, caller, flt.ids)
        rows, more = split_page(list((await conn.execute(stmt)).all()), size)
        tags = await tags_for(conn, [r[0] for r in rows])
    items = [VolumeView(*r, tags=tags.get(r[0], {})) for r in rows]
    return Page(items, encode_token(items[-1].id) if more and items else None)


async def get(rt: Runtime, caller: Caller, volume_id: str) -> VolumeView:
    page = await describe(rt, caller, VolumeFilter(ids=(volume_id,)), limit=1)
    return page.items[0]


async def _volume(conn: AsyncConnection, caller: Caller, volume_id: str) -> Any:
    """The volume row (locked) after checking the caller may change it."""
    check_ids("volume", [volume_id], "volume")
    row = (
        await conn.execute(
            select(*_COLS, m.Volume.group_id, m.Volume.backend_ref, m.Volume.target_id)
            .where(m.Volume.id == volume_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise _not_found("volume", volume_id)
    authorize(caller, Ownership(row[1], row[11]), change=True, what="volume", rid=volume_id)
    return row


async def _placed_zone(conn: AsyncConnection, instance_id: str) -> str | None:
    """The cluster of the target an instance was placed on, when it was launched zoneless."""
    return await conn.scalar(
        select(m.Cluster.name)
        .join(m.Target, m.Target.cluster_id == m.Cluster.id)
        .join(m.Instance, m.Instance.target_id == m.Target.id)
        .where(m.Instance.id == instance_id)
    )


async def _check_holds_volumes(
    rt: Runtime,
    conn: AsyncConnection,
    target_id: str | None,
    volume_target: str | None,
    instance_id: str,
    volume_id: str,
) -> None:
    """The instance's target must hold volumes, and be the one the volume's disk is on."""
    if target_id is None:
        raise InvalidState(
            f"the instance '{instance_id}' is not placed on a target yet",
            resource="instance",
            state="pending",
        )
    if volume_target is not None and volume_target != target_id:
        raise InvalidRequest(
            f"the volume '{volume_id}' is stored on another target than '{instance_id}'",
            resource="volume",
            field="InstanceId",
        )
    name, driver = (
        await conn.execute(select(m.Target.name, m.Target.driver).where(m.Target.id == target_id))
    ).one()
    if rt.backends is None or not stores_volumes(rt.backends.factory(driver)):
        raise Unsupported(
            f"volumes cannot be attached to instances on '{name}': its {driver} driver holds "
            "no volumes"
        )


def check_device(device: str) -> None:
    if not DEVICE.match(device):
        raise InvalidRequest(
            f"'{device[:32]}' is not a valid device name (like /dev/sdf or /dev/vdb)",
            resource="volume",
            field="Device",
        )


async def attach(
    rt: Runtime, caller: Caller, volume_id: str, instance_id: str, device: str
) -> AttachmentView:
    """Attach an available volume to one of the caller's instances as ``device``: recorded
    as ``attaching`` for the scheduler to carry out on the instance's target."""
    check_device(device)
    check_ids("instance", [instance_id], "instance")
    async with rt.engine.begin() as conn:
        vol = await _volume(conn, caller, volume_id)
        inst = (
            await conn.execute(
                select(
                    m.Instance.owner_id,
                    m.Instance.group_id,
                    m.Instance.state,
                    m.Instance.zone,
                    m.Instance.target_id,
                )
                .where(m.Instance.id == instance_id)
                .with_for_update()
            )
        ).first()
        if inst is None:
            raise _not_found("instance", instance_id)
        zone = inst[3] or await _placed_zone(conn, instance_id)
        authorize(
            caller, Ownership(inst[0], inst[1]), change=True, what="instance", rid=instance_id
        )
        if vol[4] != "available":
            raise InvalidState(
                f"the volume '{volume_id}' is {vol[4]}; it must be available",
                resource="volume",
                state=vol[4],
            )
        if inst[2] not in ATTACHABLE:
            raise InvalidState(
                f"the instance '{instance_id}' is {inst[2]}; volumes attach to instances that "
                f"are {', '.join(ATTACHABLE)}",
                resource="instance",
                state=inst[2],
            )
        if zone is not None and zone != vol[3]:
            raise InvalidRequest(
                f"the volume '{volume_id}' is in {vol[3]} and the instance in {zone}",
                resource="volume",
                field="zone",
            )
        await _check_holds_volumes(rt, conn, inst[4], vol[13], instance_id, volume_id)
        taken = await conn.scalar(
            select(m.Volume.id).where(
                m.Volume.instance_id == instance_id, m.Volume.device == device
            )
        )
        if taken is not None:
            raise InvalidRequest(
                f"the device {device} is already used on '{instance_id}' by '{taken}'",
                resource="volume",
                field="Device",
            )
        await conn.execute(
            update(m.Volume)
            .where(m.Volume.id == volume_id)
            .values(
                state="in-use", instance_id=instance_id, device=device, attach_state="attaching"
            )
        )
        await record(
            conn,
            [
                audit(
                    volume_id, caller.name, "volume attached", instance=instance_id, device=device
                ),
                audit(instance_id, caller.name, "volume attached", volume=volume_id, device=device),
            ],
        )
    rt.wake_scheduler()
    return AttachmentView(volume_id, instance_id, device, "attaching", bool(vol[9]))


async def detach(
    rt: Runtime,
    caller: Caller,
    volume_id: str,
    *,
    instance_id: str | None = None,
    device: str | None = None,
    force: bool = False,
) -> AttachmentView:
    """Detach an attached volume (matching ``instance_id`` and ``device`` when given):
    recorded as ``detaching`` for the scheduler to carry out on the instance's target.
    ``force`` is recorded in the event."""
    if instance_id is not None:
        check_ids("instance", [instance_id], "instance")
    async with rt.engine.begin() as conn:
        vol = await _volume(conn, caller, volume_id)
        attached_to, dev = vol[6], vol[7]
        if attached_to is None or vol[4] != "in-use":
            raise InvalidState(
                f"the volume '{volume_id}' is not attached", resource="volume", state=vol[4]
            )
        if vol[8] != "attached":
            raise InvalidState(
                f"the volume '{volume_id}' is {vol[8]}; wait until it is attached",
                resource="volume",
                state=str(vol[8]),
            )
        if (instance_id is not None and instance_id != attached_to) or (
            device is not None and device != dev
        ):
            raise NotFound(
                f"the volume '{volume_id}' is not attached to {instance_id or ''} {device or ''}",
                resource="attachment",
                field=volume_id,
            )
        await conn.execute(
            update(m.Volume).where(m.Volume.id == volume_id).values(attach_state="detaching")
        )
        await record(
            conn,
            [
                audit(volume_id, caller.name, "volume detached", instance=attached_to, force=force),
                audit(attached_to, caller.name, "volume detached", volume=volume_id, force=force),
            ],
        )
    rt.wake_scheduler()
    return AttachmentView(volume_id, attached_to, dev or "", "detaching", bool(vol[9]))


async def delete(rt: Runtime, caller: Caller, volume_id: str) -> None:
    """Delete an available volume (see the module docstring for one a backend holds)."""
    async with rt.engine.begin() as conn:
        vol = await _volume(conn, caller, volume_id)
        if vol[4] != "available":
            raise InvalidState(
                f"the volume '{volume_id}' is {vol[4]}; only an available volume can be deleted",
                resource="volume",
                state=vol[4],
            )
        if vol[12] is None:
            await conn.execute(sql_delete(m.Volume).where(m.Volume.id == volume_id))
            await drop_tags(conn, [volume_id])
        else:
            await conn.execute(
                update(m.Volume).where(m.Volume.id == volume_id).values(state="deleting")
            )
        await record(conn, [audit(volume_id, caller.name, "volume deleted")])


# --- snapshots -----------------------------------------------------------------------------------


async def _snapshot(conn: AsyncConnection, caller: Caller, snapshot_id: str) -> Any:
    """id, size and owner of a snapshot the caller owns (or may see, as an admin)."""
    row = (
        await conn.execute(
            select(m.Snapshot.id, m.Snapshot.size_gb, m.Snapshot.owner_id).where(
                m.Snapshot.id == snapshot_id
            )
        )
    ).first()
    if row is None:
        raise _not_found("snapshot", snapshot_id)
    authorize(caller, Ownership(row[2], None), change=True, what="snapshot", rid=snapshot_id)
    return row


async def create_snapshot(
    rt: Runtime,
    caller: Caller,
    volume_id: str,
    description: str = "",
    *,
    tags: Mapping[str, str] | None = None,
) -> SnapshotView:
    """A snapshot of one of the caller's volumes, completed at once for now."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"a description must be at most {MAX_DESCRIPTION} characters",
            resource="snapshot",
            field="Description",
        )
    check_tags(tags or {})
    sid = ids.new_id("snapshot")
    async with rt.engine.begin() as conn:
        vol = await _volume(conn, caller, volume_id)
        if vol[4] not in ("available", "in-use"):
            raise InvalidState(
                f"the volume '{volume_id}' is {vol[4]}", resource="volume", state=vol[4]
            )
        await conn.execute(
            insert(m.Snapshot).values(
                id=sid,
                owner_id=vol[1],
                volume_id=volume_id,
                size_gb=vol[2],
                state="completed",
                description=description,
            )
        )
        await insert_tags(conn, vol[1], sid, "snapshot", tags or {})
        await record(conn, [audit(sid, caller.name, "snapshot created", volume=volume_id)])
    return await get_snapshot(rt, caller, sid)


async def describe_snapshots(
    rt: Runtime,
    caller: Caller,
    flt: SnapshotFilter = SnapshotFilter(),
    *,
    limit: int | None = None,
    token: str | None = None,
) -> Page[SnapshotView]:
    """One page of the caller's snapshots matching ``flt``, ordered by id."""
    size = check_limit(limit)
    after = decode_token(token)
    for name in ("ids", "owners", "volume_ids", "states"):
        check_values(name, getattr(flt, name))
    check_ids("snapshot", flt.ids, "snapshot")
    scope: list[Any] = [] if caller.is_admin else [m.Snapshot.owner_id == caller.user_id]
    conds = list(scope)
    owners = tuple(caller.user_id if o == "self" else o for o in flt.owners)
    pairs: tuple[tuple[Any, tuple[str, ...]], ...] = (
        (m.Snapshot.id, flt.ids),
        (m.Snapshot.owner_id, owners),
        (m.Snapshot.volume_id, flt.volume_ids),
        (m.Snapshot.state, flt.states),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    conds.extend(tag_conditions(m.Snapshot.id, flt.tags))
    if after is not None:
        conds.append(m.Snapshot.id > after)
    stmt = select(*_SNAP_COLS).where(*conds).order_by(m.Snapshot.id).limit(size + 1)
    async with rt.engine.connect() as conn:
        if flt.ids:
            found = set(
                (
                    await conn.scalars(
                        select(m.Snapshot.id).where(m.Snapshot.id.in_(flt.ids), *scope)
                    )
                ).all()
            )
            for sid in flt.ids:
                if sid not in found:
                    raise _not_found("snapshot", sid)
        rows, more = split_page(list((await conn.execute(stmt)).all()), size)
        tags = await tags_for(conn, [r[0] for r in rows])
    items = [SnapshotView(*r, tags=tags.get(r[0], {})) for r in rows]
    return Page(items, encode_token(items[-1].id) if more and items else None)


async def get_snapshot(rt: Runtime, caller: Caller, snapshot_id: str) -> SnapshotView:
    page = await describe_snapshots(rt, caller, SnapshotFilter(ids=(snapshot_id,)), limit=1)
    return page.items[0]


async def delete_snapshot(rt: Runtime, caller: Caller, snapshot_id: str) -> None:
    """Delete one of the caller's snapshots (always allowed, see the module docstring)."""
    check_ids("snapshot", [snapshot_id], "snapshot")
    async with rt.engine.begin() as conn:
        await _snapshot(conn, caller, snapshot_id)
        await conn.execute(sql_delete(m.Snapshot).where(m.Snapshot.id == snapshot_id))
        await drop_tags(conn, [snapshot_id])
        await record(conn, [audit(snapshot_id, caller.name, "snapshot deleted")])
