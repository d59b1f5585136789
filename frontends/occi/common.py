"""What every OCCI handler shares: the app's typed keys, the per-request context, replies.

A :class:`Ctx` is built once per request by the app's middleware: the runtime, the caller, the
app's category registry, the rendering the client accepts and the request's raw headers. It
decides nothing itself; it only carries what handlers need and the helpers that turn neutral
structures (:mod:`frontends.occi.parse`) into responses (:mod:`frontends.occi.render`).
Paging (``?page=&number=``) and collection filters (Category and X-OCCI-Attribute in the request)
are decided here, once for every kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from broker.auth import Caller
from broker.runtime import Runtime
from frontends.occi import render
from frontends.occi.categories import (
    AttrValue,
    OcciNotRenderable,
    OcciValidationError,
    Registry,
)
from frontends.occi.parse import (
    TEXT_OCCI,
    URI_LIST,
    Entity,
    parse_attribute_filter,
    parse_category_filter,
)

#: Paths: absolute, as the renderings show them.
COMPUTE_PATH: Final = "/compute/"
STORAGE_PATH: Final = "/storage/"
NETWORK_PATH: Final = "/network/"
NIC_PATH: Final = "/link/networkinterface/"
STORAGELINK_PATH: Final = "/link/storagelink/"

#: text/occi carries collections in headers; past this many locations it answers 413 so the
#: response headers stay small (ask for another rendering or a smaller ?number=).
MAX_TEXT_OCCI_LOCATIONS: Final = 100
#: The largest page (?number=) and the default when none is asked for.
MAX_PAGE: Final = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class Ctx:
    """One request: who asks, what they accept, and the app's shared pieces."""

    rt: Runtime
    caller: Caller
    registry: Registry
    request: web.Request
    accept: str | None

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self.request.headers.items())

    @property
    def content_type(self) -> str | None:
        return self.request.headers.get("Content-Type")

    async def body(self) -> bytes:
        return await self.request.read() if self.request.can_read_body else b""


def media(ctx: Ctx, allowed: Sequence[str]) -> str:
    """The rendering to answer with; 406 when the Accept header allows none of ``allowed``."""
    chosen = render.negotiate(ctx.accept, allowed)
    if chosen is None:
        raise web.HTTPNotAcceptable(
            text="none of the media types in Accept can render this: "
            + ", ".join(allowed[:5])
            + "\n"
        )
    return chosen


def respond(rendered: render.Rendered, status: int = 200, **headers: str) -> web.Response:
    out = CIMultiDict(rendered.headers)
    out.extend(headers)
    charset = f"; charset={rendered.charset}" if rendered.charset else ""
    out["Content-Type"] = rendered.content_type + charset
    return web.Response(body=rendered.body, status=status, headers=out)


def entity_reply(ctx: Ctx, entity: Entity, location: str, status: int = 200) -> web.Response:
    kind = media(ctx, (*render.ENTITY_TYPES, URI_LIST))  # uri-list: 400 (GFD.229 s. 6)
    extra = {"Location": location} if status == 201 else {}
    return respond(render.render_entity(entity, kind, location=location), status, **extra)


def created_reply(ctx: Ctx, locations: Sequence[str]) -> web.Response:
    """201 for new entities: Location of the first, every location in the rendering."""
    kind = media(ctx, render.COLLECTION_TYPES)
    rendered = render.render_collection(kind, locations, _stubs(locations))
    return respond(rendered, 201, Location=locations[0])


def _stubs(locations: Sequence[str]) -> list[Entity]:
    """Bare entities for JSON (which has no location list): kind and id, read from the path."""
    out = []
    for location in locations:
        kind = _KIND_OF_PATH.get(location.rsplit("/", 1)[0] + "/", "")
        out.append(Entity(kind, attributes={"occi.core.id": location.rsplit("/", 1)[1]}))
    return out


_KIND_OF_PATH: Final = {
    COMPUTE_PATH: "http://schemas.ogf.org/occi/infrastructure#compute",
    STORAGE_PATH: "http://schemas.ogf.org/occi/infrastructure#storage",
    NETWORK_PATH: "http://schemas.ogf.org/occi/infrastructure#network",
}


def ok_reply(ctx: Ctx, status: int = 200) -> web.Response:
    """An empty success (DELETE, an action with nothing to show)."""
    del ctx
    return web.Response(status=status, text="OK\n" if status != 204 else None)


# -- collections: filters and paging --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """What a collection GET asks for: categories, attribute values, and one page."""

    categories: tuple[str, ...] = ()
    attributes: Mapping[str, AttrValue] = dataclasses.field(default_factory=dict)
    page: int = 1
    number: int = MAX_PAGE

    @property
    def filtered(self) -> bool:
        return bool(self.categories or self.attributes)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.number


def _positive(request: web.Request, name: str, default: int, top: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= top:
        raise OcciValidationError(f"?{name}= must be a whole number from 1 to {top}", field=name)
    return int(raw)


def collection_query(ctx: Ctx, attribute_names: Iterable[str]) -> Query:
    """The filters and page of a collection GET; unknown categories and attributes are 400s."""
    request = ctx.request
    number = _positive(request, "number", MAX_PAGE, MAX_PAGE)
    page = _positive(request, "page", 1, 1_000_000)
    refs = parse_category_filter(None, b"", ctx.headers)
    for ref in refs:
        if ref.type_id not in ctx.registry:
            raise OcciValidationError(f"unknown category {ref.type_id[:200]} in the filter")
    attributes = _filter_attributes(ctx, set(attribute_names))
    return Query(tuple(r.type_id for r in refs), attributes, page, number)


def _filter_attributes(ctx: Ctx, known: set[str]) -> dict[str, AttrValue]:
    found = parse_attribute_filter(ctx.headers)
    for name in found:
        if name not in known:
            raise OcciValidationError(f"cannot filter by unknown attribute {name[:200]}")
    return found


def matches(registry: Registry, entity: Entity, query: Query) -> bool:
    """True when the entity has every category and attribute value the query names."""
    have = {entity.kind, *entity.mixins}
    for identifier in query.categories:
        if identifier in have:
            continue
        kinds = {k.type_id for k in registry.ancestors(entity.kind)}
        if identifier in kinds:
            continue
        if not any(
            identifier in {m.type_id for m in registry.mixin_closure([x])}
            for x in entity.mixins
            if x in registry
        ):
            return False
    for name, value in query.attributes.items():
        got = entity.attributes.get(name)
        if got != value and not (isinstance(got, float) and got == value):
            return False
    return True


def page_of(items: Sequence[Entity], query: Query) -> list[Entity]:
    return list(items[query.offset : query.offset + query.number])


def collection_reply(
    ctx: Ctx, locations: Sequence[str], entities: Sequence[Entity] | None
) -> web.Response:
    """A collection in the accepted rendering; text/occi over the header cap is 413."""
    kind = media(ctx, render.COLLECTION_TYPES)
    if kind == TEXT_OCCI and len(locations) > MAX_TEXT_OCCI_LOCATIONS:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_TEXT_OCCI_LOCATIONS,
            actual_size=len(locations),
            text=f"text/occi renders at most {MAX_TEXT_OCCI_LOCATIONS} locations in headers; "
            "use ?number= or another rendering\n",
        )
    if kind in ("application/occi+json", "application/json") and entities is None:
        raise OcciNotRenderable("no entity renderings for this collection")
    return respond(render.render_collection(kind, locations, entities))


def is_uri_list(kind: str) -> bool:
    return kind == URI_LIST
