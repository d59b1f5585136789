"""Tags on both databases: create across kinds, limits, EC2 delete semantics, paging, isolation."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.errors import Forbidden, InvalidRequest, NotFound, QuotaExceeded
from broker.runtime import Runtime
from broker.seed import zone_name
from broker.service import (
    addresses,
    images,
    instances,
    keypairs,
    networks,
    security_groups,
    tags,
    volumes,
)
from broker.service.tags import TagQuery
from tests.conftest import Tenants


async def count(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(m.Tag)) or 0)


async def one_of_each(rt: Runtime, caller: Caller) -> dict[str, str]:
    """A resource of every taggable kind the caller owns: kind -> id."""
    img = await images.register(
        rt, caller, images.ImageSpec(name="mine", kind="kernel", kernel="/k")
    )
    (inst,) = await instances.launch(rt, caller, instances.LaunchRequest(img.id, "t3.micro"))
    vol = await volumes.create(rt, caller, zone_name(rt), 1)
    return {
        "instance": inst.id,
        "image": img.id,
        "volume": vol.id,
        "snapshot": (await volumes.create_snapshot(rt, caller, vol.id)).id,
        "security_group": (await security_groups.create(rt, caller, "web")).id,
        "address": (await addresses.allocate(rt, caller)).id,
        "key_pair": (await keypairs.create(rt, caller, "k")).key_pair.id,
    }


async def value_of(rt: Runtime, caller: Caller, rid: str) -> dict[str, str]:
    page = await tags.describe(rt, caller, TagQuery(resource_ids=(rid,)))
    return {t.key: t.value for t in page.items}


async def test_create_on_every_kind(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    owned = await one_of_each(rt, alice)
    await tags.create(rt, alice, list(owned.values()), {"env": "prod", "team": ""})
    page = await tags.describe(rt, alice, TagQuery(keys=("env",)))
    assert {t.resource_id: t.resource_type for t in page.items} == {
        rid: kind for kind, rid in owned.items()
    }
    assert (await instances.get(rt, alice, owned["instance"])).tags == {"env": "prod", "team": ""}
    assert (await volumes.get(rt, alice, owned["volume"])).tags["env"] == "prod"
    await tags.create(rt, alice, [owned["volume"]], {"env": "dev"})  # overwrite
    assert await value_of(rt, alice, owned["volume"]) == {"env": "dev", "team": ""}
    page = await tags.describe(rt, alice, TagQuery(values=("dev",)))
    assert [t.resource_id for t in page.items] == [owned["volume"]]
    page = await tags.describe(rt, alice, TagQuery(resource_types=("security_group",)))
    assert {t.key for t in page.items} == {"env", "team"}
    async with rt.engine.connect() as conn:
        events = await conn.scalar(
            select(func.count()).select_from(m.Event).where(m.Event.message == "tags created")
        )
    assert events == len(owned) + 1


async def test_shared_network_and_public_image(rt: Runtime, tenants: Tenants) -> None:
    (net,) = [n for n in await networks.describe(rt, SYSTEM) if n.name == "default"]
    with pytest.raises(Forbidden):
        await tags.create(rt, tenants.alice, [net.id], {"a": "b"})
    await tags.create(rt, tenants.admin, [net.id], {"a": "b"})
    public = await images.register(
        rt,
        tenants.admin,
        images.ImageSpec(name="pub", kind="kernel", kernel="/k", visibility="public"),
    )
    with pytest.raises(Forbidden):
        await tags.create(rt, tenants.alice, [public.id], {"a": "b"})
    await tags.create(rt, tenants.admin, [public.id], {"a": "b"})
    with pytest.raises(NotFound) as err:
        await tags.create(rt, tenants.alice, ["vpc-0123456789abcdef0"], {"a": "b"})
    assert err.value.resource == "vpc"


async def test_bad_tags_create_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    vol = (await volumes.create(rt, alice, zone_name(rt), 1)).id
    bad: list[tuple[list[str], dict[str, str]]] = [
        ([vol], {}),
        ([], {"a": "b"}),
        ([vol], {"": "b"}),
        ([vol], {"k" * 129: "b"}),
        ([vol], {"a": "v" * 257}),
        ([vol], {"aws:name": "b"}),
        ([vol], {"AWS:name": "b"}),
        ([vol, "vol-nothex"], {"a": "b"}),
        ([vol, "r-0123456789abcdef0"], {"a": "b"}),
        ([vol, "bogus"], {"a": "b"}),
        ([vol] * 1001, {"a": "b"}),
    ]
    for rids, kv in bad:
        with pytest.raises(InvalidRequest):
            await tags.create(rt, alice, rids, kv)
    with pytest.raises(QuotaExceeded):
        await tags.create(rt, alice, [vol], {f"k{i}": "" for i in range(51)})
    with pytest.raises(NotFound) as err:
        await tags.create(rt, alice, [vol, "i-0123456789abcdef0"], {"a": "b"})
    assert (err.value.resource, err.value.field) == ("instance", "i-0123456789abcdef0")
    assert await count(rt) == 0
    await tags.create(rt, alice, [vol], {f"k{i}": "" for i in range(50)})
    with pytest.raises(QuotaExceeded) as err2:
        await tags.create(rt, alice, [vol], {"one-more": ""})
    assert err2.value.resource == "tag"
    await tags.create(rt, alice, [vol], {"k0": "v" * 256})  # overwriting stays within the limit
    assert await count(rt) == 50
    await tags.delete(rt, alice, [vol], {"k1": None})
    await tags.create(rt, alice, [vol], {"k" * 128: ""})
    assert await count(rt) == 50


async def test_delete_semantics(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    a = (await volumes.create(rt, alice, zone_name(rt), 1)).id
    b = (await security_groups.create(rt, alice, "g")).id
    start = {"env": "prod", "empty": "", "team": "x", "keep": "y"}
    await tags.create(rt, alice, [a, b], start)
    await tags.delete(rt, alice, [a], {"env": "dev"})  # value differs: kept
    assert await value_of(rt, alice, a) == start
    await tags.delete(rt, alice, [a], {"env": "prod", "empty": "x"})
    assert await value_of(rt, alice, a) == {"empty": "", "team": "x", "keep": "y"}
    await tags.delete(rt, alice, [a], {"empty": ""})  # an empty value matches only ""
    await tags.delete(rt, alice, [a], {"team": None, "absent": None})
    assert await value_of(rt, alice, a) == {"keep": "y"}
    await tags.delete(rt, alice, [a, b])  # no tags: all of them
    assert await count(rt) == 0
    for bad in ({}, {"aws:x": None}):
        with pytest.raises(InvalidRequest):
            await tags.delete(rt, alice, [a], bad)
    with pytest.raises(NotFound):
        await tags.delete(rt, alice, ["vol-0123456789abcdef0"])


async def test_describe_pages(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    vol = (await volumes.create(rt, alice, zone_name(rt), 1)).id
    sg = (await security_groups.create(rt, alice, "g")).id
    await tags.create(rt, alice, [vol, sg], {f"k{i:02}": str(i) for i in range(12)})
    seen: list[tuple[str, str]] = []
    token = None
    while True:
        page = await tags.describe(rt, alice, limit=5, token=token)
        seen += [(t.resource_id, t.key) for t in page.items]
        token = page.next_token
        if token is None:
            break
    assert len(seen) == 24 == len(set(seen)) and seen == sorted(seen)
    for bad in ("%%%", "bm90IGpzb24", "WzFd"):
        with pytest.raises(InvalidRequest):
            await tags.describe(rt, alice, token=bad)
    with pytest.raises(InvalidRequest):
        await tags.describe(rt, alice, limit=0)


async def test_another_tenant_cannot_see_or_change(rt: Runtime, tenants: Tenants) -> None:
    alice, bob = tenants.alice, tenants.bob
    owned = await one_of_each(rt, alice)
    await tags.create(rt, alice, list(owned.values()), {"owner": "alice"})
    assert (await tags.describe(rt, bob)).items == []
    page = await tags.describe(rt, bob, TagQuery(resource_ids=tuple(owned.values())))
    assert page.items == []
    for rid in owned.values():
        with pytest.raises(NotFound):
            await tags.create(rt, bob, [rid], {"owner": "bob"})
        with pytest.raises(NotFound):
            await tags.delete(rt, bob, [rid])
    assert len((await tags.describe(rt, alice)).items) == len(owned)
    assert len((await tags.describe(rt, tenants.admin)).items) == len(owned)
