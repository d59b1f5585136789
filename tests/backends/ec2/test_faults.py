"""Faults injected between the EC2 backend and moto's server by a small proxy: throttling,
500s, slow answers and dropped connections. The backend slows down and recovers, nothing is
launched twice, nothing is lost; a region that keeps failing is cut off and says why."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from backends.ec2.backend import CircuitOpen, Ec2Backend
from broker.auth import SYSTEM
from broker.errors import BrokerError
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets
from broker.service.instances import LaunchRequest
from broker.states import State
from policies.burst import BurstPolicy
from policies.placement import DefaultPolicy
from tests.backends.ec2.conftest import CREDS, FAST, REGION, FaultProxy, MakeBackend, ours, spec
from tests.conftest import make_user


async def test_throttling_slows_down_and_recovers(
    make_backend: MakeBackend, proxy: FaultProxy, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(proxy.url)
    proxy.inject("throttle", "DescribeInstances", times=3)
    probe = await backend.probe()  # botocore's adaptive retry waits it out
    assert probe.running == 0 and proxy.counts["DescribeInstances"] == 4
    proxy.inject("throttle", "RunInstances", times=2)
    await backend.launch(spec(ami))
    assert proxy.counts["RunInstances"] == 3
    assert len(ours(raw, broker_id)) == 1
    assert backend.circuit() == "closed"


@pytest.mark.parametrize("fault", ["error", "error-after", "drop", "drop-before", "slow"])
async def test_a_failed_launch_request_makes_exactly_one_instance(
    make_backend: MakeBackend, proxy: FaultProxy, raw: Any, ami: str, broker_id: str, fault: str
) -> None:
    backend = make_backend(proxy.url)
    await backend.probe()
    proxy.inject(fault, "RunInstances", times=1, delay=1.5)
    specs = [spec(ami, n) for n in range(3)]
    placed = await asyncio.gather(*(backend.launch(s) for s in specs))
    live = ours(raw, broker_id)
    assert len(live) == 3 and {i["InstanceId"] for i in live} == {p.ref for p in placed}
    seen = {o.ref: o for o in await backend.observe([p.ref for p in placed])}
    assert [seen[p.ref].instance_id for p in placed] == [s.instance_id for s in specs]


@pytest.mark.parametrize("fault", ["error", "drop-before", "drop", "slow"])
async def test_observation_survives_faults_without_losing_anything(
    make_backend: MakeBackend, proxy: FaultProxy, ami: str, fault: str
) -> None:
    backend = make_backend(proxy.url, observe_reuse=0, grace=0)
    placed = await asyncio.gather(*(backend.launch(spec(ami, n)) for n in range(4)))
    proxy.inject(fault, "DescribeInstances", times=2, delay=1.5)
    seen = await backend.observe([p.ref for p in placed])
    assert {o.ref for o in seen} == {p.ref for p in placed}
    assert {o.state for o in seen} == {State.RUNNING}


async def test_a_failing_region_is_cut_off_and_comes_back(
    make_backend: MakeBackend, proxy: FaultProxy
) -> None:
    backend = make_backend(proxy.url, breaker_threshold=2, max_attempts=2)
    await backend.probe()
    proxy.chaos(1.0, ("error",))
    for _ in range(2):
        with pytest.raises(BrokerError):
            await backend.probe()
    sent = sum(proxy.counts.values())
    with pytest.raises(CircuitOpen, match=r"circuit open .* 2 failed calls .*InternalError"):
        await backend.probe()
    assert sum(proxy.counts.values()) == sent  # nothing was sent while open
    proxy.clear()
    await asyncio.sleep(0.35)  # the cooldown
    await backend.probe()  # the trial call succeeds and closes the circuit
    assert backend.circuit() == "closed"


async def test_chaos_launches_nothing_twice_and_loses_nothing(
    make_backend: MakeBackend, proxy: FaultProxy, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(proxy.url, observe_reuse=0, breaker_threshold=1000, grace=0)
    proxy.chaos(0.4, ("throttle", "error", "error-after", "drop", "drop-before", "slow"), 1.2)
    specs = [spec(ami, n) for n in range(10)]
    placed: dict[str, str] = {}
    for wave in range(5):  # waves of two, observed in between, as monitor cycles would
        mine = specs[2 * wave : 2 * wave + 2]
        for _ in range(10):  # the scheduler retries failed launches; so do we
            todo = [s for s in mine if s.instance_id not in placed]
            if not todo:
                break
            got = await asyncio.gather(*(backend.launch(s) for s in todo), return_exceptions=True)
            for s, p in zip(todo, got, strict=True):
                if not isinstance(p, BaseException):
                    placed[s.instance_id] = p.ref
        with contextlib.suppress(BrokerError):  # a failed observe changes nothing
            seen = await backend.observe(list(placed.values()))
            assert {o.ref for o in seen} == set(placed.values())  # nothing lost
    assert len(placed) == 10
    for s in specs:  # launching again changes nothing
        again = await backend.launch(s)
        assert again.ref == placed[s.instance_id]
    proxy.clear()
    live = ours(raw, broker_id)
    assert sorted(i["InstanceId"] for i in live) == sorted(placed.values())
    fresh = make_backend(proxy.url)  # a restarted broker sees every one, with our ids
    seen = await fresh.observe(list(placed.values()))
    assert {o.ref: o.instance_id for o in seen} == {ref: rid for rid, ref in placed.items()}
    assert proxy.faults.total() >= 3


# --- through the monitor: the operator sees why, and nothing is marked lost -----------------


async def test_monitor_marks_a_dead_region_and_recovers(
    sqlite_rt: Runtime, proxy: FaultProxy, ami: str, broker_id: str
) -> None:
    rt = sqlite_rt
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: Ec2Backend
    )  # type: ignore[arg-type,return-value]
    settings = {
        "region": REGION,
        "endpoint": proxy.url,
        "broker_id": broker_id,
        **FAST,
        "breaker_threshold": 2,
        "max_attempts": 2,
        "observe_reuse": 0,
    }
    await targets.add(
        rt, SYSTEM, name="aws-east", kind="region", driver="ec2", settings=settings, secret=CREDS
    )
    monitor = Monitor(rt)
    await monitor.cycle()
    image = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="web", location="ec2", visibility="public", mappings={"aws-east": ami}
        ),
    )
    doc = {
        "targets": [{"name": "aws-east", "image_map": {image.id: ami}, "flavor_map": {"*": "*"}}]
    }
    sched = Scheduler(rt, DefaultPolicy.from_policy(BurstPolicy.from_dict(doc)))
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(image.id, "t3.micro"))
    for _ in range(3):
        await sched.cycle()
        await sched.drain()
    await monitor.cycle()
    assert (await instances.get(rt, alice, inst.id)).state is State.RUNNING
    proxy.chaos(1.0, ("error",))
    for _ in range(rt.config.monitor.misses):
        await monitor.cycle()
    region = await targets.get(rt, SYSTEM, "aws-east")
    assert region.state == "error" and "circuit open" in region.state_reason
    assert (await instances.get(rt, alice, inst.id)).state is State.UNKNOWN  # never "gone"
    proxy.clear()
    await asyncio.sleep(0.35)
    await monitor.cycle()
    assert (await targets.get(rt, SYSTEM, "aws-east")).state == "enabled"
    assert (await instances.get(rt, alice, inst.id)).state is State.RUNNING
