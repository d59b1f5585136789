"""The OCCI category registry: the GFD.221/GFD.224 model, templates and attribute validation."""

from __future__ import annotations

import pytest

from broker.errors import InvalidRequest, NotFound
from frontends.occi import categories as c
from frontends.occi.categories import (
    Attribute,
    AttrType,
    Kind,
    Mixin,
    OcciConflict,
    OcciValidationError,
    Registry,
    build_registry,
)

INFRA = "http://schemas.ogf.org/occi/infrastructure#"
CORE = "http://schemas.ogf.org/occi/core#"
CA = "http://schemas.ogf.org/occi/infrastructure/compute/action#"

#: Kinds, their parents and attributes as GFD.221 and GFD.224 list them.
KINDS = {
    CORE + "entity": (None, {"occi.core.id", "occi.core.title"}),
    CORE + "resource": (CORE + "entity", {"occi.core.summary"}),
    CORE + "link": (
        CORE + "entity",
        # source and target, plus their kinds as GFD.229 names them in renderings
        {"occi.core.source", "occi.core.target", "occi.core.source.kind", "occi.core.target.kind"},
    ),
    INFRA + "compute": (
        CORE + "resource",
        {
            "occi.compute.architecture",
            "occi.compute.cores",
            "occi.compute.hostname",
            "occi.compute.share",
            "occi.compute.memory",
            "occi.compute.state",
            "occi.compute.state.message",
        },
    ),
    INFRA + "network": (
        CORE + "resource",
        {
            "occi.network.vlan",
            "occi.network.label",
            "occi.network.state",
            "occi.network.state.message",
        },
    ),
    INFRA + "storage": (
        CORE + "resource",
        {"occi.storage.size", "occi.storage.state", "occi.storage.state.message"},
    ),
    INFRA + "networkinterface": (
        CORE + "link",
        {
            "occi.networkinterface.interface",
            "occi.networkinterface.mac",
            "occi.networkinterface.state",
            "occi.networkinterface.state.message",
        },
    ),
    INFRA + "storagelink": (
        CORE + "link",
        {
            "occi.storagelink.deviceid",
            "occi.storagelink.mountpoint",
            "occi.storagelink.state",
            "occi.storagelink.state.message",
        },
    ),
}

MIXINS = {
    "http://schemas.ogf.org/occi/infrastructure/network#ipnetwork": (
        INFRA + "network",
        {"occi.network.address", "occi.network.gateway", "occi.network.allocation"},
    ),
    "http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface": (
        INFRA + "networkinterface",
        {
            "occi.networkinterface.address",
            "occi.networkinterface.gateway",
            "occi.networkinterface.allocation",
        },
    ),
    INFRA + "os_tpl": (INFRA + "compute", set()),
    INFRA + "resource_tpl": (INFRA + "compute", set()),
    "http://schemas.ogf.org/occi/infrastructure/credentials#ssh_key": (
        INFRA + "compute",
        {"occi.credentials.ssh.publickey"},
    ),
    "http://schemas.ogf.org/occi/infrastructure/compute#user_data": (
        INFRA + "compute",
        {"occi.compute.userdata"},
    ),
}

ACTIONS = {
    CA + "start": {},
    CA + "stop": {"method": ("graceful", "acpioff", "poweroff")},
    CA + "restart": {"method": ("graceful", "warm", "cold")},
    CA + "suspend": {"method": ("hibernate", "suspend")},
    CA + "save": {"method": ("hot", "deferred"), "name": ()},
    "http://schemas.ogf.org/occi/infrastructure/network/action#up": {},
    "http://schemas.ogf.org/occi/infrastructure/network/action#down": {},
    "http://schemas.ogf.org/occi/infrastructure/storage/action#online": {},
    "http://schemas.ogf.org/occi/infrastructure/storage/action#offline": {},
}


@pytest.fixture
def registry() -> Registry:
    return build_registry()


# -- the model ----------------------------------------------------------------------------------


def test_registry_holds_exactly_the_gfd224_categories(registry: Registry) -> None:
    assert {k.type_id for k in registry.kinds()} == set(KINDS)
    assert {m.type_id for m in registry.mixins()} == set(MIXINS)
    assert {a.type_id for a in registry.actions()} == set(ACTIONS)


@pytest.mark.parametrize("identifier", sorted(KINDS))
def test_kinds_have_their_parent_and_attributes(registry: Registry, identifier: str) -> None:
    parent, names = KINDS[identifier]
    kind = registry.kind(identifier)
    assert kind.parent == parent
    assert {a.name for a in kind.attributes} == names


@pytest.mark.parametrize("identifier", sorted(MIXINS))
def test_mixins_apply_to_their_kind(registry: Registry, identifier: str) -> None:
    applies, names = MIXINS[identifier]
    mixin = registry.mixin(identifier)
    assert mixin.applies == (applies,)
    assert {a.name for a in mixin.attributes} == names
    assert mixin.location is not None and mixin.location.startswith("/mixin/")


@pytest.mark.parametrize("identifier", sorted(ACTIONS))
def test_actions_carry_their_attributes(registry: Registry, identifier: str) -> None:
    action = registry.action(identifier)
    assert {a.name: a.enum for a in action.attributes} == ACTIONS[identifier]


def test_kind_locations_and_actions(registry: Registry) -> None:
    assert registry.kind(c.ENTITY).location is None  # cannot be instantiated (GFD.223 s. 3)
    assert registry.kind(c.COMPUTE).location == "/compute/"
    assert registry.by_location("/storage/") == registry.kind(c.STORAGE)
    assert registry.by_location("/nowhere/") is None
    assert registry.kind(c.COMPUTE).actions == tuple(
        CA + t for t in ("start", "stop", "restart", "suspend", "save")
    )
    assert registry.ancestors(c.COMPUTE) == (
        registry.kind(c.COMPUTE),
        registry.kind(c.RESOURCE),
        registry.kind(c.ENTITY),
    )


def test_attribute_types_follow_gfd224(registry: Registry) -> None:
    defs = registry.attribute_definitions(c.COMPUTE)
    assert defs["occi.compute.cores"].type is AttrType.INTEGER
    assert defs["occi.compute.memory"].type is AttrType.NUMBER
    assert defs["occi.compute.architecture"].enum == ("x86", "x64")
    assert defs["occi.compute.state"].enum == ("active", "inactive", "suspended", "error")
    assert not defs["occi.compute.state"].mutable
    assert defs["occi.core.title"].mutable
    storage = registry.attribute_definitions(c.STORAGE)
    assert storage["occi.storage.size"].required and storage["occi.storage.size"].mutable
    vlan = registry.attribute_definitions(c.NETWORK)["occi.network.vlan"]
    assert (vlan.minimum, vlan.maximum) == (0, 4095)


def test_lookup(registry: Registry) -> None:
    assert registry.lookup(INFRA, "compute") is registry.get(INFRA + "compute")
    assert registry.lookup(INFRA, "nothing") is None
    assert INFRA + "compute" in registry
    assert len(registry) == len(KINDS) + len(MIXINS) + len(ACTIONS)
    with pytest.raises(OcciValidationError):
        registry.kind(INFRA + "os_tpl")  # a mixin, not a kind
    with pytest.raises(OcciValidationError):
        registry.mixin(INFRA + "compute")


def test_split_type_id() -> None:
    assert c.split_type_id(INFRA + "compute") == (INFRA, "compute")
    for bad in ("compute", "http://x/#", "http://x/#bad term"):
        with pytest.raises(OcciValidationError):
            c.split_type_id(bad)


def test_registries_share_no_state() -> None:
    first, second = build_registry(), build_registry()
    first.add_os_template("debian-12", "Debian 12")
    assert first.templates(c.OS_TPL) and not second.templates(c.OS_TPL)


def test_attribute_definition_checks_itself() -> None:
    with pytest.raises(ValueError, match="bad attribute name"):
        Attribute(name="no spaces")
    with pytest.raises(ValueError, match="enum"):
        Attribute(name="x", type=AttrType.ENUM)
    with pytest.raises(ValueError, match="default"):
        Attribute(name="x", type=AttrType.ARRAY, default=[1])
    assert Attribute(name="x", type=AttrType.NUMBER, default=2).default == 2.0


# -- templates and user mixins -------------------------------------------------------------------


def test_os_and_resource_templates(registry: Registry) -> None:
    image = registry.add_os_template("ubuntu-22.04", "Ubuntu 22.04 LTS")
    flavor = registry.add_resource_template(
        "m1.small",
        "Small",
        defaults={
            "occi.compute.cores": 1,
            "occi.compute.memory": 2,
            "occi.compute.ephemeral_storage.size": 20,
        },
    )
    assert image.depends == (c.OS_TPL,) and image.applies == (c.COMPUTE,)
    assert image.location == "/mixin/os_tpl/ubuntu-22.04/"
    assert flavor.depends == (c.RESOURCE_TPL,) and flavor.applies == (c.COMPUTE,)
    assert registry.templates(c.OS_TPL) == (image,)
    assert registry.templates(c.RESOURCE_TPL) == (flavor,)
    assert registry.is_template(image.type_id, c.OS_TPL)
    assert not registry.is_template(c.OS_TPL, c.OS_TPL)
    assert registry.defaults(c.COMPUTE, [flavor.type_id]) == {
        "occi.compute.cores": 1,
        "occi.compute.memory": 2.0,
        "occi.compute.ephemeral_storage.size": 20.0,
    }
    with pytest.raises(ValueError, match="unknown attribute"):
        registry.add_resource_template("bad", "Bad", defaults={"occi.storage.size": 1})


def test_duplicate_categories_conflict(registry: Registry) -> None:
    registry.add_os_template("centos-9", "CentOS 9")
    with pytest.raises(OcciConflict) as info:
        registry.add_os_template("centos-9", "CentOS 9 again")
    assert info.value.status == 409
    clash = Mixin(scheme="http://example.com/tags#", term="x", location="/mixin/os_tpl/centos-9/")
    with pytest.raises(OcciConflict, match="location"):
        registry.add(clash)


def test_user_mixins(registry: Registry) -> None:
    tag = Mixin(
        scheme="http://example.com/tags#", term="prod", title="Production", location="/tag/prod/"
    )
    registry.add_user_mixin(tag)
    assert registry.by_location("/tag/prod/") == tag
    assert registry.remove_mixin(tag.type_id) == tag
    assert registry.by_location("/tag/prod/") is None
    with pytest.raises(NotFound):
        registry.remove_mixin(tag.type_id)
    with pytest.raises(OcciValidationError, match="reserved"):
        registry.add_user_mixin(Mixin(scheme=c.INFRA, term="mine", location="/mine/"))
    with pytest.raises(OcciValidationError, match="location"):
        registry.add_user_mixin(Mixin(scheme="http://example.com/tags#", term="nowhere"))
    with pytest.raises(OcciValidationError, match="location"):
        registry.add_user_mixin(Mixin(scheme="http://example.com/tags#", term="x", location="rel/"))
    with pytest.raises(OcciValidationError, match="user-defined"):
        registry.remove_mixin(c.OS_TPL)


def test_mixin_with_dependants_is_not_removed(registry: Registry) -> None:
    base = Mixin(scheme="http://example.com/tags#", term="base", location="/tag/base/")
    registry.add_user_mixin(base)
    registry.add(
        Mixin(
            scheme="http://example.com/tags#",
            term="sub",
            depends=(base.type_id,),
            location="/tag/sub/",
        )
    )
    with pytest.raises(OcciConflict):
        registry.remove_mixin(base.type_id)


def test_references_must_exist(registry: Registry) -> None:
    with pytest.raises(OcciValidationError, match="unknown kind"):
        registry.add(
            Kind(scheme="http://example.com/x#", term="thing", parent="http://example.com/x#nope")
        )
    with pytest.raises(OcciValidationError, match="unknown action"):
        registry.add(Kind(scheme="http://example.com/x#", term="thing", actions=(CA + "fly",)))


# -- discovery ----------------------------------------------------------------------------------


def test_filter_by_os_tpl_selects_the_images(registry: Registry) -> None:
    image = registry.add_os_template("ubuntu", "Ubuntu")
    registry.add_resource_template("small", "Small")
    assert registry.related([c.OS_TPL]) == (registry.mixin(c.OS_TPL), image)


def test_filter_by_compute(registry: Registry) -> None:
    found = {x.type_id for x in registry.related([c.COMPUTE])}
    assert c.COMPUTE in found and CA + "stop" in found
    assert {c.OS_TPL, c.RESOURCE_TPL, c.SSH_KEY, c.USER_DATA} <= found
    assert c.NETWORK not in found and c.IPNETWORK not in found
    assert registry.related(["http://example.com/x#unknown"]) == ()
    kinds = {x.type_id for x in registry.related([c.RESOURCE]) if isinstance(x, Kind)}
    assert kinds == {c.RESOURCE, c.COMPUTE, c.NETWORK, c.STORAGE}


def test_actions_for(registry: Registry) -> None:
    assert registry.actions_for(c.STORAGE) == (
        "http://schemas.ogf.org/occi/infrastructure/storage/action#online",
        "http://schemas.ogf.org/occi/infrastructure/storage/action#offline",
    )
    assert registry.actions_for(c.NETWORKINTERFACE) == ()


# -- validation ---------------------------------------------------------------------------------


def test_wrong_type_names_the_attribute(registry: Registry) -> None:
    with pytest.raises(OcciValidationError) as info:
        registry.validate(c.COMPUTE, [], {"occi.compute.cores": "two"})
    assert "occi.compute.cores" in info.value.message
    assert info.value.field == "occi.compute.cores"
    assert info.value.status == 400
    assert isinstance(info.value, InvalidRequest)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("occi.compute.cores", True),
        ("occi.compute.cores", 1.5),
        ("occi.compute.cores", 0),
        ("occi.compute.memory", "2"),
        ("occi.compute.memory", float("nan")),
        ("occi.compute.architecture", "arm"),
        ("occi.compute.hostname", 7),
        ("occi.core.title", ["a"]),
    ],
)
def test_bad_values(registry: Registry, name: str, value: object) -> None:
    with pytest.raises(OcciValidationError, match=name.replace(".", r"\.")):
        registry.validate(c.COMPUTE, [], {name: value})


def test_values_are_normalised(registry: Registry) -> None:
    out = registry.validate(
        c.COMPUTE,
        [],
        {"occi.compute.cores": 2.0, "occi.compute.memory": 4, "occi.core.title": "vm"},
    )
    assert out == {"occi.compute.cores": 2, "occi.compute.memory": 4.0, "occi.core.title": "vm"}
    assert isinstance(out["occi.compute.cores"], int)
    assert isinstance(out["occi.compute.memory"], float)


def test_vlan_range(registry: Registry) -> None:
    assert registry.validate(c.NETWORK, [], {"occi.network.vlan": 4095})
    with pytest.raises(OcciValidationError, match="outside"):
        registry.validate(c.NETWORK, [], {"occi.network.vlan": 4096})


def test_unknown_attribute_refused(registry: Registry) -> None:
    with pytest.raises(OcciValidationError, match=r"unknown attribute occi\.compute\.speed"):
        registry.validate(c.COMPUTE, [], {"occi.compute.speed": 2.0})
    with pytest.raises(OcciValidationError, match="unknown attribute"):
        registry.validate(c.COMPUTE, [], {"occi.storage.size": 2.0})


def test_mixin_attributes_become_known(registry: Registry) -> None:
    out = registry.validate(
        c.COMPUTE, [c.SSH_KEY], {"occi.credentials.ssh.publickey": "ssh-ed25519 AAAA"}
    )
    assert out == {"occi.credentials.ssh.publickey": "ssh-ed25519 AAAA"}


def test_required_attributes(registry: Registry) -> None:
    with pytest.raises(OcciValidationError, match=r"occi\.storage\.size is required"):
        registry.validate(c.STORAGE, [], {})
    with pytest.raises(OcciValidationError, match="publickey is required"):
        registry.validate(c.COMPUTE, [c.SSH_KEY], {})
    assert registry.validate(c.STORAGE, [], {}, mode="update") == {}
    # the provider fills MAC addresses and device ids; clients need not send them
    assert registry.validate(c.NETWORKINTERFACE, [], {"occi.core.target": "/network/n1"})


def test_required_with_default_is_satisfied(registry: Registry) -> None:
    registry.add(
        Mixin(
            scheme="http://example.com/x#",
            term="sized",
            applies=(c.STORAGE,),
            location="/mixin/sized/",
            attributes=(
                Attribute(
                    name="occi.storage.size",
                    type=AttrType.NUMBER,
                    mutable=True,
                    required=True,
                    default=10,
                ),
            ),
        )
    )
    assert registry.validate(c.STORAGE, ["http://example.com/x#sized"], {}) == {}


def test_immutable_attributes(registry: Registry) -> None:
    with pytest.raises(OcciValidationError, match="immutable") as info:
        registry.validate(c.COMPUTE, [], {"occi.compute.state": "active"})
    assert info.value.status == 400
    # write-once attributes may be given at creation
    out = registry.validate(
        c.COMPUTE, [c.USER_DATA], {"occi.compute.userdata": "IyEvYmluL3No", "occi.core.id": "i-1"}
    )
    assert out["occi.compute.userdata"] == "IyEvYmluL3No"
    # and never changed afterwards: a conflict with the current state, 409
    with pytest.raises(OcciConflict) as conflict:
        registry.validate(
            c.COMPUTE,
            [c.USER_DATA],
            {"occi.compute.userdata": "b3RoZXI="},
            mode="update",
            current={"occi.compute.userdata": "IyEvYmluL3No"},
        )
    assert conflict.value.status == 409
    same = registry.validate(
        c.COMPUTE,
        [],
        {"occi.compute.state": "active"},
        mode="update",
        current={"occi.compute.state": "active"},
    )
    assert same == {"occi.compute.state": "active"}
    with pytest.raises(OcciConflict):
        registry.validate(c.COMPUTE, [], {"occi.compute.state": "active"}, mode="replace")


def test_mixins_must_apply_to_the_kind(registry: Registry) -> None:
    with pytest.raises(OcciValidationError, match="does not apply"):
        registry.validate(c.COMPUTE, [c.IPNETWORK], {})
    with pytest.raises(OcciValidationError, match="unknown mixin"):
        registry.validate(c.COMPUTE, ["http://example.com/x#nope"], {})
    tag = Mixin(scheme="http://example.com/tags#", term="any", location="/tag/any/")
    registry.add_user_mixin(tag)
    assert registry.validate(c.STORAGE, [tag.type_id], {"occi.storage.size": 1}) == {
        "occi.storage.size": 1.0
    }


def test_kinds_that_cannot_be_created(registry: Registry) -> None:
    with pytest.raises(OcciValidationError, match="unknown kind"):
        registry.validate("http://example.com/x#vm", [], {})
    with pytest.raises(OcciValidationError, match="cannot be instantiated"):
        registry.validate(c.ENTITY, [], {})


def test_validate_action(registry: Registry) -> None:
    stop = CA + "stop"
    assert registry.validate_action(c.COMPUTE, [], stop, {"method": "poweroff"}) == {
        "method": "poweroff"
    }
    assert registry.validate_action(c.COMPUTE, [], CA + "start", {}) == {}
    with pytest.raises(OcciValidationError, match="method"):
        registry.validate_action(c.COMPUTE, [], stop, {"method": "yank"})
    with pytest.raises(OcciValidationError, match="unknown attribute force"):
        registry.validate_action(c.COMPUTE, [], stop, {"force": True})
    with pytest.raises(OcciValidationError, match="not defined"):
        registry.validate_action(
            c.COMPUTE, [], "http://schemas.ogf.org/occi/infrastructure/network/action#up", {}
        )
    with pytest.raises(OcciValidationError, match="unknown action"):
        registry.validate_action(c.COMPUTE, [], CA + "explode", {})


def test_error_statuses() -> None:
    assert c.OcciParseError("x").status == 400
    assert c.OcciValidationError("x").status == 400
    assert c.OcciConflict("x").status == 409
    assert c.OcciTooLarge("x").status == 413
    assert c.OcciUnsupportedMediaType("x").status == 415
    assert c.OcciNotRenderable("x").status == 400
    assert c.OcciParseError("x").resource == "occi"
