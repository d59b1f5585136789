"""Parsers for OCCI requests: whatever the rendering, one neutral structure comes out.

Renderings read here:

- ``text/plain`` (also ``text/occi+plain``, GFD.229 s. 5): ``Category:``, ``Link:``,
  ``X-OCCI-Attribute:`` and ``X-OCCI-Location:`` lines in the body. A line starting with a space
  or tab continues the one before. Each line may hold several comma-separated values.
- ``text/occi`` (GFD.229 s. 6): the same fields as HTTP headers, repeated or comma-separated;
  the body is ignored.
- ``application/occi+json`` (also ``application/json``, GFD.225), checked against the GFD.225 JSON
  schema. The schema file beside this module is the published OCCI 1.2 schema, copied unchanged
  from the OGF OCCI working group (``/work/shared/fixtures/occi/occi-1.2-json-schema.json``).
  Loading it repairs its known slips in memory: references written ``#definitions/x`` instead
  of ``#/definitions/x``. The validators are built once, on first use, and cached read-only.
  Requests may leave out an entity's ``id`` (the server assigns one) and an inline link's
  ``source`` (the resource that carries it).
- ``text/uri-list`` (RFC 2483): locations only.

Attribute values keep their type: in the text renderings a quoted string is a string, ``true`` and
``false`` are booleans, digits are numbers, and any other bare token is read as a string. Inside
quotes ``\\"`` and ``\\\\`` escape themselves and ``\\n``, ``\\r``, ``\\t`` stand for the control
characters (the text renderings have no other way to carry them).

The neutral structures hold every OCCI attribute in ``attributes``, ``occi.core.*`` included:
JSON's top-level ``id``, ``title``, ``summary``, ``source`` and ``target`` and the ``<target>`` and
``rel`` of a text ``Link`` become ``occi.core.id``, ``occi.core.title``, ``occi.core.summary``,
``occi.core.source``, ``occi.core.target`` (and ``.kind``), as GFD.229 names them.

Errors: malformed input raises OcciParseError (400) with a short text naming the line or header;
input over a limit raises OcciTooLarge (413); an unknown media type OcciUnsupportedMediaType (415).
:func:`validate_entity` then checks a parsed entity against a :class:`Registry`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Literal

from frontends.occi.categories import (
    LINK,
    TERM_RE,
    Action,
    Attribute,
    AttrType,
    AttrValue,
    Category,
    Kind,
    Mixin,
    Mode,
    OcciParseError,
    OcciTooLarge,
    OcciUnsupportedMediaType,
    OcciValidationError,
    Registry,
    split_type_id,
)

TEXT_PLAIN = "text/plain"
TEXT_OCCI_PLAIN = "text/occi+plain"
TEXT_OCCI = "text/occi"
URI_LIST = "text/uri-list"
OCCI_JSON = "application/occi+json"
JSON = "application/json"

TEXT_BODY_TYPES = frozenset({TEXT_PLAIN, TEXT_OCCI_PLAIN})
JSON_TYPES = frozenset({OCCI_JSON, JSON})
PARSEABLE = frozenset({TEXT_PLAIN, TEXT_OCCI_PLAIN, TEXT_OCCI, URI_LIST, OCCI_JSON, JSON})

#: Limits for the app to enforce too (aiohttp ``client_max_size`` = MAX_BODY_BYTES); 413 over.
MAX_BODY_BYTES = 1024 * 1024
#: One body line or header value; room for 16 KiB of user data after base64.
MAX_LINE_LENGTH = 32 * 1024
MAX_ATTRIBUTES = 256
MAX_CATEGORIES = 128
MAX_LINKS = 64
MAX_LOCATIONS = 1000


@dataclass(frozen=True)
class Limits:
    """Size limits for one request; the defaults are the module constants."""

    body_bytes: int = MAX_BODY_BYTES
    line_length: int = MAX_LINE_LENGTH
    attributes: int = MAX_ATTRIBUTES
    categories: int = MAX_CATEGORIES
    links: int = MAX_LINKS
    locations: int = MAX_LOCATIONS


DEFAULT_LIMITS = Limits()

Headers = Iterable[tuple[str, str]]


# -- the neutral structures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A link carried inside a resource; ``location`` is its own path (``self=``), if known.

    ``kind`` is None when a text ``Link`` names no category: the app picks one from the target.
    """

    kind: str | None = LINK
    mixins: tuple[str, ...] = ()
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    location: str | None = None

    @property
    def target(self) -> str | None:
        value = self.attributes.get("occi.core.target")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Entity:
    """A resource or link instance: its kind, mixins, attributes, inline links and actions."""

    kind: str
    mixins: tuple[str, ...] = ()
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    actions: tuple[str, ...] = ()

    @property
    def id(self) -> str | None:
        value = self.attributes.get("occi.core.id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ActionInvocation:
    """An action to trigger (POST ...?action=term) and its attributes."""

    action: str
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)

    @property
    def term(self) -> str:
        return split_type_id(self.action)[1]


@dataclass(frozen=True)
class CategoryRef:
    """A category named in a request (a query filter, a DELETE /-/): scheme, term, class."""

    scheme: str
    term: str
    cls: Literal["kind", "mixin", "action"] | None = None

    @property
    def type_id(self) -> str:
        return self.scheme + self.term


# -- entry points -------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``text/plain; charset=utf-8`` -> ``text/plain``; '' when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_entity(
    content_type: str | None, body: bytes, headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> Entity:
    """One entity (POST to a collection, PUT, POST partial update)."""
    entities = parse_entities(content_type, body, headers, limits=limits)
    if len(entities) != 1:
        raise OcciParseError(f"expected one entity, got {len(entities)}")
    return entities[0]


def parse_entities(
    content_type: str | None, body: bytes, headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> tuple[Entity, ...]:
    """Entities; JSON may carry a collection, the text renderings carry exactly one."""
    kind = _request_type(content_type, body, limits)
    if kind in JSON_TYPES:
        return _entities_from_json(_load_json(body), limits)
    if kind == URI_LIST:
        raise OcciUnsupportedMediaType("text/uri-list carries locations, not entities")
    return (_entity_from_text(_collect(kind, body, headers, limits)),)


def parse_action(
    content_type: str | None,
    body: bytes,
    headers: Headers = (),
    *,
    expected_term: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ActionInvocation:
    """An action invocation; ``expected_term`` is the ``?action=`` value it must match."""
    kind = _request_type(content_type, body, limits)
    if kind in JSON_TYPES:
        doc = _load_json(body)
        _check_schema(doc, "action_invocation")
        attributes = doc.get("attributes", {})
        _count(len(attributes), limits.attributes, "attributes")
        invocation = ActionInvocation(_type_id(doc["action"], "action"), attributes)
    elif kind == URI_LIST:
        raise OcciUnsupportedMediaType("text/uri-list cannot carry an action invocation")
    else:
        invocation = _action_from_text(_collect(kind, body, headers, limits))
    if expected_term is not None and invocation.term != expected_term:
        raise OcciParseError(f"?action={expected_term} but the body invokes {invocation.term}")
    return invocation


def parse_categories(
    content_type: str | None, body: bytes, headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> tuple[Category, ...]:
    """Full category renderings (a query interface answer, mixin definitions)."""
    kind = _request_type(content_type, body, limits)
    if kind in JSON_TYPES:
        return _categories_from_json(_load_json(body), limits)
    if kind == URI_LIST:
        raise OcciUnsupportedMediaType("text/uri-list cannot carry categories")
    fields = _collect(kind, body, headers, limits)
    _refuse(fields, "links", "attributes", "locations")
    return tuple(
        _category_from_text(_category(e, w, need_class=True)) for w, e in fields.categories
    )


def parse_mixins(
    content_type: str | None, body: bytes, headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> tuple[Mixin, ...]:
    """User-defined mixin definitions (POST /-/); each needs a location."""
    kind = _request_type(content_type, body, limits)
    if kind in JSON_TYPES:
        doc = _load_json(body)
        if isinstance(doc, dict) and "term" in doc:
            _check_schema(doc, "mixin")
            doc = {"mixins": [doc]}
        categories = _categories_from_json(doc, limits)
    else:
        categories = parse_categories(content_type, body, headers, limits=limits)
    mixins = tuple(c for c in categories if isinstance(c, Mixin))
    if len(mixins) != len(categories) or not mixins:
        raise OcciParseError("expected one or more Category renderings with class mixin")
    for mixin in mixins:
        if mixin.location is None:
            raise OcciParseError(f"mixin {mixin.type_id} has no location")
    return mixins


def parse_category_filter(
    content_type: str | None, body: bytes, headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> tuple[CategoryRef, ...]:
    """Categories named by a query-interface GET (in headers, GFD.223 s. 6.1) or DELETE /-/."""
    kind = media_type(content_type)
    if kind in JSON_TYPES and body.strip():
        doc = _load_json(_checked(body, limits))
        if isinstance(doc, dict) and isinstance(doc.get("term"), str):
            scheme = doc.get("scheme")  # one category named by scheme and term (DELETE /-/)
            if not isinstance(scheme, str):
                raise OcciParseError("a category needs a scheme")
            _type_id(scheme + doc["term"], "category")
            return (CategoryRef(scheme, doc["term"]),)
        found = _categories_from_json(doc, limits)
        return tuple(CategoryRef(c.scheme, c.term, c.cls) for c in found)
    pairs = list(_collect(TEXT_OCCI, b"", headers, limits).categories)
    if kind in TEXT_BODY_TYPES and body.strip():
        pairs.extend(_collect(kind, _checked(body, limits), (), limits).categories)
    refs = [_category(element, where, need_class=False) for where, element in pairs]
    _count(len(refs), limits.categories, "categories")
    return tuple(CategoryRef(r.scheme, r.term, r.cls) for r in refs)


def parse_attribute_filter(
    headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> dict[str, AttrValue]:
    """Attribute values named by a collection GET (``X-OCCI-Attribute`` headers) to filter by."""
    return _attributes(_collect(TEXT_OCCI, b"", headers, limits).attributes)


def parse_locations(
    content_type: str | None, body: bytes, headers: Headers = (), *, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, ...]:
    """A list of locations (PUT or POST to a mixin collection): text renderings or uri-list."""
    kind = _request_type(content_type, body, limits)
    if kind in JSON_TYPES:
        raise OcciUnsupportedMediaType("GFD.225 has no location list; send entities instead")
    if kind == URI_LIST:
        return _uri_list(body, limits)
    fields = _collect(kind, body, headers, limits)
    _refuse(fields, "categories", "links", "attributes")
    return tuple(_location(e, w) for w, e in fields.locations)


def validate_entity(
    registry: Registry,
    entity: Entity,
    *,
    mode: Mode = "create",
    current: Mapping[str, object] | None = None,
) -> Entity:
    """The entity with attributes checked and normalised, inline links included.

    An inline link without a kind is checked as a core#link; its source is implied.
    """
    attributes = registry.validate(
        entity.kind, entity.mixins, entity.attributes, mode=mode, current=current
    )
    links = tuple(
        replace(
            link,
            attributes=registry.validate(link.kind or LINK, link.mixins, link.attributes),
        )
        for link in entity.links
    )
    return replace(entity, attributes=attributes, links=links)


# -- shared checks ------------------------------------------------------------------------------


def _request_type(content_type: str | None, body: bytes, limits: Limits) -> str:
    _checked(body, limits)
    kind = media_type(content_type)
    if not kind and not body.strip():
        return TEXT_OCCI
    if kind not in PARSEABLE:
        raise OcciUnsupportedMediaType(f"cannot parse media type {kind or '(none)'!r}")
    return kind


def _checked(body: bytes, limits: Limits) -> bytes:
    if len(body) > limits.body_bytes:
        raise OcciTooLarge(f"body over {limits.body_bytes} bytes")
    return body


def _count(number: int, limit: int, what: str) -> None:
    if number > limit:
        raise OcciTooLarge(f"more than {limit} {what} in one request")


def _type_id(value: str, what: str) -> str:
    try:
        split_type_id(value)
    except OcciValidationError as exc:
        raise OcciParseError(f"{what}: {exc.message}") from None
    return value


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise OcciParseError("body is not UTF-8") from None


# -- text renderings: fields and their values ---------------------------------------------------

_FIELDS = {
    "category": "categories",
    "link": "links",
    "x-occi-attribute": "attributes",
    "x-occi-location": "locations",
}


@dataclass
class _Fields:
    """Raw field values in order, each with where it came from (for error texts)."""

    categories: list[tuple[str, str]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    attributes: list[tuple[str, str]] = field(default_factory=list)
    locations: list[tuple[str, str]] = field(default_factory=list)


def _collect(kind: str, body: bytes, headers: Headers, limits: Limits) -> _Fields:
    fields = _Fields()
    if kind == TEXT_OCCI:
        for name, value in headers:
            key = _FIELDS.get(name.strip().lower())
            if key is not None:
                _add(fields, key, value, f"header {name.strip()}", limits)
        return fields
    for where, name, value in _lines(_decode(body), limits):
        key = _FIELDS.get(name.lower())
        if key is None:
            raise OcciParseError(f"{where}: unknown field {name[:40]!r}")
        _add(fields, key, value, where, limits)
    return fields


def _lines(text: str, limits: Limits) -> list[tuple[str, str, str]]:
    """``(where, name, value)`` per logical line; folded lines joined."""
    out: list[tuple[str, str, str]] = []
    for number, line in enumerate(re.split(r"\r?\n", text), start=1):
        where = f"line {number}"
        if len(line) > limits.line_length:
            raise OcciTooLarge(f"{where}: longer than {limits.line_length} characters")
        if not line.strip():
            continue
        if line[0] in " \t":
            if not out:
                raise OcciParseError(f"{where}: continuation without a field")
            last = out[-1]
            out[-1] = (last[0], last[1], last[2] + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not TERM_RE.fullmatch(name.strip()):
            raise OcciParseError(f"{where}: expected 'Name: value', got {line[:60]!r}")
        out.append((where, name.strip(), value.strip()))
    return out


#: the shape nearly every client sends (``term; scheme="...#"; class="..."``), read in one match;
#: anything else (other parameters, escapes, other spellings) takes the general path
_PLAIN_CATEGORY_RE = re.compile(
    r'([A-Za-z0-9][A-Za-z0-9._-]*)\s*;\s*scheme\s*=\s*"([^"\\\s]*#)"'
    r'\s*;\s*class\s*=\s*"(kind|mixin|action)"'
)


def _add(fields: _Fields, key: str, value: str, where: str, limits: Limits) -> None:
    if len(value) > limits.line_length:
        raise OcciTooLarge(f"{where}: longer than {limits.line_length} characters")
    target: list[tuple[str, str]] = getattr(fields, key)
    plain = value.strip()
    if key == "categories" and _PLAIN_CATEGORY_RE.fullmatch(plain):
        target.append((where, plain))  # one plain Category: nothing to split
    else:
        target.extend((where, element) for element in _split(value, ",", where) if element)
    _count(len(target), getattr(limits, key), key)


_QUOTED = r'"(?:[^"\\\r\n]++|\\[^\r\n])*+"'
_CHUNK = re.compile(_QUOTED + r'|<[^<>"\r\n]*>|[^"<,;]+|.', re.DOTALL)
_QUOTED_RE = re.compile(_QUOTED)
_TOKEN_RE = re.compile(r'[^\s",;\\]+')
_PARAM_RE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*=(.*)", re.DOTALL)
_INT_RE = re.compile(r"-?[0-9]+")
_FLOAT_RE = re.compile(r"-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _split(value: str, separator: str, where: str) -> list[str]:
    """Split on ``separator`` outside quoted strings and ``<...>``; parts stripped."""
    parts: list[str] = []
    current: list[str] = []
    for match in _CHUNK.finditer(value):
        chunk = match.group()
        if chunk == separator:
            parts.append("".join(current).strip())
            current = []
        elif chunk == '"':
            raise OcciParseError(f"{where}: unterminated quoted string")
        elif chunk == "<" and not "".join(current).strip():
            raise OcciParseError(f"{where}: '<' without '>'")
        else:
            current.append(chunk)
    parts.append("".join(current).strip())
    return parts


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), quoted[1:-1])


def _value(raw: str, where: str, name: str) -> AttrValue:
    """A typed value: quoted string, boolean, integer, float or bare token (a string)."""
    if raw.startswith('"'):
        if not _QUOTED_RE.fullmatch(raw):
            raise OcciParseError(f"{where}: bad quoted value for {name}")
        return _unquote(raw)
    if raw in ("true", "false"):
        return raw == "true"
    if _INT_RE.fullmatch(raw):
        return int(raw)
    if _FLOAT_RE.fullmatch(raw):
        number = float(raw)
        if not math.isfinite(number):
            raise OcciParseError(f"{where}: {name} is not a finite number")
        return number
    if _TOKEN_RE.fullmatch(raw):
        return raw
    raise OcciParseError(f"{where}: bad value for {name}: {raw[:60]!r}")


def _params(element: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """``head; a=1; b="x"`` -> ``("head", [("a", '1'), ("b", '"x"')])`` with raw values."""
    head, *rest = _split(element, ";", where)
    params: list[tuple[str, str]] = []
    for part in rest:
        if not part:
            continue
        match = _PARAM_RE.fullmatch(part)
        if match is None:
            raise OcciParseError(f"{where}: malformed parameter {part[:60]!r}")
        params.append((match.group(1).lower(), match.group(2).strip()))
    return head, params


def _text(raw: str, where: str, name: str) -> str:
    value = _value(raw, where, name)
    if not isinstance(value, str):
        return raw
    return value


# -- text renderings: categories ----------------------------------------------------------------


@dataclass(frozen=True)
class _CategoryText:
    scheme: str
    term: str
    cls: Literal["kind", "mixin", "action"] | None
    params: Mapping[str, str]
    where: str

    @property
    def type_id(self) -> str:
        return self.scheme + self.term


_CLASSES: dict[str, Literal["kind", "mixin", "action"]] = {
    "kind": "kind",
    "mixin": "mixin",
    "action": "action",
}
_CATEGORY_PARAMS = frozenset(
    {"scheme", "class", "title", "rel", "location", "attributes", "actions"}
)


def _category(element: str, where: str, *, need_class: bool) -> _CategoryText:
    plain = _PLAIN_CATEGORY_RE.fullmatch(element)
    if plain is not None:
        term, scheme, cls = plain.groups()
        return _CategoryText(scheme, term, _CLASSES[cls], {"scheme": scheme, "class": cls}, where)
    return _any_category(element, where, need_class=need_class)


def _any_category(element: str, where: str, *, need_class: bool) -> _CategoryText:
    term, raw = _params(element, where)
    if not TERM_RE.fullmatch(term):
        raise OcciParseError(f"{where}: malformed Category term {term[:60]!r}")
    params: dict[str, str] = {}
    for key, value in raw:
        if key in params:
            raise OcciParseError(f"{where}: Category {term} repeats {key}")
        if key in _CATEGORY_PARAMS:
            params[key] = _text(value, where, key)
    scheme = params.get("scheme", "")
    if not scheme.endswith("#") or any(c.isspace() for c in scheme):
        raise OcciParseError(f"{where}: Category {term} needs a scheme ending in '#'")
    cls = _CLASSES.get(params.get("class", "").lower())
    if cls is None and (need_class or "class" in params):
        raise OcciParseError(f"{where}: Category {term} needs class kind, mixin or action")
    return _CategoryText(scheme, term, cls, params, where)


_ATTR_DEF_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\{([a-z ]*)\})?")


def _attribute_defs(text: str, where: str) -> tuple[Attribute, ...]:
    out = []
    for word in re.findall(r"[^\s{]+(?:\{[^}]*\})?", text):
        match = _ATTR_DEF_RE.fullmatch(word)
        if match is None:
            raise OcciParseError(f"{where}: malformed attribute definition {word[:60]!r}")
        props = set((match.group(2) or "").split())
        if not props <= {"immutable", "required"}:
            raise OcciParseError(f"{where}: unknown attribute property in {word[:60]!r}")
        out.append(
            Attribute(
                name=match.group(1),
                mutable="immutable" not in props,
                required="required" in props,
            )
        )
    return tuple(out)


def _identifiers(text: str, where: str) -> tuple[str, ...]:
    return tuple(_type_id(word, where) for word in text.split())


def _category_from_text(cat: _CategoryText) -> Category:
    p, where = cat.params, cat.where
    title = p.get("title", "")
    attributes = _attribute_defs(p.get("attributes", ""), where)
    actions = _identifiers(p.get("actions", ""), where)
    rel = _identifiers(p.get("rel", ""), where)
    location = p.get("location")
    if cat.cls == "action":
        return Action(scheme=cat.scheme, term=cat.term, title=title, attributes=attributes)
    if cat.cls == "kind":
        return Kind(
            scheme=cat.scheme,
            term=cat.term,
            title=title,
            attributes=attributes,
            actions=actions,
            parent=rel[0] if rel else None,
            location=location,
        )
    return Mixin(
        scheme=cat.scheme,
        term=cat.term,
        title=title,
        attributes=attributes,
        actions=actions,
        depends=rel,
        location=location,
    )


# -- text renderings: entities, actions, locations ----------------------------------------------


def _refuse(fields: _Fields, *names: str) -> None:
    """OcciParseError when any of the named fields is present."""
    for name in names:
        found: list[tuple[str, str]] = getattr(fields, name)
        if found:
            raise OcciParseError(f"{found[0][0]}: unexpected {name} here")


def _attributes(pairs: Sequence[tuple[str, str]]) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    for where, element in pairs:
        match = _PARAM_RE.fullmatch(element)
        if match is None:
            raise OcciParseError(f"{where}: malformed attribute {element[:60]!r}")
        name = match.group(1)
        if name in out:
            raise OcciParseError(f"{where}: attribute {name} given twice")
        out[name] = _value(match.group(2).strip(), where, name)
    return out


def _link(element: str, where: str) -> Link | str:
    """An inline link, or the action identifier of an action link."""
    head, raw = _params(element, where)
    if not (head.startswith("<") and head.endswith(">")) or not head[1:-1].strip():
        raise OcciParseError(f"{where}: a Link starts with <URI>")
    uri = head[1:-1].strip()
    params = {k: _text(v, where, k) for k, v in raw if k in ("rel", "self", "category")}
    rel = _identifiers(params.get("rel", ""), where)
    if "?action=" in uri:
        if len(rel) != 1:
            raise OcciParseError(f"{where}: an action link needs one rel")
        return rel[0]
    attributes: dict[str, AttrValue] = {"occi.core.target": uri}
    if rel:
        attributes["occi.core.target.kind"] = rel[0]
    attributes.update(_attributes([(where, f"{k}={v}") for k, v in raw if k not in params]))
    categories = _identifiers(params.get("category", ""), where)
    return Link(
        kind=categories[0] if categories else None,
        mixins=categories[1:],
        attributes=attributes,
        location=params.get("self"),
    )


def _entity_from_text(fields: _Fields) -> Entity:
    _refuse(fields, "locations")
    kinds: list[str] = []
    mixins: list[str] = []
    for where, element in fields.categories:
        cat = _category(element, where, need_class=True)
        if cat.cls == "action":
            raise OcciParseError(f"{where}: an action Category in an entity rendering")
        (kinds if cat.cls == "kind" else mixins).append(cat.type_id)
    if len(kinds) != 1:
        raise OcciParseError(f"expected one Category with class kind, got {len(kinds)}")
    links: list[Link] = []
    actions: list[str] = []
    for where, element in fields.links:
        found = _link(element, where)
        if isinstance(found, Link):
            links.append(found)
        else:
            actions.append(found)
    attributes = _attributes(fields.attributes)
    return Entity(kinds[0], tuple(mixins), attributes, tuple(links), tuple(actions))


def _action_from_text(fields: _Fields) -> ActionInvocation:
    _refuse(fields, "links", "locations")
    if len(fields.categories) != 1:
        raise OcciParseError("an action invocation has exactly one Category")
    where, element = fields.categories[0]
    cat = _category(element, where, need_class=True)
    if cat.cls != "action":
        raise OcciParseError(f"{where}: Category {cat.term} is not an action")
    return ActionInvocation(cat.type_id, _attributes(fields.attributes))


_LOCATION_RE = re.compile(r'[^\s"<>\\]+')


def _location(value: str, where: str) -> str:
    if not _LOCATION_RE.fullmatch(value):
        raise OcciParseError(f"{where}: malformed location {value[:60]!r}")
    return value


def _uri_list(body: bytes, limits: Limits) -> tuple[str, ...]:
    out: list[str] = []
    for number, line in enumerate(re.split(r"\r?\n", _decode(body)), start=1):
        if len(line) > limits.line_length:
            raise OcciTooLarge(f"line {number}: longer than {limits.line_length} characters")
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(_location(line, f"line {number}"))
            _count(len(out), limits.locations, "locations")
    return tuple(out)


# -- JSON ---------------------------------------------------------------------------------------

SCHEMA_FILE = "occi-1.2-json-schema.json"


def load_schema() -> dict[str, Any]:
    """The GFD.225 schema shipped with this package, its ``#definitions/x`` slips repaired."""
    text = resources.files("frontends.occi").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = _repair(json.loads(text))
    return schema


def _repair(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _repair(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#definitions/"):
            out["$ref"] = "#/" + ref[1:]
        return out
    if isinstance(node, list):
        return [_repair(v) for v in node]
    return node


@functools.cache
def _validators() -> Mapping[str, Any]:
    """One validator per GFD.225 definition, relaxed for requests (see the module docstring)."""
    from jsonschema import Draft4Validator
    from referencing import Registry as SchemaRegistry
    from referencing import Resource
    from referencing.jsonschema import DRAFT4

    schema = load_schema()
    definitions = schema["definitions"]
    definitions["resource"]["required"] = ["kind"]
    definitions["link"]["required"] = ["kind", "target"]
    base = schema["id"]
    store = SchemaRegistry().with_resource(base, Resource.from_contents(schema, DRAFT4))
    return {
        name: Draft4Validator({"$ref": f"{base}#/definitions/{name}"}, registry=store)
        for name in definitions
    }


def _check_schema(doc: Any, definition: str) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validators()[definition].iter_errors(doc))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path)
        raise OcciParseError(f"JSON breaks GFD.225 at /{path}: {error.message[:160]}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise OcciParseError("JSON object with a repeated key")
    return out


def _no_constant(name: str) -> Any:
    raise OcciParseError(f"JSON value {name} is not allowed")


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(
            _decode(body), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (ValueError, RecursionError) as exc:
        raise OcciParseError(f"body is not JSON: {str(exc)[:120]}") from None


def _put_core(attributes: dict[str, AttrValue], name: str, value: Any) -> None:
    if name in attributes and attributes[name] != value:
        raise OcciParseError(f"{name} is given twice with different values")
    attributes[name] = value


def _endpoints(doc: Mapping[str, Any], attributes: dict[str, AttrValue]) -> None:
    for end in ("source", "target"):
        if end in doc:
            _put_core(attributes, f"occi.core.{end}", doc[end]["location"])
            if "kind" in doc[end]:
                _put_core(attributes, f"occi.core.{end}.kind", _type_id(doc[end]["kind"], end))


def _core_attributes(doc: Mapping[str, Any], limits: Limits) -> dict[str, AttrValue]:
    attributes: dict[str, AttrValue] = dict(doc.get("attributes", {}))
    _count(len(attributes), limits.attributes, "attributes")
    for key in ("id", "title", "summary"):
        if key in doc:
            _put_core(attributes, f"occi.core.{key}", doc[key])
    _endpoints(doc, attributes)
    return attributes


def _link_json(doc: Mapping[str, Any], limits: Limits) -> Link:
    attributes = _core_attributes(doc, limits)
    if "rel" in doc and "occi.core.target.kind" not in attributes:
        attributes["occi.core.target.kind"] = _type_id(doc["rel"], "rel")
    mixins = tuple(_type_id(m, "mixins") for m in doc.get("mixins", ()))
    return Link(_type_id(doc["kind"], "kind"), mixins, attributes)


def _entity_json(doc: Mapping[str, Any], limits: Limits) -> Entity:
    mixins = doc.get("mixins", ())
    links = doc.get("links", ())
    _count(len(mixins), limits.categories, "mixins")
    _count(len(links), limits.links, "links")
    attributes = _core_attributes(doc, limits)
    if "rel" in doc and "occi.core.target.kind" not in attributes:
        attributes["occi.core.target.kind"] = _type_id(doc["rel"], "rel")
    inline = tuple(_link_json(link, limits) for link in links)
    _count(
        len(attributes) + sum(len(x.attributes) for x in inline), limits.attributes, "attributes"
    )
    return Entity(
        kind=_type_id(doc["kind"], "kind"),
        mixins=tuple(_type_id(m, "mixins") for m in mixins),
        attributes=attributes,
        links=inline,
        actions=tuple(_type_id(a, "actions") for a in doc.get("actions", ())),
    )


def _entities_from_json(doc: Any, limits: Limits) -> tuple[Entity, ...]:
    if isinstance(doc, dict) and "kind" in doc:
        _check_schema(doc, "link" if "source" in doc or "target" in doc else "resource")
        return (_entity_json(doc, limits),)
    if isinstance(doc, dict) and doc and set(doc) <= {"resources", "links"}:
        _check_schema(doc, "model")
        items = [*doc.get("resources", ()), *doc.get("links", ())]
        _count(len(items), limits.locations, "entities")
        return tuple(_entity_json(item, limits) for item in items)
    raise OcciParseError("expected a JSON resource, link or collection of them")


_DESCRIPTION_KEYS = frozenset({"mutable", "required", "type", "default", "description", "pattern"})
_JSON_TYPES = {
    "string": AttrType.STRING,
    "number": AttrType.NUMBER,
    "boolean": AttrType.BOOLEAN,
    "array": AttrType.ARRAY,
    "object": AttrType.OBJECT,
}


def _bound(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise OcciParseError(f"attribute {name}: pattern minimum and maximum must be numbers")


def _attribute_json(name: str, desc: Mapping[str, Any]) -> Attribute:
    """An attribute description; ``pattern`` (a JSON schema) refines enum and integer types."""
    pattern = desc.get("pattern") or {}
    kind = _JSON_TYPES.get(desc.get("type", "string"))
    if kind is None:
        raise OcciParseError(f"attribute {name}: unknown type {str(desc.get('type'))[:40]!r}")
    values = pattern.get("enum", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise OcciParseError(f"attribute {name}: pattern enum must list strings")
    if kind is AttrType.STRING and values:
        kind = AttrType.ENUM
    if kind is AttrType.NUMBER and pattern.get("type") == "integer":
        kind = AttrType.INTEGER
    numeric = kind in (AttrType.NUMBER, AttrType.INTEGER)
    try:
        return Attribute(
            name=name,
            type=kind,
            mutable=desc.get("mutable", False),
            required=desc.get("required", False),
            default=desc.get("default"),
            description=desc.get("description", ""),
            enum=tuple(values) if kind is AttrType.ENUM else (),
            minimum=_bound(name, pattern.get("minimum")) if numeric else None,
            maximum=_bound(name, pattern.get("maximum")) if numeric else None,
        )
    except (ValueError, OcciValidationError) as exc:
        raise OcciParseError(f"attribute {name}: {exc}") from None


def _attributes_json(descriptions: Mapping[str, Any], prefix: str = "") -> list[Attribute]:
    """Attribute descriptions; nested namespaces (``{"occi": {"x": {...}}}``) are flattened."""
    out: list[Attribute] = []
    for key, desc in descriptions.items():
        name = prefix + key
        if not isinstance(desc, dict):
            raise OcciParseError(f"attribute {name}: expected an attribute description")
        if set(desc) <= _DESCRIPTION_KEYS and not isinstance(desc.get("type", ""), dict):
            out.append(_attribute_json(name, desc))
        else:
            out.extend(_attributes_json(desc, name + "."))
    return out


def _category_json(doc: Mapping[str, Any], cls: str) -> Category:
    common: dict[str, Any] = {
        "scheme": doc["scheme"],
        "term": doc["term"],
        "title": doc.get("title", ""),
        "attributes": tuple(_attributes_json(doc.get("attributes", {}))),
    }
    ids = {
        k: tuple(_type_id(v, k) for v in doc.get(k, ())) for k in ("actions", "depends", "applies")
    }
    try:
        if cls == "actions":
            return Action(**common)
        if cls == "kinds":
            parent = doc.get("parent")
            return Kind(
                **common,
                actions=ids["actions"],
                parent=None if parent is None else _type_id(parent, "parent"),
                location=doc.get("location"),
            )
        return Mixin(
            **common,
            actions=ids["actions"],
            depends=ids["depends"],
            applies=ids["applies"],
            location=doc.get("location"),
        )
    except ValueError as exc:
        raise OcciParseError(f"category {doc['scheme']}{doc['term']}: {exc}") from None


def _categories_from_json(doc: Any, limits: Limits) -> tuple[Category, ...]:
    if not isinstance(doc, dict) or not doc or not set(doc) <= {"kinds", "mixins", "actions"}:
        raise OcciParseError("expected a JSON object with kinds, mixins or actions")
    _check_schema(doc, "model")
    out: list[Category] = []
    for cls in ("kinds", "mixins", "actions"):
        out.extend(_category_json(item, cls) for item in doc.get(cls, ()))
    _count(len(out), limits.categories, "categories")
    return tuple(out)
