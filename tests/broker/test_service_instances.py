"""The service layer on both databases: launch, idempotency, ownership, lifecycle, bad input."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from broker import model as m
from broker.auth import SYSTEM
from broker.errors import InvalidRequest, InvalidState, NotFound
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets
from broker.service.instances import InstanceFilter, LaunchRequest
from broker.states import Action, State
from policies.placement import DefaultPolicy
from tests.conftest import Tenants
from tests.fakes import FakeBackend
from tests.harness import add_fake_host, use_backend


async def setup_world(rt: Runtime, cpu: int = 8) -> str:
    assert rt.backends is not None
    use_backend(rt)
    await add_fake_host(rt, cpu=cpu)
    await Monitor(rt).cycle()
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    return img.id


async def settle(rt: Runtime) -> None:
    sched = Scheduler(rt, DefaultPolicy())
    for _ in range(4):
        await sched.cycle()
        await sched.drain()


async def count(rt: Runtime, table: type[m.Base]) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def test_launch_places_and_runs(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    got = await instances.launch(
        rt, tenants.alice, LaunchRequest(ami, "t3.micro", 2, 2, tags={"Name": "web"})
    )
    assert [i.state for i in got] == [State.PENDING, State.PENDING]
    assert all(i.private_ip and i.private_ip.startswith("10.11.0.") for i in got)
    assert len({i.private_ip for i in got}) == 2
    await settle(rt)
    page = await instances.describe(rt, tenants.alice)
    assert {i.state for i in page.items} == {State.RUNNING}
    assert {i.target_name for i in page.items} == {"h1"}
    assert page.items[0].tags == {"Name": "web"}


async def test_same_client_token_gives_one_set_even_concurrently(
    rt: Runtime, tenants: Tenants
) -> None:
    ami = await setup_world(rt)
    req = LaunchRequest(ami, "t3.micro", 1, 3, client_token="tok-1")
    results = await asyncio.gather(
        *[instances.launch(rt, tenants.alice, req) for _ in range(8)], return_exceptions=True
    )
    sets = {tuple(sorted(i.id for i in r)) for r in results if not isinstance(r, BaseException)}
    assert len(sets) == 1, results
    again = await instances.launch(rt, tenants.alice, req)
    assert tuple(sorted(i.id for i in again)) in sets
    assert await count(rt, m.Instance) == 3
    other = await instances.launch(rt, tenants.bob, req)  # a token is per user
    assert {i.id for i in other}.isdisjoint(next(iter(sets)))


async def test_another_tenant_cannot_see_or_touch(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    (mine,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    assert (await instances.describe(rt, tenants.bob)).items == []
    assert (await instances.describe(rt, tenants.bob, InstanceFilter(ids=(mine.id,)))).items == []
    with pytest.raises(NotFound):
        await instances.get(rt, tenants.bob, mine.id)
    for action in Action:
        if action in (Action.LAUNCH, Action.MIGRATE):
            continue
        with pytest.raises(NotFound):
            await instances.act(rt, tenants.bob, [mine.id], action)
    with pytest.raises(NotFound):
        await instances.console(rt, tenants.bob, mine.id)
    assert (await instances.get(rt, tenants.alice, mine.id)).state is State.PENDING
    assert (await instances.get(rt, tenants.admin, mine.id)).id == mine.id


async def test_lifecycle_through_actions(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    alice = tenants.alice
    steps = [
        (Action.STOP, State.SHUTDOWN, State.POWEROFF),
        (Action.START, State.BOOT, State.RUNNING),
        (Action.REBOOT, State.RUNNING, State.RUNNING),
        (Action.SUSPEND, State.RUNNING, State.SUSPENDED),
        (Action.RESUME, State.SUSPENDED, State.RUNNING),
    ]
    for action, at_once, after in steps:
        (change,) = await instances.act(rt, alice, [inst.id], action)
        assert change.current is at_once, action
        await settle(rt)
        assert (await instances.get(rt, alice, inst.id)).state is after, action
    with pytest.raises(InvalidState):
        await instances.act(rt, alice, [inst.id], Action.RESUME)
    (change,) = await instances.act(rt, alice, [inst.id], Action.TERMINATE)
    assert change.current is State.EPILOG
    await settle(rt)
    assert (await instances.get(rt, alice, inst.id)).state is State.DONE
    assert await count(rt, m.Lease) == 0
    async with rt.engine.connect() as conn:
        moves = (
            await conn.execute(
                select(m.Event.from_state, m.Event.to_state)
                .where(m.Event.resource_id == inst.id, m.Event.kind == "transition")
                .order_by(m.Event.id)
            )
        ).all()
    assert moves[0] == ("", "pending") and moves[-1] == ("epilog", "done")


async def test_bad_launches_create_nothing(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    bad = [
        LaunchRequest("ami-nothex", "t3.micro"),
        LaunchRequest("ami-0123456789abcdef0", "t3.micro"),
        LaunchRequest(ami, "t9.huge"),
        LaunchRequest(ami, "t3.micro", 2, 1),
        LaunchRequest(ami, "t3.micro", 1, 1001),
        LaunchRequest(ami, "t3.micro", user_data=b"x" * 16385),
        LaunchRequest(ami, "t3.micro", key_name="nope"),
        LaunchRequest(ami, "t3.micro", security_group_ids=("sg-0123456789abcdef0",)),
        LaunchRequest(ami, "t3.micro", zone="mars-1a"),
        LaunchRequest(ami, "t3.micro", tags={"aws:x": "y"}),
    ]
    for req in bad:
        with pytest.raises((InvalidRequest, NotFound)):
            await instances.launch(rt, tenants.alice, req)
    assert await count(rt, m.Instance) == 0
    assert await count(rt, m.Lease) == 0


async def test_failed_launches_are_retried_then_failed(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    FakeBackend.fail_launches = 2
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    await settle(rt)
    assert (await instances.get(rt, tenants.alice, inst.id)).state is State.RUNNING
    FakeBackend.fail_launches = 3
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    for _ in range(3):
        await settle(rt)
    view = await instances.get(rt, tenants.alice, inst.id)
    assert view.state is State.FAILED and "launch refused" in view.state_reason
    FakeBackend.fail_launches = 0


async def test_capacity_is_never_exceeded(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt, cpu=4)
    await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro", 3, 3))
    await settle(rt)
    page = await instances.describe(rt, tenants.alice)
    states = sorted(i.state.value for i in page.items)
    assert states == ["pending", "running", "running"]
    pending = next(i for i in page.items if i.state is State.PENDING)
    assert "no target" in pending.state_reason


async def test_host_failure_makes_instances_unknown_then_recovers(
    rt: Runtime, tenants: Tenants
) -> None:
    ami = await setup_world(rt)
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    assert rt.backends is not None
    target = (await targets.get(rt, SYSTEM, "h1")).id
    backend = await rt.backends.get(target)
    assert isinstance(backend, FakeBackend)
    backend.down = True
    monitor = Monitor(rt)
    for _ in range(rt.config.monitor.misses):
        await monitor.cycle()
    assert (await targets.get(rt, SYSTEM, "h1")).state == "error"
    assert (await instances.get(rt, tenants.alice, inst.id)).state is State.UNKNOWN
    backend.down = False
    await monitor.cycle()
    assert (await targets.get(rt, SYSTEM, "h1")).state == "enabled"
    assert (await instances.get(rt, tenants.alice, inst.id)).state is State.RUNNING
    backend.domains.clear()  # gone behind our back
    await monitor.cycle()
    view = await instances.get(rt, tenants.alice, inst.id)
    assert view.state is State.FAILED and view.state_reason.startswith("lost")


async def test_pagination_walks_every_instance_once(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.nano", 1, 25))
    seen: list[str] = []
    token = None
    while True:
        page = await instances.describe(rt, tenants.alice, limit=10, token=token)
        seen += [i.id for i in page.items]
        token = page.next_token
        if token is None:
            break
    assert len(seen) == 25 == len(set(seen))
    with pytest.raises(InvalidRequest):
        await instances.describe(rt, tenants.alice, token="%%%")
