"""The OCCI category model: which kinds, mixins and actions exist, and which attributes are valid.

Facts come from the OGF documents: GFD.221 (core: entity, resource, link), GFD.224 (infrastructure:
compute, network, storage, their links, mixins and actions) and GFD.225 (attribute descriptions).
Everything here is frozen data plus one mutable object, the :class:`Registry`, which an app builds
with :func:`build_registry` and extends at run time with templates (each image an ``os_tpl`` mixin,
each flavor a ``resource_tpl`` mixin) and user-defined mixins (tags).

Decisions about errors (the app maps ``OcciError.status`` to the HTTP status, GFD.223 section 4):

- 400: anything wrong that the request shows by itself: syntax, JSON breaking GFD.225, an unknown
  category or attribute, a value of the wrong type, a missing required attribute, a mixin that does
  not apply to the kind, an immutable attribute set on creation.
- 409: the request conflicts with the *current state* of a resource, the meaning GFD.223 gives
  409: changing an immutable attribute of an existing entity, registering a category whose
  identifier or location is taken.
- 413: a request over one of the size limits in :mod:`frontends.occi.parse`.
- 415: a request body in a media type we do not parse.

Attribute mutability follows GFD.221: an immutable attribute cannot be changed by the client.
Two flags that the renderings do not carry say what that means when an entity is created:
``write_once`` attributes (``occi.core.id``, ``occi.compute.userdata``, a link's source and target)
may be given at creation and never changed; ``server_assigned`` attributes are required of the
instance but the provider fills them when the client leaves them out (a MAC address, a device id).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from broker.errors import InvalidRequest, NotFound

# -- errors -------------------------------------------------------------------------------------


class OcciError(InvalidRequest):
    """A request the OCCI frontend refuses; ``status`` is the HTTP status to answer with."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message, resource="occi", field=field)


class OcciParseError(OcciError):
    """The body or headers do not follow the rendering (GFD.225, GFD.229): 400."""


class OcciValidationError(OcciError):
    """The request names unknown categories or attributes, or values of the wrong type: 400."""


class OcciConflict(OcciError):
    """The request conflicts with the current state of a resource or of the registry: 409."""

    status: ClassVar[int] = 409


class OcciTooLarge(OcciError):
    """The request is over a size limit: 413."""

    status: ClassVar[int] = 413


class OcciUnsupportedMediaType(OcciError):
    """The request body is in a media type we do not parse: 415."""

    status: ClassVar[int] = 415


class OcciNotRenderable(OcciError):
    """The requested media type cannot render this response (text/uri-list, GFD.229 s. 6): 400."""


# -- identifiers --------------------------------------------------------------------------------

#: A category term (GFD.229 ABNF) and an attribute name: alphanumerics, ``-``, ``_`` and ``.``.
TERM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ATTRIBUTE_NAME_RE = TERM_RE
#: A location: an absolute path ending in ``/`` (a Kind or Mixin collection).
LOCATION_RE = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@%-]+/)*")

OGF_BASE = "http://schemas.ogf.org/occi/"
CORE = OGF_BASE + "core#"
INFRA = OGF_BASE + "infrastructure#"
COMPUTE_ACTIONS = OGF_BASE + "infrastructure/compute/action#"
NETWORK_ACTIONS = OGF_BASE + "infrastructure/network/action#"
STORAGE_ACTIONS = OGF_BASE + "infrastructure/storage/action#"
NETWORK_MIXINS = OGF_BASE + "infrastructure/network#"
NETWORKINTERFACE_MIXINS = OGF_BASE + "infrastructure/networkinterface#"
CREDENTIALS_MIXINS = OGF_BASE + "infrastructure/credentials#"
COMPUTE_MIXINS = OGF_BASE + "infrastructure/compute#"

ENTITY, RESOURCE, LINK = CORE + "entity", CORE + "resource", CORE + "link"
COMPUTE, NETWORK, STORAGE = INFRA + "compute", INFRA + "network", INFRA + "storage"
NETWORKINTERFACE, STORAGELINK = INFRA + "networkinterface", INFRA + "storagelink"
OS_TPL, RESOURCE_TPL = INFRA + "os_tpl", INFRA + "resource_tpl"
IPNETWORK = NETWORK_MIXINS + "ipnetwork"
IPNETWORKINTERFACE = NETWORKINTERFACE_MIXINS + "ipnetworkinterface"
SSH_KEY = CREDENTIALS_MIXINS + "ssh_key"
USER_DATA = COMPUTE_MIXINS + "user_data"

#: Our own schemes for the templates the registry makes from images and flavors.
DEFAULT_OS_TPL_SCHEME = "http://schemas.cloudbroker.org/occi/templates/os#"
DEFAULT_RESOURCE_TPL_SCHEME = "http://schemas.cloudbroker.org/occi/templates/resource#"


def type_id(scheme: str, term: str) -> str:
    """The type identifier of a category: scheme and term concatenated (GFD.221)."""
    return scheme + term


def split_type_id(identifier: str) -> tuple[str, str]:
    """``(scheme, term)`` of a type identifier; the scheme keeps its trailing ``#``."""
    scheme, sep, term = identifier.rpartition("#")
    if not sep or not scheme or not TERM_RE.fullmatch(term):
        raise OcciValidationError(f"not an OCCI type identifier: {identifier[:200]!r}")
    return scheme + "#", term


# -- attributes ---------------------------------------------------------------------------------

AttrValue = str | int | float | bool | list[Any] | dict[str, Any]


class AttrType(StrEnum):
    """Attribute value types; GFD.225 renders INTEGER as number and ENUM as string."""

    STRING = "string"
    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    ENUM = "enum"
    ARRAY = "array"
    OBJECT = "object"


@dataclass(frozen=True)
class Attribute:
    """An attribute definition (GFD.221 Attribute, GFD.225 attribute description)."""

    name: str
    type: AttrType = AttrType.STRING
    mutable: bool = False
    required: bool = False
    default: AttrValue | None = None
    description: str = ""
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    write_once: bool = field(default=False, compare=False)
    server_assigned: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not ATTRIBUTE_NAME_RE.fullmatch(self.name):
            raise ValueError(f"bad attribute name {self.name!r}")
        if (self.type is AttrType.ENUM) != bool(self.enum):
            raise ValueError(f"{self.name}: enum values go with type enum, and only there")
        if self.default is not None:
            if self.type in (AttrType.ARRAY, AttrType.OBJECT):
                raise ValueError(f"{self.name}: GFD.225 allows no default for {self.type}")
            object.__setattr__(self, "default", check_value(self, self.default))

    @property
    def settable_on_create(self) -> bool:
        return self.mutable or self.write_once


_TYPE_WORDS = {
    AttrType.STRING: "a string",
    AttrType.NUMBER: "a number",
    AttrType.INTEGER: "an integer",
    AttrType.BOOLEAN: "true or false",
    AttrType.ARRAY: "an array",
    AttrType.OBJECT: "an object",
}


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"a {type(value).__name__}"


def check_value(attr: Attribute, value: object) -> AttrValue:
    """The value normalised to the attribute's type, or OcciValidationError naming the attribute."""
    normal = _normalise(attr, value)
    if normal is None:
        want = _TYPE_WORDS.get(attr.type) or "one of " + ", ".join(attr.enum)
        raise OcciValidationError(
            f"attribute {attr.name}: expected {want}, got {_describe(value)}", field=attr.name
        )
    if isinstance(normal, int | float) and not isinstance(normal, bool):
        low, high = attr.minimum, attr.maximum
        if (low is not None and normal < low) or (high is not None and normal > high):
            raise OcciValidationError(
                f"attribute {attr.name}: {normal} is outside {low}..{high}", field=attr.name
            )
    return normal


def _normalise(attr: Attribute, value: object) -> AttrValue | None:
    """The value in the attribute's type, or None when it has another type."""
    kind = attr.type
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is AttrType.STRING:
        return value if isinstance(value, str) else None
    if kind is AttrType.ENUM:
        return value if isinstance(value, str) and value in attr.enum else None
    if kind is AttrType.BOOLEAN:
        return value if isinstance(value, bool) else None
    if kind is AttrType.INTEGER:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if is_number and isinstance(value, int) else None
    if kind is AttrType.NUMBER:
        if isinstance(value, int | float) and is_number and math.isfinite(value):
            return float(value)
        return None
    if kind is AttrType.ARRAY:
        return value if isinstance(value, list) else None
    return value if isinstance(value, dict) else None


# -- categories ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Category:
    scheme: str
    term: str
    title: str = ""
    attributes: tuple[Attribute, ...] = ()

    cls: ClassVar[Literal["kind", "mixin", "action"]]

    def __post_init__(self) -> None:
        if not self.scheme.endswith("#") or not TERM_RE.fullmatch(self.term):
            raise ValueError(f"bad category {self.scheme!r} {self.term!r}")

    @property
    def type_id(self) -> str:
        return self.scheme + self.term

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)


@dataclass(frozen=True, kw_only=True)
class Action(_Category):
    """An invocable operation (GFD.221 Action) and the attributes an invocation may carry."""

    cls: ClassVar[Literal["action"]] = "action"


@dataclass(frozen=True, kw_only=True)
class Kind(_Category):
    """The type of an entity; ``parent`` chains up to core#entity, ``location`` binds a path."""

    actions: tuple[str, ...] = ()
    parent: str | None = None
    location: str | None = None

    cls: ClassVar[Literal["kind"]] = "kind"


@dataclass(frozen=True, kw_only=True)
class Mixin(_Category):
    """Capabilities added to an entity; ``depends`` are related mixins, ``applies`` kinds."""

    actions: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    applies: tuple[str, ...] = ()
    location: str | None = None

    cls: ClassVar[Literal["mixin"]] = "mixin"


Category = Kind | Mixin | Action

#: What a validation is for: a new entity, a partial update (POST), a full replacement (PUT).
Mode = Literal["create", "update", "replace"]


# -- the registry -------------------------------------------------------------------------------


class Registry:
    """The categories one app serves: lookup, discovery filters and attribute validation."""

    def __init__(self, categories: Iterable[Category] = ()) -> None:
        self._by_id: dict[str, Category] = {}
        self._by_location: dict[str, str] = {}
        self._builtin: frozenset[str] = frozenset()
        #: mixin closures and attribute definitions already worked out, until the next add or
        #: remove (categories are immutable, so only those change them); every create of a
        #: compute asks for the same few
        self._closures: dict[tuple[str, ...], tuple[Mixin, ...]] = {}
        self._definitions: dict[tuple[str, tuple[str, ...]], Mapping[str, Attribute]] = {}
        for category in categories:
            self.add(category)

    def freeze_builtins(self) -> None:
        """Mark every category present now as built-in: never removable."""
        self._builtin = frozenset(self._by_id)

    # lookup

    def __contains__(self, identifier: object) -> bool:
        return identifier in self._by_id

    def __iter__(self) -> Iterator[Category]:
        return iter(tuple(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, identifier: str) -> Category | None:
        return self._by_id.get(identifier)

    def lookup(self, scheme: str, term: str) -> Category | None:
        return self._by_id.get(scheme + term)

    def by_location(self, location: str) -> Kind | Mixin | None:
        """The Kind or Mixin bound to a collection path (``/compute/``), if any."""
        found = self._by_id.get(self._by_location.get(location, ""))
        return found if isinstance(found, Kind | Mixin) else None

    def kind(self, identifier: str) -> Kind:
        found = self._by_id.get(identifier)
        if not isinstance(found, Kind):
            raise OcciValidationError(f"unknown kind {identifier[:200]}", field="kind")
        return found

    def mixin(self, identifier: str) -> Mixin:
        found = self._by_id.get(identifier)
        if not isinstance(found, Mixin):
            raise OcciValidationError(f"unknown mixin {identifier[:200]}", field="mixins")
        return found

    def action(self, identifier: str) -> Action:
        found = self._by_id.get(identifier)
        if not isinstance(found, Action):
            raise OcciValidationError(f"unknown action {identifier[:200]}", field="action")
        return found

    def kinds(self) -> tuple[Kind, ...]:
        return tuple(c for c in self._by_id.values() if isinstance(c, Kind))

    def mixins(self) -> tuple[Mixin, ...]:
        return tuple(c for c in self._by_id.values() if isinstance(c, Mixin))

    def actions(self) -> tuple[Action, ...]:
        return tuple(c for c in self._by_id.values() if isinstance(c, Action))

    def ancestors(self, kind: str) -> tuple[Kind, ...]:
        """The kind and its parents, nearest first (compute, resource, entity)."""
        chain: list[Kind] = []
        current: str | None = kind
        while current is not None and len(chain) < 32:
            found = self.kind(current)
            chain.append(found)
            current = found.parent
        return tuple(chain)

    def mixin_closure(self, mixins: Iterable[str]) -> tuple[Mixin, ...]:
        """The mixins and every mixin they depend on, each once, in discovery order."""
        key = tuple(mixins)
        found = self._closures.get(key)
        if found is None:
            found = self._closures[key] = self._closure(key)
        return found

    def _forget(self) -> None:
        self._closures.clear()
        self._definitions.clear()

    def _closure(self, mixins: tuple[str, ...]) -> tuple[Mixin, ...]:
        if len(self._closures) >= 4096:  # clients name mixins freely: keep the memo small
            self._forget()
        seen: dict[str, Mixin] = {}
        pending = list(mixins)
        while pending:
            identifier = pending.pop(0)
            if identifier not in seen:
                seen[identifier] = self.mixin(identifier)
                pending.extend(seen[identifier].depends)
        return tuple(seen.values())

    def is_template(self, identifier: str, base: str) -> bool:
        """True for a mixin that depends, directly or not, on ``base`` (OS_TPL, RESOURCE_TPL)."""
        found = self._by_id.get(identifier)
        if not isinstance(found, Mixin) or identifier == base:
            return False
        return any(m.type_id == base for m in self.mixin_closure([identifier]))

    def templates(self, base: str) -> tuple[Mixin, ...]:
        """Every mixin that depends on ``base``: the OS or resource templates on offer."""
        return tuple(m for m in self.mixins() if self.is_template(m.type_id, base))

    # changes

    def add(self, category: Category) -> None:
        """Register a category; OcciConflict when its identifier or location is taken."""
        identifier = category.type_id
        if identifier in self._by_id:
            raise OcciConflict(f"category {identifier} already exists")
        location = category.location if isinstance(category, Kind | Mixin) else None
        if location is not None:
            if not LOCATION_RE.fullmatch(location):
                raise OcciValidationError(
                    f"location {location[:200]!r} is not an absolute path ending in /",
                    field="location",
                )
            if location in self._by_location:
                raise OcciConflict(f"location {location} is already bound")
        self._check_references(category)
        self._forget()
        self._by_id[identifier] = category
        if location is not None:
            self._by_location[location] = identifier

    def _check_references(self, category: Category) -> None:
        names: list[str] = []
        if isinstance(category, Kind):
            if category.parent is not None:
                self.kind(category.parent)
            names.extend(category.actions)
        elif isinstance(category, Mixin):
            for identifier in category.depends:
                self.mixin(identifier)
            for identifier in category.applies:
                self.kind(identifier)
            names.extend(category.actions)
        for identifier in names:
            self.action(identifier)

    def remove_mixin(self, identifier: str) -> Mixin:
        """Remove a user-defined or template mixin; built-in categories stay."""
        found = self._by_id.get(identifier)
        if not isinstance(found, Mixin):
            raise NotFound(f"no mixin {identifier[:200]}", resource="mixin")
        if identifier in self._builtin:
            raise OcciValidationError(f"{identifier} is not a user-defined mixin")
        if any(identifier in m.depends for m in self.mixins()):
            raise OcciConflict(f"other mixins depend on {identifier}")
        self._forget()
        del self._by_id[identifier]
        if found.location is not None:
            self._by_location.pop(found.location, None)
        return found

    def add_user_mixin(self, mixin: Mixin) -> Mixin:
        """A client's mixin (POST /-/): own scheme, a location, no attributes or actions."""
        if mixin.scheme.startswith(OGF_BASE):
            raise OcciValidationError(f"the scheme {OGF_BASE} is reserved by OCCI", field="scheme")
        if mixin.location is None:
            raise OcciValidationError(f"mixin {mixin.type_id} needs a location", field="location")
        if mixin.attributes or mixin.actions:
            raise OcciValidationError("user-defined mixins carry no attributes or actions")
        self.add(mixin)
        return mixin

    def add_os_template(
        self, term: str, title: str, *, scheme: str = DEFAULT_OS_TPL_SCHEME
    ) -> Mixin:
        """An image offered as an OS template: depends on os_tpl, applies to compute."""
        mixin = Mixin(
            scheme=scheme,
            term=term,
            title=title,
            depends=(OS_TPL,),
            applies=(COMPUTE,),
            location=f"/mixin/os_tpl/{term}/",
        )
        self.add(mixin)
        return mixin

    def add_resource_template(
        self,
        term: str,
        title: str,
        *,
        defaults: Mapping[str, AttrValue] | None = None,
        scheme: str = DEFAULT_RESOURCE_TPL_SCHEME,
    ) -> Mixin:
        """A flavor offered as a resource template; ``defaults`` become attribute defaults.

        Names in ``defaults`` are compute attributes or CRTP ones (OCCI Compute Resource
        Templates Profile, e.g. ``occi.compute.ephemeral_storage.size``).
        """
        known = {a.name: a for k in self.ancestors(COMPUTE) for a in k.attributes}
        known.update({a.name: a for a in CRTP_ATTRIBUTES})
        attributes = []
        for name, value in (defaults or {}).items():
            if name not in known:
                raise ValueError(f"resource template {term}: unknown attribute {name}")
            attributes.append(replace(known[name], default=value))
        mixin = Mixin(
            scheme=scheme,
            term=term,
            title=title,
            attributes=tuple(attributes),
            depends=(RESOURCE_TPL,),
            applies=(COMPUTE,),
            location=f"/mixin/resource_tpl/{term}/",
        )
        self.add(mixin)
        return mixin

    # discovery

    def related(self, identifiers: Iterable[str]) -> tuple[Category, ...]:
        """The categories a query-interface filter selects (GFD.223 s. 6.1), in registry order.

        For each named category: itself, its actions, the kinds below it, the mixins that depend
        on it or apply to it (so os_tpl selects every OS template). Unknown names select nothing.
        """
        wanted: set[str] = set()
        for identifier in identifiers:
            if identifier in self._by_id:
                wanted.update(self._related_one(identifier))
        return tuple(c for c in self._by_id.values() if c.type_id in wanted)

    def _related_one(self, identifier: str) -> set[str]:
        found = self._by_id[identifier]
        out = {identifier}
        if isinstance(found, Kind | Mixin):
            out.update(found.actions)
        out.update(c.type_id for c in self._by_id.values() if self._below(c, identifier))
        return out

    def _below(self, category: Category, identifier: str) -> bool:
        """True when ``category`` is a kind under ``identifier`` or a mixin tied to it."""
        if isinstance(category, Kind):
            return any(k.type_id == identifier for k in self.ancestors(category.type_id))
        if isinstance(category, Mixin):
            closure = self.mixin_closure([category.type_id])
            return identifier in category.applies or any(m.type_id == identifier for m in closure)
        return False

    def actions_for(self, kind: str, mixins: Sequence[str] = ()) -> tuple[str, ...]:
        """Action identifiers an entity of this kind with these mixins exposes."""
        out: dict[str, None] = {}
        for category in self.ancestors(kind):
            out.update(dict.fromkeys(category.actions))
        for mixin in self.mixin_closure(mixins):
            out.update(dict.fromkeys(mixin.actions))
        return tuple(out)

    def attribute_definitions(
        self, kind: str, mixins: Sequence[str] = ()
    ) -> Mapping[str, Attribute]:
        """Every attribute an entity may carry; a mixin's definition overrides the kind's."""
        key = (kind, tuple(mixins))
        found = self._definitions.get(key)
        if found is None:
            if len(self._definitions) >= 4096:
                self._forget()
            found = self._definitions[key] = MappingProxyType(self._definitions_of(*key))
        return found

    def _definitions_of(self, kind: str, mixins: Sequence[str]) -> dict[str, Attribute]:
        defs: dict[str, Attribute] = {}
        for category in reversed(self.ancestors(kind)):
            defs.update({a.name: a for a in category.attributes})
        for mixin in reversed(self.mixin_closure(mixins)):
            defs.update({a.name: a for a in mixin.attributes})
        return defs

    def defaults(self, kind: str, mixins: Sequence[str] = ()) -> dict[str, AttrValue]:
        """Attribute defaults the kind and mixins define (GFD.225: used when not given)."""
        defs = self.attribute_definitions(kind, mixins)
        return {n: a.default for n, a in defs.items() if a.default is not None}

    # validation

    def check_mixins(self, kind: str, mixins: Sequence[str]) -> None:
        """Every mixin exists and applies to the kind (or to one of its parents)."""
        lineage = {k.type_id for k in self.ancestors(kind)}
        for mixin in self.mixin_closure(mixins):
            if mixin.applies and not lineage.intersection(mixin.applies):
                raise OcciValidationError(
                    f"mixin {mixin.type_id} does not apply to kind {kind}", field="mixins"
                )

    def validate(
        self,
        kind: str,
        mixins: Sequence[str],
        attributes: Mapping[str, object],
        *,
        mode: Mode = "create",
        current: Mapping[str, object] | None = None,
    ) -> dict[str, AttrValue]:
        """Check an entity's attributes and return them normalised (memory 2 -> 2.0).

        Unknown names, wrong types and missing required attributes are 400s. An immutable
        attribute is refused on creation (400) unless it is write-once; on update or replace
        it must equal the ``current`` value, else 409 (without ``current``, always 409).
        """
        found = self.kind(kind)
        if found.location is None:
            raise OcciValidationError(f"kind {kind} cannot be instantiated", field="kind")
        self.check_mixins(kind, mixins)
        defs = self.attribute_definitions(kind, mixins)
        out: dict[str, AttrValue] = {}
        for name, value in attributes.items():
            attr = defs.get(name)
            if attr is None:
                raise OcciValidationError(f"unknown attribute {name[:200]} for {kind}", field=name)
            out[name] = check_value(attr, value)
            self._check_mutability(attr, out[name], mode, current)
        if mode != "update":
            self._check_required(defs, out)
        return out

    @staticmethod
    def _check_mutability(
        attr: Attribute, value: AttrValue, mode: Mode, current: Mapping[str, object] | None
    ) -> None:
        if attr.mutable:
            return
        if mode == "create":
            if not attr.write_once:
                raise OcciValidationError(
                    f"attribute {attr.name} is immutable and set by the provider", field=attr.name
                )
        elif current is None or current.get(attr.name) != value:
            raise OcciConflict(f"attribute {attr.name} is immutable", field=attr.name)

    @staticmethod
    def _check_required(defs: Mapping[str, Attribute], given: Mapping[str, AttrValue]) -> None:
        for name, attr in defs.items():
            needed = attr.required and attr.settable_on_create and not attr.server_assigned
            if needed and attr.default is None and name not in given:
                raise OcciValidationError(f"attribute {name} is required", field=name)

    def validate_action(
        self,
        kind: str,
        mixins: Sequence[str],
        action: str,
        attributes: Mapping[str, object],
    ) -> dict[str, AttrValue]:
        """Check an action invocation on an entity; return its attributes normalised."""
        found = self.action(action)
        if action not in self.actions_for(kind, mixins):
            raise OcciValidationError(f"action {action} is not defined for {kind}", field="action")
        defs = {a.name: a for a in found.attributes}
        out: dict[str, AttrValue] = {}
        for name, value in attributes.items():
            attr = defs.get(name)
            if attr is None:
                raise OcciValidationError(
                    f"unknown attribute {name[:200]} for action {found.term}", field=name
                )
            out[name] = check_value(attr, value)
        self._check_required(defs, out)
        return out


# -- the OCCI 1.2 core and infrastructure model --------------------------------------------------

T = AttrType


def _a(
    name: str, kind: AttrType, description: str, *, mutable: bool = True, **flags: Any
) -> Attribute:
    """An attribute definition; mutable unless told otherwise (most GFD.224 attributes are)."""
    return Attribute(name=name, type=kind, description=description, mutable=mutable, **flags)


def _state(prefix: str, *values: str) -> tuple[Attribute, Attribute]:
    return (
        _a(f"{prefix}.state", T.ENUM, "Current state", mutable=False, required=True, enum=values),
        _a(f"{prefix}.state.message", T.STRING, "Why the instance is in its state", mutable=False),
    )


#: CRTP (OCCI Compute Resource Templates Profile) attributes a resource template may define.
CRTP_ATTRIBUTES = (
    _a("occi.compute.ephemeral_storage.size", T.NUMBER, "Ephemeral disk in GiB", minimum=0),
)


def _core() -> list[Category]:
    once: dict[str, Any] = {"mutable": False, "required": True, "write_once": True}
    entity = (
        _a("occi.core.id", T.STRING, "Identifier of the entity", server_assigned=True, **once),
        _a("occi.core.title", T.STRING, "Display name of the entity"),
    )
    link = (
        _a("occi.core.source", T.STRING, "Location of the source", server_assigned=True, **once),
        _a("occi.core.target", T.STRING, "Location of the target", **once),
        _a("occi.core.source.kind", T.STRING, "Kind of the source", mutable=False, write_once=True),
        _a("occi.core.target.kind", T.STRING, "Kind of the target", mutable=False, write_once=True),
    )
    return [
        Kind(scheme=CORE, term="entity", title="Entity", attributes=entity),
        Kind(
            scheme=CORE,
            term="resource",
            title="Resource",
            parent=ENTITY,
            location="/resource/",
            attributes=(_a("occi.core.summary", T.STRING, "Summary of the resource"),),
        ),
        Kind(
            scheme=CORE,
            term="link",
            title="Link",
            parent=ENTITY,
            location="/link/",
            attributes=link,
        ),
    ]


def _method(*values: str) -> Attribute:
    return _a("method", T.ENUM, "How to carry out the action", enum=values)


def _actions() -> list[Category]:
    def act(scheme: str, term: str, title: str, *attributes: Attribute) -> Action:
        return Action(scheme=scheme, term=term, title=title, attributes=attributes)

    c, n, s = COMPUTE_ACTIONS, NETWORK_ACTIONS, STORAGE_ACTIONS
    save_name = _a("name", T.STRING, "Name of the saved copy")
    return [
        act(c, "start", "Start the compute instance"),
        act(c, "stop", "Stop the compute instance", _method("graceful", "acpioff", "poweroff")),
        act(c, "restart", "Restart the compute instance", _method("graceful", "warm", "cold")),
        act(c, "suspend", "Suspend the compute instance", _method("hibernate", "suspend")),
        act(
            c, "save", "Save a copy of the compute instance", _method("hot", "deferred"), save_name
        ),
        act(n, "up", "Bring the network up"),
        act(n, "down", "Bring the network down"),
        act(s, "online", "Bring the storage online"),
        act(s, "offline", "Take the storage offline"),
    ]


def _compute() -> Kind:
    return Kind(
        scheme=INFRA,
        term="compute",
        title="Compute Resource",
        parent=RESOURCE,
        location="/compute/",
        actions=tuple(COMPUTE_ACTIONS + t for t in ("start", "stop", "restart", "suspend", "save")),
        attributes=(
            _a("occi.compute.architecture", T.ENUM, "CPU architecture", enum=("x86", "x64")),
            _a("occi.compute.cores", T.INTEGER, "Number of virtual CPU cores", minimum=1),
            _a("occi.compute.hostname", T.STRING, "Fully qualified DNS hostname"),
            _a("occi.compute.share", T.INTEGER, "Relative number of CPU shares", minimum=0),
            _a("occi.compute.memory", T.NUMBER, "Maximum RAM in GiB", minimum=0),
            *_state("occi.compute", "active", "inactive", "suspended", "error"),
        ),
    )


def _network_and_storage() -> list[Category]:
    return [
        Kind(
            scheme=INFRA,
            term="network",
            title="Network Resource",
            parent=RESOURCE,
            location="/network/",
            actions=(NETWORK_ACTIONS + "up", NETWORK_ACTIONS + "down"),
            attributes=(
                _a("occi.network.vlan", T.INTEGER, "802.1q VLAN id", minimum=0, maximum=4095),
                _a("occi.network.label", T.STRING, "Tag-based VLAN label"),
                *_state("occi.network", "active", "inactive", "error"),
            ),
        ),
        Kind(
            scheme=INFRA,
            term="storage",
            title="Storage Resource",
            parent=RESOURCE,
            location="/storage/",
            actions=(STORAGE_ACTIONS + "online", STORAGE_ACTIONS + "offline"),
            attributes=(
                _a("occi.storage.size", T.NUMBER, "Size in GiB", required=True, minimum=0),
                *_state("occi.storage", "online", "offline", "error"),
            ),
        ),
    ]


def _links() -> list[Category]:
    filled: dict[str, Any] = {"required": True, "server_assigned": True}
    return [
        Kind(
            scheme=INFRA,
            term="networkinterface",
            title="NetworkInterface Link",
            parent=LINK,
            location="/link/networkinterface/",
            attributes=(
                _a(
                    "occi.networkinterface.interface",
                    T.STRING,
                    "Device name",
                    mutable=False,
                    **filled,
                ),
                _a("occi.networkinterface.mac", T.STRING, "MAC address", **filled),
                *_state("occi.networkinterface", "active", "inactive", "error"),
            ),
        ),
        Kind(
            scheme=INFRA,
            term="storagelink",
            title="StorageLink Link",
            parent=LINK,
            location="/link/storagelink/",
            attributes=(
                _a("occi.storagelink.deviceid", T.STRING, "Device identifier", **filled),
                _a("occi.storagelink.mountpoint", T.STRING, "Mount point in the guest"),
                *_state("occi.storagelink", "active", "inactive", "error"),
            ),
        ),
    ]


def _network_mixins() -> list[Category]:
    alloc = ("dynamic", "static")
    filled: dict[str, Any] = {"required": True, "server_assigned": True}
    return [
        Mixin(
            scheme=NETWORK_MIXINS,
            term="ipnetwork",
            title="IP Networking Mixin",
            applies=(NETWORK,),
            location="/mixin/ipnetwork/",
            attributes=(
                _a("occi.network.address", T.STRING, "IP network address, CIDR notation"),
                _a("occi.network.gateway", T.STRING, "IP address of the gateway"),
                _a("occi.network.allocation", T.ENUM, "Address allocation", enum=alloc),
            ),
        ),
        Mixin(
            scheme=NETWORKINTERFACE_MIXINS,
            term="ipnetworkinterface",
            title="IP Network Interface Mixin",
            applies=(NETWORKINTERFACE,),
            location="/mixin/ipnetworkinterface/",
            attributes=(
                _a("occi.networkinterface.address", T.STRING, "IP address of the link", **filled),
                _a("occi.networkinterface.gateway", T.STRING, "IP address of the gateway"),
                _a("occi.networkinterface.allocation", T.ENUM, "Allocation", enum=alloc, **filled),
            ),
        ),
    ]


def _compute_mixins() -> list[Category]:
    userdata = _a(
        "occi.compute.userdata",
        T.STRING,
        "Contextualization data, given once at creation",
        mutable=False,
        required=True,
        write_once=True,
    )
    publickey = _a("occi.credentials.ssh.publickey", T.STRING, "SSH public key", required=True)
    return [
        Mixin(
            scheme=INFRA,
            term="os_tpl",
            title="OS Template",
            applies=(COMPUTE,),
            location="/mixin/os_tpl/",
        ),
        Mixin(
            scheme=INFRA,
            term="resource_tpl",
            title="Resource Template",
            applies=(COMPUTE,),
            location="/mixin/resource_tpl/",
        ),
        Mixin(
            scheme=CREDENTIALS_MIXINS,
            term="ssh_key",
            title="Credentials Mixin",
            applies=(COMPUTE,),
            location="/mixin/ssh_key/",
            attributes=(publickey,),
        ),
        Mixin(
            scheme=COMPUTE_MIXINS,
            term="user_data",
            title="Contextualization Mixin",
            applies=(COMPUTE,),
            location="/mixin/user_data/",
            attributes=(userdata,),
        ),
    ]


def build_registry() -> Registry:
    """A registry holding the OCCI 1.2 core and infrastructure categories, marked built-in."""
    registry = Registry(
        [
            *_core(),
            *_actions(),
            _compute(),
            *_network_and_storage(),
            *_links(),
            *_network_mixins(),
            *_compute_mixins(),
        ]
    )
    registry.freeze_builtins()
    return registry
