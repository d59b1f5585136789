"""The volume and snapshot actions: create, describe, attach, detach, delete; snapshots too.

Zones are the broker's clusters; a zone that does not exist is InvalidZone.NotFound before
anything changes. EBS volume types, IOPS and throughput are checked and accepted, but the broker
has one kind of volume, shown as ``standard``; encryption and multi-attach are unsupported.
Filters the service does not index (volume-id, attachment.device, size, snapshot-id on
snapshots, description) narrow the page the service returned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

from broker.errors import Unsupported
from broker.service import volumes as svc
from broker.service.common import check_ids
from frontends.ec2 import render as r
from frontends.ec2.actions.tags import creation_tags, post_filter
from frontends.ec2.errors import WireError, invalid
from frontends.ec2.filters import SNAPSHOT_FIELDS, VOLUME_FIELDS, collect
from frontends.ec2.lookups import zone_names
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element

_TYPES: Final = frozenset({"standard", "gp2", "gp3", "io1", "io2", "st1", "sc1"})
_OWNER_ALIASES: Final = frozenset({"amazon", "aws-marketplace", "aws-backup-vault"})


def _volume_id(params: Params) -> str:
    vid = params.required("VolumeId")
    check_ids("volume", [vid], "volume")
    return vid


def _attachment(parent: Element, att: svc.AttachmentView, at: dt.datetime) -> None:
    r.text(parent, "volumeId", att.volume_id)
    r.text(parent, "instanceId", att.instance_id)
    r.text(parent, "device", att.device)
    r.text(parent, "status", att.state)
    r.text(parent, "attachTime", r.timestamp(at))
    r.text(parent, "deleteOnTermination", att.delete_on_termination)


def _render_volume(box: Element, vol: svc.VolumeView, *, item: bool = True) -> None:
    it = r.item(box) if item else box
    r.text(it, "volumeId", vol.id)
    r.text(it, "size", vol.size_gb)
    r.text(it, "snapshotId", vol.snapshot_id or "")
    r.text(it, "availabilityZone", vol.zone)
    r.text(it, "status", vol.state)
    r.text(it, "createTime", r.timestamp(vol.created_at))
    attachments = r.node(it, "attachmentSet")
    if vol.instance_id:
        a = r.item(attachments)
        r.text(a, "volumeId", vol.id)
        r.text(a, "instanceId", vol.instance_id)
        r.text(a, "device", vol.device or "")
        r.text(a, "status", vol.attach_state or "attached")
        r.text(a, "attachTime", r.timestamp(vol.created_at))
        r.text(a, "deleteOnTermination", vol.delete_on_termination)
    r.text(it, "volumeType", "standard")
    r.text(it, "encrypted", False)
    r.text(it, "multiAttachEnabled", False)
    r.tag_set(it, vol.tags)


def _render_snapshot(box: Element, snap: svc.SnapshotView, *, item: bool = True) -> None:
    it = r.item(box) if item else box
    r.text(it, "snapshotId", snap.id)
    r.text(it, "volumeId", snap.volume_id)
    r.text(it, "status", snap.state)
    r.text(it, "startTime", r.timestamp(snap.created_at))
    r.text(it, "progress", "100%" if snap.state == "completed" else "0%")
    r.text(it, "ownerId", snap.owner_id)
    r.text(it, "volumeSize", snap.size_gb)
    r.text(it, "description", snap.description)
    r.text(it, "encrypted", False)
    r.tag_set(it, snap.tags)


# --- volumes -------------------------------------------------------------------------------------


async def create_volume(call: Call, out: Element) -> None:
    params = call.params
    zone = params.required("AvailabilityZone")
    size = params.integer("Size", svc.MIN_SIZE_GB, svc.MAX_SIZE_GB)
    snapshot_id = params.text("SnapshotId") or None
    if snapshot_id is not None:
        check_ids("snapshot", [snapshot_id], "snapshot")
    if size is None and snapshot_id is None:
        raise WireError("MissingParameter", "The request must contain the parameter Size")
    kind = params.text("VolumeType") or "gp2"
    if kind not in _TYPES:
        raise invalid("VolumeType", kind)
    params.integer("Iops", 100, 256000)
    params.integer("Throughput", 125, 2000)
    if params.boolean("Encrypted") or params.boolean("MultiAttachEnabled"):
        raise Unsupported("Encrypted and multi-attach volumes are not supported.")
    tags = creation_tags(params, "volume")
    if zone not in await zone_names(call.rt):
        raise WireError("InvalidZone.NotFound", f"The zone '{zone[:64]}' does not exist.")
    call.check_dry_run()
    vol = await svc.create(call.rt, call.caller, zone, size, snapshot_id=snapshot_id, tags=tags)
    _render_volume(out, vol, item=False)


def _volume_filter(call: Call, ids: Sequence[str]) -> tuple[svc.VolumeFilter, dict[str, list[str]]]:
    got = collect(
        call.params.filters(),
        VOLUME_FIELDS,
        extra=frozenset({"volume-id", "attachment.device", "size", "volume-type", "encrypted"}),
    )
    f = got.fields
    flt = svc.VolumeFilter(
        ids=tuple(ids),
        states=f.get("states", ()),
        zones=f.get("zones", ()),
        instance_ids=f.get("instance_ids", ()),
        snapshot_ids=f.get("snapshot_ids", ()),
        tags=tuple(got.tags),
    )
    if got.empty:
        got.extra["volume-id"] = []
    return flt, got.extra


async def describe_volumes(call: Call, out: Element) -> None:
    ids = check_ids("volume", call.params.listing("VolumeId"), "volume")
    size, token = call.params.page(low=5, high=500, ids=bool(ids))
    flt, extra = _volume_filter(call, ids)
    call.check_dry_run()
    page = await svc.describe(call.rt, call.caller, flt, limit=size, token=token or None)
    box = r.node(out, "volumeSet")
    for vol in page.items:
        facts = {
            "volume-id": vol.id,
            "attachment.device": vol.device or "",
            "size": str(vol.size_gb),
            "volume-type": "standard",
            "encrypted": "false",
        }
        if post_filter(extra, facts):
            _render_volume(box, vol)
    r.opt(out, "nextToken", page.next_token)


async def attach_volume(call: Call, out: Element) -> None:
    params = call.params
    vid = _volume_id(params)
    instance_id = params.required("InstanceId")
    check_ids("instance", [instance_id], "instance")
    device = params.required("Device")
    svc.check_device(device)
    if call.dry_run:
        await svc.get(call.rt, call.caller, vid)
        call.check_dry_run()
    att = await svc.attach(call.rt, call.caller, vid, instance_id, device)
    _attachment(out, att, dt.datetime.now(dt.UTC))


async def detach_volume(call: Call, out: Element) -> None:
    params = call.params
    vid = _volume_id(params)
    instance_id = params.text("InstanceId") or None
    if instance_id is not None:
        check_ids("instance", [instance_id], "instance")
    device = params.text("Device") or None
    force = params.boolean("Force")
    if call.dry_run:
        await svc.get(call.rt, call.caller, vid)
        call.check_dry_run()
    att = await svc.detach(
        call.rt, call.caller, vid, instance_id=instance_id, device=device, force=force
    )
    _attachment(out, att, dt.datetime.now(dt.UTC))


async def delete_volume(call: Call, out: Element) -> None:
    vid = _volume_id(call.params)
    if call.dry_run:
        await svc.get(call.rt, call.caller, vid)
        call.check_dry_run()
    await svc.delete(call.rt, call.caller, vid)
    r.return_true(out)


# --- snapshots -----------------------------------------------------------------------------------


async def create_snapshot(call: Call, out: Element) -> None:
    params = call.params
    vid = _volume_id(params)
    description = params.text("Description") or ""
    tags = creation_tags(params, "snapshot")
    if call.dry_run:
        await svc.get(call.rt, call.caller, vid)
        call.check_dry_run()
    snap = await svc.create_snapshot(call.rt, call.caller, vid, description, tags=tags)
    _render_snapshot(out, snap, item=False)


async def describe_snapshots(call: Call, out: Element) -> None:
    params = call.params
    ids = check_ids("snapshot", params.listing("SnapshotId"), "snapshot")
    owners = params.listing("Owner")
    for who in params.listing("RestorableBy"):
        if who not in ("self", "all", call.caller.user_id):
            raise invalid("RestorableBy", who, "use self")
    size, token = params.page(low=5, high=1000, ids=bool(ids))
    got = collect(
        params.filters(), SNAPSHOT_FIELDS, extra=frozenset({"snapshot-id", "description"})
    )
    call.check_dry_run()
    box = r.node(out, "snapshotSet")
    kept_owners = tuple(o for o in owners if o not in _OWNER_ALIASES)
    if (owners and not kept_owners) or got.empty:
        return
    owner_filter = tuple(
        call.caller.user_id if o == "self" else o for o in got.fields.get("owners", ())
    )
    if kept_owners and owner_filter:
        owner_filter = tuple(o for o in owner_filter if o in kept_owners) or ("-",)
    flt = svc.SnapshotFilter(
        ids=tuple(ids),
        owners=owner_filter or kept_owners,
        volume_ids=got.fields.get("volume_ids", ()),
        states=got.fields.get("states", ()),
        tags=tuple(got.tags),
    )
    page = await svc.describe_snapshots(call.rt, call.caller, flt, limit=size, token=token or None)
    for snap in page.items:
        if post_filter(got.extra, {"snapshot-id": snap.id, "description": snap.description}):
            _render_snapshot(box, snap)
    r.opt(out, "nextToken", page.next_token)


async def delete_snapshot(call: Call, out: Element) -> None:
    sid = call.params.required("SnapshotId")
    check_ids("snapshot", [sid], "snapshot")
    if call.dry_run:
        await svc.get_snapshot(call.rt, call.caller, sid)
        call.check_dry_run()
    await svc.delete_snapshot(call.rt, call.caller, sid)
    r.return_true(out)


ACTIONS: Final[dict[str, Handler]] = {
    "CreateVolume": create_volume,
    "DescribeVolumes": describe_volumes,
    "AttachVolume": attach_volume,
    "DetachVolume": detach_volume,
    "DeleteVolume": delete_volume,
    "CreateSnapshot": create_snapshot,
    "DescribeSnapshots": describe_snapshots,
    "DeleteSnapshot": delete_snapshot,
}
