"""Renderers for OCCI responses, and the content negotiation that picks a rendering.

What is rendered: the query interface (a list of categories, GFD.223 s. 6), one entity (kind,
mixins, attributes, inline links, and its actions as ``<location>?action=term`` links), and a
collection (locations, or full entities in JSON since GFD.225 has no bare location list).

Renderings: ``text/plain`` (fields as body lines), ``text/occi`` (the same fields as headers, one
header per field name with comma-separated values, body ``OK``), ``text/uri-list`` (collections
only; anything else raises OcciNotRenderable, which the app answers with 400 as GFD.229 says) and
``application/occi+json`` (GFD.225; the output validates against the schema). ``text/occi+plain``
and ``application/json`` are accepted as names for the text/plain and JSON renderings.

Locations appear as absolute paths; a ``base`` (``https://host:8787``) is put in front of every
absolute path the rendering shows as a URI (category locations, ``X-OCCI-Location``, link
targets and ``self``, action links, JSON link ends). Attribute values are rendered as they are.
A text ``Category`` carries only the first of a mixin's ``depends`` as ``rel`` and cannot carry
``applies`` (GFD.229 s. 4.5.2); JSON carries both.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from frontends.occi.categories import (
    LINK,
    Action,
    Attribute,
    AttrType,
    AttrValue,
    Category,
    Kind,
    Mixin,
    OcciNotRenderable,
)
from frontends.occi.parse import (
    JSON,
    OCCI_JSON,
    TEXT_OCCI,
    TEXT_OCCI_PLAIN,
    TEXT_PLAIN,
    URI_LIST,
    ActionInvocation,
    Entity,
    Link,
    media_type,
)

#: Media types the app may offer, in our order of preference (negotiate's tie-break).
CATEGORY_TYPES = (TEXT_PLAIN, TEXT_OCCI, OCCI_JSON, JSON, TEXT_OCCI_PLAIN)
ENTITY_TYPES = CATEGORY_TYPES
COLLECTION_TYPES = (TEXT_PLAIN, TEXT_OCCI, URI_LIST, OCCI_JSON, JSON, TEXT_OCCI_PLAIN)


@dataclass(frozen=True)
class Rendered:
    """A response body with its media type, charset and extra headers (text/occi)."""

    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    charset: str | None = "utf-8"


# -- content negotiation ------------------------------------------------------------------------

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE_RE = re.compile(rf"\s*({_TCHARS})/({_TCHARS})\s*((?:;.*)?)", re.DOTALL)


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    out: list[tuple[str, str, float]] = []
    for part in accept.split(","):
        match = _RANGE_RE.fullmatch(part)
        if match is None:
            continue
        kind, sub, params = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if kind == "*" and sub != "*":
            continue
        quality: float | None = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                quality = _quality_value(value)
        if quality is not None:
            out.append((kind, sub, quality))
    return out


def _quality_value(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def _quality(candidate: str, ranges: Sequence[tuple[str, str, float]]) -> float:
    """The q of the most specific range matching ``candidate`` (RFC 7231 s. 5.3.2)."""
    kind, _, sub = candidate.lower().partition("/")
    best_rank, best_q = -1, 0.0
    for range_kind, range_sub, quality in ranges:
        if (range_kind, range_sub) == (kind, sub):
            rank = 2
        elif range_kind == kind and range_sub == "*":
            rank = 1
        elif (range_kind, range_sub) == ("*", "*"):
            rank = 0
        else:
            continue
        if rank > best_rank or (rank == best_rank and quality > best_q):
            best_rank, best_q = rank, quality
    return best_q


def negotiate(accept: str | None, allowed: Sequence[str]) -> str | None:
    """The allowed media type the Accept header likes best; None means 406.

    Honours q-values, ``type/*`` and ``*/*``; ties go to the earlier entry of ``allowed``. No
    Accept header (or one with nothing we can read) takes ``allowed[0]``.
    """
    if not allowed:
        return None
    ranges = _ranges(accept or "")
    if not ranges:
        return allowed[0]
    best, best_q = None, 0.0
    for candidate in allowed:
        quality = _quality(candidate, ranges)
        if quality > best_q:
            best, best_q = candidate, quality
    return best


# -- text pieces --------------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SPECIAL_RE = re.compile(r'[\\"\x00-\x1f\x7f]')


def _quote(text: str) -> str:
    """A quoted string; other control characters (unrenderable) become U+FFFD."""
    return '"' + _SPECIAL_RE.sub(lambda m: _ESCAPES.get(m.group(), "\ufffd"), text) + '"'


def _value(value: AttrValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("cannot render a non-finite number")
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    return _quote(json.dumps(value, separators=(",", ":")))  # text has no arrays or objects


def _at(base: str, location: str) -> str:
    return base.rstrip("/") + location if base and location.startswith("/") else location


def _category_ref(category_id: str, cls: str) -> str:
    scheme, _, term = category_id.rpartition("#")
    return f'{term}; scheme={_quote(scheme + "#")}; class="{cls}"'


def _attribute_def(attr: Attribute) -> str:
    props = [p for p, on in (("immutable", not attr.mutable), ("required", attr.required)) if on]
    return attr.name + ("{" + " ".join(props) + "}" if props else "")


def _category_value(category: Category, base: str) -> str:
    parts = [_category_ref(category.type_id, category.cls)]
    if category.title:
        parts.append(f"title={_quote(category.title)}")
    rel = None
    if isinstance(category, Kind):
        rel = category.parent
    elif isinstance(category, Mixin) and category.depends:
        rel = category.depends[0]
    if rel:
        parts.append(f"rel={_quote(rel)}")
    location = None if isinstance(category, Action) else category.location
    if location:
        parts.append(f"location={_quote(_at(base, location))}")
    if category.attributes:
        defs = " ".join(_attribute_def(a) for a in category.attributes)
        parts.append(f"attributes={_quote(defs)}")
    if not isinstance(category, Action) and category.actions:
        parts.append(f"actions={_quote(' '.join(category.actions))}")
    return "; ".join(parts)


def _link_value(link: Link, base: str) -> str:
    attributes = dict(link.attributes)
    target = attributes.pop("occi.core.target", None)
    if not isinstance(target, str):
        raise ValueError("an inline link needs occi.core.target")
    parts = [f"<{_at(base, target)}>"]
    rel = attributes.pop("occi.core.target.kind", None)
    if rel is not None:
        parts.append(f"rel={_quote(str(rel))}")
    if link.location:
        parts.append(f"self={_quote(_at(base, link.location))}")
    if link.kind is not None:
        parts.append(f"category={_quote(' '.join((link.kind, *link.mixins)))}")
    parts.extend(f"{name}={_value(value)}" for name, value in attributes.items())
    return "; ".join(parts)


def _action_link(location: str, action: str, base: str) -> str:
    term = action.rpartition("#")[2]
    return f"<{_at(base, location)}?action={term}>; rel={_quote(action)}"


def _text(media: str, fields: Sequence[tuple[str, Sequence[str]]]) -> Rendered:
    """``fields`` as body lines (text/plain) or as headers with body OK (text/occi)."""
    if media == TEXT_OCCI:
        headers = tuple((name, value) for name, values in fields for value in _packed(values))
        return Rendered(TEXT_OCCI, b"OK", headers)
    lines = [f"{name}: {value}\n" for name, values in fields for value in values]
    return Rendered(media, "".join(lines).encode("utf-8"))


#: A text/occi header line longer than this is split into repeated headers of the same name
#: (RFC 9110 s. 5.3: the same meaning), so each line stays within common server limits (8 KiB).
MAX_HEADER_VALUE = 4000


def _packed(values: Sequence[str]) -> list[str]:
    """Comma-joined values, as few header lines as fit under :data:`MAX_HEADER_VALUE` each."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for value in values:
        if current and size + 2 + len(value) > MAX_HEADER_VALUE:
            out.append(", ".join(current))
            current, size = [], 0
        current.append(value)
        size += len(value) + 2
    if current:
        out.append(", ".join(current))
    return out


def _format(media: str) -> str:
    """The rendering a media type names: text/occi+plain is text/plain, for instance."""
    return TEXT_PLAIN if media == TEXT_OCCI_PLAIN else media


# -- JSON pieces --------------------------------------------------------------------------------

_JSON_TYPE = {
    AttrType.STRING: "string",
    AttrType.ENUM: "string",
    AttrType.NUMBER: "number",
    AttrType.INTEGER: "number",
    AttrType.BOOLEAN: "boolean",
    AttrType.ARRAY: "array",
    AttrType.OBJECT: "object",
}


def _pattern(attr: Attribute) -> dict[str, Any]:
    """Type detail GFD.225 ``type`` cannot say, as a JSON schema in ``pattern``."""
    pattern: dict[str, Any] = {}
    if attr.type is AttrType.ENUM:
        pattern = {"type": "string", "enum": list(attr.enum)}
    elif attr.type is AttrType.INTEGER:
        pattern = {"type": "integer"}
    elif attr.type is AttrType.NUMBER and (attr.minimum is not None or attr.maximum is not None):
        pattern = {"type": "number"}
    if attr.minimum is not None:
        pattern["minimum"] = attr.minimum
    if attr.maximum is not None:
        pattern["maximum"] = attr.maximum
    return pattern


def _attribute_json(attr: Attribute) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mutable": attr.mutable,
        "required": attr.required,
        "type": _JSON_TYPE[attr.type],
    }
    if attr.default is not None:
        out["default"] = attr.default
    if attr.description:
        out["description"] = attr.description
    pattern = _pattern(attr)
    if pattern:
        out["pattern"] = pattern
    return out


def _category_json(category: Category, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {"term": category.term, "scheme": category.scheme}
    if category.title:
        out["title"] = category.title
    if category.attributes:
        out["attributes"] = {a.name: _attribute_json(a) for a in category.attributes}
    if isinstance(category, Action):
        return out
    if category.actions:
        out["actions"] = list(category.actions)
    if isinstance(category, Kind):
        if category.parent:
            out["parent"] = category.parent
    else:
        if category.depends:
            out["depends"] = list(category.depends)
        if category.applies:
            out["applies"] = list(category.applies)
        if category.location is None:
            raise ValueError(f"GFD.225 needs a location for mixin {category.type_id}")
    if category.location is not None:
        out["location"] = _at(base, category.location)
    return out


def _end(attributes: dict[str, AttrValue], end: str, default: str | None, base: str) -> Any:
    location = attributes.pop(f"occi.core.{end}", default)
    if not isinstance(location, str):
        raise ValueError(f"a link needs occi.core.{end} to be rendered in JSON")
    out: dict[str, Any] = {"location": _at(base, location)}
    kind = attributes.pop(f"occi.core.{end}.kind", None)
    if kind is not None:
        out["kind"] = kind
    return out


def _entity_json(
    kind: str | None,
    mixins: Sequence[str],
    attributes: Mapping[str, AttrValue],
    *,
    link: bool,
    source: str | None = None,
    base: str,
) -> dict[str, Any]:
    """The members a resource and a link share, plus source and target for a link."""
    rest = dict(attributes)
    identifier = rest.pop("occi.core.id", None)
    if not isinstance(identifier, str):
        raise ValueError("GFD.225 needs occi.core.id to render an entity")
    out: dict[str, Any] = {"kind": kind or LINK}
    if mixins:
        out["mixins"] = list(mixins)
    out["id"] = identifier
    for key in ("title", "summary"):
        if f"occi.core.{key}" in rest:
            out[key] = rest.pop(f"occi.core.{key}")
    if link:
        out["source"] = _end(rest, "source", source, base)
        out["target"] = _end(rest, "target", None, base)
    if rest:
        out["attributes"] = rest
    return out


def _resource_json(entity: Entity, location: str, base: str) -> dict[str, Any]:
    out = _entity_json(entity.kind, entity.mixins, entity.attributes, link=False, base=base)
    if entity.actions:
        out["actions"] = list(entity.actions)
    if entity.links:
        out["links"] = [
            _entity_json(x.kind, x.mixins, x.attributes, link=True, source=location, base=base)
            for x in entity.links
        ]
    return out


def _is_link(entity: Entity) -> bool:
    """A link instance carries a target; a resource does not."""
    return "occi.core.target" in entity.attributes


def _any_json(entity: Entity, location: str, base: str) -> dict[str, Any]:
    if not _is_link(entity):
        return _resource_json(entity, location, base)
    out = _entity_json(entity.kind, entity.mixins, entity.attributes, link=True, base=base)
    if entity.actions:
        out["actions"] = list(entity.actions)
    return out


def _dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json(kind: str, document: Any) -> Rendered:
    return Rendered(kind, _dumps(document).encode("utf-8"), charset=None)


def _is_json(kind: str) -> bool:
    return kind in (OCCI_JSON, JSON)


# -- renderers ----------------------------------------------------------------------------------


def render_categories(
    categories: Iterable[Category], requested: str, *, base: str = ""
) -> Rendered:
    """The query interface (GET /-/): every category given, kinds, mixins and actions."""
    media = media_type(requested)
    kind = _format(media)
    items = tuple(categories)
    if _is_json(kind):
        return _json(
            kind,
            {
                "kinds": [_category_json(c, base) for c in items if isinstance(c, Kind)],
                "mixins": [_category_json(c, base) for c in items if isinstance(c, Mixin)],
                "actions": [_category_json(c, base) for c in items if isinstance(c, Action)],
            },
        )
    _no_uri_list(kind, "the query interface")
    return _text(media, [("Category", [_category_value(c, base) for c in items])])


def render_entity(entity: Entity, requested: str, *, location: str, base: str = "") -> Rendered:
    """One resource or link instance; ``location`` is its path, the base of its action links."""
    media = media_type(requested)
    kind = _format(media)
    if _is_json(kind):
        return _json(media, _any_json(entity, location, base))
    _no_uri_list(kind, "an entity")
    categories = [_category_ref(entity.kind, "kind")]
    categories.extend(_category_ref(m, "mixin") for m in entity.mixins)
    links = [_link_value(link, base) for link in entity.links]
    links.extend(_action_link(location, action, base) for action in entity.actions)
    attributes = [f"{n}={_value(v)}" for n, v in entity.attributes.items()]
    return _text(
        media, [("Category", categories), ("Link", links), ("X-OCCI-Attribute", attributes)]
    )


def render_collection(
    requested: str,
    locations: Sequence[str],
    entities: Sequence[Entity] | None = None,
    *,
    base: str = "",
) -> Rendered:
    """A collection: locations in the text renderings and uri-list, entities in JSON.

    JSON needs ``entities`` (one per location, same order); the text renderings ignore them.
    """
    media = media_type(requested)
    kind = _format(media)
    if _is_json(kind):
        if entities is None or len(entities) != len(locations):
            raise ValueError("JSON collections need one entity per location")
        pairs = list(zip(locations, entities, strict=True))
        resources = [_any_json(e, loc, base) for loc, e in pairs if not _is_link(e)]
        links = [_any_json(e, loc, base) for loc, e in pairs if _is_link(e)]
        document: dict[str, Any] = {"resources": resources} if resources or not links else {}
        if links:
            document["links"] = links
        return _json(kind, document)
    paths = [_at(base, location) for location in locations]
    if kind not in (TEXT_PLAIN, TEXT_OCCI, URI_LIST):
        raise ValueError(f"cannot render {kind!r}")
    if kind == URI_LIST:
        return Rendered(URI_LIST, "".join(f"{p}\r\n" for p in paths).encode("utf-8"))
    return _text(media, [("X-OCCI-Location", paths)])


def render_action(invocation: ActionInvocation, requested: str) -> Rendered:
    """An action invocation (what a client sends); used by tests and clients."""
    media = media_type(requested)
    kind = _format(media)
    if _is_json(kind):
        document: dict[str, Any] = {"action": invocation.action}
        if invocation.attributes:
            document["attributes"] = dict(invocation.attributes)
        return _json(kind, document)
    _no_uri_list(kind, "an action invocation")
    attributes = [f"{n}={_value(v)}" for n, v in invocation.attributes.items()]
    return _text(
        media,
        [
            ("Category", [_category_ref(invocation.action, "action")]),
            ("X-OCCI-Attribute", attributes),
        ],
    )


def _no_uri_list(kind: str, what: str) -> None:
    if kind == URI_LIST:
        raise OcciNotRenderable(f"text/uri-list renders collections only, not {what}")
    if kind not in (TEXT_PLAIN, TEXT_OCCI):
        raise ValueError(f"cannot render {kind!r}")


# -- JSON collections from rendered pieces --------------------------------------------------------


def json_resource(entity: Entity, location: str, *, base: str = "") -> str:
    """One resource as it appears in a JSON collection (a piece for :func:`render_resources`)."""
    return _dumps(_resource_json(entity, location, base))


def render_resources(requested: str, pieces: Sequence[str]) -> Rendered:
    """A JSON collection of resources from :func:`json_resource` pieces, in order: the same
    bytes :func:`render_collection` makes from the entities."""
    kind = _format(media_type(requested))
    if not _is_json(kind):
        raise ValueError(f"cannot render {kind!r} from JSON pieces")
    body = '{"resources":[' + ",".join(pieces) + "]}"
    return Rendered(kind, body.encode("utf-8"), charset=None)


class Pieces:
    """Rendered pieces (a compute's JSON) kept while what they were rendered from is unchanged.

    A piece is found by name (the resource id) and used only when the value it was rendered
    from equals the value read for this request, so a change shows at once and nothing is
    served that this request did not read. At most ``size`` are kept, least recently used
    dropped first; the app owns one.
    """

    __slots__ = ("_items", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[object, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str, source: object, build: Callable[[], str]) -> str:
        hit = self._items.get(name)
        if hit is not None and hit[0] == source:
            self._items.move_to_end(name)
            return hit[1]
        piece = build()
        if self.size > 0:
            self._items[name] = (source, piece)
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return piece
