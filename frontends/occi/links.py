"""Decides what the two link kinds are: interfaces of instances, attachments of volumes.

A networkinterface (``/link/networkinterface/eni-...``) is one of an instance's interfaces; they
are made at launch (an inline link on the compute) and go with the instance, so creating or
deleting one on its own answers 501. A storagelink (``/link/storagelink/vol-...``, one per
attached volume, named by the volume) is created by attaching (source a compute, target a
storage, ``occi.storagelink.deviceid`` the device, else the first free one) and deleted by
detaching.
"""

from __future__ import annotations

from sqlalchemy import select

from broker import ids
from broker import model as m
from broker.errors import NotFound
from broker.service import instances, volumes
from broker.service.volumes import VolumeFilter
from frontends.occi.attach import attach_now
from frontends.occi.categories import OcciValidationError
from frontends.occi.common import COMPUTE_PATH, STORAGE_PATH, Ctx
from frontends.occi.compute import Attachment, _tail, nic_link, storage_link
from frontends.occi.parse import Entity, Link
from frontends.occi.storage import storage_id


def as_entity(link: Link) -> Entity:
    assert link.kind is not None
    return Entity(link.kind, link.mixins, link.attributes)


async def nic(ctx: Ctx, eni: str) -> Entity:
    if not ids.is_valid("interface", eni):
        raise NotFound(f"no networkinterface {eni[:64]}", resource="interface")
    async with ctx.rt.engine.connect() as conn:
        rid = await conn.scalar(
            select(m.NetworkInterface.instance_id).where(m.NetworkInterface.id == eni)
        )
    if rid is None:
        raise NotFound(f"no networkinterface {eni}", resource="interface")
    view = await instances.get(ctx.rt, ctx.caller, str(rid))
    for found in view.interfaces:
        if found.id == eni:
            return as_entity(nic_link(view.id, found))
    raise NotFound(f"no networkinterface {eni}", resource="interface")


async def nics(ctx: Ctx) -> list[Entity]:
    out: list[Entity] = []
    token: str | None = None
    while True:
        page = await instances.describe(ctx.rt, ctx.caller, limit=1000, token=token)
        for view in page.items:
            out.extend(as_entity(nic_link(view.id, x)) for x in view.interfaces)
        token = page.next_token
        if token is None or len(out) >= 10_000:
            return out


def _attachment(view: volumes.VolumeView) -> Attachment:
    assert view.instance_id is not None
    return (view.instance_id, view.id, view.device, view.attach_state)


async def storagelink(ctx: Ctx, vid: str) -> Entity:
    view = await volumes.get(ctx.rt, ctx.caller, storage_id(vid))
    if view.instance_id is None:
        raise NotFound(f"no storagelink {vid}: the storage is not attached", resource="volume")
    return as_entity(storage_link(_attachment(view)))


async def storagelinks(ctx: Ctx) -> list[Entity]:
    out: list[Entity] = []
    token: str | None = None
    while True:
        page = await volumes.describe(ctx.rt, ctx.caller, VolumeFilter(), limit=1000, token=token)
        out.extend(as_entity(storage_link(_attachment(v))) for v in page.items if v.instance_id)
        token = page.next_token
        if token is None or len(out) >= 10_000:
            return out


async def attach(ctx: Ctx, entity: Entity) -> str:
    """Attach the target storage to the source compute; returns the volume id."""
    source = entity.attributes.get("occi.core.source")
    target = entity.attributes.get("occi.core.target")
    if not isinstance(source, str) or not isinstance(target, str):
        raise OcciValidationError("a storagelink needs occi.core.source and occi.core.target")
    rid = _tail(source, COMPUTE_PATH, "storagelink source")
    vid = storage_id(_tail(target, STORAGE_PATH, "storagelink"))
    if not ids.is_valid("instance", rid):
        raise OcciValidationError(f"no compute {rid[:64]}")
    device = entity.attributes.get("occi.storagelink.deviceid")
    await attach_now(ctx.rt, ctx.caller, rid, vid, device if isinstance(device, str) else None)
    return vid


async def detach(ctx: Ctx, vid: str) -> None:
    await volumes.detach(ctx.rt, ctx.caller, storage_id(vid))
