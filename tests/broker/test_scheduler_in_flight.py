"""The scheduler's per-target limit on operations in flight (``in_flight_per_target``).

A backend whose launches block until the test lets each one go shows that no more than N
launches are ever inside one target's backend at once, that the limit is per target (two
targets run N each at the same time), and that the launches held back proceed as earlier ones
finish, until every instance runs. On both databases.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.config import from_mapping
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.protocols import LaunchSpec, Placement
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets
from broker.service.instances import LaunchRequest
from broker.states import State
from policies.placement import DefaultPolicy
from tests.conftest import make_user
from tests.fakes import FakeBackend

LIMIT = 2
PER_TARGET = 5


@dataclasses.dataclass
class Gate:
    """What the blocking launches did: who is inside a backend now, the most ever at once."""

    active: dict[str, int] = dataclasses.field(default_factory=dict)
    peak: dict[str, int] = dataclasses.field(default_factory=dict)
    started: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    release: dict[str, asyncio.Event] = dataclasses.field(default_factory=dict)

    def total_started(self) -> int:
        return sum(len(v) for v in self.started.values())


class BlockingBackend(FakeBackend):
    """A fake host whose launch stays inside the backend until the test releases it."""

    gate: ClassVar[Gate]

    async def launch(self, spec: LaunchSpec) -> Placement:
        gate, name = BlockingBackend.gate, self.config.name
        gate.active[name] = gate.active.get(name, 0) + 1
        gate.peak[name] = max(gate.peak.get(name, 0), gate.active[name])
        gate.started.setdefault(name, []).append(spec.instance_id)
        released = gate.release.setdefault(spec.instance_id, asyncio.Event())
        try:
            await released.wait()
            return await super().launch(spec)
        finally:
            gate.active[name] -= 1


@pytest.fixture
async def limited_rt(tmp_path: Path, db_url: str) -> AsyncIterator[Runtime]:
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp_path), "local_host": "none"},
            "database": {"url": db_url},
            "scheduler": {"in_flight_per_target": LIMIT},
        },
        env={},
    )
    runtime = await open_runtime(cfg, migrate=False)
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def until(check: object, what: str, rounds: int = 2000) -> None:
    """Yield to the loop until ``check()`` holds (a bounded wait, never a timing assertion)."""
    assert callable(check)
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def test_no_more_than_the_limit_in_flight_per_target(limited_rt: Runtime) -> None:
    rt = limited_rt
    assert rt.config.scheduler.in_flight_per_target == LIMIT
    gate = BlockingBackend.gate = Gate()
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: BlockingBackend
    )  # type: ignore[arg-type,return-value]
    hosts = {}
    for name in ("h1", "h2"):
        view = await targets.add(
            rt,
            SYSTEM,
            name=name,
            kind="host",
            driver="fake",
            hypervisor="kvm",
            cluster="cloudbroker-1a",
            settings={"cpu": 64, "memory_mb": 65536},
        )
        hosts[name] = view.id
    await Monitor(rt).cycle()
    for tid in hosts.values():  # live backends: a dispatched launch reaches them at once
        await rt.backends.get(tid)
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    alice = await make_user(rt, "alice")
    made: dict[str, list[str]] = {}
    for name in hosts:
        got = await instances.launch(
            rt,
            alice,
            LaunchRequest(
                img.id,
                "t3.micro",
                PER_TARGET,
                PER_TARGET,
                requirements=f'NAME = "{name}"',
            ),
        )
        made[name] = [i.id for i in got]

    sched = Scheduler(rt, DefaultPolicy())
    decisions = await sched.place()
    assert sum(d.target_id is not None for d in decisions) == 2 * PER_TARGET
    await sched.dispatch()
    assert len(sched._inflight) == 2 * PER_TARGET  # every launch was handed out at once

    # each target lets LIMIT launches in; the other ones wait, however long the loop runs
    await until(lambda: gate.total_started() == 2 * LIMIT, "a launch on both targets")
    for _ in range(50):
        await asyncio.sleep(0)
    assert gate.active == {"h1": LIMIT, "h2": LIMIT}
    assert {n: len(s) for n, s in gate.started.items()} == {"h1": LIMIT, "h2": LIMIT}
    assert all(not t.done() for t in sched._inflight.values())

    # one launch on h1 finishes: exactly one more of h1's comes in, h2 is untouched
    gate.release[gate.started["h1"][0]].set()
    await until(lambda: len(gate.started["h1"]) == LIMIT + 1, "the next launch on h1")
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(gate.started["h1"]) == LIMIT + 1 and len(gate.started["h2"]) == LIMIT
    assert gate.active == {"h1": LIMIT, "h2": LIMIT}

    # let every launch go as it arrives: the rest proceed, never more than LIMIT at a target
    async def release_all() -> None:
        while gate.total_started() < 2 * PER_TARGET or any(gate.active.values()):
            for event in list(gate.release.values()):
                event.set()
            await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(release_all(), sched.drain()), 60)
    assert gate.peak == {"h1": LIMIT, "h2": LIMIT}
    assert {n: sorted(s) for n, s in gate.started.items()} == {
        n: sorted(ids) for n, ids in made.items()
    }
    for name, ids in made.items():
        for rid in ids:
            view = await instances.get(rt, alice, rid)
            assert view.state is State.RUNNING, view.state_reason
            assert view.target_name == name
