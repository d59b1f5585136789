"""Security groups on both databases: default group, create, rules, delete, isolation."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, update

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.errors import AlreadyExists, InvalidRequest, InvalidState, NotFound
from broker.runtime import Runtime
from broker.service import images, instances
from broker.service import security_groups as sg
from broker.service.common import TagFilter
from broker.service.security_groups import GroupRef, IpPermission, IpRange, SecurityGroupFilter
from tests.conftest import Tenants

TCP22 = IpPermission("tcp", 22, 22, ranges=(IpRange("203.0.113.0/24", "ssh"),))


async def count(rt: Runtime, table: type[m.Base]) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def launch_in(rt: Runtime, caller: Caller, group_id: str) -> str:
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    req = instances.LaunchRequest(img.id, "t3.micro", security_group_ids=(group_id,))
    (inst,) = await instances.launch(rt, caller, req)
    return inst.id


async def test_default_group_is_created_once_on_describe(rt: Runtime, tenants: Tenants) -> None:
    results = await asyncio.gather(*[sg.describe(rt, tenants.alice) for _ in range(4)])
    assert all([g.name for g in r] == ["default"] for r in results)
    (default,) = results[0]
    assert default.id.startswith("sg-")
    (ingress,) = default.ingress
    assert (ingress.protocol, ingress.source_group_id) == ("-1", default.id)
    (egress,) = default.egress
    assert (egress.protocol, egress.cidr, egress.egress) == ("-1", "0.0.0.0/0", True)
    assert await sg.ensure_default(rt, tenants.alice) == default.id
    async with rt.engine.begin() as conn:
        assert await sg.ensure_default(conn, tenants.alice) == default.id
    assert await count(rt, m.SecurityGroup) == 1
    bob_default = await sg.ensure_default(rt, tenants.bob)
    assert bob_default != default.id


async def test_create_describe_and_filters(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    web = await sg.create(rt, alice, "web", "web servers", tags={"tier": "front"})
    assert (web.name, web.description, web.owner_id) == ("web", "web servers", alice.user_id)
    assert web.ingress == () and [r.cidr for r in web.egress] == ["0.0.0.0/0"]
    assert web.tags == {"tier": "front"}
    db = await sg.create(rt, alice, "db", "databases")
    names = [g.name for g in await sg.describe(rt, alice)]
    assert names == ["db", "default", "web"]
    got = await sg.describe(rt, alice, SecurityGroupFilter(group_names=("web", "nope")))
    assert [g.id for g in got] == [web.id]
    got = await sg.describe(rt, alice, SecurityGroupFilter(descriptions=("databases",)))
    assert [g.id for g in got] == [db.id]
    got = await sg.describe(rt, alice, SecurityGroupFilter(tags=(TagFilter("tier"),)))
    assert [g.id for g in got] == [web.id]
    got = await sg.describe(rt, alice, SecurityGroupFilter(group_ids=(db.id,)))
    assert [g.id for g in got] == [db.id]
    assert (await sg.get(rt, alice, db.id)).name == "db"
    with pytest.raises(NotFound) as err:
        await sg.describe(rt, alice, SecurityGroupFilter(names=("web", "nope")))
    assert (err.value.resource, err.value.field) == ("security_group", "nope")
    with pytest.raises(NotFound):
        await sg.describe(rt, alice, SecurityGroupFilter(ids=("sg-0123456789abcdef0",)))


async def test_bad_creates_create_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    await sg.create(rt, alice, "taken")
    with pytest.raises(AlreadyExists) as err:
        await sg.create(rt, alice, "taken")
    assert err.value.resource == "security_group"
    for name in ("", "x" * 256, "sg-abc", "default", "caf\u00e9"):
        with pytest.raises(InvalidRequest):
            await sg.create(rt, alice, name)
    with pytest.raises(InvalidRequest):
        await sg.create(rt, alice, "ok", "d" * 256)
    with pytest.raises(InvalidRequest):
        await sg.create(rt, alice, "ok", tags={"aws:a": "b"})
    assert [g.name for g in await sg.describe(rt, alice)] == ["default", "taken"]
    await sg.create(rt, tenants.bob, "taken")  # names are per owner


async def test_authorize_and_revoke_rules(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    web = await sg.create(rt, alice, "web")
    lb = await sg.create(rt, alice, "lb")
    perms = [
        TCP22,
        IpPermission("6", 80, 443, ranges=(IpRange("0.0.0.0/0"), IpRange("2001:DB8::/32"))),
        IpPermission("icmp", 8, -1, ranges=(IpRange("10.0.0.0/8"),)),
        IpPermission("udp", 53, 53, groups=(GroupRef(group_id=lb.id, description="dns"),)),
        IpPermission("47", ranges=(IpRange("192.0.2.0/24"),)),
        IpPermission("-1", groups=(GroupRef(group_name="web"),)),
    ]
    rules = await sg.authorize_rules(rt, alice, web.id, perms)
    assert len(rules) == 7 and all(r.id.startswith("sgr-") for r in rules)
    assert {r.cidr for r in rules} >= {"2001:db8::/32", "203.0.113.0/24"}
    assert [r.protocol for r in rules] == ["tcp", "tcp", "tcp", "icmp", "udp", "47", "-1"]
    assert rules[4].source_group_id == lb.id and rules[4].description == "dns"
    assert rules[6].source_group_id == web.id and rules[6].from_port is None
    view = await sg.get(rt, alice, web.id)
    assert sorted(r.id for r in view.ingress) == sorted(r.id for r in rules)
    out = await sg.authorize_rules(
        rt,
        alice,
        None,
        [IpPermission("tcp", 443, 443, ranges=(IpRange("10.1.0.0/16"),))],
        egress=True,
        group_name="web",
    )
    assert out[0].egress and len((await sg.get(rt, alice, web.id)).egress) == 2

    with pytest.raises(AlreadyExists) as err:
        await sg.authorize_rules(rt, alice, web.id, [TCP22])
    assert err.value.resource == "permission"
    with pytest.raises(AlreadyExists):  # a duplicate inside one request
        await sg.authorize_rules(
            rt,
            alice,
            web.id,
            [IpPermission("tcp", 1, 2, ranges=(IpRange("10.9.0.0/16"), IpRange("10.9.0.0/16")))],
        )
    gone = await sg.revoke_rules(rt, alice, web.id, [TCP22])
    assert gone == [rules[0].id]
    with pytest.raises(NotFound) as err2:
        await sg.revoke_rules(rt, alice, web.id, [TCP22])
    assert err2.value.resource == "permission"
    with pytest.raises(NotFound):  # an ingress rule is not an egress rule
        await sg.revoke_rules(rt, alice, web.id, rule_ids=[rules[1].id], egress=True)
    assert await sg.revoke_rules(rt, alice, web.id, rule_ids=[rules[1].id]) == [rules[1].id]
    with pytest.raises(NotFound) as err3:
        await sg.revoke_rules(rt, alice, web.id, rule_ids=[rules[1].id])
    assert err3.value.resource == "security_group_rule"
    assert len((await sg.get(rt, alice, web.id)).ingress) == 5


async def test_bad_rules_add_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    web = await sg.create(rt, alice, "web")
    before = await count(rt, m.SecurityGroupRule)
    net = (IpRange("10.0.0.0/8"),)
    bad = [
        IpPermission("tcp", None, 22, ranges=net),
        IpPermission("tcp", 22, 21, ranges=net),
        IpPermission("tcp", -1, 22, ranges=net),
        IpPermission("udp", 0, 65536, ranges=net),
        IpPermission("icmp", 256, 0, ranges=net),
        IpPermission("icmp", -1, 3, ranges=net),
        IpPermission("icmp", 3, -2, ranges=net),
        IpPermission("gre", ranges=net),
        IpPermission("256", ranges=net),
        IpPermission("47", 1, 2, ranges=net),
        IpPermission("tcp", 22, 22),
        IpPermission("tcp", 22, 22, ranges=(IpRange("10.0.0.1/8"),)),
        IpPermission("tcp", 22, 22, ranges=(IpRange("10.0.0.0"),)),
        IpPermission("tcp", 22, 22, ranges=(IpRange("10.0.0.0/33"),)),
        IpPermission("tcp", 22, 22, ranges=(IpRange("bogus/8"),)),
        IpPermission("tcp", 22, 22, ranges=(IpRange("10.0.0.0/8", "\u00e9"),)),
    ]
    for perm in bad:
        with pytest.raises(InvalidRequest):
            await sg.authorize_rules(rt, alice, web.id, [TCP22, perm])
    with pytest.raises(InvalidRequest):
        await sg.authorize_rules(rt, alice, web.id, [])
    with pytest.raises(NotFound):
        missing = GroupRef(group_id="sg-0123456789abcdef0")
        await sg.authorize_rules(rt, alice, web.id, [TCP22, IpPermission("-1", groups=(missing,))])
    with pytest.raises(NotFound):
        await sg.authorize_rules(rt, alice, "sg-0123456789abcdef0", [TCP22])
    with pytest.raises(InvalidRequest):
        await sg.authorize_rules(rt, alice, "sg-bad", [TCP22])
    assert await count(rt, m.SecurityGroupRule) == before


async def test_delete_refuses_while_used(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    web = await sg.create(rt, alice, "web")
    lb = await sg.create(rt, alice, "lb")
    await sg.authorize_rules(rt, alice, web.id, [IpPermission("-1", groups=(GroupRef(lb.id),))])
    with pytest.raises(InvalidState) as err:
        await sg.delete(rt, alice, lb.id)
    assert err.value.resource == "security_group" and web.id in err.value.message
    iid = await launch_in(rt, alice, web.id)
    with pytest.raises(InvalidState) as err:
        await sg.delete(rt, alice, web.id)
    assert iid in err.value.message and err.value.state == "in-use"
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Instance).values(state="done"))
    await sg.delete(rt, alice, name="web")
    await sg.delete(rt, alice, lb.id)
    default = await sg.ensure_default(rt, alice)
    with pytest.raises(InvalidRequest) as err2:
        await sg.delete(rt, alice, default)
    assert err2.value.field == "default"
    with pytest.raises(NotFound):
        await sg.delete(rt, alice, web.id)
    assert [g.name for g in await sg.describe(rt, alice)] == ["default"]
    async with rt.engine.connect() as conn:
        messages = (
            await conn.scalars(select(m.Event.message).where(m.Event.resource_id == web.id))
        ).all()
    assert messages[0] == "security group created" and messages[-1] == "security group deleted"


async def test_another_tenant_cannot_see_or_change(rt: Runtime, tenants: Tenants) -> None:
    web = await sg.create(rt, tenants.alice, "web")
    assert [g.name for g in await sg.describe(rt, tenants.bob)] == ["default"]
    with pytest.raises(NotFound):
        await sg.get(rt, tenants.bob, web.id)
    with pytest.raises(NotFound):
        await sg.describe(rt, tenants.bob, SecurityGroupFilter(names=("web",)))
    with pytest.raises(NotFound):
        await sg.authorize_rules(rt, tenants.bob, web.id, [TCP22])
    with pytest.raises(NotFound):
        await sg.revoke_rules(rt, tenants.bob, web.id, rule_ids=[web.egress[0].id])
    with pytest.raises(NotFound):
        await sg.delete(rt, tenants.bob, web.id)
    with pytest.raises(NotFound):
        await sg.delete(rt, tenants.bob, name="web")
    bobs = await sg.create(rt, tenants.bob, "bobs")
    with pytest.raises(NotFound):  # nor use it as a source
        await sg.authorize_rules(
            rt, tenants.bob, bobs.id, [IpPermission("-1", groups=(GroupRef(web.id),))]
        )
    assert (await sg.get(rt, tenants.alice, web.id)).ingress == ()
    assert (await sg.get(rt, tenants.admin, web.id)).name == "web"
