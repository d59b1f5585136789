"""What one scheduler cycle costs the database, and that its merged statements change nothing.

Dispatch reads the intents (their own columns only), then the specs of the launches not in
flight yet (instance, image and target columns in one statement, then interfaces, groups and
tags): a fixed number of statements however many launches a cycle carries, and none for
launches still in flight from an earlier cycle. A finished batch of launches is written by one
UPDATE that sets the new state only where the launch is still the intent. On both databases:
the specs a backend gets are what :func:`broker.specs.launch_specs` reads on its own, a newer
intent written between placement and dispatch is the one carried out, and a launch that a
terminate overtook keeps its reference but not its state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import event, func, select

from broker import model as m
from broker import scheduler as scheduler_module
from broker.auth import SYSTEM, Caller
from broker.monitor import Monitor
from broker.protocols import LaunchSpec, Placement
from broker.runtime import Runtime
from broker.scheduler import Scheduler, Work
from broker.service import images, instances, keypairs, networks, security_groups
from broker.service.instances import LaunchRequest
from broker.specs import launch_specs
from broker.states import Action, State
from policies.placement import DefaultPolicy
from tests.conftest import make_user
from tests.fakes import FakeBackend
from tests.harness import add_fake_host, use_backend


class RecordingBackend(FakeBackend):
    """A fake host that keeps every spec it is handed."""

    specs: ClassVar[dict[str, LaunchSpec]] = {}
    hold: ClassVar[asyncio.Event | None] = None  # when set, launches wait for it

    async def launch(self, spec: LaunchSpec) -> Placement:
        RecordingBackend.specs[spec.instance_id] = spec
        if RecordingBackend.hold is not None:
            await RecordingBackend.hold.wait()
        return await super().launch(spec)


@contextlib.contextmanager
def statements(rt: Runtime, whole: bool = False) -> Iterator[list[str]]:
    """The SQL statements run inside the block (an executemany counts once): their first word,
    or with ``whole`` their whole text. The BEGIN of a transaction is not one (broker.db)."""
    seen: list[str] = []

    def on_execute(*args: Any) -> None:
        text = str(args[2])
        if text.startswith("BEGIN"):
            return
        seen.append(text if whole else text.split(None, 1)[0].upper())

    engine = rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


@pytest.fixture
async def world(rt: Runtime) -> AsyncIterator[tuple[Runtime, Caller, str]]:
    """A live fake host, a public image and a user: (runtime, user, image id)."""
    RecordingBackend.specs, RecordingBackend.hold = {}, None
    use_backend(rt, RecordingBackend)
    view = await add_fake_host(rt, cpu=256, memory_mb=262144, console="serial")
    await Monitor(rt).cycle()
    assert rt.backends is not None
    await rt.backends.get(view.id)
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    yield rt, await make_user(rt, "alice"), img.id


async def launch(rt: Runtime, who: Caller, image: str, n: int) -> list[str]:
    return [i.id for i in await instances.launch(rt, who, LaunchRequest(image, "t3.micro", n, n))]


async def test_specs_a_backend_gets_are_what_launch_specs_reads(
    world: tuple[Runtime, Caller, str],
) -> None:
    rt, alice, image = world
    await keypairs.create(rt, alice, "k1")
    group = await security_groups.create(rt, alice, "web", "web servers")
    net = await networks.create(rt, SYSTEM, name="n1", cidr="10.40.0.0/24")
    rich = await instances.launch(
        rt,
        alice,
        LaunchRequest(
            image,
            "t3.micro",
            2,
            2,
            key_name="k1",
            user_data=b"#!/bin/sh\necho hi\n",
            security_group_ids=(group.id,),
            network_id=net.id,
            tags={"env": "prod", "team": "a"},
            hostname="web",
        ),
    )
    plain = await launch(rt, alice, image, 1)
    rids = [i.id for i in rich] + plain
    sched = Scheduler(rt, DefaultPolicy())
    await sched.place()
    await sched.dispatch()
    await sched.drain()
    got = RecordingBackend.specs
    assert sorted(got) == sorted(rids)
    async with rt.engine.connect() as conn:
        alone = await launch_specs(conn, rids, sched.policy.target_settings)
    assert got == alone  # every field, from either read
    spec = got[rich[0].id]
    assert spec.key_name == "k1" and spec.public_key and spec.public_key.startswith("ssh-rsa ")
    assert spec.security_groups == (group.id,)
    assert spec.tags == {"env": "prod", "team": "a"}
    assert spec.user_data == b"#!/bin/sh\necho hi\n"
    assert [(n.network, n.cidr) for n in spec.nics] == [("n1", "10.40.0.0/24")]
    assert spec.nics[0].ip and spec.nics[0].ip.startswith("10.40.0.")
    assert spec.image_kind == "kernel" and spec.image_kernel == "/k" and spec.image_id == image
    assert spec.target_settings["console"] == "serial" and spec.owner_id == alice.user_id
    assert (spec.vcpus, spec.memory_mb) == (2, 1024)
    assert got[plain[0]].key_name is None and got[plain[0]].public_key is None
    assert got[plain[0]].tags == {} and got[plain[0]].user_data is None


@pytest.mark.parametrize("count", [2, 12])
async def test_a_cycle_runs_the_same_statements_for_any_number_of_launches(
    world: tuple[Runtime, Caller, str], count: int
) -> None:
    rt, alice, image = world
    rids = await launch(rt, alice, image, count)
    sched = Scheduler(rt, DefaultPolicy())
    with statements(rt) as placing:
        await sched.place()
    with statements(rt) as dispatching:
        await sched.dispatch()
    await sched.drain()
    assert sorted(RecordingBackend.specs) == sorted(rids)
    # placement: the pending instances, the targets (held resources, samples, rows: burst
    # flavor counts only when there is a burst target), one UPDATE and the events
    assert placing == ["SELECT"] * 4 + ["UPDATE", "INSERT"]
    # dispatch: the work, its launches' own columns, then interfaces, groups and tags
    assert dispatching == ["SELECT"] * 5


async def test_a_cycle_writes_its_placements_a_chunk_per_transaction(
    world: tuple[Runtime, Caller, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big cycle lets go of SQLite's write lock between chunks (an EC2 worker's launches
    wait for one chunk, not a whole cycle); every decision is still written, with its event."""
    rt, alice, image = world
    monkeypatch.setattr(scheduler_module, "PLACE_CHUNK", 4)
    rids = await launch(rt, alice, image, 10)
    sched = Scheduler(rt, DefaultPolicy())
    with statements(rt) as placing:
        decisions = await sched.place()
    assert sorted(d.instance_id for d in decisions if d.target_id) == sorted(rids)
    # three transactions of 4, 4 and 2: an UPDATE and its events' INSERT each
    assert placing == ["SELECT"] * 4 + ["UPDATE", "INSERT"] * 3
    async with rt.engine.connect() as conn:
        states = (await conn.execute(select(m.Instance.state).where(m.Instance.id.in_(rids)))).all()
        moves = await conn.scalar(
            select(func.count())
            .select_from(m.Event)
            .where(m.Event.resource_id.in_(rids), m.Event.to_state == "prolog")
        )
    assert [s for (s,) in states] == ["prolog"] * 10 and moves == 10


async def test_launches_in_flight_are_not_read_again(world: tuple[Runtime, Caller, str]) -> None:
    rt, alice, image = world
    RecordingBackend.hold = asyncio.Event()
    first = await launch(rt, alice, image, 3)
    sched = Scheduler(rt, DefaultPolicy())
    await sched.place()
    await sched.dispatch()
    for _ in range(50):  # until all three are inside the backend
        if len(RecordingBackend.specs) == 3:
            break
        await asyncio.sleep(0.01)
    assert sorted(RecordingBackend.specs) == sorted(first)
    with statements(rt, whole=True) as again:
        await sched.dispatch()
    # the work only, without what a spec needs: nothing read or decoded for what is in flight
    assert len(again) == 1 and again[0].startswith("SELECT")
    assert "targets.settings" not in again[0] and "images.mappings" not in again[0]
    second = await launch(rt, alice, image, 2)
    await sched.place()
    with statements(rt) as more:
        await sched.dispatch()
    assert more == ["SELECT"] * 5
    RecordingBackend.hold.set()
    await sched.drain()
    assert sorted(RecordingBackend.specs) == sorted(first + second)
    for rid in first + second:
        assert (await instances.get(rt, alice, rid)).state is State.RUNNING


async def test_a_newer_intent_between_placement_and_dispatch_is_the_one_carried_out(
    world: tuple[Runtime, Caller, str],
) -> None:
    rt, alice, image = world
    keep, gone = await launch(rt, alice, image, 2)
    sched = Scheduler(rt, DefaultPolicy())
    decisions = await sched.place()
    assert all(d.target_id for d in decisions)
    await instances.terminate(rt, alice, [gone])
    await sched.dispatch()
    await sched.drain()
    assert list(RecordingBackend.specs) == [keep]  # the terminated one never reached a target
    assert (await instances.get(rt, alice, keep)).state is State.RUNNING
    view = await instances.get(rt, alice, gone)
    assert view.state is State.DONE and view.state_reason == "terminated before launch"


async def test_one_write_records_a_batch_of_launches_and_spares_a_newer_intent(
    world: tuple[Runtime, Caller, str],
) -> None:
    rt, alice, image = world
    rids = await launch(rt, alice, image, 3)
    sched = Scheduler(rt, DefaultPolicy())
    await sched.place()
    async with rt.engine.connect() as conn:
        rows = {
            r[0]: r
            for r in await conn.execute(
                select(
                    m.Instance.id, m.Instance.intent_at, m.Instance.target_id, m.Instance.attempts
                ).where(m.Instance.id.in_(rids))
            )
        }
    await instances.terminate(rt, alice, [rids[2]])  # overtakes its launch before it is written
    work = [
        Work(rid, Action.LAUNCH, rows[rid][1], State.PROLOG, rows[rid][2], None, rows[rid][3])
        for rid in rids
    ]
    states = [State.RUNNING, State.POWEROFF, State.RUNNING]  # poweroff cannot follow prolog
    done = [
        (w, Placement(ref=f"dom-{i}", state=s))
        for i, (w, s) in enumerate(zip(work, states, strict=True))
    ]
    with statements(rt) as written:
        await sched._write_launched(done)
    assert written == ["SELECT", "UPDATE", "INSERT"]  # however many launches finished
    async with rt.engine.connect() as conn:
        got = {
            r[0]: r[1:]
            for r in await conn.execute(
                select(
                    m.Instance.id,
                    m.Instance.state,
                    m.Instance.intent,
                    m.Instance.backend_ref,
                    m.Instance.state_reason,
                ).where(m.Instance.id.in_(rids))
            )
        }
        moved = (
            await conn.execute(
                select(m.Event.resource_id, m.Event.from_state, m.Event.to_state).where(
                    m.Event.resource_id.in_(rids), m.Event.message == "launched"
                )
            )
        ).all()
    assert got[rids[0]] == ("running", None, "dom-0", "")
    assert got[rids[1]] == ("boot", None, "dom-1", "")
    # the terminate keeps its state and intent; the reference is what it needs to find it
    assert got[rids[2]][0] != "running" and got[rids[2]][1:3] == ("terminate", "dom-2")
    assert sorted(moved) == sorted([(rids[0], "prolog", "running"), (rids[1], "prolog", "boot")])
    await sched.dispatch()  # and the terminate is carried out on the target, by its reference
    await sched.drain()
    assert (await instances.get(rt, alice, rids[2])).state is State.DONE


async def test_dispatch_reads_the_intent_index_not_every_instance(sqlite_rt: Runtime) -> None:
    """A stream of launches leaves thousands of instances behind: the cycle's read of the
    intents must not grow with them (SQLite scans the table for ``intent IS NOT NULL``)."""
    plans: list[str] = []

    def on_execute(conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        raw = conn.connection.dbapi_connection
        plans.extend(str(row[-1]) for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params))

    engine = sqlite_rt.engine.sync_engine
    sched = Scheduler(sqlite_rt, DefaultPolicy())
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        await sched.dispatch()
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
    scans = [p for p in plans if p.startswith("SCAN instances")]
    assert not scans and any("INDEX ix_instances_intent" in p for p in plans), plans
