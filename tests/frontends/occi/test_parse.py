"""Parsing OCCI requests: text/plain, text/occi, application/occi+json and text/uri-list."""

from __future__ import annotations

import json
import time

import pytest

from frontends.occi import categories as c
from frontends.occi import parse as p
from frontends.occi.categories import (
    Kind,
    Mixin,
    OcciParseError,
    OcciTooLarge,
    OcciUnsupportedMediaType,
    OcciValidationError,
    build_registry,
)
from frontends.occi.parse import ActionInvocation, CategoryRef, Entity, Limits, Link

INFRA = "http://schemas.ogf.org/occi/infrastructure#"
CA = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
COMPUTE_CAT = f'compute; scheme="{INFRA}"; class="kind"'
OS_CAT = 'ubuntu; scheme="http://example.com/os#"; class="mixin"'

TEXT_BODY = (
    f"Category: {COMPUTE_CAT}\r\n"
    f"Category: {OS_CAT}\r\n"
    'Link: </network/n1>; rel="http://schemas.ogf.org/occi/infrastructure#network"; '
    'self="/link/networkinterface/l1"; '
    'category="http://schemas.ogf.org/occi/infrastructure#networkinterface"; '
    'occi.networkinterface.interface="eth0"\r\n'
    f'Link: </compute/c1?action=start>; rel="{CA}start"\r\n'
    'X-OCCI-Attribute: occi.core.title="My \\"first\\" VM, really"\r\n'
    "X-OCCI-Attribute: occi.compute.cores=2, occi.compute.memory=1.5\r\n"
    "X-OCCI-Attribute: occi.compute.architecture=x64\r\n"
    "X-OCCI-Attribute: occi.compute.hostname=\r\n"
    '  "vm1.example.com"\r\n'
)


def expected_entity() -> Entity:
    link = Link(
        kind=INFRA + "networkinterface",
        attributes={
            "occi.core.target": "/network/n1",
            "occi.core.target.kind": INFRA + "network",
            "occi.networkinterface.interface": "eth0",
        },
        location="/link/networkinterface/l1",
    )
    return Entity(
        kind=INFRA + "compute",
        mixins=("http://example.com/os#ubuntu",),
        attributes={
            "occi.core.title": 'My "first" VM, really',
            "occi.compute.cores": 2,
            "occi.compute.memory": 1.5,
            "occi.compute.architecture": "x64",
            "occi.compute.hostname": "vm1.example.com",
        },
        links=(link,),
        actions=(CA + "start",),
    )


# -- text/plain and text/occi -------------------------------------------------------------------


def test_text_plain_entity() -> None:
    entity = p.parse_entity("text/plain; charset=utf-8", TEXT_BODY.encode())
    assert entity == expected_entity()
    assert entity.links[0].target == "/network/n1"


def test_text_occi_entity_from_headers() -> None:
    headers = [
        ("Host", "example.com"),
        ("Category", f"{COMPUTE_CAT}, {OS_CAT}"),
        (
            "Link",
            '</network/n1>; rel="http://schemas.ogf.org/occi/infrastructure#network"; '
            'self="/link/networkinterface/l1"; '
            'category="http://schemas.ogf.org/occi/infrastructure#networkinterface"; '
            f'occi.networkinterface.interface="eth0", </compute/c1?action=start>; rel="{CA}start"',
        ),
        ("X-OCCI-Attribute", 'occi.core.title="My \\"first\\" VM, really", occi.compute.cores=2'),
        ("x-occi-attribute", "occi.compute.memory=1.5, occi.compute.architecture=x64"),
        ("X-OCCI-Attribute", 'occi.compute.hostname="vm1.example.com"'),
    ]
    assert p.parse_entity("text/occi", b"OK", headers) == expected_entity()


def test_typed_values() -> None:
    body = (
        f"Category: {COMPUTE_CAT}\n"
        'X-OCCI-Attribute: a.s="2", a.i=2, a.neg=-3, a.f=2.5, a.e=1e3, a.t=true, a.f2=false\n'
        'X-OCCI-Attribute: a.tok=x86_64, a.empty="", a.esc="tab\\there\\nline\\\\"\n'
    )
    attributes = p.parse_entity("text/plain", body.encode()).attributes
    assert attributes == {
        "a.s": "2",
        "a.i": 2,
        "a.neg": -3,
        "a.f": 2.5,
        "a.e": 1000.0,
        "a.t": True,
        "a.f2": False,
        "a.tok": "x86_64",
        "a.empty": "",
        "a.esc": "tab\there\nline\\",
    }
    assert isinstance(attributes["a.i"], int) and isinstance(attributes["a.f"], float)


def test_empty_body_without_content_type_reads_headers() -> None:
    entity = p.parse_entity(None, b"", [("Category", COMPUTE_CAT)])
    assert entity == Entity(kind=INFRA + "compute")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Category: compute; class=kind", "scheme"),
        (f'Category: compute; scheme="{INFRA}"', "class"),
        (f'Category: compute; scheme="{INFRA}"; class="thing"', "class"),
        ('Category: com pute; scheme="http://x/#"; class="kind"', "term"),
        ('Category: compute; scheme="http://x/"; class="kind"', "scheme"),
        ('Category: compute; scheme="http://x/#; class="kind"', "quoted"),
        ("X-OCCI-Attribute: occi.compute.cores", "malformed attribute"),
        ("X-OCCI-Attribute: =2", "malformed attribute"),
        ('X-OCCI-Attribute: occi.core.title="unterminated', "unterminated"),
        ('X-OCCI-Attribute: occi.core.title="a"b', "bad quoted value"),
        ("X-OCCI-Attribute: occi.core.title=two words", "bad value"),
        ("Link: /network/n1; rel=x", "<URI>"),
        ("Link: <; rel=x", "'<'"),
        ("X-Other: 1", "unknown field"),
        ("this is not a field", "Name: value"),
        ("Category compute", "Name: value"),
    ],
)
def test_malformed_lines_name_the_line(line: str, problem: str) -> None:
    body = f"Category: {COMPUTE_CAT}\n{line}\n"
    with pytest.raises(OcciParseError) as info:
        p.parse_entity("text/plain", body.encode())
    assert "line 2" in info.value.message
    assert problem in info.value.message
    assert info.value.status == 400


def test_malformed_header_names_the_header() -> None:
    with pytest.raises(OcciParseError, match="header X-OCCI-Attribute"):
        p.parse_entity(
            "text/occi", b"", [("Category", COMPUTE_CAT), ("X-OCCI-Attribute", "nonsense")]
        )


def test_entity_needs_exactly_one_kind() -> None:
    with pytest.raises(OcciParseError, match="one Category with class kind"):
        p.parse_entity("text/plain", f"Category: {OS_CAT}\n".encode())
    with pytest.raises(OcciParseError, match="one Category with class kind"):
        p.parse_entity("text/plain", f"Category: {COMPUTE_CAT}, {COMPUTE_CAT}\n".encode())
    action = f'Category: start; scheme="{CA}"; class="action"\n'
    with pytest.raises(OcciParseError, match="action Category"):
        p.parse_entity("text/plain", f"Category: {COMPUTE_CAT}\n{action}".encode())


def test_duplicate_attribute_refused() -> None:
    body = f"Category: {COMPUTE_CAT}\nX-OCCI-Attribute: a=1, a=2\n"
    with pytest.raises(OcciParseError, match="given twice"):
        p.parse_entity("text/plain", body.encode())


def test_long_blank_runs_parse_in_linear_time() -> None:
    padding = " " * 30_000
    body = f"Category: {COMPUTE_CAT}\nX-OCCI-Attribute: a=x{padding}y\n"
    started = time.perf_counter()
    with pytest.raises(OcciParseError, match="bad value"):
        p.parse_entity("text/plain", body.encode())
    body = f'Category: {COMPUTE_CAT}\nX-OCCI-Attribute: a="{"x" * 30_000}\n'
    with pytest.raises(OcciParseError, match="unterminated"):
        p.parse_entity("text/plain", body.encode())
    assert time.perf_counter() - started < 2.0


def test_continuation_needs_a_field() -> None:
    with pytest.raises(OcciParseError, match="line 1: continuation"):
        p.parse_entity("text/plain", b"  Category: x\n")


def test_body_must_be_utf8() -> None:
    with pytest.raises(OcciParseError, match="UTF-8"):
        p.parse_entity("text/plain", b"Category: \xff\n")


# -- limits -------------------------------------------------------------------------------------


def test_body_size_limit() -> None:
    with pytest.raises(OcciTooLarge) as info:
        p.parse_entity("text/plain", b"x" * (p.MAX_BODY_BYTES + 1))
    assert info.value.status == 413


def test_line_length_limit() -> None:
    line = f'X-OCCI-Attribute: occi.core.title="{"a" * p.MAX_LINE_LENGTH}"\n'
    with pytest.raises(OcciTooLarge, match="line 2"):
        p.parse_entity("text/plain", f"Category: {COMPUTE_CAT}\n{line}".encode())
    with pytest.raises(OcciTooLarge, match="header"):
        p.parse_entity("text/occi", b"", [("Category", COMPUTE_CAT), ("X-OCCI-Attribute", line)])


def test_attribute_count_limit() -> None:
    attributes = ", ".join(f"a.n{i}=1" for i in range(p.MAX_ATTRIBUTES + 1))
    with pytest.raises(OcciTooLarge, match="attributes"):
        p.parse_entity(
            "text/plain", f"Category: {COMPUTE_CAT}\nX-OCCI-Attribute: {attributes}\n".encode()
        )
    small = Limits(attributes=2)
    fields = "".join(f"X-OCCI-Attribute: {name}=1\n" for name in "abc")
    body = f"Category: {COMPUTE_CAT}\n{fields}"
    with pytest.raises(OcciTooLarge):
        p.parse_entity("text/plain", body.encode(), limits=small)
    doc = {"kind": INFRA + "compute", "id": "x", "attributes": {f"a{i}": 1 for i in range(3)}}
    with pytest.raises(OcciTooLarge):
        p.parse_entity("application/occi+json", json.dumps(doc).encode(), limits=small)


def test_location_count_limit() -> None:
    body = "".join(f"/compute/{i}\n" for i in range(4)).encode()
    with pytest.raises(OcciTooLarge, match="locations"):
        p.parse_locations("text/uri-list", body, limits=Limits(locations=3))


def test_unsupported_media_type() -> None:
    with pytest.raises(OcciUnsupportedMediaType) as info:
        p.parse_entity("application/xml", b"<x/>")
    assert info.value.status == 415
    with pytest.raises(OcciUnsupportedMediaType):
        p.parse_entity(None, b"Category: x")
    with pytest.raises(OcciUnsupportedMediaType):
        p.parse_entity("text/uri-list", b"/compute/1")


# -- JSON ---------------------------------------------------------------------------------------


def json_resource() -> dict[str, object]:
    return {
        "kind": INFRA + "compute",
        "mixins": ["http://example.com/os#ubuntu"],
        "attributes": {"occi.compute.cores": 2, "occi.compute.memory": 1.5},
        "actions": [CA + "start"],
        "id": "c1",
        "title": "vm",
        "summary": "a vm",
        "links": [
            {
                "kind": INFRA + "networkinterface",
                "id": "l1",
                "source": {"location": "/compute/c1"},
                "target": {"location": "/network/n1", "kind": INFRA + "network"},
                "attributes": {"occi.networkinterface.interface": "eth0"},
            }
        ],
    }


def test_json_resource() -> None:
    entity = p.parse_entity("application/occi+json", json.dumps(json_resource()).encode())
    assert entity == Entity(
        kind=INFRA + "compute",
        mixins=("http://example.com/os#ubuntu",),
        attributes={
            "occi.compute.cores": 2,
            "occi.compute.memory": 1.5,
            "occi.core.id": "c1",
            "occi.core.title": "vm",
            "occi.core.summary": "a vm",
        },
        links=(
            Link(
                kind=INFRA + "networkinterface",
                attributes={
                    "occi.networkinterface.interface": "eth0",
                    "occi.core.id": "l1",
                    "occi.core.source": "/compute/c1",
                    "occi.core.target": "/network/n1",
                    "occi.core.target.kind": INFRA + "network",
                },
            ),
        ),
        actions=(CA + "start",),
    )


def test_json_without_id_or_link_source_is_accepted() -> None:
    doc = {
        "kind": INFRA + "compute",
        "links": [{"kind": INFRA + "storagelink", "target": {"location": "/storage/s1"}}],
    }
    entity = p.parse_entity("application/json", json.dumps(doc).encode())
    assert entity.id is None
    assert entity.links[0].target == "/storage/s1"


def test_json_link_and_collection() -> None:
    link = {
        "kind": INFRA + "storagelink",
        "id": "sl1",
        "source": {"location": "/compute/c1", "kind": INFRA + "compute"},
        "target": {"location": "/storage/s1"},
        "attributes": {"occi.storagelink.deviceid": "/dev/vdb"},
    }
    entities = p.parse_entities(
        "application/occi+json",
        json.dumps({"resources": [json_resource()], "links": [link]}).encode(),
    )
    assert [e.kind for e in entities] == [INFRA + "compute", INFRA + "storagelink"]
    assert entities[1].attributes["occi.core.source.kind"] == INFRA + "compute"
    with pytest.raises(OcciParseError, match="expected one entity"):
        p.parse_entity("application/occi+json", json.dumps({"resources": []}).encode())


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"kind": 5, "id": "x"}, "GFD.225"),
        ({"kind": INFRA + "compute", "id": "x", "colour": "red"}, "GFD.225"),
        ({"kind": INFRA + "compute", "attributes": {"occi.core.title": None}}, "GFD.225"),
        ({"kind": INFRA + "compute", "mixins": "one"}, "GFD.225"),
        ({"kind": INFRA + "compute", "links": [{"kind": INFRA + "storagelink"}]}, "GFD.225"),
        ({"kind": "compute"}, "type identifier"),
        ({"kind": INFRA + "compute", "id": "a", "attributes": {"occi.core.id": "b"}}, "twice"),
        ([1, 2], "expected a JSON resource"),
        ({"resources": [{"kind": INFRA + "compute"}], "kinds": []}, "expected a JSON resource"),
    ],
)
def test_json_breaking_the_schema(doc: object, problem: str) -> None:
    with pytest.raises(OcciParseError, match=problem) as info:
        p.parse_entity("application/occi+json", json.dumps(doc).encode())
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not JSON"),
        (b'{"kind": "a", "kind": "b"}', "repeated key"),
        (b'{"kind": "http://x/#a", "attributes": {"a": NaN}}', "NaN"),
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),
    ],
)
def test_json_syntax(body: bytes, problem: str) -> None:
    with pytest.raises(OcciParseError, match=problem):
        p.parse_entity("application/occi+json", body)


# -- actions ------------------------------------------------------------------------------------


def test_action_text_and_json() -> None:
    body = f'Category: stop; scheme="{CA}"; class="action"\nX-OCCI-Attribute: method="graceful"\n'
    want = ActionInvocation(CA + "stop", {"method": "graceful"})
    assert p.parse_action("text/plain", body.encode(), expected_term="stop") == want
    headers = [
        ("Category", f'stop; scheme="{CA}"; class=action'),
        ("X-OCCI-Attribute", 'method="graceful"'),
    ]
    assert p.parse_action("text/occi", b"", headers) == want
    doc = {"action": CA + "stop", "attributes": {"method": "graceful"}}
    assert p.parse_action("application/occi+json", json.dumps(doc).encode()) == want
    assert want.term == "stop"


def test_action_errors() -> None:
    body = f'Category: stop; scheme="{CA}"; class="action"\n'.encode()
    with pytest.raises(OcciParseError, match="action=start"):
        p.parse_action("text/plain", body, expected_term="start")
    with pytest.raises(OcciParseError, match="not an action"):
        p.parse_action("text/plain", f"Category: {COMPUTE_CAT}\n".encode())
    with pytest.raises(OcciParseError, match="exactly one Category"):
        p.parse_action("text/plain", b"")
    with pytest.raises(OcciParseError, match=r"GFD\.225"):
        p.parse_action("application/occi+json", json.dumps({"attributes": {}}).encode())


# -- categories, mixins, filters, locations -----------------------------------------------------


def test_user_mixin_definitions() -> None:
    body = (
        'Category: prod; scheme="http://example.com/tags#"; class="mixin"; title="Production"; '
        'location="/tag/prod/"\n'
    )
    want = Mixin(
        scheme="http://example.com/tags#", term="prod", title="Production", location="/tag/prod/"
    )
    assert p.parse_mixins("text/plain", body.encode()) == (want,)
    single = {
        "scheme": "http://example.com/tags#",
        "term": "prod",
        "title": "Production",
        "location": "/tag/prod/",
    }
    assert p.parse_mixins("application/occi+json", json.dumps(single).encode()) == (want,)
    assert p.parse_mixins("application/occi+json", json.dumps({"mixins": [single]}).encode()) == (
        want,
    )
    with pytest.raises(OcciParseError, match="location"):
        p.parse_mixins(
            "text/plain", b'Category: prod; scheme="http://example.com/tags#"; class="mixin"\n'
        )
    with pytest.raises(OcciParseError, match="class mixin"):
        p.parse_mixins("text/plain", f"Category: {COMPUTE_CAT}\n".encode())
    with pytest.raises(OcciParseError, match=r"GFD\.225"):
        p.parse_mixins("application/occi+json", json.dumps({**single, "location": 3}).encode())


def test_category_definitions_in_text() -> None:
    body = (
        f'Category: compute; scheme="{INFRA}"; class="kind"; title="Compute"; '
        'rel="http://schemas.ogf.org/occi/core#resource"; location="/compute/"; '
        'attributes="occi.compute.cores occi.compute.state{immutable required}"; '
        f'actions="{CA}start {CA}stop"\n'
    )
    (kind,) = p.parse_categories("text/plain", body.encode())
    assert isinstance(kind, Kind)
    assert kind.parent == "http://schemas.ogf.org/occi/core#resource"
    assert kind.location == "/compute/"
    assert [(a.name, a.mutable, a.required) for a in kind.attributes] == [
        ("occi.compute.cores", True, False),
        ("occi.compute.state", False, True),
    ]
    assert kind.actions == (CA + "start", CA + "stop")
    with pytest.raises(OcciParseError, match="attribute property"):
        p.parse_categories("text/plain", body.replace("required", "secret").encode())


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ({"enum": "abc"}, "enum must list strings"),
        ({"type": "integer", "minimum": {"a": 1}}, "must be numbers"),
    ],
)
def test_json_attribute_patterns_are_checked(pattern: dict[str, object], problem: str) -> None:
    kind = {
        "term": "k",
        "scheme": "http://example.com/x#",
        "attributes": {"a.b": {"type": "number", "pattern": pattern}},
    }
    with pytest.raises(OcciParseError, match=problem):
        p.parse_categories("application/occi+json", json.dumps({"kinds": [kind]}).encode())


def test_category_filter() -> None:
    headers = [("Category", f'os_tpl; scheme="{INFRA}"; class="mixin", compute; scheme="{INFRA}"')]
    refs = p.parse_category_filter(None, b"", headers)
    assert refs == (CategoryRef(INFRA, "os_tpl", "mixin"), CategoryRef(INFRA, "compute", None))
    assert refs[0].type_id == INFRA + "os_tpl"
    body = f"Category: {COMPUTE_CAT}\n".encode()
    assert p.parse_category_filter("text/plain", body) == (CategoryRef(INFRA, "compute", "kind"),)
    assert p.parse_category_filter(None, b"", [("Accept", "text/plain")]) == ()
    one = {"scheme": "http://example.com/tags#", "term": "prod"}
    refs = p.parse_category_filter("application/occi+json", json.dumps(one).encode())
    assert refs == (CategoryRef("http://example.com/tags#", "prod"),)
    with pytest.raises(OcciParseError, match="scheme"):
        p.parse_category_filter("application/occi+json", b'{"term": "prod"}')


def test_locations() -> None:
    uri_list = b"# a comment\r\n/compute/1\r\nhttp://example.com/compute/2\r\n\r\n"
    assert p.parse_locations("text/uri-list", uri_list) == (
        "/compute/1",
        "http://example.com/compute/2",
    )
    text = b"X-OCCI-Location: /compute/1\nX-OCCI-Location: /compute/2, /compute/3\n"
    assert p.parse_locations("text/plain", text) == ("/compute/1", "/compute/2", "/compute/3")
    headers = [("X-OCCI-Location", "/compute/1, /compute/2")]
    assert p.parse_locations("text/occi", b"OK", headers) == ("/compute/1", "/compute/2")
    with pytest.raises(OcciParseError, match="unexpected categories"):
        p.parse_locations("text/plain", f"Category: {COMPUTE_CAT}\n".encode())
    with pytest.raises(OcciParseError, match="malformed location"):
        p.parse_locations("text/uri-list", b'/compute/"1"\n')
    with pytest.raises(OcciUnsupportedMediaType):
        p.parse_locations("application/occi+json", b"{}")


def test_media_type() -> None:
    assert p.media_type("Text/Plain; charset=UTF-8") == "text/plain"
    assert p.media_type(None) == ""


# -- validation against the registry ------------------------------------------------------------


def test_validate_entity_names_the_wrong_attribute() -> None:
    registry = build_registry()
    body = f'Category: {COMPUTE_CAT}\nX-OCCI-Attribute: occi.compute.cores="two"\n'
    entity = p.parse_entity("text/plain", body.encode())
    with pytest.raises(OcciValidationError, match=r"occi\.compute\.cores"):
        p.validate_entity(registry, entity)


def test_validate_entity_with_links() -> None:
    registry = build_registry()
    os_tpl = f'os_tpl; scheme="{INFRA}"; class="mixin"'
    body = TEXT_BODY.replace(OS_CAT, os_tpl)
    with pytest.raises(OcciValidationError, match="interface is immutable"):
        p.validate_entity(registry, p.parse_entity("text/plain", body.encode()))
    body = body.replace('; occi.networkinterface.interface="eth0"', "")
    checked = p.validate_entity(registry, p.parse_entity("text/plain", body.encode()))
    assert checked.attributes["occi.compute.memory"] == 1.5
    assert checked.links[0].kind == c.NETWORKINTERFACE
    bad = Entity(
        kind=c.COMPUTE, links=(Link(kind=c.STORAGELINK, attributes={"occi.core.target": 7}),)
    )
    with pytest.raises(OcciValidationError, match=r"occi\.core\.target"):
        p.validate_entity(registry, bad)


@pytest.mark.parametrize(
    "element",
    [
        'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"',
        'compute ;scheme = "http://schemas.ogf.org/occi/infrastructure#" ; class= "mixin"',
        'ami-0123; scheme="http://schemas.cloudbroker.org/occi/templates/os#"; class="mixin"',
        'start; scheme="http://schemas.ogf.org/occi/infrastructure/compute/action#";class="action"',
        # near misses: each takes the general path and must read the same as before
        'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="Kind"',
        'compute; Scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"',
        'compute; scheme="http://schemas.ogf.org/occi/infra\\"structure#"; class="kind"',
        'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class=kind',
        'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"; title="x"',
        'compute; class="kind"; scheme="http://schemas.ogf.org/occi/infrastructure#"',
    ],
)
def test_the_plain_category_shortcut_reads_as_the_general_parser(element: str) -> None:
    assert p._category(element, "line 1", need_class=True) == p._any_category(
        element, "line 1", need_class=True
    )


@pytest.mark.parametrize(
    "element",
    [
        'compute; scheme="http://schemas.ogf.org/occi/infrastructure"; class="kind"',  # no '#'
        'compute; scheme="http://schemas.ogf.org/occi/ infrastructure#"; class="kind"',
        'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kinds"',
        '-compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"',
    ],
)
def test_what_the_shortcut_does_not_take_is_still_refused(element: str) -> None:
    with pytest.raises(p.OcciParseError):
        p._category(element, "line 1", need_class=True)
