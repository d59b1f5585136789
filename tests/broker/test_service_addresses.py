"""Public addresses on both databases: allocate, associate, disassociate, release, isolation."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, update

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.errors import InvalidRequest, InvalidState, NotFound, QuotaExceeded
from broker.runtime import Runtime
from broker.service import addresses, images, instances
from broker.service.addresses import AddressFilter
from broker.service.common import TagFilter
from tests.conftest import Tenants


async def make_instance(rt: Runtime, caller: Caller, state: str = "running") -> str:
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    (inst,) = await instances.launch(rt, caller, instances.LaunchRequest(img.id, "t3.micro"))
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Instance).where(m.Instance.id == inst.id).values(state=state))
    return inst.id


async def public_ip(rt: Runtime, caller: Caller, iid: str) -> str | None:
    return (await instances.get(rt, caller, iid)).public_ip


async def count(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(m.Address)) or 0)


async def test_allocate_takes_lowest_free_address(rt: Runtime, tenants: Tenants) -> None:
    assert addresses.POOL == "198.51.100.0/24"
    a = await addresses.allocate(rt, tenants.alice, tags={"Name": "front"})
    b = await addresses.allocate(rt, tenants.bob)
    assert (a.public_ip, b.public_ip) == ("198.51.100.1", "198.51.100.2")
    assert a.id.startswith("eipalloc-") and a.instance_id is None and a.tags == {"Name": "front"}
    await addresses.release(rt, tenants.alice, allocation_id=a.id)
    c = await addresses.allocate(rt, tenants.alice)
    assert c.public_ip == "198.51.100.1"
    d = await addresses.allocate(rt, tenants.alice, pool="192.0.2.0/30")
    assert d.public_ip == "192.0.2.1"


async def test_concurrent_allocations_get_distinct_addresses(rt: Runtime, tenants: Tenants) -> None:
    got = await asyncio.gather(*[addresses.allocate(rt, tenants.alice) for _ in range(4)])
    assert len({a.public_ip for a in got}) == 4


async def test_bad_allocations_create_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    for pool in ("nope", "10.0.0.1/24", "10.0.0.0/7"):
        with pytest.raises(InvalidRequest) as err:
            await addresses.allocate(rt, alice, pool=pool)
        assert err.value.field == "pool"
    with pytest.raises(InvalidRequest):
        await addresses.allocate(rt, alice, tags={"aws:x": ""})
    await addresses.allocate(rt, alice, pool="192.0.2.0/31")
    await addresses.allocate(rt, alice, pool="192.0.2.0/31")
    with pytest.raises(QuotaExceeded):  # the /31 has two addresses, both taken
        await addresses.allocate(rt, alice, pool="192.0.2.0/31")
    for _ in range(3):
        await addresses.allocate(rt, alice)
    with pytest.raises(QuotaExceeded) as err2:
        await addresses.allocate(rt, alice)
    assert err2.value.resource == "address"
    assert await count(rt) == addresses.MAX_PER_OWNER


async def test_associate_disassociate_release(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    iid = await make_instance(rt, alice)
    addr = await addresses.allocate(rt, alice)
    assoc = await addresses.associate(rt, alice, iid, allocation_id=addr.id)
    assert assoc.startswith("eipassoc-")
    assert await addresses.associate(rt, alice, iid, public_ip=addr.public_ip) == assoc
    assert await public_ip(rt, alice, iid) == addr.public_ip
    (view,) = await addresses.describe(rt, alice, AddressFilter(instance_ids=(iid,)))
    assert (view.instance_id, view.association_id) == (iid, assoc)
    assert view.private_ip is not None
    with pytest.raises(InvalidState) as err:
        await addresses.release(rt, alice, allocation_id=addr.id)
    assert err.value.resource == "address" and err.value.state == "in-use"
    await addresses.disassociate(rt, alice, association_id=assoc)
    assert await public_ip(rt, alice, iid) is None
    with pytest.raises(NotFound) as err2:
        await addresses.disassociate(rt, alice, association_id=assoc)
    assert err2.value.resource == "association"
    with pytest.raises(NotFound):
        await addresses.disassociate(rt, alice, public_ip=addr.public_ip)
    await addresses.associate(rt, alice, iid, public_ip=addr.public_ip)
    await addresses.disassociate(rt, alice, public_ip=addr.public_ip)
    await addresses.release(rt, alice, public_ip=addr.public_ip)
    assert await addresses.describe(rt, alice) == []
    with pytest.raises(NotFound):
        await addresses.release(rt, alice, allocation_id=addr.id)
    async with rt.engine.connect() as conn:
        messages = (
            await conn.scalars(
                select(m.Event.message).where(m.Event.resource_id == addr.id).order_by(m.Event.id)
            )
        ).all()
    assert messages[0] == "address allocated" and messages[-1] == "address released"
    assert messages.count("address associated") == 2


async def test_reassociation_needs_permission(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    one, two = await make_instance(rt, alice), await make_instance(rt, alice)
    a, b = await addresses.allocate(rt, alice), await addresses.allocate(rt, alice)
    await addresses.associate(rt, alice, one, allocation_id=a.id)
    with pytest.raises(InvalidState):  # a is on one already
        await addresses.associate(rt, alice, two, allocation_id=a.id)
    with pytest.raises(InvalidState):  # one has a already
        await addresses.associate(rt, alice, one, allocation_id=b.id)
    await addresses.associate(rt, alice, two, allocation_id=a.id, allow_reassociation=True)
    assert await public_ip(rt, alice, one) is None
    assert await public_ip(rt, alice, two) == a.public_ip
    await addresses.associate(rt, alice, two, allocation_id=b.id, allow_reassociation=True)
    assert await public_ip(rt, alice, two) == b.public_ip
    assert (await addresses.get(rt, alice, a.id)).instance_id is None


async def test_bad_associations_change_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    addr = await addresses.allocate(rt, alice, tags={"role": "web"})
    for state in ("done", "epilog", "failed"):
        iid = await make_instance(rt, alice, state=state)
        with pytest.raises(InvalidState):
            await addresses.associate(rt, alice, iid, allocation_id=addr.id)
    with pytest.raises(NotFound):
        await addresses.associate(rt, alice, "i-0123456789abcdef0", allocation_id=addr.id)
    with pytest.raises(InvalidRequest):
        await addresses.associate(rt, alice, "i-zz", allocation_id=addr.id)
    running = await make_instance(rt, alice)
    with pytest.raises(InvalidRequest):
        await addresses.associate(rt, alice, running)
    with pytest.raises(NotFound):
        await addresses.associate(rt, alice, running, allocation_id="eipalloc-0123456789abcdef0")
    with pytest.raises(NotFound):
        await addresses.associate(rt, alice, running, public_ip="203.0.113.9")
    assert (await addresses.get(rt, alice, addr.id)).instance_id is None
    with pytest.raises(NotFound):
        await addresses.describe(rt, alice, AddressFilter(public_ips=("203.0.113.9",)))
    flt = AddressFilter(tags=(TagFilter("role", ("web",)),))
    assert [a.id for a in await addresses.describe(rt, alice, flt)] == [addr.id]


async def test_another_tenant_cannot_see_or_touch(rt: Runtime, tenants: Tenants) -> None:
    alice, bob = tenants.alice, tenants.bob
    addr = await addresses.allocate(rt, alice)
    hers = await make_instance(rt, alice)
    his = await make_instance(rt, bob)
    assert await addresses.describe(rt, bob) == []
    with pytest.raises(NotFound):
        await addresses.get(rt, bob, addr.id)
    with pytest.raises(NotFound):
        await addresses.describe(rt, bob, AddressFilter(public_ips=(addr.public_ip,)))
    with pytest.raises(NotFound):
        await addresses.associate(rt, bob, his, allocation_id=addr.id)
    with pytest.raises(NotFound):
        await addresses.associate(rt, bob, his, public_ip=addr.public_ip)
    bobs = await addresses.allocate(rt, bob)
    with pytest.raises(NotFound):  # nor point his address at her instance
        await addresses.associate(rt, bob, hers, allocation_id=bobs.id)
    assoc = await addresses.associate(rt, alice, hers, allocation_id=addr.id)
    with pytest.raises(NotFound):
        await addresses.disassociate(rt, bob, association_id=assoc)
    with pytest.raises(NotFound):
        await addresses.release(rt, bob, allocation_id=addr.id)
    assert await public_ip(rt, alice, hers) == addr.public_ip
    assert await public_ip(rt, bob, his) is None
    assert (await addresses.get(rt, tenants.admin, addr.id)).instance_id == hers
