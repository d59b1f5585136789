"""Operator changes beyond users, groups and quotas leave an audit event: policy set, target add,
state changes and remove, host costs and reservations, image register and deregister, flavor
create. Each change leaves exactly one audit event naming the actor and the resource; a refused
change (bad input, unknown name, not an admin) leaves none. On both databases."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
from sqlalchemy import func, select

from broker import model as m
from broker.auth import Caller
from broker.errors import AlreadyExists, BrokerError, Forbidden, InvalidRequest, NotFound
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.seed import zone_name
from broker.service import flavors, images, policies, reservations, targets
from tests.conftest import Tenants
from tests.fakes import FakeBackend


async def last_event(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.max(m.Event.id))) or 0)


async def audits_after(rt: Runtime, mark: int) -> list[tuple[str, str, str]]:
    """(resource, actor, message) of each audit event written after ``mark``, in order."""
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(m.Event.resource_id, m.Event.actor, m.Event.message)
            .where(m.Event.id > mark, m.Event.kind == "audit")
            .order_by(m.Event.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def audited(rt: Runtime, change: Awaitable[Any]) -> tuple[Any, list[tuple[str, str, str]]]:
    """What ``change`` returned and the audit events it left."""
    mark = await last_event(rt)
    result = await change
    return result, await audits_after(rt, mark)


async def refused(rt: Runtime, change: Awaitable[Any], error: type[BrokerError]) -> None:
    """``change`` is refused with ``error`` and leaves no audit event."""
    mark = await last_event(rt)
    with pytest.raises(error):
        await change
    assert await audits_after(rt, mark) == []


def fake_backends(rt: Runtime) -> None:
    def loader(_driver: str) -> Any:  # Any: the fake's class attributes are not the protocol's
        return FakeBackend

    rt.backends = BackendRegistry(rt.engine, rt.box.open, str(rt.config.data_path), loader=loader)


async def add_host(rt: Runtime, caller: Caller, name: str) -> targets.TargetView:
    return await targets.add(
        rt, caller, name=name, kind="host", driver="fake", hypervisor="kvm", cluster=zone_name(rt)
    )


async def test_policy_set(rt: Runtime, tenants: Tenants) -> None:
    root = tenants.admin
    doc = {"default": {"trigger": "no_local_fit"}}
    view, events = await audited(rt, policies.set_policy(rt, root, doc, "burst when full"))
    assert events == [(f"policy-{view.version}", "root", "policy set")]
    versions = len(await policies.history(rt, root))
    await refused(rt, policies.set_policy(rt, root, "burst always"), InvalidRequest)
    await refused(
        rt, policies.set_policy(rt, root, {"default": {"trigger": "sometimes"}}), InvalidRequest
    )
    await refused(rt, policies.set_policy(rt, tenants.alice, doc), Forbidden)
    assert len(await policies.history(rt, root)) == versions


async def test_target_add_state_and_remove(rt: Runtime, tenants: Tenants) -> None:
    root = tenants.admin
    fake_backends(rt)
    host, events = await audited(rt, add_host(rt, root, "h9"))
    assert events == [(host.id, "root", "target added")]
    for state in ("disabled", "draining", "enabled"):
        view, events = await audited(rt, targets.set_state(rt, root, "h9", state))
        assert view.state == state
        assert events == [(host.id, "root", f"target {state}")]
    left, events = await audited(rt, targets.remove(rt, root, "h9"))
    assert left == [] and events == [(host.id, "root", "target removed")]
    assert await targets.describe(rt, root, "h9") == []


async def test_refused_target_changes_leave_no_event(rt: Runtime, tenants: Tenants) -> None:
    root = tenants.admin
    fake_backends(rt)
    await add_host(rt, root, "h9")
    await refused(rt, add_host(rt, root, "h9"), AlreadyExists)
    await refused(rt, add_host(rt, root, "no spaces"), InvalidRequest)
    await refused(
        rt, targets.add(rt, root, name="h8", kind="toaster", driver="fake"), InvalidRequest
    )
    await refused(rt, add_host(rt, tenants.alice, "h7"), Forbidden)
    await refused(rt, targets.set_state(rt, root, "h9", "off"), InvalidRequest)
    await refused(rt, targets.set_state(rt, root, "h0", "disabled"), NotFound)
    await refused(rt, targets.set_state(rt, tenants.alice, "h9", "disabled"), Forbidden)
    await refused(rt, targets.remove(rt, root, "h0"), NotFound)
    await refused(rt, targets.remove(rt, tenants.alice, "h9"), Forbidden)
    assert [t.name for t in await targets.describe(rt, root, kind="host")] == ["h9"]
    assert (await targets.get(rt, root, "h9")).state == "enabled"


async def test_host_costs_and_reservations(rt: Runtime, tenants: Tenants) -> None:
    root = tenants.admin
    fake_backends(rt)
    host = await add_host(rt, root, "h9")
    view, events = await audited(rt, targets.set_costs(rt, root, "h9", cpu_cost=0.5))
    assert view.cpu_cost == 0.5
    assert events == [(host.id, "root", "host costs set")]
    view, events = await audited(rt, reservations.set_for_host(rt, root, "h9", cpu="2"))
    assert view.reserved_cpu == 2
    assert events == [(host.id, "root", "host reservation set")]
    zone = await reservations.get_cluster(rt, root, zone_name(rt))
    _, events = await audited(
        rt, reservations.set_for_cluster(rt, root, zone_name(rt), memory="10%")
    )
    assert events == [(zone.id, "root", "cluster reservation set")]

    await refused(rt, targets.set_costs(rt, root, "h9", cpu_cost=-1), InvalidRequest)
    await refused(rt, targets.set_costs(rt, root, "h9"), InvalidRequest)
    await refused(rt, targets.set_costs(rt, root, "h0", memory_cost=1), NotFound)
    await refused(rt, targets.set_costs(rt, tenants.alice, "h9", cpu_cost=0), Forbidden)
    await refused(rt, reservations.set_for_host(rt, root, "h9", cpu="lots"), InvalidRequest)
    await refused(rt, reservations.set_for_host(rt, root, "h9"), InvalidRequest)
    await refused(rt, reservations.set_for_host(rt, tenants.alice, "h9", cpu="1"), Forbidden)
    await refused(
        rt, reservations.set_for_cluster(rt, root, zone_name(rt), memory="999%"), InvalidRequest
    )
    after = await targets.get(rt, root, "h9")
    assert (after.cpu_cost, after.reserved_cpu) == (0.5, 2)


async def test_image_register_and_deregister(rt: Runtime, tenants: Tenants) -> None:
    root = tenants.admin
    spec = images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    img, events = await audited(rt, images.register(rt, root, spec))
    assert events == [(img.id, "root", "image registered")]

    await refused(
        rt, images.register(rt, root, images.ImageSpec(name="odd", arch="sparc")), InvalidRequest
    )
    await refused(rt, images.register(rt, tenants.alice, spec), Forbidden)
    await refused(rt, images.deregister(rt, tenants.alice, img.id), Forbidden)
    await refused(rt, images.deregister(rt, root, "ami-nothex"), InvalidRequest)
    await refused(rt, images.deregister(rt, root, "ami-0123456789abcdef0"), NotFound)
    assert (await images.get(rt, root, img.id)).state != "deregistered"

    _, events = await audited(rt, images.deregister(rt, root, img.id))
    assert events == [(img.id, "root", "image deregistered")]
    await refused(rt, images.deregister(rt, root, img.id), NotFound)


async def test_flavor_create(rt: Runtime, tenants: Tenants) -> None:
    root = tenants.admin
    flavor = flavors.FlavorView("c9.huge", 4, 8192, 20, "x86_64", 0.5)
    made, events = await audited(rt, flavors.create(rt, root, flavor))
    assert made == flavor
    assert events == [("c9.huge", "root", "flavor created")]

    await refused(rt, flavors.create(rt, root, flavor), AlreadyExists)
    bad = flavors.FlavorView("c9.none", 0, 8192, 20, "x86_64", 0.5)
    await refused(rt, flavors.create(rt, root, bad), InvalidRequest)
    other = flavors.FlavorView("c9.mine", 1, 512, 0, "x86_64", 0.0)
    await refused(rt, flavors.create(rt, tenants.alice, other), Forbidden)
    assert [f.name for f in await flavors.describe(rt, ("c9.huge", "c9.none", "c9.mine"))] == [
        "c9.huge"
    ]
