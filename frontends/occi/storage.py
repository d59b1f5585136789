"""Decides what a storage is over the wire: a broker Volume (``/storage/vol-...``).

``occi.storage.size`` is the size in GiB (whole numbers only), the title is the ``Name`` tag,
the state comes from :mod:`frontends.occi.states`. A new storage goes to the placement mixin's
zone, or else to the broker's first zone. Volumes cannot be resized or taken offline here: those
answer 501. ``online`` on an online storage succeeds (it is online); on one that is not, 409.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker import ids
from broker.errors import NotFound
from broker.seed import zone_name
from broker.service import tags, volumes
from broker.service.volumes import VolumeFilter, VolumeView
from frontends.occi import states
from frontends.occi.catalog import MIXIN_TAG, ZONE, Catalog
from frontends.occi.categories import (
    STORAGE,
    STORAGE_ACTIONS,
    AttrValue,
    OcciConflict,
    OcciValidationError,
)
from frontends.occi.common import Ctx
from frontends.occi.compute import NAME_TAG, SUMMARY_TAG, storage_link
from frontends.occi.errors import Unsupported
from frontends.occi.parse import Entity, Link


def storage_id(vid: str) -> str:
    if not ids.is_valid("volume", vid):
        raise NotFound(f"no storage {vid[:64]}", resource="volume")
    return vid


def storage_entity(catalog: Catalog, view: VolumeView) -> Entity:
    state = states.storage_state(view.state)
    attributes: dict[str, AttrValue] = {"occi.core.id": view.id}
    if NAME_TAG in view.tags:
        attributes["occi.core.title"] = view.tags[NAME_TAG]
    if SUMMARY_TAG in view.tags:
        attributes["occi.core.summary"] = view.tags[SUMMARY_TAG]
    attributes["occi.storage.size"] = float(view.size_gb)
    attributes["occi.storage.state"] = state
    attributes["occi.storage.state.message"] = view.state
    links: tuple[Link, ...] = ()
    if view.instance_id is not None:
        link = storage_link((view.instance_id, view.id, view.device, view.attach_state))
        links = (link,)
    actions = (STORAGE_ACTIONS + "online",) if state == "offline" else ()
    mixins = tuple(catalog.mixins_of_tags(dict(view.tags)))
    return Entity(STORAGE, mixins, attributes, links, actions)


async def load(ctx: Ctx, catalog: Catalog, vid: str) -> Entity:
    return storage_entity(catalog, await volumes.get(ctx.rt, ctx.caller, storage_id(vid)))


async def load_all(ctx: Ctx, catalog: Catalog) -> list[Entity]:
    out: list[Entity] = []
    token: str | None = None
    while True:
        page = await volumes.describe(ctx.rt, ctx.caller, VolumeFilter(), limit=1000, token=token)
        out.extend(storage_entity(catalog, v) for v in page.items)
        token = page.next_token
        if token is None or len(out) >= 10_000:
            return out


def _labels(catalog: Catalog, entity: Entity) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name, key in (("occi.core.title", NAME_TAG), ("occi.core.summary", SUMMARY_TAG)):
        value = entity.attributes.get(name)
        if isinstance(value, str):
            labels[key] = value
    for mixin in catalog.user_mixins(entity.mixins):
        labels[MIXIN_TAG + (mixin.location or "")] = mixin.type_id
    return labels


def _size(attrs: Mapping[str, AttrValue]) -> int:
    size = attrs.get("occi.storage.size")
    if not isinstance(size, int | float) or not float(size).is_integer():
        raise OcciValidationError("occi.storage.size must be a whole number of GiB")
    return int(size)


async def create(ctx: Ctx, catalog: Catalog, entity: Entity) -> VolumeView:
    if entity.links:
        raise Unsupported("a storage cannot carry links; link it from a compute")
    zone = entity.attributes.get(ZONE)
    return await volumes.create(
        ctx.rt,
        ctx.caller,
        zone if isinstance(zone, str) and zone else zone_name(ctx.rt),
        _size(entity.attributes),
        tags=_labels(catalog, entity),
    )


async def update(
    ctx: Ctx, catalog: Catalog, view: VolumeView, entity: Entity, *, replace: bool
) -> None:
    size = entity.attributes.get("occi.storage.size")
    if size is not None and _size(entity.attributes) != view.size_gb:
        raise Unsupported("resizing a storage is not supported")
    add = _labels(catalog, entity)
    drop: dict[str, str | None] = {}
    if replace:
        for key in view.tags:
            if key not in add and (key.startswith(MIXIN_TAG) or key in (NAME_TAG, SUMMARY_TAG)):
                drop[key] = None
    if drop:
        await tags.delete(ctx.rt, ctx.caller, [view.id], drop)
    if add:
        await tags.create(ctx.rt, ctx.caller, [view.id], add)


async def act(ctx: Ctx, vid: str, term: str) -> None:
    view = await volumes.get(ctx.rt, ctx.caller, storage_id(vid))
    if term == "offline":
        raise Unsupported("taking a storage offline is not supported; detach it instead")
    if states.storage_state(view.state) != "online":
        raise OcciConflict(f"the storage {vid} is {view.state}; it cannot be brought online")
