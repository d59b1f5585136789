"""Bursting end to end: a small local cluster fills, the next launches go to the EC2 regions of
the stored policy in its order (moto's server standing in for EC2), a budget stops bursting,
and ``explain`` says why for each instance. Real parts: libvirt's test driver host, the EC2
backend over HTTP, the scheduler with the policy read from the database."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select

from backends.libvirt.local import simulated_node_file
from broker import model as m
from broker.auth import SYSTEM
from broker.errors import Forbidden, InvalidRequest, NotFound
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, policies, targets, unmanaged
from broker.service.instances import LaunchRequest
from broker.states import State
from frontends.admin.views import explanation
from tests.conftest import make_user

CREDS = {"access_key": "testing", "secret_key": "testing"}
FAST = {
    "connect_timeout": 1.0,
    "read_timeout": 2.0,
    "call_timeout": 15.0,
    "batch_window": 0.02,
    "observe_reuse": 0,
}


def remote_ami(url: str, region: str) -> str:
    ec2 = boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return str(ec2.register_image(Name="web", RootDeviceName="/dev/sda1")["ImageId"])


async def settle(rt: Runtime, sched: Scheduler, monitor: Monitor) -> None:
    for _ in range(3):
        await monitor.cycle()
        await sched.cycle()
        await sched.drain()


async def burst_world(
    rt: Runtime, moto_url: str, tmp_path: Path, west_budget: float = 0.25, site: str = "cb-e2e"
) -> tuple[str, dict[str, Any]]:
    """A 4-CPU simulated local host and two moto regions; the image and the burst policy
    (east: at most 2 instances; west: at most ``west_budget`` per hour at 0.10 each)."""
    node = tmp_path / "small.xml"
    node.write_text(
        simulated_node_file(tmp_path)
        .read_text()
        .replace("<active>16</active>", "<active>4</active>")
        .replace("<cores>16</cores>", "<cores>4</cores>")
    )
    await targets.add(
        rt,
        SYSTEM,
        name="local",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{node}"},
        simulated=True,
    )
    amis = {}
    for name, region in (("east", "us-east-1"), ("west", "eu-west-1")):
        amis[name] = remote_ami(moto_url, region)
        await targets.add(
            rt,
            SYSTEM,
            name=name,
            kind="region",
            driver="ec2",
            secret=CREDS,
            settings={"region": region, "endpoint": moto_url, "broker_id": site, **FAST},
        )
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="web", kind="kernel", kernel="/k", visibility="public")
    )
    document: dict[str, Any] = {
        "default": {"trigger": "no_local_fit"},
        "targets": [
            {
                "name": "east",
                "max_instances": 2,
                "image_map": {image.id: amis["east"]},
                "prices": {"t3.micro": 0.10},
            },
            {
                "name": "west",
                "max_spend_per_hour": west_budget,
                "image_map": {image.id: amis["west"]},
                "prices": {"t3.micro": 0.10},
            },
        ],
    }
    return image.id, document


async def test_fill_local_then_burst_in_order_until_the_budget(
    sqlite_rt: Runtime, moto_url: str, tmp_path: Path
) -> None:
    rt = sqlite_rt
    image_id, document = await burst_world(rt, moto_url, tmp_path)
    bad = {**document, "targets": [{**document["targets"][0], "max_spend_per_hour": -1}]}
    with pytest.raises(InvalidRequest, match="targets"):
        await policies.set_policy(rt, SYSTEM, bad)
    assert await policies.current(rt, SYSTEM) is None
    version = await policies.set_policy(rt, SYSTEM, document, "burst east then west")
    assert version.version == 1 and version.author == "system"
    assert rt.policy_factory is not None
    sched = Scheduler(rt, rt.policy_factory(), rt.policy_factory)
    monitor = Monitor(rt)
    alice = await make_user(rt, "alice")
    made = []
    for _ in range(7):  # 2 local (4 CPUs), 2 east (limit), 2 west (0.25 $/h), 1 waits
        made += await instances.launch(rt, alice, LaunchRequest(image_id, "t3.micro"))
        await settle(rt, sched, monitor)
    views = [await instances.get(rt, alice, i.id) for i in made]
    assert [v.target_name for v in views] == [
        "local",
        "local",
        "east",
        "east",
        "west",
        "west",
        None,
    ]
    assert all(v.state is State.RUNNING for v in views[:6]), [v.state_reason for v in views]
    assert views[6].state is State.PENDING
    why = await explanation(rt, alice, made[6].id)
    assert "budget of west" in why["waiting_for"] and "limit of east" in why["waiting_for"]
    burst = await explanation(rt, alice, made[4].id)
    assert burst["target"] == "west" and "east" in burst["reason"]
    for view in views[:6]:  # every placed instance: where it went and why
        said = await explanation(rt, alice, view.id)
        assert said["target"] == view.target_name and said["reason"], said
        considered = said["considered"]
        if view.target_name == "local":
            assert considered["east"].startswith("not tried: a local host fits"), said
        elif view.target_name == "east":
            assert considered["local"] == "removed by capacity", said
            assert considered["west"] == "not tried: east comes first in the burst order", said
        else:
            assert considered["east"].startswith("removed by burst policy: instance limit"), said
    tested = await policies.test_policy(rt, SYSTEM, {**document, "targets": []})
    assert tested["pending"] == 1 and tested["by_target"] == {"(waits)": 1}
    assert len(await policies.history(rt, SYSTEM)) == 1


async def test_limits_and_budgets_hold_exactly_under_50_concurrent_launches(
    rt: Runtime, moto_url: str, tmp_path: Path
) -> None:
    """50 launches at once while the scheduler runs: 2 fit locally, east takes its limit of 2,
    west its budget of 0.35/h at 0.10 each (3), and the other 43 wait: never one more."""
    site = f"cb-50-{tmp_path.name[-12:]}"
    image_id, document = await burst_world(rt, moto_url, tmp_path, west_budget=0.35, site=site)
    await policies.set_policy(rt, SYSTEM, document, "50 at once")
    assert rt.policy_factory is not None
    sched = Scheduler(rt, rt.policy_factory(), rt.policy_factory)
    monitor = Monitor(rt)
    await monitor.cycle()
    alice = await make_user(rt, "alice")
    running = asyncio.create_task(sched.run())
    try:
        made = await asyncio.gather(
            *(instances.launch(rt, alice, LaunchRequest(image_id, "t3.micro")) for _ in range(50))
        )
        await settle(rt, sched, monitor)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    await settle(rt, sched, monitor)
    ids = [i.id for batch in made for i in batch]
    assert len(set(ids)) == 50
    views = [await instances.get(rt, alice, i) for i in ids]
    where = collections.Counter(v.target_name for v in views)
    assert where == {"local": 2, "east": 2, "west": 3, None: 43}, where
    assert all(v.state is State.PENDING for v in views if v.target_name is None)
    placed = [v for v in views if v.target_name is not None]
    assert all(v.state is State.RUNNING for v in placed), [v.state_reason for v in placed]
    ec2 = boto3.client(
        "ec2",
        region_name="eu-west-1",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ours = ec2.describe_instances(
        Filters=[
            {"Name": "tag:cloudbroker:broker", "Values": [site]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    assert sum(len(r["Instances"]) for r in ours["Reservations"]) == 3
    await sched.aclose()


async def test_unmanaged_tagged_instances_are_reported_then_adopted_or_terminated(
    sqlite_rt: Runtime, moto_url: str
) -> None:
    rt = sqlite_rt
    region = await targets.add(
        rt,
        SYSTEM,
        name="east",
        kind="region",
        driver="ec2",
        secret=CREDS,
        settings={"region": "us-east-1", "endpoint": moto_url, "broker_id": "cb-unmanaged", **FAST},
    )
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    made = ec2.run_instances(
        ImageId=remote_ami(moto_url, "us-east-1"),
        MinCount=2,
        MaxCount=2,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "cloudbroker:broker", "Value": "cb-unmanaged"}],
            }
        ],
    )["Instances"]
    keep, stray = sorted(i["InstanceId"] for i in made)
    monitor = Monitor(rt)
    for _ in range(3):  # the backend reports an instance once it has seen it twice
        await monitor.cycle()
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(m.Event.message, m.Event.detail).where(
                    m.Event.resource_id == region.id, m.Event.kind == "unmanaged"
                )
            )
        ).all()
    assert sorted(r[1]["ref"] for r in rows) == [keep, stray] and stray in str(rows)
    assert {u.ref for u in await unmanaged.describe(rt, SYSTEM, "east")} == {keep, stray}

    alice = await make_user(rt, "alice")
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="web", kind="kernel", kernel="/k", visibility="public")
    )
    with pytest.raises(Forbidden):
        await unmanaged.adopt(rt, alice, "east", keep, user="alice", flavor="t3.micro", image="x")
    with pytest.raises(NotFound):
        await unmanaged.adopt(
            rt, SYSTEM, "east", "i-0nosuch", user="alice", flavor="t3.micro", image=image.id
        )
    with pytest.raises(NotFound):
        await unmanaged.adopt(
            rt, SYSTEM, "east", keep, user="nobody", flavor="t3.micro", image=image.id
        )
    with pytest.raises(InvalidRequest):
        await unmanaged.adopt(rt, SYSTEM, "east", keep, user="alice", flavor="x9", image=image.id)
    with pytest.raises(NotFound):
        await unmanaged.terminate(rt, SYSTEM, "east", "i-0nosuch")
    assert not (await instances.describe(rt, alice, instances.InstanceFilter())).items

    rid = await unmanaged.adopt(
        rt, SYSTEM, "east", keep, user="alice", flavor="t3.micro", image=image.id
    )
    await unmanaged.terminate(rt, SYSTEM, "east", stray)
    assert await unmanaged.describe(rt, SYSTEM, "east") == []
    with pytest.raises(NotFound):  # decided once, for good
        await unmanaged.terminate(rt, SYSTEM, "east", keep)
    for _ in range(2):
        await monitor.cycle()
    adopted = await instances.get(rt, alice, rid)
    assert adopted.state is State.RUNNING and adopted.target_name == "east"
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in ec2.describe_instances(InstanceIds=[keep, stray])["Reservations"]
        for i in r["Instances"]
    }
    assert states[keep] == "running" and states[stray] in ("shutting-down", "terminated")
