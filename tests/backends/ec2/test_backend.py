"""The EC2 backend against moto's server as a real HTTP endpoint: lifecycle, batching,
idempotent launches, lost and unmanaged instances, tenancy of tags, volumes, mapping, budget,
and the whole broker path (service, scheduler, monitor) on SQLite."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from typing import Any

import pytest

from backends.ec2 import batching
from backends.ec2.backend import Ec2Backend, Remote
from broker.auth import SYSTEM
from broker.errors import BackendUnavailable, InvalidRequest, NoCapacity, Unsupported
from broker.monitor import Monitor
from broker.protocols import VolumeSpec, stores_volumes
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from policies.burst import BurstPolicy
from policies.placement import DefaultPolicy
from tests.backends.ec2.conftest import (
    CREDS,
    FAST,
    REGION,
    MakeBackend,
    add_region,
    ours,
    spec,
    target_config,
)
from tests.conftest import make_user


async def test_lifecycle_of_a_burst_instance(
    make_backend: MakeBackend, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(observe_reuse=0)
    s = spec(ami)
    placed = await backend.launch(s)
    assert placed.ref.startswith("i-") and placed.state in (State.BOOT, State.RUNNING)
    (inst,) = ours(raw, broker_id)
    assert inst["InstanceId"] == placed.ref and inst["InstanceType"] == "t3.micro"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[batching.TAG_BROKER] == broker_id
    assert batching.ids_from_tags(tags) == [s.instance_id]
    root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    vol = raw.describe_volumes(VolumeIds=[root])["Volumes"][0]
    assert {t["Key"]: t["Value"] for t in vol.get("Tags", ())}[batching.TAG_BROKER] == broker_id
    attr = raw.describe_instance_attribute(InstanceId=placed.ref, Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]) == s.user_data

    (seen,) = await backend.observe([placed.ref])
    assert seen.state is State.RUNNING and seen.instance_id == s.instance_id
    assert seen.private_ip and seen.public_ip
    steps = [
        (Action.STOP, State.SHUTDOWN, State.POWEROFF),
        (Action.START, State.BOOT, State.RUNNING),
        (Action.REBOOT, State.RUNNING, State.RUNNING),
    ]
    for action, at_once, after in steps:
        got = await backend.act(placed.ref, action)
        assert got is not None and got.state is at_once, action
        (seen,) = await backend.observe([placed.ref])
        assert seen.state is after, action
    assert "Linux" in await backend.console(placed.ref)
    with pytest.raises(Unsupported):
        await backend.act(placed.ref, Action.SUSPEND)
    assert await backend.act(placed.ref, Action.TERMINATE) is None
    assert ours(raw, broker_id) == []
    assert await backend.act(placed.ref, Action.TERMINATE) is None  # twice is fine


async def test_concurrent_launches_share_one_request(
    make_backend: MakeBackend, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend()
    specs = [spec(ami, n) for n in range(7)]
    placed = await asyncio.gather(*(backend.launch(s) for s in specs))
    assert backend.calls["RunInstances"] == 1
    assert len({p.ref for p in placed}) == 7
    seen = {o.ref: o for o in await backend.observe([p.ref for p in placed])}
    for s, p in zip(specs, placed, strict=True):
        assert seen[p.ref].instance_id == s.instance_id
    assert len(ours(raw, broker_id)) == 7
    again = await backend.launch(specs[3])  # idempotent per instance id, from memory
    assert again.ref == placed[3].ref and backend.calls["RunInstances"] == 1


async def test_launch_retried_after_a_timeout_makes_one_instance(
    make_backend: MakeBackend, proxy: Any, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(proxy.url)
    s = spec(ami)
    proxy.inject("slow", "RunInstances", times=1, delay=1.5)  # read timeout is 1 s
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.launch(s), 0.3)  # the caller gives up early
    first = await backend.launch(s)  # the retry shares the request still out
    assert len(ours(raw, broker_id)) == 1
    # a new process (a restart) retries the same launch: it looks before it launches
    restarted = make_backend(proxy.url)
    again = await restarted.launch(s)
    assert again.ref == first.ref
    assert restarted.calls["RunInstances"] == 0
    assert len(ours(raw, broker_id)) == 1
    assert proxy.counts["RunInstances"] == 1


async def test_terminated_behind_our_back_is_lost(
    make_backend: MakeBackend, raw: Any, ami: str
) -> None:
    backend = make_backend(grace=0, observe_reuse=0)
    keep, gone = await asyncio.gather(backend.launch(spec(ami, 1)), backend.launch(spec(ami, 2)))
    raw.terminate_instances(InstanceIds=[gone.ref])
    seen = await backend.observe([keep.ref, gone.ref])
    assert [o.ref for o in seen] == [keep.ref]  # left out: the monitor marks it lost
    assert "User initiated" in backend.lost[gone.ref]


async def test_a_launch_failure_is_reported_failed(make_backend: MakeBackend) -> None:
    backend = make_backend()
    failed = Remote(
        "i-0aaaaaaaaaaaaaaa1",
        "i-0bbbbbbbbbbbbbbb1",
        "terminated",
        "Server.InsufficientInstanceCapacity",
        "Server.InsufficientInstanceCapacity: Insufficient capacity.",
        None,
        None,
        "t3.micro",
        "us-east-1a",
    )
    backend._inventory = {failed.ref: failed}
    backend._inventory_at = time.monotonic()
    (seen,) = await backend.observe([failed.ref])
    assert seen.state is State.FAILED and "Insufficient capacity" in seen.reason


async def test_unmanaged_tagged_instance_is_reported(
    make_backend: MakeBackend, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(observe_reuse=0)
    mine = await backend.launch(spec(ami))
    stray = raw.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "cloudbroker:broker", "Value": broker_id}],
            }
        ],
    )["Instances"][0]["InstanceId"]
    first = await backend.observe([mine.ref])
    assert [o.ref for o in first] == [mine.ref] and backend.unmanaged() == []  # seen once
    second = await backend.observe([mine.ref])
    assert [u.ref for u in backend.unmanaged()] == [stray]
    extra = [o for o in second if o.ref == stray]
    assert extra and extra[0].reason.startswith("unmanaged:")


async def test_tag_filter_keeps_other_tenants_and_brokers_out(
    make_backend: MakeBackend, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(observe_reuse=0)
    other = make_backend(broker_id=broker_id + "-other", observe_reuse=0)
    mine = await backend.launch(spec(ami))
    theirs = await other.launch(spec(ami))
    raw.run_instances(ImageId=ami, MinCount=2, MaxCount=2)  # another tenant, untagged
    for _ in range(2):
        seen = await backend.observe([mine.ref, theirs.ref])
    assert [o.ref for o in seen] == [mine.ref]
    assert backend.unmanaged() == []
    assert set(backend._inventory) == {mine.ref}
    assert (await backend.probe()).running == 1


async def test_one_describe_per_cycle_whatever_the_number(
    make_backend: MakeBackend, ami: str
) -> None:
    backend = make_backend()
    placed = await asyncio.gather(*(backend.launch(spec(ami, n)) for n in range(12)))
    before = backend.calls["DescribeInstances"]
    await backend.probe()
    seen = await backend.observe([p.ref for p in placed])
    assert len(seen) == 12
    assert backend.calls["DescribeInstances"] - before == 1


async def test_mapping_precedence_and_refusals(make_backend: MakeBackend, ami: str) -> None:
    settings = {
        "image_map": {"ami-00000000000000001": "ami-from-settings"},
        "flavor_map": {"m1.small": "t3.small"},
        "key_map": {"alice-key": "ops-key"},
        "security_group_map": {"sg-ours": ["sg-remote1", "sg-remote2"], "*": "sg-default"},
        "subnet": "subnet-123",
    }
    by_name = spec(
        ami,
        image_mappings={"aws-east": "ami-by-name", f"ec2:{REGION}": "ami-by-region"},
        flavor="m1.small",
        key_name="alice-key",
        security_groups=("sg-ours", "sg-unmapped"),
    )
    key = batching.run_key(by_name, "aws-east", REGION, settings)
    assert key.image == "ami-by-name" and key.instance_type == "t3.small"
    assert key.key_name == "ops-key" and key.groups == ("sg-remote1", "sg-remote2")
    assert key.subnet == "subnet-123"
    by_region = spec(ami, image_mappings={f"ec2:{REGION}": "ami-by-region"})
    assert batching.run_key(by_region, "aws-east", REGION, settings).image == "ami-by-region"
    fallback = batching.run_key(spec(ami, image_mappings={}), "aws-east", REGION, settings)
    assert fallback.image == "ami-from-settings" and fallback.groups == ("sg-default",)
    # "*" reads as placement reads it: any of our images or flavors; "*" = "*" the same name
    catch_all = {"image_map": {"*": "ami-for-all"}, "flavor_map": {"*": "t3.large"}}
    other = spec(ami, image_mappings={}, flavor="m1.small")
    key = batching.run_key(other, "aws-east", REGION, catch_all)
    assert (key.image, key.instance_type) == ("ami-for-all", "t3.large")
    same = {"image_map": {"*": "ami-for-all"}, "flavor_map": {"*": "*"}}
    assert batching.run_key(other, "aws-east", REGION, same).instance_type == "m1.small"
    backend = make_backend()
    with pytest.raises(InvalidRequest, match="no AMI"):
        await backend.launch(spec(ami, image_mappings={"elsewhere": "ami-x"}))
    assert sum(backend.calls.values()) == 0


async def test_budget_and_max_instances_stop_launches(make_backend: MakeBackend, ami: str) -> None:
    backend = make_backend(prices={"t3.micro": 0.0104}, budget_per_hour=0.021, max_instances=5)
    await backend.launch(spec(ami, 1))
    await backend.launch(spec(ami, 2))
    assert backend.spend_per_hour() == pytest.approx(0.0208)
    with pytest.raises(NoCapacity, match="budget"):
        await backend.launch(spec(ami, 3))
    probe = await backend.probe()
    assert probe.total_cpu == 0 and probe.running == 2
    small = make_backend(max_instances=1, broker_id="cb-small-" + str(time.time_ns()))
    await small.launch(spec(ami, 4))
    with pytest.raises(NoCapacity, match="maximum"):
        await small.launch(spec(ami, 5))


async def test_volumes_attach_and_detach(make_backend: MakeBackend, raw: Any, ami: str) -> None:
    backend = make_backend()
    placed = await backend.launch(spec(ami))
    zone = raw.describe_instances(InstanceIds=[placed.ref])["Reservations"][0]["Instances"][0][
        "Placement"
    ]["AvailabilityZone"]
    vol = await backend.create_volume("vol-0123456789abcdef0", 4, zone)
    assert await backend.create_volume("vol-0123456789abcdef0", 4, zone) == vol  # idempotent
    assert await backend.attach_remote(vol, placed.ref, "/dev/sdf") in ("attaching", "attached")
    attached = raw.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Attachments"]
    assert attached[0]["InstanceId"] == placed.ref
    assert await backend.attach_remote(vol, placed.ref, "/dev/sdf") in ("attaching", "attached")
    assert await backend.detach_remote(vol, placed.ref) in ("detaching", "detached")
    assert await backend.detach_remote(vol) == "detached"  # looked up: nothing to do
    await backend.delete_remote(vol)
    await backend.delete_remote(vol)


async def test_the_volume_protocol_makes_the_ebs_volume_in_the_instances_zone(
    make_backend: MakeBackend, raw: Any, ami: str
) -> None:
    backend = make_backend()
    assert stores_volumes(backend)
    placed = await backend.launch(spec(ami))
    zone = raw.describe_instances(InstanceIds=[placed.ref])["Reservations"][0]["Instances"][0][
        "Placement"
    ]["AvailabilityZone"]
    volume = VolumeSpec("vol-0fedcba9876543210", "/dev/vdc", 3)
    vref = await backend.attach_volume(placed.ref, volume)
    (made,) = raw.describe_volumes(VolumeIds=[vref])["Volumes"]
    assert (made["AvailabilityZone"], made["Size"]) == (zone, 3)
    assert made["Attachments"][0]["InstanceId"] == placed.ref
    assert made["Attachments"][0]["Device"] == "/dev/sdc"
    attached = VolumeSpec(volume.volume_id, volume.device, 3, vref)
    assert await backend.attach_volume(placed.ref, attached) == vref  # a retry makes no second
    await backend.detach_volume(placed.ref, attached)
    assert raw.describe_volumes(VolumeIds=[vref])["Volumes"][0]["Attachments"] == []
    await backend.delete_volume(attached)
    ours = raw.describe_volumes(
        Filters=[{"Name": f"tag:{batching.TAG_VOLUME}", "Values": [volume.volume_id]}]
    )["Volumes"]
    assert [v["VolumeId"] for v in ours if v["State"] not in ("deleting", "deleted")] == []
    with pytest.raises(Exception, match="NotFound"):
        raw.describe_volumes(VolumeIds=[vref])


async def test_validate(tmp_path: Any, moto_url: str, broker_id: str) -> None:
    await Ec2Backend.validate(target_config(tmp_path, moto_url, broker_id))
    bad = target_config(tmp_path, moto_url, broker_id)
    with pytest.raises(InvalidRequest, match="region"):
        await Ec2Backend.validate(_with(bad, settings={**bad.settings, "region": ""}))
    with pytest.raises(InvalidRequest, match="access-key"):
        await Ec2Backend.validate(_with(bad, secret={}))
    with pytest.raises(InvalidRequest, match="endpoint"):
        await Ec2Backend.validate(_with(bad, settings={**bad.settings, "endpoint": "ftp://x"}))
    dead = _with(
        bad, settings={**bad.settings, "endpoint": "http://127.0.0.1:9", "max_attempts": 1}
    )
    with pytest.raises(BackendUnavailable):
        await Ec2Backend.validate(dead)


def _with(config: Any, **changes: Any) -> Any:
    return dataclasses.replace(config, **changes)


# --- the whole broker path -------------------------------------------------------------------


def burst_to(target: str, image_id: str, ami: str) -> DefaultPolicy:
    """The operator's burst policy: anything that does not fit locally goes to ``target``."""
    doc = {"targets": [{"name": target, "image_map": {image_id: ami}, "flavor_map": {"*": "*"}}]}
    return DefaultPolicy.from_policy(BurstPolicy.from_dict(doc))


async def settle(rt: Runtime, monitor: Monitor, policy: DefaultPolicy) -> None:
    sched = Scheduler(rt, policy)
    for _ in range(3):
        await sched.cycle()
        await sched.drain()
    await asyncio.sleep(FAST["batch_window"])
    await monitor.cycle()


async def test_broker_path_runs_a_burst_instance(
    sqlite_rt: Runtime, moto_url: str, raw: Any, ami: str, broker_id: str
) -> None:
    rt = sqlite_rt
    region = await add_region(
        rt, moto_url, broker_id, prices={"t3.micro": 0.0104}, max_instances=10
    )
    assert "secret" not in str(region.settings) and CREDS["secret_key"] not in str(region)
    monitor = Monitor(rt)
    await monitor.cycle()
    assert (await targets.get(rt, SYSTEM, "aws-east")).total_cpu == 80
    image = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="web", location="ec2", visibility="public", mappings={"aws-east": ami}
        ),
    )
    policy = burst_to("aws-east", image.id, ami)
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(
        rt, alice, LaunchRequest(image.id, "t3.micro", user_data=b"hello")
    )
    await settle(rt, monitor, policy)
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.RUNNING and view.target_name == "aws-east", view.state_reason
    assert view.public_ip and view.private_ip
    (remote,) = ours(raw, broker_id)
    tags = {t["Key"]: t["Value"] for t in remote["Tags"]}
    assert batching.ids_from_tags(tags) == [inst.id]
    assert view.public_ip == remote["PublicIpAddress"]
    text, _ = await instances.console(rt, alice, inst.id)
    assert "Linux" in text
    for action, after in [(Action.STOP, State.POWEROFF), (Action.START, State.RUNNING)]:
        await instances.act(rt, alice, [inst.id], action)
        await settle(rt, monitor, policy)
        await settle(rt, monitor, policy)
        assert (await instances.get(rt, alice, inst.id)).state is after, action
    await instances.act(rt, alice, [inst.id], Action.TERMINATE)
    await settle(rt, monitor, policy)
    assert (await instances.get(rt, alice, inst.id)).state is State.DONE
    assert ours(raw, broker_id) == []


async def test_broker_path_marks_an_instance_terminated_outside_lost(
    sqlite_rt: Runtime, moto_url: str, raw: Any, ami: str, broker_id: str
) -> None:
    rt = sqlite_rt
    await add_region(rt, moto_url, broker_id)
    monitor = Monitor(rt)
    await monitor.cycle()
    image = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="web", location="ec2", visibility="public", mappings={f"ec2:{REGION}": ami}
        ),
    )
    policy = burst_to("aws-east", image.id, ami)
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(image.id, "t3.micro"))
    await settle(rt, monitor, policy)
    assert (await instances.get(rt, alice, inst.id)).state is State.RUNNING
    (remote,) = ours(raw, broker_id)
    raw.terminate_instances(InstanceIds=[remote["InstanceId"]])
    await monitor.cycle()
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.FAILED and view.state_reason.startswith("lost")


async def test_console_text_that_looks_like_base64_is_returned_as_it_is(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend()

    async def answer(operation: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"Output": "boot"}  # botocore has decoded EC2's base64 already

    backend._call = answer  # type: ignore[method-assign]
    assert await backend.console("i-0123456789abcdef0") == "boot"
