"""The OCCI 1.2 application: authenticate, check the version, dispatch, render, in that order.

Routes are one table (:func:`routes`): the query interface at ``/-/`` and its well-known alias,
each kind's collection and entities through :data:`frontends.occi.kinds.KINDS`, and every other
path as a mixin collection (``/mixin/os_tpl/ami-.../``, user mixins). Every error, from any
step, becomes a status through the one table in :mod:`frontends.occi.errors`. The ``Server``
header says ``OCCI/1.2``; a client whose ``User-Agent`` names a higher OCCI version gets 501.
A collection GET is answered again, per caller, path, query and Accept, while nothing has been
committed to the database since (:mod:`frontends.kept`): clients poll collections.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from broker import metrics
from broker.errors import BrokerError, NotFound
from broker.runtime import Runtime
from frontends.kept import Kept
from frontends.occi import compute, mixins, render
from frontends.occi.attach import Attacher
from frontends.occi.auth import authenticate
from frontends.occi.catalog import Catalog
from frontends.occi.categories import OcciValidationError
from frontends.occi.common import (
    COMPUTE_PATH,
    Ctx,
    collection_query,
    collection_reply,
    entity_reply,
    matches,
    media,
    page_of,
    respond,
)
from frontends.occi.errors import Unsupported, error_response, status_of
from frontends.occi.kinds import KINDS, Env, KindOps, compute_ids, compute_json, unsupported
from frontends.occi.parse import (
    JSON_TYPES,
    MAX_BODY_BYTES,
    parse_action,
    parse_entity,
    validate_entity,
)

RUNTIME: Final = web.AppKey("runtime", Runtime)
CATALOG: Final = web.AppKey("catalog", Catalog)
ATTACHER: Final = web.AppKey("attacher", Attacher)
PIECES: Final = web.AppKey("pieces", render.Pieces)


@dataclasses.dataclass(frozen=True, slots=True)
class KeptAnswer:
    """A collection GET's answer as kept while the database is unchanged (frontends.kept)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def of(cls, response: web.Response) -> KeptAnswer:
        body = response.body
        assert isinstance(body, bytes)
        skip = ("Content-Length", "Server")
        headers = tuple((k, v) for k, v in response.headers.items() if k not in skip)
        return cls(response.status, headers, body)

    def response(self) -> web.Response:
        return web.Response(status=self.status, headers=CIMultiDict(self.headers), body=self.body)


KEPT: Final = web.AppKey("kept", Kept[KeptAnswer])
SERVER: Final = "cloudbroker OCCI/1.2"
VERSION: Final = (1, 2)
_VERSION_RE: Final = re.compile(r"OCCI/(\d{1,3})\.(\d{1,3})")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def set_metrics_action(request: web.Request, action: str) -> None:
    """Name the request's action for the metrics middleware (a bounded set of names)."""
    request[metrics.ACTION] = action


def _label(ops: KindOps, what: str) -> str:
    return f"{ops.kind.rpartition('#')[2]} {what}"


def check_version(request: web.Request) -> None:
    for found in _VERSION_RE.finditer(request.headers.get("User-Agent", "")[:512]):
        wanted = (int(found.group(1)), int(found.group(2)))
        if wanted > VERSION:
            raise Unsupported(f"this server speaks OCCI/1.2, not OCCI/{wanted[0]}.{wanted[1]}")


@web.middleware
async def occi_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_version(request)
        response = await handler(request)
    except BrokerError as exc:
        response = error_response(status_of(exc), exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.text or exc.reason)
    response.headers["Server"] = SERVER
    return response


async def context(request: web.Request) -> Ctx:
    rt = request.app[RUNTIME]
    caller = await authenticate(rt, request)
    catalog = request.app[CATALOG]
    await catalog.refresh(rt)
    return Ctx(rt, caller, catalog.registry, request, request.headers.get("Accept"))


def env_of(request: web.Request) -> Env:
    return Env(request.app[CATALOG], request.app[ATTACHER], request.app[PIECES])


def _known_attributes(ctx: Ctx, kind: str) -> set[str]:
    names = set(ctx.registry.attribute_definitions(kind))
    for mixin in ctx.registry.mixins():
        names.update(a.name for a in mixin.attributes)
    return names


# -- collections ----------------------------------------------------------------------------------


def collection_get(ops: KindOps) -> Handler:
    label = _label(ops, "GET")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        version = request.app[RUNTIME].reads.version()  # before any of the answer's reads
        ctx = await context(request)
        key = (ctx.caller, request.host, request.path_qs, ctx.accept)
        again = request.app[KEPT].get(key, version)
        if again is not None:
            return again.response()
        answer = await collection(ctx, request)
        request.app[KEPT].keep(key, version, KeptAnswer.of(answer))
        return answer

    async def collection(ctx: Ctx, request: web.Request) -> web.Response:
        query = collection_query(ctx, _known_attributes(ctx, ops.kind))
        kind = media(ctx, render.COLLECTION_TYPES)
        if ops.path == COMPUTE_PATH and not query.filtered:
            if kind not in JSON_TYPES:
                return collection_reply(ctx, await compute_ids(ctx, query), None)
            env = env_of(request)
            _, views = await compute.load_all(
                ctx, env.catalog, limit=query.number, offset=query.offset
            )
            return respond(render.render_resources(kind, await compute_json(ctx, env, views)))
        else:
            found = await ops.list_all(ctx, env_of(request))
            entities = page_of([e for e in found if matches(ctx.registry, e, query)], query)
        return collection_reply(ctx, [ops.path + str(e.id) for e in entities], entities)

    return handle


def collection_post(ops: KindOps) -> Handler:
    label = _label(ops, "POST")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        ctx = await context(request)
        env = env_of(request)
        if "action" in request.query:
            return await _act(ctx, env, ops, None)
        if ops.create is None:
            raise unsupported(ops, "creating")
        entity = parse_entity(ctx.content_type, await ctx.body(), ctx.headers)
        if entity.kind != ops.kind:
            raise OcciValidationError(
                f"POST to {ops.path} takes kind {ops.kind}, not {entity.kind[:200]}"
            )
        await env.catalog.ensure(ctx.rt, entity.mixins)
        entity = validate_entity(ctx.registry, entity, mode="create")
        location, made = await ops.create(ctx, env, entity)
        if made is None:
            made = await ops.load(ctx, env, location.rsplit("/", 1)[1])
        return entity_reply(ctx, made, location, 201)

    return handle


def collection_delete(ops: KindOps) -> Handler:
    label = _label(ops, "DELETE")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        ctx = await context(request)
        env = env_of(request)
        if ops.delete is None:
            raise unsupported(ops, "deleting")
        query = collection_query(ctx, _known_attributes(ctx, ops.kind))
        found = await ops.list_all(ctx, env)
        for entity in page_of([e for e in found if matches(ctx.registry, e, query)], query):
            await ops.delete(ctx, env, str(entity.id))
        return web.Response(text="OK\n")

    return handle


# -- entities -------------------------------------------------------------------------------------


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def entity_get(ops: KindOps) -> Handler:
    label = _label(ops, "GET")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        ctx = await context(request)
        entity = await ops.load(ctx, env_of(request), _id(request))
        return entity_reply(ctx, entity, ops.path + _id(request))

    return handle


async def _act(ctx: Ctx, env: Env, ops: KindOps, rid: str | None) -> web.StreamResponse:
    if ops.act is None:
        raise unsupported(ops, "acting")
    term = ctx.request.query["action"]
    invocation = parse_action(ctx.content_type, await ctx.body(), ctx.headers, expected_term=term)
    if rid is None:
        query = collection_query(ctx, _known_attributes(ctx, ops.kind))
        found = await ops.list_all(ctx, env)
        targets = [e for e in found if matches(ctx.registry, e, query)]
        mixins: tuple[str, ...] = ()
    else:
        current = await ops.load(ctx, env, rid)
        targets, mixins = [current], current.mixins
    attrs = ctx.registry.validate_action(ops.kind, mixins, invocation.action, invocation.attributes)
    set_metrics_action(ctx.request, _label(ops, invocation.action.rpartition("#")[2]))
    if not targets:
        return web.Response(text="OK\n")
    extra = await ops.act(ctx, env, [str(e.id) for e in targets], term, attrs)
    if rid is None:
        return web.Response(text="OK\n", headers=extra)
    entity = await ops.load(ctx, env, rid)
    reply = entity_reply(ctx, entity, ops.path + rid)
    reply.headers.update(extra)
    return reply


def entity_post(ops: KindOps) -> Handler:
    label = _label(ops, "POST")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        ctx = await context(request)
        env = env_of(request)
        if "action" in request.query:
            return await _act(ctx, env, ops, _id(request))
        return await _change(ctx, env, ops, replace=False)

    return handle


async def _change(ctx: Ctx, env: Env, ops: KindOps, *, replace: bool) -> web.StreamResponse:
    rid = _id(ctx.request)
    try:
        current = await ops.load(ctx, env, rid)
    except NotFound:
        if replace:
            raise Unsupported(
                f"{ops.path}{rid[:64]} does not exist and ids are chosen by the "
                f"broker: POST to {ops.path} to create"
            ) from None
        raise
    if ops.update is None:
        raise unsupported(ops, "changing")
    entity = parse_entity(ctx.content_type, await ctx.body(), ctx.headers)
    if entity.kind != ops.kind:
        raise OcciValidationError(f"{ops.path}{rid} is a {ops.kind}, not {entity.kind[:200]}")
    if entity.id is not None and entity.id != rid:
        raise OcciValidationError("occi.core.id differs from the entity's location")
    if entity.links:
        raise Unsupported("links cannot be changed here; use the link collections")
    await env.catalog.ensure(ctx.rt, entity.mixins)
    entity = validate_entity(
        ctx.registry, entity, mode="replace" if replace else "update", current=current.attributes
    )
    await ops.update(ctx, env, rid, entity, replace)
    return entity_reply(ctx, await ops.load(ctx, env, rid), ops.path + rid)


def entity_put(ops: KindOps) -> Handler:
    label = _label(ops, "PUT")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        return await _change(await context(request), env_of(request), ops, replace=True)

    return handle


def entity_delete(ops: KindOps) -> Handler:
    label = _label(ops, "DELETE")

    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        ctx = await context(request)
        if ops.delete is None:
            raise unsupported(ops, "deleting")
        await ops.delete(ctx, env_of(request), _id(request))
        return web.Response(text="OK\n")

    return handle


# -- query interface and mixin collections --------------------------------------------------------


def _with_ctx(fn: Callable[[Ctx, Env], Awaitable[web.StreamResponse]], label: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        set_metrics_action(request, label)
        return await fn(await context(request), env_of(request))

    return handle


QUERY_PATHS: Final = ("/-/", "/.well-known/org/ogf/occi/-/")


def routes() -> list[tuple[str, str, Handler]]:
    """Every route of the app, in one table."""
    table: list[tuple[str, str, Handler]] = []
    for path in QUERY_PATHS:
        table.append(("GET", path, _with_ctx(mixins.query_get, "query GET")))
        table.append(("POST", path, _with_ctx(mixins.query_post, "query POST")))
        table.append(("DELETE", path, _with_ctx(mixins.query_delete, "query DELETE")))
    for path, ops in KINDS.items():
        table.append(("GET", path, collection_get(ops)))
        table.append(("POST", path, collection_post(ops)))
        table.append(("DELETE", path, collection_delete(ops)))
        entity = path + "{id:[A-Za-z0-9._-]+}"
        table.append(("GET", entity, entity_get(ops)))
        table.append(("POST", entity, entity_post(ops)))
        table.append(("PUT", entity, entity_put(ops)))
        table.append(("DELETE", entity, entity_delete(ops)))
    for method in ("GET", "POST", "PUT", "DELETE"):
        table.append((method, "/{tail:.*}", _with_ctx(mixins.HANDLERS[method], f"mixin {method}")))
    return table


async def _attacher(app: web.Application) -> AsyncIterator[None]:
    app[ATTACHER] = Attacher(app[RUNTIME])
    yield
    await app[ATTACHER].aclose()


def create_app(rt: Runtime) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[metrics.middleware(rt, "occi"), occi_middleware],
    )
    app[RUNTIME] = rt
    app[CATALOG] = Catalog()
    app[PIECES] = render.Pieces()
    app[KEPT] = Kept(rt.config.broker.kept_answers)
    app.cleanup_ctx.append(_attacher)
    for method, path, handler in routes():
        app.router.add_route(method, path, handler)
    return app


__all__ = ["create_app", "respond"]
