"""Accounting over a simulated day on every kind of target, checked against totals by hand.

Real parts: libvirt's test driver as the local host (with CPU_COST/MEMORY_COST), moto's server
as the EC2 region ``east`` (its price table in the target's settings), a second cloudbroker
process as the peer ``peerb`` (no price table: our flavor's list price), our scheduler and
monitor carrying every launch, stop, start and terminate out on them, and the accounting pass.
The backends run now; the day is 2026-03-02. After each step of the day the transitions the
broker just logged are moved to that step's time of the day (the clock is driven by writing the
transitions' ``at``), then the accounting pass runs as of a time of that day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select, update

from backends.libvirt.local import simulated_node_file
from broker import model as m
from broker.accounting import account
from broker.auth import SYSTEM, Caller
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, policies, targets, usage
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from tests.backends.peer.conftest import Site
from tests.conftest import make_user

DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
CREDS = {"access_key": "testing", "secret_key": "testing"}
FAST = {"connect_timeout": 1.0, "read_timeout": 2.0, "call_timeout": 15.0, "observe_reuse": 0}


def at(hh: int, mm: int = 0) -> dt.datetime:
    return DAY + dt.timedelta(hours=hh, minutes=mm)


@pytest.fixture
def peer_site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path / "sites", "peerb")
    try:
        site.start()
        yield site
    finally:
        if site.alive():
            site.kill()


class Day:
    """The broker under test, driven one step of the simulated day at a time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        assert rt.policy_factory is not None
        self.scheduler = Scheduler(rt, rt.policy_factory(), rt.policy_factory)
        self.monitor = Monitor(rt)

    async def until(self, rid: str, state: State) -> None:
        """Cycle the scheduler and monitor until ``rid`` is in ``state`` (real backends)."""
        for _ in range(150):
            await self.scheduler.cycle()
            await self.scheduler.drain()
            await self.monitor.cycle()
            view = await instances.get(self.rt, SYSTEM, rid)
            if view.state is state:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{rid} never became {state.value}: {view.state} {view.state_reason}")

    async def stamp(self, rid: str, when: dt.datetime) -> None:
        """Move the transitions just logged for ``rid`` (now, in real time) to ``when``."""
        async with self.rt.engine.begin() as conn:
            await conn.execute(
                update(m.Event)
                .where(m.Event.resource_id == rid, m.Event.at > DAY + dt.timedelta(days=1))
                .values(at=when)
            )

    async def launch(
        self, who: Caller, image: str, flavor: str, target: str, when: dt.datetime
    ) -> str:
        req = LaunchRequest(image, flavor, requirements=f'NAME = "{target}"')
        (view,) = await instances.launch(self.rt, who, req)
        await self.until(view.id, State.RUNNING)
        await self.stamp(view.id, when)
        got = await instances.get(self.rt, who, view.id)
        assert got.target_name == target, got
        return view.id

    async def act(self, who: Caller, rid: str, action: Action, when: dt.datetime) -> None:
        await instances.act(self.rt, who, [rid], action)
        after = {
            Action.STOP: State.POWEROFF,
            Action.START: State.RUNNING,
            Action.TERMINATE: State.DONE,
        }[action]
        await self.until(rid, after)
        await self.stamp(rid, when)


async def records(rt: Runtime) -> dict[tuple[str, int], tuple[str, int, float]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(
                m.UsageRecord.instance_id,
                m.UsageRecord.hour,
                m.UsageRecord.target_kind,
                m.UsageRecord.seconds,
                m.UsageRecord.cost,
            )
        )
        return {(r[0], r[1].hour): (r[2], r[3], r[4]) for r in rows}


# the peer backend still passes aiohttp.BasicAuth, deprecated by the aiohttp installed here
async def test_a_day_on_local_ec2_and_peer_targets(
    sqlite_rt: Runtime, moto_url: str, peer_site: Site, tmp_path: Path
) -> None:
    rt = sqlite_rt
    # --- the targets ---------------------------------------------------------------------
    await targets.add(
        rt,
        SYSTEM,
        name="local",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{simulated_node_file(tmp_path)}"},
        simulated=True,
    )
    # CPU_COST 0.01 per vCPU-hour, MEMORY_COST 0.005 per GiB-hour
    await targets.set_costs(rt, SYSTEM, "local", cpu_cost=0.01, memory_cost=0.005)
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ami = str(ec2.register_image(Name="web", RootDeviceName="/dev/sda1")["ImageId"])
    await targets.add(
        rt,
        SYSTEM,
        name="east",
        kind="region",
        driver="ec2",
        secret=CREDS,
        settings={
            "region": "us-east-1",
            "endpoint": moto_url,
            "broker_id": "cb-day",
            "prices": {"t3.micro": 0.0104},
            **FAST,
        },
    )
    access, secret = peer_site.user("site-a")
    await targets.add(
        rt,
        SYSTEM,
        name="peerb",
        kind="peer",
        driver="peer",
        secret={"access_key": access, "secret_key": secret},
        settings={"url": peer_site.ec2_url, "admin_url": peer_site.admin_url, "site": "site-a"},
    )
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="web", kind="kernel", kernel="/k", visibility="public")
    )
    await policies.set_policy(
        rt,
        SYSTEM,
        {
            "default": {"trigger": "no_local_fit"},
            "targets": [
                {"name": "east", "image_map": {image.id: ami}},
                {"name": "peerb", "image_map": {"*": "tiny-simulated"}, "flavor_map": {"*": "*"}},
            ],
        },
        "burst to east, then the peer",
    )
    alice, bob = await make_user(rt, "alice"), await make_user(rt, "bob")
    day = Day(rt)
    await day.monitor.cycle()
    try:
        # --- the morning -------------------------------------------------------------------
        # L1 alice t3.small (2 vCPUs, 2 GiB) local: 2 x 0.01 + 2 x 0.005 = 0.03 an hour
        l1 = await day.launch(alice, image.id, "t3.small", "local", at(8))
        # L2 bob t3.micro (2 vCPUs, 1 GiB) local: 2 x 0.01 + 1 x 0.005 = 0.025 an hour
        l2 = await day.launch(bob, image.id, "t3.micro", "local", at(9, 20))
        # E1 alice t3.micro in east: 0.0104 an hour from the region's price table
        e1 = await day.launch(alice, image.id, "t3.micro", "east", at(10))
        # P1 bob t3.nano on the peer: no price table there, our list price 0.0052 an hour
        p1 = await day.launch(bob, image.id, "t3.nano", "peerb", at(11, 10))

        # a pass at noon: what runs counts up to noon, and the noon hour holds nothing yet
        await account(rt, at(12))
        noon = await records(rt)
        assert noon[(l1, 11)] == ("local", 3600, 0.03)
        assert noon[(l2, 9)] == ("local", 2400, pytest.approx(0.016667))
        assert noon[(e1, 11)] == ("burst", 3600, 0.0104)
        assert noon[(p1, 11)] == ("peer", 3000, pytest.approx(0.004333))
        assert not [k for k in noon if k[1] == 12]

        # --- the afternoon -----------------------------------------------------------------
        await day.act(alice, l1, Action.STOP, at(12, 30))
        await day.act(alice, e1, Action.STOP, at(13))
        await day.act(alice, l1, Action.START, at(14))
        await day.act(alice, e1, Action.START, at(15, 30))
        await day.act(alice, e1, Action.TERMINATE, at(16, 15))
        await day.act(alice, l1, Action.TERMINATE, at(17, 45))
        await day.act(bob, p1, Action.TERMINATE, at(19, 40))
        # L2 still runs at midnight
    finally:
        await day.scheduler.aclose()

    # the passes of the rest of the day, then midnight twice: the second changes nothing
    await account(rt, at(16))
    await account(rt, at(24))
    first = await records(rt)
    await account(rt, at(24))
    assert await records(rt) == first

    # --- by hand ---------------------------------------------------------------------------
    # L1: 08:00-12:30 + 14:00-17:45 = 4.5 + 3.75 = 8.25 h x 0.03           = 0.2475
    # L2: 09:20-24:00 = 14 h 40 min = 14.6667 h x 0.025                    = 0.366667
    #     (hour 9: 2400 s = 0.016667, hours 10..23: 14 x 0.025 = 0.35)
    # E1: 10:00-13:00 + 15:30-16:15 = 3 + 0.75 = 3.75 h x 0.0104           = 0.039
    # P1: 11:10-19:40 = 8.5 h x 0.0052                                      = 0.0442
    # local 0.614167, burst 0.039, peer 0.0442, all 0.697367
    # hours 8.25 + 14.6667 + 3.75 + 8.5 = 35.1667; every flavor has 2 vCPUs: 70.3333 vCPU-h;
    # GiB-hours 2 x 8.25 + 1 x 14.6667 + 1 x 3.75 + 0.5 x 8.5 = 39.1667
    assert first[(l1, 12)] == ("local", 1800, 0.015) and (l1, 13) not in first
    assert first[(e1, 15)] == ("burst", 1800, 0.0052) and (e1, 16) in first
    assert first[(l2, 23)] == ("local", 3600, 0.025) and first[(p1, 19)][1] == 2400
    report = await usage.usage_report(rt, SYSTEM, start="2026-03-02", end="2026-03-03")
    t = report.totals
    assert t.cost_by_kind == {
        "local": pytest.approx(0.614167, abs=1e-6),
        "burst": pytest.approx(0.039, abs=1e-6),
        "peer": pytest.approx(0.0442, abs=1e-6),
    }
    assert t.cost == pytest.approx(0.697367, abs=1e-6)
    assert t.hours == pytest.approx(35.1667, abs=1e-4)
    assert t.vcpu_hours == pytest.approx(70.3333, abs=1e-4)
    assert t.gib_hours == pytest.approx(39.1667, abs=1e-4)
    by_instance = {r.instance_id: (r.target, r.target_kind, r.hours) for r in report.rows}
    assert by_instance == {
        l1: ("local", "local", 8.25),
        l2: ("local", "local", pytest.approx(14.6667, abs=1e-4)),
        e1: ("east", "burst", 3.75),
        p1: ("peerb", "peer", 8.5),
    }
    # alice: L1 + E1 = 0.2475 + 0.039 = 0.2865; bob: L2 + P1 = 0.366667 + 0.0442 = 0.410867
    mine = await usage.usage_report(rt, alice, start="2026-03-02", end="2026-03-03")
    assert mine.totals.cost == pytest.approx(0.2865, abs=1e-6)
    assert (
        await usage.usage_report(rt, SYSTEM, user="bob", start="2026-03-02", end="2026-03-03")
    ).totals.cost == pytest.approx(0.410867, abs=1e-6)
    rows = await usage.showback(rt, SYSTEM, month="2026-03")
    got: dict[str, Any] = {
        r.group: (r.instances, r.cost_local, r.cost_burst, r.cost_peer) for r in rows
    }
    assert got == {
        "alice": (2, 0.2475, 0.039, 0.0),
        "bob": (2, pytest.approx(0.366667, abs=1e-6), 0.0, 0.0442),
    }
