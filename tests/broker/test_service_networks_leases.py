"""Address leases on both databases: lowest free address first, without reading every lease.

Each launch reads only candidates from ``networks.free_from`` up; these check the rule it keeps
(every address of the range below ``free_from`` is leased, the lowest free one is given next)
across transactions, terminations, fixed addresses, a ``free_from`` not known yet (NULL, as
after the migration), a full network, IPv6, and many launches at once from several runtimes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.errors import InvalidRequest
from broker.runtime import Runtime
from broker.service import instances, networks
from broker.service.instances import InstanceView, LaunchRequest
from tests.broker.test_quotas_concurrent import fleet
from tests.broker.test_service_instances import setup_world
from tests.conftest import Tenants


async def launch(
    rt: Runtime, caller: Caller, ami: str, net: str, count: int = 1, private_ip: str | None = None
) -> list[InstanceView]:
    req = LaunchRequest(ami, "t3.micro", count, count, network_id=net, private_ip=private_ip)
    return await instances.launch(rt, caller, req)


def by_address(made: list[InstanceView]) -> list[InstanceView]:
    return sorted(made, key=lambda i: ipaddress.ip_address(i.private_ip or ""))


def ips(made: list[InstanceView]) -> list[str]:
    return [str(i.private_ip) for i in by_address(made)]


async def free_from(rt: Runtime, net: str) -> int | None:
    async with rt.engine.connect() as conn:
        return await conn.scalar(select(m.Network.free_from).where(m.Network.id == net))


async def forget_free_from(rt: Runtime, net: str) -> None:
    """As after the migration: nothing known of where free addresses start."""
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Network).where(m.Network.id == net).values(free_from=None))


async def leased(rt: Runtime, net: str) -> set[str]:
    async with rt.engine.connect() as conn:
        found = await conn.scalars(select(m.Lease.ip).where(m.Lease.network_id == net))
        return set(found.all())


async def check_rule(rt: Runtime, net: networks.NetworkView) -> None:
    """Every address of the range below free_from is leased, and each lease has its interface."""
    offset = await free_from(rt, net.id)
    assert offset is not None
    first = ipaddress.ip_address(net.range_start)
    held = await leased(rt, net.id)
    assert {str(first + n) for n in range(offset)} <= held
    async with rt.engine.connect() as conn:
        nics = await conn.scalars(
            select(m.NetworkInterface.ip).where(m.NetworkInterface.network_id == net.id)
        )
        assert set(nics.all()) == held


def host(net: str, n: int) -> str:
    return str(ipaddress.ip_network(net)[n])


async def test_lowest_first_across_transactions(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n28", cidr="10.30.0.0/28")
    assert (net.range_start, net.range_end) == ("10.30.0.2", "10.30.0.14")
    got = [ips(await launch(rt, tenants.alice, ami, net.id)) for _ in range(3)]
    assert got == [["10.30.0.2"], ["10.30.0.3"], ["10.30.0.4"]]
    assert ips(await launch(rt, tenants.bob, ami, net.id, 3)) == [
        "10.30.0.5",
        "10.30.0.6",
        "10.30.0.7",
    ]
    assert await free_from(rt, net.id) == 6
    await check_rule(rt, net)


async def test_a_terminated_address_is_given_next(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n28", cidr="10.30.0.0/28")
    made = by_address(await launch(rt, tenants.alice, ami, net.id, 6))
    assert ips(made) == [host("10.30.0.0/28", n) for n in range(2, 8)]
    await instances.terminate(rt, tenants.alice, [made[3].id, made[1].id])  # .5 and .3
    assert await free_from(rt, net.id) == 1  # down to .3
    assert ips(await launch(rt, tenants.alice, ami, net.id)) == ["10.30.0.3"]
    assert ips(await launch(rt, tenants.alice, ami, net.id)) == ["10.30.0.5"]
    assert ips(await launch(rt, tenants.alice, ami, net.id)) == ["10.30.0.8"]
    await instances.terminate(rt, tenants.alice, [made[5].id])  # .7, above the lowest free
    assert await free_from(rt, net.id) == 5  # .7
    assert ips(await launch(rt, tenants.alice, ami, net.id, 2)) == ["10.30.0.7", "10.30.0.9"]
    await check_rule(rt, net)


async def test_a_fixed_address_above_free_from_is_skipped(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n28", cidr="10.30.0.0/28")
    (fixed,) = await launch(rt, tenants.alice, ami, net.id, private_ip="10.30.0.4")
    assert fixed.private_ip == "10.30.0.4"
    assert ips(await launch(rt, tenants.alice, ami, net.id, 3)) == [
        "10.30.0.2",
        "10.30.0.3",
        "10.30.0.5",
    ]
    assert await free_from(rt, net.id) == 4  # .6: .4 was skipped over
    with pytest.raises(InvalidRequest, match=re.escape("10.30.0.4 is in use")) as err:
        await launch(rt, tenants.bob, ami, net.id, private_ip="10.30.0.4")
    assert err.value.field == "PrivateIpAddress"
    with pytest.raises(InvalidRequest, match=re.escape("10.30.0.2 is in use")):  # below free_from
        await launch(rt, tenants.bob, ami, net.id, private_ip="10.30.0.2")
    with pytest.raises(InvalidRequest, match=re.escape("is not in 10.30.0.0/28")):
        await launch(rt, tenants.bob, ami, net.id, private_ip="10.30.1.4")
    with pytest.raises(InvalidRequest, match="is not an address"):
        await launch(rt, tenants.bob, ami, net.id, private_ip="10.30.0.x")
    (far,) = await launch(rt, tenants.bob, ami, net.id, private_ip="10.30.0.9")
    assert far.private_ip == "10.30.0.9"
    got = [ips(await launch(rt, tenants.alice, ami, net.id))[0] for _ in range(4)]
    assert got == ["10.30.0.6", "10.30.0.7", "10.30.0.8", "10.30.0.10"]
    await instances.terminate(rt, tenants.alice, [fixed.id])  # .4 comes back
    assert ips(await launch(rt, tenants.alice, ami, net.id)) == ["10.30.0.4"]
    await check_rule(rt, net)


async def test_free_from_not_known_yet(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n28", cidr="10.30.0.0/28")
    assert await free_from(rt, net.id) == 0  # a new network: its first address
    made = by_address(await launch(rt, tenants.alice, ami, net.id, 5))
    await instances.terminate(rt, tenants.alice, [made[3].id, made[1].id])  # .5 and .3
    await forget_free_from(rt, net.id)
    await instances.terminate(rt, tenants.alice, [made[0].id])  # a release while NULL: stays
    assert await free_from(rt, net.id) is None
    assert ips(await launch(rt, tenants.alice, ami, net.id, 2)) == ["10.30.0.2", "10.30.0.3"]
    assert await free_from(rt, net.id) == 3  # .4 is leased: .5 may be free
    await forget_free_from(rt, net.id)
    (fixed,) = await launch(rt, tenants.alice, ami, net.id, private_ip="10.30.0.8")
    assert fixed.private_ip == "10.30.0.8"
    assert await free_from(rt, net.id) == 3  # a fixed address sets it too, once known
    got = [ips(await launch(rt, tenants.alice, ami, net.id))[0] for _ in range(4)]
    assert got == ["10.30.0.5", "10.30.0.7", "10.30.0.9", "10.30.0.10"]
    await check_rule(rt, net)


async def test_a_full_network_refuses_as_before(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n29", cidr="10.30.0.0/29")
    assert (net.range_start, net.range_end) == ("10.30.0.2", "10.30.0.6")
    assert len(await launch(rt, tenants.alice, ami, net.id, 4)) == 4
    before = await leased(rt, net.id)
    with pytest.raises(InvalidRequest) as err:
        await launch(rt, tenants.alice, ami, net.id, 2)  # one left: no partial launch
    assert str(err.value) == f"the network '{net.id}' has no free addresses left"
    assert (err.value.field, err.value.resource) == ("InsufficientFreeAddresses", "network")
    assert await leased(rt, net.id) == before
    assert ips(await launch(rt, tenants.alice, ami, net.id)) == ["10.30.0.6"]
    assert await free_from(rt, net.id) == 5  # past the end
    for forget in (False, True):
        if forget:
            await forget_free_from(rt, net.id)
        with pytest.raises(InvalidRequest, match="no free addresses left") as err:
            await launch(rt, tenants.bob, ami, net.id)
        assert err.value.field == "InsufficientFreeAddresses"
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Instance)) == 5


async def test_ipv6_networks_lease_lowest_first(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="v6", cidr="fd00:30::/120")
    assert (net.range_start, net.range_end) == ("fd00:30::2", "fd00:30::ff")
    made = await launch(rt, tenants.alice, ami, net.id, 3)
    assert ips(made) == ["fd00:30::2", "fd00:30::3", "fd00:30::4"]
    (fixed,) = await launch(rt, tenants.alice, ami, net.id, private_ip="fd00:30:0::0005")
    assert fixed.private_ip == "fd00:30::5"  # stored as the leases store it
    with pytest.raises(InvalidRequest, match="is in use"):
        await launch(rt, tenants.alice, ami, net.id, private_ip="fd00:30::5")
    assert ips(await launch(rt, tenants.alice, ami, net.id, 2)) == ["fd00:30::6", "fd00:30::7"]
    low = min(made, key=lambda i: ipaddress.ip_address(i.private_ip or "::"))
    await instances.terminate(rt, tenants.alice, [low.id])
    assert await free_from(rt, net.id) == 0
    assert ips(await launch(rt, tenants.alice, ami, net.id)) == ["fd00:30::2"]
    await forget_free_from(rt, net.id)
    assert ips(await launch(rt, tenants.alice, ami, net.id, 10)) == [
        f"fd00:30::{n:x}" for n in range(8, 18)
    ]
    await check_rule(rt, net)


async def test_a_refused_launch_takes_no_address_from_its_batch(
    rt: Runtime, tenants: Tenants
) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n28", cidr="10.30.0.0/28")
    await launch(rt, tenants.alice, ami, net.id, private_ip="10.30.0.3")
    asks = [LaunchRequest(ami, "t3.micro", network_id=net.id) for _ in range(6)]
    asks[2] = LaunchRequest(ami, "t3.micro", network_id=net.id, private_ip="10.30.0.3")
    asks[4] = LaunchRequest(ami, "t3.micro", 20, 20, network_id=net.id)  # more than there are
    asks.append(LaunchRequest(ami, "t3.micro", 2, 2, network_id=net.id, client_token="tok"))
    asks.append(asks[-1])  # the same token twice: one set
    got = await asyncio.gather(
        *[instances.launch(rt, tenants.alice, a) for a in asks], return_exceptions=True
    )
    assert isinstance(got[2], InvalidRequest) and "in use" in str(got[2])
    assert isinstance(got[4], InvalidRequest) and got[4].field == "InsufficientFreeAddresses"
    made = [g for g in got if isinstance(g, list)]
    assert len(made) == 6 and [i.id for i in made[-1]] == [i.id for i in made[-2]]
    given = ips([i for g in made[:-1] for i in g])
    assert given == ["10.30.0.2", *[f"10.30.0.{n}" for n in range(4, 9)]]
    assert await leased(rt, net.id) == {"10.30.0.3", *given}
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Instance)) == 1 + 6
    await check_rule(rt, net)


async def test_concurrent_launches_get_distinct_lowest_addresses(
    rt: Runtime, tenants: Tenants, tmp_path: Path, db_url: str
) -> None:
    """Many launches at once from several runtimes (as several broker processes would)."""
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="n24", cidr="10.30.0.0/24")
    early = await launch(rt, tenants.alice, ami, net.id, 6)
    async with fleet(rt, tmp_path, db_url) as rts:
        callers = [tenants.alice, tenants.bob]
        ending = asyncio.ensure_future(
            instances.terminate(rt, tenants.alice, [early[0].id, early[3].id])
        )
        got = await asyncio.gather(
            *[launch(rts[i % len(rts)], callers[i % 2], ami, net.id, 1 + i % 3) for i in range(30)]
        )
        await ending
    made = [i for g in got for i in g]
    assert len(made) == sum(1 + i % 3 for i in range(30))
    addresses = [i.private_ip for i in made]
    assert len(set(addresses)) == len(addresses)
    held = await leased(rt, net.id)
    assert set(addresses) <= held and len(held) == len(made) + 4
    await check_rule(rt, net)
    # what is free now is the lowest free first: a launch takes the lowest address not held
    first = ipaddress.ip_address(net.range_start)
    lowest = next(str(first + n) for n in range(250) if str(first + n) not in held)
    assert ips(await launch(rt, tenants.bob, ami, net.id)) == [lowest]


async def test_one_transaction_sees_what_it_took(rt: Runtime, tenants: Tenants) -> None:
    """Plans in one transaction, before anything is written, never give an address twice."""
    net = await networks.create(rt, SYSTEM, name="n28", cidr="10.30.0.0/28")
    leasing = networks.Leasing()
    async with rt.engine.connect() as conn:

        async def plan(count: int, fixed: str | None = None) -> list[str]:
            rids = [f"i-{n:017x}" for n in range(count)]
            got = await networks.plan_interfaces(conn, tenants.alice, net, rids, fixed, leasing)
            return [got.addresses[r] for r in rids]

        assert await plan(1, "10.30.0.5") == ["10.30.0.5"]
        assert await plan(4) == ["10.30.0.2", "10.30.0.3", "10.30.0.4", "10.30.0.6"]
        for taken in ("10.30.0.5", "10.30.0.3"):
            with pytest.raises(InvalidRequest, match="is in use"):
                await plan(1, taken)
        assert await plan(1, "10.30.0.9") == ["10.30.0.9"]
        assert await plan(3) == ["10.30.0.7", "10.30.0.8", "10.30.0.10"]
        with pytest.raises(InvalidRequest, match="no free addresses left"):
            await plan(5)  # four left: takes none of them
        assert await plan(4) == ["10.30.0.11", "10.30.0.12", "10.30.0.13", "10.30.0.14"]
        await conn.rollback()
