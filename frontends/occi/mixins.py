"""Decides what the query interface shows and what mixin collections hold.

``GET /-/`` renders every category the caller may use (only the OS templates of images they may
launch), or, when the request names categories, those and everything related to them (GFD.223
s. 6.1: ``os_tpl`` selects every OS template). ``POST /-/`` adds user-defined mixins (a scheme
of their own, a location, no attributes); ``DELETE /-/`` removes one, by whoever defined it or
an admin, with the caller's associations.

A mixin's location is a collection of the entities that have it: computes with that image or
flavor, resources tagged with a user mixin. Associating (POST), replacing (PUT) and
disassociating (DELETE) work for user mixins, as tags on computes and storages; templates are
chosen when a compute is created (its size changes with a POST to the compute): 501 here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from sqlalchemy import select

from broker import model as m
from broker.errors import Forbidden, NotFound
from broker.service import images, tags
from frontends.occi import render
from frontends.occi.catalog import MAX_USER_LOCATION, MIXIN_TAG
from frontends.occi.categories import (
    OS_TPL,
    Mixin,
    OcciValidationError,
)
from frontends.occi.common import (
    COMPUTE_PATH,
    STORAGE_PATH,
    Ctx,
    Query,
    collection_query,
    collection_reply,
    matches,
    media,
    page_of,
    respond,
)
from frontends.occi.errors import Unsupported
from frontends.occi.kinds import KINDS, Env
from frontends.occi.parse import (
    URI_LIST,
    Entity,
    parse_category_filter,
    parse_locations,
    parse_mixins,
)

QUERY_TYPES: Final = (*render.CATEGORY_TYPES, URI_LIST)


async def query_get(ctx: Ctx, env: Env) -> web.StreamResponse:
    kind = media(ctx, QUERY_TYPES)
    refs = parse_category_filter(ctx.content_type, await ctx.body(), ctx.headers)
    shown = await env.catalog.visible_to(ctx.rt, ctx.caller)
    if refs:
        wanted = {c.type_id for c in ctx.registry.related(r.type_id for r in refs)}
        shown = [c for c in shown if c.type_id in wanted]
    return respond(render.render_categories(shown, kind))


async def query_post(ctx: Ctx, env: Env) -> web.StreamResponse:
    found = parse_mixins(ctx.content_type, await ctx.body(), ctx.headers)
    added: list[Mixin] = []
    try:
        for mixin in found:
            if len(mixin.location or "") > MAX_USER_LOCATION or len(mixin.type_id) > 250:
                raise OcciValidationError(
                    f"mixin {mixin.term}: location and identifier are limited to "
                    f"{MAX_USER_LOCATION} and 250 characters"
                )
            added.append(env.catalog.registry.add_user_mixin(mixin))
            env.catalog.owners[mixin.type_id] = ctx.caller.user_id
    except BaseException:
        for mixin in added:
            env.catalog.registry.remove_mixin(mixin.type_id)
            env.catalog.owners.pop(mixin.type_id, None)
        raise
    return web.Response(text="OK\n")


async def query_delete(ctx: Ctx, env: Env) -> web.StreamResponse:
    refs = parse_category_filter(ctx.content_type, await ctx.body(), ctx.headers)
    if not refs:
        raise OcciValidationError("name the mixin to remove in a Category")
    for ref in refs:
        identifier = ref.type_id
        if identifier not in ctx.registry:
            raise NotFound(f"no category {identifier[:200]}", resource="mixin")
        owner = env.catalog.owners.get(identifier)
        if owner is None:
            raise Forbidden(f"{identifier} is not a user-defined mixin; it cannot be removed")
        if owner != ctx.caller.user_id and not ctx.caller.is_admin:
            raise Forbidden(f"the mixin {identifier} was defined by another user")
    for ref in refs:
        mixin = ctx.registry.remove_mixin(ref.type_id)
        env.catalog.owners.pop(ref.type_id, None)
        members = await _tagged(ctx, MIXIN_TAG + (mixin.location or ""))
        if members:
            await tags.delete(
                ctx.rt, ctx.caller, members, {MIXIN_TAG + (mixin.location or ""): None}
            )
    return web.Response(text="OK\n")


# -- mixin collections ----------------------------------------------------------------------------


def _mixin_at(ctx: Ctx) -> Mixin:
    path = ctx.request.path
    if path in KINDS:
        raise web.HTTPMethodNotAllowed(ctx.request.method, ("GET", "POST", "DELETE"))
    found = ctx.registry.by_location(path)
    if not isinstance(found, Mixin):
        raise NotFound(f"nothing at {path[:200]}", resource="location")
    return found


async def _members(ctx: Ctx, env: Env, mixin: Mixin) -> list[tuple[str, Entity]]:
    out: list[tuple[str, Entity]] = []
    query = Query(categories=(mixin.type_id,))
    for path in (COMPUTE_PATH, STORAGE_PATH):
        ops = KINDS[path]
        kind_ok = not mixin.applies or any(
            k in mixin.applies for k in (a.type_id for a in ctx.registry.ancestors(ops.kind))
        )
        closure = ctx.registry.mixin_closure([mixin.type_id])
        if not kind_ok and not any(x.applies and ops.kind in x.applies for x in closure):
            continue
        for entity in await ops.list_all(ctx, env):
            if matches(ctx.registry, entity, query):
                out.append((path + str(entity.id), entity))
    return out


async def mixin_get(ctx: Ctx, env: Env) -> web.StreamResponse:
    mixin = _mixin_at(ctx)
    if ctx.registry.is_template(mixin.type_id, OS_TPL):
        try:  # an image the caller may not see is answered as no image at all
            await images.get(ctx.rt, ctx.caller, mixin.term)
        except NotFound:
            raise NotFound(f"nothing at {ctx.request.path[:200]}", resource="location") from None
    query = collection_query(ctx, ())
    members = await _members(ctx, env, mixin)
    wanted = [e for _, e in members if matches(ctx.registry, e, query)]
    page = page_of(wanted, query)
    locations = {id(e): loc for loc, e in members}
    return collection_reply(ctx, [locations[id(e)] for e in page], page)


def _user_mixin(ctx: Ctx, env: Env) -> Mixin:
    mixin = _mixin_at(ctx)
    if mixin.type_id not in env.catalog.owners:
        raise Unsupported(
            f"{mixin.type_id} is chosen when a compute is created; only user-defined mixins "
            "are associated here"
        )
    return mixin


def _resource_ids(locations: tuple[str, ...]) -> list[str]:
    out = []
    for location in locations:
        path = location.split("://", 1)[-1]
        if "://" in location:
            path = "/" + path.split("/", 1)[-1]
        base, _, rid = path.rpartition("/")
        if base + "/" not in (COMPUTE_PATH, STORAGE_PATH) or not rid:
            raise OcciValidationError(
                f"user mixins apply to computes and storages, not {location[:100]}"
            )
        out.append(rid)
    return out


async def _tagged(ctx: Ctx, key: str) -> list[str]:
    stmt = select(m.Tag.resource_id).where(m.Tag.key == key)
    if not ctx.caller.is_admin:
        stmt = stmt.where(m.Tag.owner_id == ctx.caller.user_id)
    async with ctx.rt.engine.connect() as conn:
        return [str(r) for r in (await conn.scalars(stmt)).all()]


async def _locations(ctx: Ctx) -> tuple[str, ...]:
    body = await ctx.body()
    if not body.strip() and not ctx.request.headers.get("X-OCCI-Location"):
        return ()
    return parse_locations(ctx.content_type, body, ctx.headers)


async def mixin_post(ctx: Ctx, env: Env) -> web.StreamResponse:
    mixin = _user_mixin(ctx, env)
    rids = _resource_ids(await _locations(ctx))
    if not rids:
        raise OcciValidationError("name the entities to associate in X-OCCI-Location")
    await tags.create(ctx.rt, ctx.caller, rids, {MIXIN_TAG + (mixin.location or ""): mixin.type_id})
    return web.Response(text="OK\n")


async def mixin_put(ctx: Ctx, env: Env) -> web.StreamResponse:
    mixin = _user_mixin(ctx, env)
    key = MIXIN_TAG + (mixin.location or "")
    rids = _resource_ids(await _locations(ctx))
    gone = [r for r in await _tagged(ctx, key) if r not in rids]
    if gone:
        await tags.delete(ctx.rt, ctx.caller, gone, {key: None})
    if rids:
        await tags.create(ctx.rt, ctx.caller, rids, {key: mixin.type_id})
    return web.Response(text="OK\n")


async def mixin_delete(ctx: Ctx, env: Env) -> web.StreamResponse:
    mixin = _user_mixin(ctx, env)
    key = MIXIN_TAG + (mixin.location or "")
    rids = _resource_ids(await _locations(ctx)) or await _tagged(ctx, key)
    if rids:
        await tags.delete(ctx.rt, ctx.caller, rids, {key: None})
    return web.Response(text="OK\n")


HANDLERS: Final[dict[str, Callable[[Ctx, Env], Awaitable[web.StreamResponse]]]] = {
    "GET": mixin_get,
    "POST": mixin_post,
    "PUT": mixin_put,
    "DELETE": mixin_delete,
}
