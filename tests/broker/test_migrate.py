"""Migration between hosts of one cluster: asked by an operator, carried out by the scheduler,
watched by the monitor afterwards on the new host; refused cleanly otherwise. Both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker import model as m
from broker.auth import SYSTEM
from broker.errors import Forbidden, InvalidRequest, InvalidState, NoCapacity, NotFound
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, migrate, targets
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from policies.placement import DefaultPolicy
from tests.conftest import Tenants
from tests.fakes import FakeBackend


async def world(rt: Runtime) -> tuple[Scheduler, Monitor, str]:
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: FakeBackend
    )  # type: ignore[arg-type,return-value]
    for name, cluster, cpu in (("h1", "c1", 4), ("h2", "c1", 4), ("h3", "c2", 4), ("h4", "c1", 1)):
        await targets.add(
            rt,
            SYSTEM,
            name=name,
            kind="host",
            driver="fake",
            hypervisor="kvm",
            cluster=cluster,
            settings={"cpu": cpu},
        )
    await targets.set_state(rt, SYSTEM, "h2", "disabled")  # so the launch lands on h1...
    await targets.set_state(rt, SYSTEM, "h3", "disabled")
    await targets.set_state(rt, SYSTEM, "h4", "disabled")
    monitor = Monitor(rt)
    await monitor.cycle()
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    return Scheduler(rt, DefaultPolicy()), monitor, image.id


async def where(rt: Runtime, rid: str) -> tuple[str | None, str, str | None]:
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(m.Target.name, m.Instance.state, m.Instance.intent)
                .join(m.Target, m.Target.id == m.Instance.target_id)
                .where(m.Instance.id == rid)
            )
        ).one()
    return row[0], row[1], row[2]


async def test_an_operator_moves_a_running_instance(rt: Runtime, tenants: Tenants) -> None:
    sched, monitor, image = await world(rt)
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(image, "t3.micro"))
    await sched.cycle()
    await sched.drain()
    assert await where(rt, inst.id) == ("h1", "running", None)
    await targets.set_state(rt, SYSTEM, "h2", "enabled")

    view = await migrate.migrate(rt, tenants.admin, inst.id, "h2")
    assert view.state is State.RUNNING
    assert await where(rt, inst.id) == ("h1", "running", "migrate")
    await monitor.cycle()  # while it moves, the monitor leaves it alone
    assert await where(rt, inst.id) == ("h1", "running", "migrate")
    await sched.cycle()
    await sched.drain()
    assert await where(rt, inst.id) == ("h2", "running", None)
    for _ in range(2):
        await monitor.cycle()  # watched on h2 now: still running, not lost
    assert await where(rt, inst.id) == ("h2", "running", None)
    assert rt.backends is not None
    h2 = await rt.backends.get((await targets.get(rt, SYSTEM, "h2")).id)
    assert isinstance(h2, FakeBackend) and inst.id in h2.domains
    async with rt.engine.connect() as conn:
        said = (
            await conn.scalars(
                select(m.Event.message).where(m.Event.resource_id == inst.id).order_by(m.Event.id)
            )
        ).all()
    assert "migration asked" in said and "migrated to h2" in said
    # stopped and started again afterwards: the actions go to h2
    await instances.act(rt, tenants.alice, [inst.id], Action.STOP)
    await sched.cycle()
    await sched.drain()
    assert await where(rt, inst.id) == ("h2", "poweroff", None)


async def test_refusals_change_nothing(rt: Runtime, tenants: Tenants) -> None:
    sched, _monitor, image = await world(rt)
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(image, "t3.small"))
    (waiting,) = await instances.launch(
        rt, tenants.alice, LaunchRequest(image, "t3.micro", requirements='NAME = "nowhere"')
    )
    await sched.cycle()
    await sched.drain()
    await targets.set_state(rt, SYSTEM, "h4", "enabled")
    before = await where(rt, inst.id)
    refusals: list[tuple[type[Exception], str, str]] = [
        (Forbidden, inst.id, "h2"),  # not an operator
        (InvalidRequest, inst.id, "h1"),  # where it already runs
        (InvalidRequest, inst.id, "h3"),  # another cluster
        (NotFound, inst.id, "h9"),
        (InvalidState, inst.id, "h2"),  # disabled
        (NoCapacity, inst.id, "h4"),  # one CPU, and the instance needs two
        (InvalidState, waiting.id, "h2"),  # pending: nothing to move
        (NotFound, "i-0123456789abcdef0", "h2"),
    ]
    for n, (error, rid, host) in enumerate(refusals):
        caller = tenants.alice if n == 0 else tenants.admin
        with pytest.raises(error):
            await migrate.migrate(rt, caller, rid, host)
    assert await where(rt, inst.id) == before
    await targets.set_state(rt, SYSTEM, "h2", "enabled")
    await instances.act(rt, tenants.alice, [inst.id], Action.REBOOT)
    with pytest.raises(InvalidState, match="busy"):
        await migrate.migrate(rt, tenants.admin, inst.id, "h2")
    with pytest.raises(InvalidRequest):  # not an action users ask through act()
        await instances.act(rt, tenants.alice, [inst.id], Action.MIGRATE)
