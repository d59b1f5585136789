"""Rendering OCCI responses: schema-valid JSON, round trips through the parsers, negotiation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry as SchemaRegistry
from referencing import Resource
from referencing.jsonschema import DRAFT4

from frontends.occi import categories as c
from frontends.occi import parse as p
from frontends.occi import render as r
from frontends.occi.categories import (
    Category,
    Kind,
    Mixin,
    OcciNotRenderable,
    Registry,
    build_registry,
)
from frontends.occi.parse import ActionInvocation, Entity, Link

FIXTURE = Path("/work/shared/fixtures/occi/occi-1.2-json-schema.json")
PACKAGED = Path(p.__file__).with_name(p.SCHEMA_FILE)
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
CA = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
TEXT_TYPES = ("text/plain", "text/occi", "text/occi+plain")
JSON_TYPES = ("application/occi+json", "application/json")

#: Every category GFD.221 and GFD.224 define, which the query interface must list.
GFD_CATEGORIES = {
    "http://schemas.ogf.org/occi/core#entity",
    "http://schemas.ogf.org/occi/core#resource",
    "http://schemas.ogf.org/occi/core#link",
    INFRA + "compute",
    INFRA + "network",
    INFRA + "storage",
    INFRA + "networkinterface",
    INFRA + "storagelink",
    INFRA + "os_tpl",
    INFRA + "resource_tpl",
    "http://schemas.ogf.org/occi/infrastructure/network#ipnetwork",
    "http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface",
    "http://schemas.ogf.org/occi/infrastructure/credentials#ssh_key",
    "http://schemas.ogf.org/occi/infrastructure/compute#user_data",
    *(CA + t for t in ("start", "stop", "restart", "suspend", "save")),
    "http://schemas.ogf.org/occi/infrastructure/network/action#up",
    "http://schemas.ogf.org/occi/infrastructure/network/action#down",
    "http://schemas.ogf.org/occi/infrastructure/storage/action#online",
    "http://schemas.ogf.org/occi/infrastructure/storage/action#offline",
}


# -- the schema, loaded independently of the code under test ------------------------------------


def _fix_refs(node: Any) -> Any:
    """The published schema writes some references as ``#definitions/x``; make them pointers."""
    if isinstance(node, dict):
        fixed = {k: _fix_refs(v) for k, v in node.items()}
        if str(fixed.get("$ref", "")).startswith("#definitions/"):
            fixed["$ref"] = "#/" + fixed["$ref"][1:]
        return fixed
    if isinstance(node, list):
        return [_fix_refs(v) for v in node]
    return node


@pytest.fixture(scope="module")
def schema_check() -> Callable[[Any, str | None], None]:
    path = FIXTURE if FIXTURE.exists() else PACKAGED
    schema = _fix_refs(json.loads(path.read_text()))
    store = SchemaRegistry().with_resource(schema["id"], Resource.from_contents(schema, DRAFT4))

    def check(document: Any, definition: str | None) -> None:
        ref = schema["id"] + ("" if definition is None else f"#/definitions/{definition}")
        validator = jsonschema.Draft4Validator({"$ref": ref}, registry=store)
        errors = [e.message for e in validator.iter_errors(document)]
        assert errors == [], errors

    return check


def test_packaged_schema_is_the_published_one() -> None:
    if not FIXTURE.exists():
        pytest.skip("the shared fixture is not here")
    assert json.loads(PACKAGED.read_text()) == json.loads(FIXTURE.read_text())


# -- sample data --------------------------------------------------------------------------------


@pytest.fixture
def registry() -> Registry:
    registry = build_registry()
    registry.add_os_template("ubuntu-22.04", "Ubuntu 22.04 LTS")
    registry.add_resource_template(
        "m1.small", "Small", defaults={"occi.compute.cores": 1, "occi.compute.memory": 2.0}
    )
    registry.add_user_mixin(
        Mixin(
            scheme="http://example.com/tags#",
            term="prod",
            title="Production",
            location="/tag/prod/",
        )
    )
    return registry


def compute(*, link_location: str | None = "/link/networkinterface/l1") -> Entity:
    link = Link(
        kind=c.NETWORKINTERFACE,
        mixins=(c.IPNETWORKINTERFACE,),
        attributes={
            "occi.core.id": "l1",
            "occi.core.source": "/compute/c1",
            "occi.core.target": "/network/n1",
            "occi.core.target.kind": c.NETWORK,
            "occi.networkinterface.interface": "eth0",
            "occi.networkinterface.mac": "52:54:00:12:34:56",
            "occi.networkinterface.address": "10.0.0.5",
            "occi.networkinterface.state": "active",
        },
        location=link_location,
    )
    return Entity(
        kind=c.COMPUTE,
        mixins=("http://schemas.cloudbroker.org/occi/templates/os#ubuntu-22.04", c.SSH_KEY),
        attributes={
            "occi.core.id": "c1",
            "occi.core.title": 'web "one"; front, end \\ all\nsecond line',
            "occi.core.summary": "a web server",
            "occi.compute.cores": 2,
            "occi.compute.memory": 4.0,
            "occi.compute.architecture": "x64",
            "occi.compute.state": "active",
            "occi.credentials.ssh.publickey": "ssh-ed25519 AAAAC3Nz user@host",
        },
        links=(link,),
        actions=(CA + "stop", CA + "restart"),
    )


def storagelink() -> Entity:
    return Entity(
        kind=c.STORAGELINK,
        attributes={
            "occi.core.id": "sl1",
            "occi.core.source": "/compute/c1",
            "occi.core.source.kind": c.COMPUTE,
            "occi.core.target": "/storage/s1",
            "occi.core.target.kind": c.STORAGE,
            "occi.storagelink.deviceid": "/dev/vdb",
            "occi.storagelink.state": "active",
        },
    )


def storage() -> Entity:
    return Entity(kind=c.STORAGE, attributes={"occi.core.id": "s1", "occi.storage.size": 10.0})


def reparse(rendered: r.Rendered, parser: Callable[..., Any]) -> Any:
    return parser(rendered.content_type, rendered.body, rendered.headers)


# -- JSON against the GFD.225 schema ------------------------------------------------------------


@pytest.mark.parametrize("media", JSON_TYPES)
def test_query_interface_json_is_valid(registry: Registry, schema_check: Any, media: str) -> None:
    rendered = r.render_categories(registry, media)
    assert rendered.content_type == media and rendered.charset is None
    document = json.loads(rendered.body)
    schema_check(document, "model")
    schema_check(document, None)
    for kind in document["kinds"]:
        schema_check(kind, "kind")
    for mixin in document["mixins"]:
        schema_check(mixin, "mixin")
    for action in document["actions"]:
        schema_check(action, "action")
    for name in ("kind", "mixin", "action"):
        schema_check({name + "s": document[name + "s"]}, name + "_collection")


def test_entity_json_is_valid(schema_check: Any) -> None:
    resource = json.loads(
        r.render_entity(compute(), "application/occi+json", location="/compute/c1").body
    )
    schema_check(resource, "resource")
    assert resource["id"] == "c1" and resource["summary"] == "a web server"
    assert resource["links"][0]["target"] == {"location": "/network/n1", "kind": c.NETWORK}
    link = json.loads(
        r.render_entity(
            storagelink(), "application/occi+json", location="/link/storagelink/sl1"
        ).body
    )
    schema_check(link, "link")


def test_collection_json_is_valid(schema_check: Any) -> None:
    def render(entities: list[Entity]) -> Any:
        locations = [f"/x/{i}" for i in range(len(entities))]
        return json.loads(r.render_collection("application/occi+json", locations, entities).body)

    schema_check(render([compute(), storage()]), "resource_collection")
    schema_check(render([storagelink()]), "link_collection")
    schema_check(render([compute(), storagelink()]), "model")
    schema_check(render([]), "resource_collection")


def test_action_json_is_valid(schema_check: Any) -> None:
    invocation = ActionInvocation(CA + "stop", {"method": "acpioff"})
    schema_check(
        json.loads(r.render_action(invocation, "application/occi+json").body), "action_invocation"
    )


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("media", TEXT_TYPES)
def test_entity_round_trip_text(media: str) -> None:
    rendered = r.render_entity(compute(), media, location="/compute/c1")
    assert reparse(rendered, p.parse_entity) == compute()


@pytest.mark.parametrize("media", JSON_TYPES)
def test_entity_round_trip_json(media: str) -> None:
    entity = compute(link_location=None)  # GFD.225 gives links an id, not a location
    rendered = r.render_entity(entity, media, location="/compute/c1")
    assert reparse(rendered, p.parse_entity) == entity


@pytest.mark.parametrize("media", TEXT_TYPES + JSON_TYPES)
def test_link_entity_round_trip(media: str) -> None:
    rendered = r.render_entity(storagelink(), media, location="/link/storagelink/sl1")
    assert reparse(rendered, p.parse_entity) == storagelink()


@pytest.mark.parametrize("media", TEXT_TYPES + JSON_TYPES)
def test_action_round_trip(media: str) -> None:
    invocation = ActionInvocation(CA + "save", {"method": "hot", "name": "snap 1"})
    assert reparse(r.render_action(invocation, media), p.parse_action) == invocation


@pytest.mark.parametrize("media", (*TEXT_TYPES, "text/uri-list"))
def test_locations_round_trip(media: str) -> None:
    locations = ("/compute/c1", "/compute/c2", "/storage/s1")
    rendered = r.render_collection(media, locations)
    assert reparse(rendered, p.parse_locations) == locations


@pytest.mark.parametrize("media", JSON_TYPES)
def test_json_collection_round_trip(media: str) -> None:
    entities = (compute(link_location=None), storage(), storagelink())
    rendered = r.render_collection(
        media, ["/compute/c1", "/storage/s1", "/link/storagelink/sl1"], entities
    )
    assert sorted(reparse(rendered, p.parse_entities), key=lambda e: e.kind) == sorted(
        entities, key=lambda e: e.kind
    )


def by_id(categories: Any) -> list[Category]:
    return sorted(categories, key=lambda x: x.type_id)


@pytest.mark.parametrize("media", JSON_TYPES)
def test_categories_round_trip_json(registry: Registry, media: str) -> None:
    rendered = r.render_categories(registry, media)
    assert by_id(reparse(rendered, p.parse_categories)) == by_id(registry)


def text_view(category: Category) -> tuple[Any, ...]:
    """What a text Category rendering carries: no types, one rel, no applies."""
    rel = category.parent if isinstance(category, Kind) else None
    if isinstance(category, Mixin):
        rel = category.depends[0] if category.depends else None
    return (
        category.type_id,
        category.cls,
        category.title,
        rel,
        getattr(category, "location", None),
        tuple((a.name, a.mutable, a.required) for a in category.attributes),
        getattr(category, "actions", ()),
    )


@pytest.mark.parametrize("media", TEXT_TYPES)
def test_categories_round_trip_text(registry: Registry, media: str) -> None:
    parsed = reparse(r.render_categories(registry, media), p.parse_categories)
    assert [text_view(x) for x in by_id(parsed)] == [text_view(x) for x in by_id(registry)]


@pytest.mark.parametrize("media", TEXT_TYPES + JSON_TYPES)
def test_mixin_definitions_round_trip(registry: Registry, media: str) -> None:
    tag = registry.mixin("http://example.com/tags#prod")
    assert reparse(r.render_categories([tag], media), p.parse_mixins) == (tag,)


@pytest.mark.parametrize("media", TEXT_TYPES + JSON_TYPES)
def test_query_interface_lists_everything_gfd224_lists(media: str) -> None:
    parsed = reparse(r.render_categories(build_registry(), media), p.parse_categories)
    assert {x.type_id for x in parsed} == GFD_CATEGORIES
    compute_kind = next(x for x in parsed if x.type_id == c.COMPUTE)
    assert {a.name for a in compute_kind.attributes} >= {
        "occi.compute.cores",
        "occi.compute.memory",
        "occi.compute.hostname",
        "occi.compute.architecture",
        "occi.compute.state",
    }


def test_filtered_query_interface(registry: Registry) -> None:
    rendered = r.render_categories(registry.related([c.OS_TPL]), "text/plain")
    terms = [x.term for x in p.parse_categories("text/plain", rendered.body)]
    assert terms == ["os_tpl", "ubuntu-22.04"]


# -- the text renderings in detail --------------------------------------------------------------


def test_text_plain_shape() -> None:
    rendered = r.render_entity(storage(), "text/plain", location="/storage/s1")
    assert rendered.content_type == "text/plain" and rendered.charset == "utf-8"
    assert rendered.headers == ()
    assert rendered.body.decode() == (
        'Category: storage; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
        'X-OCCI-Attribute: occi.core.id="s1"\n'
        "X-OCCI-Attribute: occi.storage.size=10.0\n"
    )


def test_text_occi_plain_is_text_plain_by_another_name() -> None:
    plain = r.render_entity(storage(), "text/plain", location="/storage/s1")
    other = r.render_entity(storage(), "text/occi+plain", location="/storage/s1")
    assert other.content_type == "text/occi+plain" and other.body == plain.body


def test_text_occi_puts_fields_in_headers() -> None:
    rendered = r.render_entity(compute(), "text/occi", location="/compute/c1")
    assert rendered.content_type == "text/occi" and rendered.body == b"OK"
    names = [name for name, _ in rendered.headers]
    assert names == ["Category", "Link", "X-OCCI-Attribute"]
    links = dict(rendered.headers)["Link"]
    assert f'</compute/c1?action=stop>; rel="{CA}stop"' in links


def test_template_mixin_rel_is_its_base(registry: Registry) -> None:
    body = r.render_categories(registry.templates(c.OS_TPL), "text/plain").body.decode()
    assert body == (
        'Category: ubuntu-22.04; scheme="http://schemas.cloudbroker.org/occi/templates/os#"; '
        'class="mixin"; title="Ubuntu 22.04 LTS"; '
        'rel="http://schemas.ogf.org/occi/infrastructure#os_tpl"; '
        'location="/mixin/os_tpl/ubuntu-22.04/"\n'
    )


def test_locations_are_absolute_paths_or_prefixed() -> None:
    assert r.render_collection("text/uri-list", ["/compute/c1"]).body == b"/compute/c1\r\n"
    rendered = r.render_collection(
        "text/plain", ["/compute/c1"], base="https://cloud.example:8787/"
    )
    assert rendered.body == b"X-OCCI-Location: https://cloud.example:8787/compute/c1\n"
    entity = r.render_entity(compute(), "text/plain", location="/compute/c1", base="https://h")
    assert b"<https://h/compute/c1?action=stop>" in entity.body
    assert b'self="https://h/link/networkinterface/l1"' in entity.body


def test_empty_collections() -> None:
    assert r.render_collection("text/plain", []).body == b""
    assert r.render_collection("text/occi", []) == r.Rendered("text/occi", b"OK")
    assert json.loads(r.render_collection("application/occi+json", [], []).body) == {
        "resources": []
    }


def test_unrenderable_control_characters() -> None:
    entity = Entity(kind=c.STORAGE, attributes={"occi.core.title": "bell\x07"})
    body = r.render_entity(entity, "text/plain", location="/storage/s1").body
    assert p.parse_entity("text/plain", body).attributes["occi.core.title"] == "bell\ufffd"


# -- refusals -----------------------------------------------------------------------------------


def test_uri_list_only_for_collections(registry: Registry) -> None:
    attempts: list[Callable[[], r.Rendered]] = [
        lambda: r.render_entity(storage(), "text/uri-list", location="/storage/s1"),
        lambda: r.render_categories(registry, "text/uri-list"),
        lambda: r.render_action(ActionInvocation(CA + "start"), "text/uri-list"),
    ]
    for attempt in attempts:
        with pytest.raises(OcciNotRenderable) as info:
            attempt()
        assert info.value.status == 400


def test_programming_errors() -> None:
    with pytest.raises(ValueError, match="cannot render"):
        r.render_entity(storage(), "application/xml", location="/storage/s1")
    with pytest.raises(ValueError, match="cannot render"):
        r.render_collection("application/xml", [])
    with pytest.raises(ValueError, match=r"occi\.core\.id"):
        r.render_entity(Entity(kind=c.STORAGE), "application/occi+json", location="/storage/s1")
    with pytest.raises(ValueError, match="one entity per location"):
        r.render_collection("application/occi+json", ["/storage/s1"])
    with pytest.raises(ValueError, match="location"):
        r.render_categories(
            [Mixin(scheme="http://example.com/t#", term="x")], "application/occi+json"
        )


# -- content negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/plain"),
        ("", "text/plain"),
        ("*/*", "text/plain"),
        ("text/occi", "text/occi"),
        ("application/occi+json", "application/occi+json"),
        ("application/json;q=0.9, text/occi;q=0.5", "application/json"),
        ("text/*;q=0.3, application/occi+json;q=0.8", "application/occi+json"),
        ("text/*", "text/plain"),
        ("*/*;q=0.1, text/occi", "text/occi"),
        ("TEXT/OCCI", "text/occi"),
        ("text/plain;q=0, */*", "text/occi"),
        ("text/plain;q=0", None),
        ("application/xml", None),
        ("image/*", None),
        ("text/occi;q=2, application/json", "application/json"),
        ("garbage", "text/plain"),
        ("text/plain; charset=utf-8; q=0.2, text/occi; q=0.1", "text/plain"),
    ],
)
def test_negotiate(accept: str | None, expected: str | None) -> None:
    assert r.negotiate(accept, r.ENTITY_TYPES) == expected


def test_negotiate_uri_list_and_empty_offer() -> None:
    assert r.negotiate("text/uri-list", r.COLLECTION_TYPES) == "text/uri-list"
    assert r.negotiate("text/uri-list", r.ENTITY_TYPES) is None
    assert r.negotiate("*/*", []) is None
