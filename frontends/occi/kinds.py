"""Decides, for each kind's collection path, which function reads, creates, changes, deletes
and acts: one table (:data:`KINDS`) that the app's generic handlers dispatch through.

Unsupported operations are ``None`` in the table and answer 501 with the reason given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from sqlalchemy import Select, bindparam, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute

from broker import model as m
from broker.model import utcnow
from broker.service import instances, volumes
from broker.states import State
from frontends.occi import compute, links, network, render, storage
from frontends.occi.attach import Attacher
from frontends.occi.catalog import Catalog
from frontends.occi.categories import (
    COMPUTE,
    NETWORK,
    NETWORKINTERFACE,
    STORAGE,
    STORAGELINK,
    AttrValue,
)
from frontends.occi.common import (
    COMPUTE_PATH,
    NETWORK_PATH,
    NIC_PATH,
    STORAGE_PATH,
    STORAGELINK_PATH,
    Ctx,
    Query,
)
from frontends.occi.compute import Attachment
from frontends.occi.errors import Unsupported
from frontends.occi.parse import Entity


@dataclasses.dataclass(frozen=True)
class Env:
    """What the kind functions need beyond the request: the catalog, the attacher and the
    app's rendered pieces."""

    catalog: Catalog
    attacher: Attacher
    pieces: render.Pieces | None = None


Loader = Callable[[Ctx, Env, str], Awaitable[Entity]]
Lister = Callable[[Ctx, Env], Awaitable[list[Entity]]]
#: returns the new entity's location and, when it has one at hand, its rendering.
Creator = Callable[[Ctx, Env, Entity], Awaitable[tuple[str, Entity | None]]]
Updater = Callable[[Ctx, Env, str, Entity, bool], Awaitable[None]]
Deleter = Callable[[Ctx, Env, str], Awaitable[None]]
Actor = Callable[[Ctx, Env, Sequence[str], str, Mapping[str, AttrValue]], Awaitable[dict[str, str]]]


@dataclasses.dataclass(frozen=True)
class KindOps:
    kind: str
    path: str
    load: Loader
    list_all: Lister
    create: Creator | None
    update: Updater | None
    delete: Deleter | None
    act: Actor | None
    why: str = ""


# -- compute --------------------------------------------------------------------------------------


async def _compute_load(ctx: Ctx, env: Env, rid: str) -> Entity:
    return await compute.load(ctx, env.catalog, rid)


async def _compute_list(ctx: Ctx, env: Env) -> list[Entity]:
    _, views = await compute.load_all(ctx, env.catalog, limit=10_000)
    return await compute_entities(ctx, env, views)


async def compute_entities(
    ctx: Ctx, env: Env, views: Sequence[instances.InstanceView]
) -> list[Entity]:
    attached = await compute.attachments(ctx, [v.id for v in views])
    return [compute.compute_entity(env.catalog, v, attached.get(v.id, ())) for v in views]


async def compute_json(ctx: Ctx, env: Env, views: Sequence[instances.InstanceView]) -> list[str]:
    """Each compute's JSON piece (:func:`frontends.occi.render.json_resource`), rendered anew
    only when its instance, its attachments or its mixins read differently than before."""
    attached = await compute.attachments(ctx, [v.id for v in views])
    out: list[str] = []
    for view in views:
        att = tuple(attached.get(view.id, ()))
        mixins = compute.compute_mixins(env.catalog, view)

        def build(view: instances.InstanceView = view, att: tuple[Attachment, ...] = att) -> str:
            entity = compute.compute_entity(env.catalog, view, att)
            return render.json_resource(entity, COMPUTE_PATH + view.id)

        if env.pieces is None:
            out.append(build())
        else:
            out.append(env.pieces.get(view.id, (view, att, mixins), build))
    return out


async def _compute_create(ctx: Ctx, env: Env, entity: Entity) -> tuple[str, Entity | None]:
    view, disks = await compute.create(ctx, env.catalog, entity)
    env.attacher.later(ctx.caller, view.id, disks)
    return COMPUTE_PATH + view.id, compute.compute_entity(env.catalog, view)


async def _compute_update(ctx: Ctx, env: Env, rid: str, entity: Entity, replace: bool) -> None:
    view = await instances.get(ctx.rt, ctx.caller, compute.compute_id(rid))
    await compute.update(ctx, env.catalog, view, entity, replace=replace)


async def _compute_delete(ctx: Ctx, env: Env, rid: str) -> None:
    await instances.terminate(ctx.rt, ctx.caller, [compute.compute_id(rid)])


async def _compute_act(
    ctx: Ctx, env: Env, rids: Sequence[str], term: str, attrs: Mapping[str, AttrValue]
) -> dict[str, str]:
    made = await compute.act(ctx, [compute.compute_id(r) for r in rids], term, attrs)
    if made is None:
        return {}
    await env.catalog.refresh(ctx.rt, force=True)
    return {"Location": f"/mixin/os_tpl/{made}/"}


async def compute_ids(ctx: Ctx, query: Query) -> list[str]:
    """One page of the caller's compute ids in one query (the text renderings need no more).

    The same rows :func:`broker.service.instances.describe` shows: the caller's own (the
    group's for a group admin, all for an admin), and finished ones for an hour.
    """
    caller = ctx.caller
    params: dict[str, object] = {
        "since": utcnow() - instances.DONE_VISIBLE_FOR,
        "offset": query.offset,
        "number": query.number,
    }
    if caller.is_admin:
        stmt = _IDS_ALL
    elif caller.role == "groupadmin":
        stmt, params["scope"] = _IDS_GROUP, caller.group_id
    else:
        stmt, params["scope"] = _IDS_OWNER, caller.user_id

    def read(conn: Connection) -> list[str]:
        return [COMPUTE_PATH + r for r in conn.execute(stmt, params).scalars().all()]

    return await ctx.rt.reads.run(read)


def _ids_statement(scope: InstrumentedAttribute[str] | None) -> Select[str]:
    stmt = select(m.Instance.id).where(
        or_(m.Instance.state != State.DONE.value, m.Instance.ended_at >= bindparam("since"))
    )
    if scope is not None:
        stmt = stmt.where(scope == bindparam("scope"))
    return stmt.order_by(m.Instance.id).offset(bindparam("offset")).limit(bindparam("number"))


_IDS_ALL: Final = _ids_statement(None)
_IDS_GROUP: Final = _ids_statement(m.Instance.group_id)
_IDS_OWNER: Final = _ids_statement(m.Instance.owner_id)


# -- storage --------------------------------------------------------------------------------------


async def _storage_load(ctx: Ctx, env: Env, vid: str) -> Entity:
    return await storage.load(ctx, env.catalog, vid)


async def _storage_list(ctx: Ctx, env: Env) -> list[Entity]:
    return await storage.load_all(ctx, env.catalog)


async def _storage_create(ctx: Ctx, env: Env, entity: Entity) -> tuple[str, Entity | None]:
    view = await storage.create(ctx, env.catalog, entity)
    return STORAGE_PATH + view.id, storage.storage_entity(env.catalog, view)


async def _storage_update(ctx: Ctx, env: Env, vid: str, entity: Entity, replace: bool) -> None:
    view = await volumes.get(ctx.rt, ctx.caller, storage.storage_id(vid))
    await storage.update(ctx, env.catalog, view, entity, replace=replace)


async def _storage_delete(ctx: Ctx, env: Env, vid: str) -> None:
    await volumes.delete(ctx.rt, ctx.caller, storage.storage_id(vid))


async def _storage_act(
    ctx: Ctx, env: Env, vids: Sequence[str], term: str, attrs: Mapping[str, AttrValue]
) -> dict[str, str]:
    for vid in vids:
        await storage.act(ctx, vid, term)
    return {}


# -- network --------------------------------------------------------------------------------------


async def _network_load(ctx: Ctx, env: Env, nid: str) -> Entity:
    return await network.load(ctx, nid)


async def _network_list(ctx: Ctx, env: Env) -> list[Entity]:
    return await network.load_all(ctx)


async def _network_create(ctx: Ctx, env: Env, entity: Entity) -> tuple[str, Entity | None]:
    return NETWORK_PATH + await network.create(ctx, entity), None


async def _network_act(
    ctx: Ctx, env: Env, nids: Sequence[str], term: str, attrs: Mapping[str, AttrValue]
) -> dict[str, str]:
    for nid in nids:
        await network.act(ctx, nid, term)
    return {}


# -- links ----------------------------------------------------------------------------------------


async def _nic_load(ctx: Ctx, env: Env, eni: str) -> Entity:
    return await links.nic(ctx, eni)


async def _nic_list(ctx: Ctx, env: Env) -> list[Entity]:
    return await links.nics(ctx)


async def _sl_load(ctx: Ctx, env: Env, vid: str) -> Entity:
    return await links.storagelink(ctx, vid)


async def _sl_list(ctx: Ctx, env: Env) -> list[Entity]:
    return await links.storagelinks(ctx)


async def _sl_create(ctx: Ctx, env: Env, entity: Entity) -> tuple[str, Entity | None]:
    return STORAGELINK_PATH + await links.attach(ctx, entity), None


async def _sl_delete(ctx: Ctx, env: Env, vid: str) -> None:
    await links.detach(ctx, vid)


KINDS: Final[dict[str, KindOps]] = {
    COMPUTE_PATH: KindOps(
        COMPUTE,
        COMPUTE_PATH,
        _compute_load,
        _compute_list,
        _compute_create,
        _compute_update,
        _compute_delete,
        _compute_act,
    ),
    STORAGE_PATH: KindOps(
        STORAGE,
        STORAGE_PATH,
        _storage_load,
        _storage_list,
        _storage_create,
        _storage_update,
        _storage_delete,
        _storage_act,
    ),
    NETWORK_PATH: KindOps(
        NETWORK,
        NETWORK_PATH,
        _network_load,
        _network_list,
        _network_create,
        None,
        None,
        _network_act,
        why="networks are changed and deleted by operators; the broker has no service for it",
    ),
    NIC_PATH: KindOps(
        NETWORKINTERFACE,
        NIC_PATH,
        _nic_load,
        _nic_list,
        None,
        None,
        None,
        None,
        why="interfaces are made at launch (an inline link on the compute) and go with it",
    ),
    STORAGELINK_PATH: KindOps(
        STORAGELINK,
        STORAGELINK_PATH,
        _sl_load,
        _sl_list,
        _sl_create,
        None,
        _sl_delete,
        None,
        why="a storagelink is replaced by detaching and attaching again",
    ),
}


def unsupported(ops: KindOps, what: str) -> Unsupported:
    return Unsupported(f"{what} is not supported on {ops.path}: {ops.why or 'no such operation'}")
