"""A burst instance end to end, with moto's server as a real EC2 region over HTTP.

A broker (SQLite, a local host too small for the instance, the stored burst policy sending
work to the region ``aws-east``, the scheduler and monitor loops, our EC2 and OCCI listeners)
runs in a background thread. Users talk to it with boto3 and raw HTTP, exactly as clients do;
the test checks EC2 itself with a plain boto3 client to moto. The region's endpoint is moto's
server directly, or the fault proxy of this package's conftest in front of it: throttling, 500s,
slow answers and dropped connections slow the backend down, but nothing is launched twice,
nothing is lost, and while the region's breaker is open nothing is placed there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import http.client
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from sqlalchemy import select

from backends.ec2 import batching
from backends.ec2.backend import parse_instance
from backends.libvirt.local import simulated_node_file
from broker import model as m
from broker.app import open_runtime
from broker.auth import SYSTEM, Caller
from broker.config import from_mapping
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, policies, targets, users
from broker.service.instances import InstanceView
from broker.states import State
from frontends.admin.views import explanation
from frontends.ec2.app import create_app as create_ec2
from frontends.occi.app import create_app as create_occi
from tests.backends.ec2.conftest import CREDS, FAST, REGION, FaultProxy, ours
from tests.harness import in_thread

T = TypeVar("T")
OUR_REGION = "cloudbroker-1"  # what our EC2 endpoint calls itself
TARGET = "aws-east"
ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
WAIT = {"Delay": 1, "MaxAttempts": 60}
CHAOS = ("throttle", "error", "error-after", "slow", "drop", "drop-before")


@dataclasses.dataclass
class Broker:
    loop: asyncio.AbstractEventLoop
    rt: Runtime
    ec2_url: str
    occi_url: str
    image_id: str
    target_id: str
    user: Caller
    access_key: str
    secret_key: str

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the broker's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def ec2(self) -> Any:
        """boto3 against our EC2 endpoint as the (normal) user; no retries hide our errors."""
        return boto3.session.Session().client(
            "ec2",
            region_name=OUR_REGION,
            endpoint_url=self.ec2_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

    def occi(
        self, method: str, path: str, body: str = "", accept: str = "text/plain"
    ) -> tuple[int, str]:
        """Raw HTTP to our OCCI endpoint with the user's Basic credentials."""
        parts = urlsplit(self.occi_url)
        basic = base64.b64encode(f"{self.access_key}:{self.secret_key}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}", "Accept": accept}
        if body:
            headers["Content-Type"] = "text/plain"
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            conn.request(method, path, body=body.encode() or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def view(self, rid: str) -> InstanceView:
        return self.run(instances.get(self.rt, self.user, rid))

    def target(self) -> targets.TargetView:
        return self.run(targets.get(self.rt, SYSTEM, TARGET))

    def refs(self) -> dict[str, str | None]:
        """Our instance id -> the EC2 instance the broker recorded for it."""

        async def go() -> dict[str, str | None]:
            async with self.rt.engine.connect() as conn:
                rows = await conn.execute(
                    select(m.Instance.id, m.Instance.backend_ref).where(
                        m.Instance.target_id == self.target_id
                    )
                )
                return {rid: ref for rid, ref in rows}

        return self.run(go())

    def events(self, resource_ids: list[str]) -> list[tuple[str, str, str | None, str]]:
        """(resource, kind, new state, message) of every event about these resources."""

        async def go() -> list[tuple[str, str, str | None, str]]:
            async with self.rt.engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        m.Event.resource_id, m.Event.kind, m.Event.to_state, m.Event.message
                    ).where(m.Event.resource_id.in_(resource_ids))
                )
                return [(r, k, to, msg) for r, k, to, msg in rows]

        return self.run(go())

    def circuit(self) -> str:
        async def go() -> str:
            assert self.rt.backends is not None
            backend: Any = await self.rt.backends.get(self.target_id)
            return str(backend.circuit())

        return self.run(go())


async def _serve(
    tmp: Path,
    endpoint: str,
    broker_id: str,
    ami: str,
    settings: dict[str, Any],
    ready: threading.Event,
    holder: dict[str, Any],
) -> None:
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none", "region": OUR_REGION},
            "monitor": {"interval": 0.3, "misses": 2, "probe_timeout": 10.0},
            "scheduler": {"interval": 0.2, "max_attempts": 25},
        },
        env={},
    )
    rt = await open_runtime(cfg, migrate=True)
    # the only local host has one core: a t3.micro (two vCPUs) never fits there
    node = tmp / "tiny.xml"
    node.write_text(
        simulated_node_file(tmp)
        .read_text()
        .replace("<active>16</active>", "<active>1</active>")
        .replace("<cores>16</cores>", "<cores>1</cores>")
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
    region = await targets.add(
        rt,
        SYSTEM,
        name=TARGET,
        kind="region",
        driver="ec2",
        secret=CREDS,
        settings={
            "region": REGION,
            "endpoint": endpoint,
            "broker_id": broker_id,
            **FAST,
            "observe_reuse": 0,
            **settings,
        },
    )
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="web", kind="kernel", kernel="/k", visibility="public")
    )
    document = {
        "default": {"trigger": "no_local_fit"},
        "targets": [{"name": TARGET, "image_map": {image.id: ami}}],
    }
    await policies.set_policy(rt, SYSTEM, document, "burst to aws-east")
    creds = await users.create_user(rt, SYSTEM, "alice")
    user = Caller(creds.user.id, creds.user.name, creds.user.group_id, creds.user.role)
    await Monitor(rt).cycle()
    runners = []
    urls = []
    for factory in (create_ec2, create_occi):
        runner = web.AppRunner(factory(rt), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        urls.append(f"http://{host}:{port}")
        runners.append(runner)
    assert rt.policy_factory is not None
    scheduler = Scheduler(rt, rt.policy_factory(), rt.policy_factory)
    tasks = [asyncio.create_task(scheduler.run()), asyncio.create_task(Monitor(rt).run())]
    stop = asyncio.Event()
    holder["broker"] = Broker(
        asyncio.get_running_loop(),
        rt,
        urls[0],
        urls[1],
        image.id,
        region.id,
        user,
        creds.access_key,
        creds.secret_key,
    )
    holder["stop"] = stop
    ready.set()
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.aclose()
        for runner in runners:
            await runner.cleanup()
        await rt.aclose()


StartBroker = Callable[..., Broker]


@pytest.fixture
def start_broker(tmp_path: Path, ami: str, broker_id: str) -> Iterator[StartBroker]:
    """Start a broker whose region target talks to ``endpoint``; stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(endpoint: str, **settings: Any) -> Broker:
            serving = in_thread(
                lambda ready, h: _serve(tmp_path, endpoint, broker_id, ami, settings, ready, h),
                "e2e-broker",
            )
            holder = next(serving)
            stack.callback(lambda: next(serving, None))  # runs the harness's stop and join
            return holder["broker"]  # type: ignore[no-any-return]

        yield start


def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    until = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < until:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"never: {what} (last: {last!r})")


def launch(ec2: Any, broker: Broker, count: int = 1) -> list[str]:
    made = ec2.run_instances(
        ImageId=broker.image_id, InstanceType="t3.micro", MinCount=count, MaxCount=count
    )
    assert [i["State"]["Name"] for i in made["Instances"]] == ["pending"] * count
    return [str(i["InstanceId"]) for i in made["Instances"]]


def states(ec2: Any, rids: list[str]) -> dict[str, str]:
    got = ec2.describe_instances(InstanceIds=rids)
    return {
        i["InstanceId"]: i["State"]["Name"] for r in got["Reservations"] for i in r["Instances"]
    }


def in_moto(raw: Any, ref: str) -> dict[str, Any]:
    got = raw.describe_instances(InstanceIds=[ref])
    return dict(got["Reservations"][0]["Instances"][0])


def one_each(raw: Any, broker_id: str, broker: Broker, rids: list[str]) -> None:
    """moto holds exactly one instance of ours per broker instance, and the broker knows it."""
    everything = ours(raw, broker_id, live_only=False)
    assert len(everything) == len(rids), [i["InstanceId"] for i in everything]
    by_ref = {i["InstanceId"]: parse_instance(i).our_id for i in everything}
    assert sorted(str(v) for v in by_ref.values()) == sorted(rids)
    refs = broker.refs()
    assert {rid: refs[rid] for rid in rids} == {v: k for k, v in by_ref.items()}


def test_a_burst_instance_through_ec2_and_occi(
    start_broker: StartBroker, moto_url: str, raw: Any, broker_id: str
) -> None:
    broker = start_broker(moto_url)
    ec2 = broker.ec2()
    (rid,) = launch(ec2, broker)
    ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=WAIT)

    (remote,) = ours(raw, broker_id)  # exactly one EC2 instance carries our tags
    assert parse_instance(remote).our_id == rid
    assert remote["State"]["Name"] == "running" and remote["ImageId"] != broker.image_id
    assert broker.refs() == {rid: remote["InstanceId"]}
    view = broker.view(rid)
    assert view.target_name == TARGET and view.state is State.RUNNING
    why = broker.run(explanation(broker.rt, broker.user, rid))
    assert why["target"] == TARGET and why["considered"]["local"] == "removed by capacity", why
    # the address is EC2's, at the top and on the primary interface (not our launch-time lease)
    mine = ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"][0]
    primary = [n for n in mine["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0]
    assert mine["PrivateIpAddress"] == remote["PrivateIpAddress"]
    assert [n["PrivateIpAddress"] for n in primary] == [remote["PrivateIpAddress"]]

    status, body = broker.occi("GET", f"/compute/{rid}")
    assert status == 200, body
    assert 'occi.compute.state="active"' in body

    status, body = broker.occi(
        "POST",
        f"/compute/{rid}?action=stop",
        f'Category: stop; scheme="{ACTION}"; class="action"\n',
    )
    assert status == 200, body
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[rid], WaiterConfig=WAIT)
    assert in_moto(raw, remote["InstanceId"])["State"]["Name"] == "stopped"
    status, body = broker.occi("GET", f"/compute/{rid}")
    assert 'occi.compute.state="inactive"' in body

    ec2.start_instances(InstanceIds=[rid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=WAIT)
    assert in_moto(raw, remote["InstanceId"])["State"]["Name"] == "running"

    console = ec2.get_console_output(InstanceId=rid)
    assert console["InstanceId"] == rid and "Linux version" in console["Output"]

    # a volume of ours becomes an EBS volume in the instance's zone, attached there
    (shown,) = ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"]
    vid = ec2.create_volume(AvailabilityZone=shown["Placement"]["AvailabilityZone"], Size=2)[
        "VolumeId"
    ]
    ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig=WAIT)
    tagged = [{"Name": f"tag:{batching.TAG_VOLUME}", "Values": [vid]}]
    ebs = eventually(
        lambda: [v for v in raw.describe_volumes(Filters=tagged)["Volumes"] if v["Attachments"]],
        "the EBS volume attached in moto",
    )
    assert ebs[0]["Size"] == 2 and ebs[0]["Attachments"][0]["Device"] == "/dev/sdf"
    assert ebs[0]["Attachments"][0]["InstanceId"] == remote["InstanceId"]
    ec2.detach_volume(VolumeId=vid)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=WAIT)
    assert raw.describe_volumes(VolumeIds=[ebs[0]["VolumeId"]])["Volumes"][0]["Attachments"] == []
    ec2.delete_volume(VolumeId=vid)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[vid], WaiterConfig=WAIT)

    ec2.terminate_instances(InstanceIds=[rid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[rid], WaiterConfig=WAIT)
    assert in_moto(raw, remote["InstanceId"])["State"]["Name"] in ("shutting-down", "terminated")
    assert ours(raw, broker_id) == []
    assert len(ours(raw, broker_id, live_only=False)) == 1  # launched once, ever


def test_faults_slow_the_region_down_and_an_open_breaker_stops_placement(
    start_broker: StartBroker, proxy: FaultProxy, raw: Any, broker_id: str
) -> None:
    broker = start_broker(proxy.url, breaker_threshold=4, breaker_cooldown=0.3)
    ec2 = broker.ec2()

    # --- chaos: throttling, 500s (before and after moto acted), slow answers, drops --------
    # each kind at least once where it hurts most, then at random on every call
    for fault, times in (("throttle", 2), ("error-after", 1), ("drop", 1), ("slow", 1)):
        proxy.inject(fault, "RunInstances", times=times, delay=1.2)
    for fault in ("error", "drop-before", "throttle"):
        proxy.inject(fault, "DescribeInstances")
    proxy.chaos(0.3, CHAOS, delay=1.2)
    rids: list[str] = []
    for count in (1, 2, 1, 1):
        rids += launch(ec2, broker, count)
        time.sleep(0.5)
    eventually(lambda: all(r.times == 0 for r in proxy.rules), "every planned fault injected")
    time.sleep(2.0)
    proxy.clear()
    chaos = dict(proxy.faults)
    assert set(chaos) == set(CHAOS) and sum(chaos.values()) >= 10, chaos
    eventually(lambda: set(states(ec2, rids).values()) == {"running"}, "every instance running", 60)
    one_each(raw, broker_id, broker, rids)  # nothing launched twice, nothing lost

    # --- a region that fails everything: breaker open, target in error, nothing placed -----
    proxy.chaos(1.0, ("error", "drop-before"))
    eventually(lambda: broker.target().state == "error", "the region marked error", 30)
    why_open = eventually(
        lambda: "" if (c := broker.circuit()) == "closed" else c, "the breaker open", 30
    )
    assert why_open.startswith("circuit open") and "failed calls in a row" in why_open, why_open
    assert broker.target().state_reason, "the operator sees why the region is in error"
    (late,) = launch(ec2, broker)
    runs_before = proxy.counts["RunInstances"]
    time.sleep(2.0)  # ten scheduler cycles
    view = broker.view(late)
    assert view.state is State.PENDING and view.target_id is None, view
    assert "no burst target is usable" in view.state_reason, view.state_reason
    why = broker.run(explanation(broker.rt, broker.user, late))
    assert why["waiting_for"] == view.state_reason
    assert why["considered"] == {TARGET: "removed by state", "local": "removed by capacity"}
    assert proxy.counts["RunInstances"] == runs_before  # nothing was sent to the region
    assert broker.target().state == "error"
    for rid in rids:  # never "gone": unknown until the region answers again
        assert broker.view(rid).state is State.UNKNOWN

    # --- recovery: the trial call closes the breaker, the waiting launch goes out ----------
    proxy.clear()
    eventually(lambda: broker.target().state == "enabled", "the region enabled again", 30)
    eventually(lambda: broker.circuit() == "closed", "the breaker closed", 10)
    everyone = [*rids, late]
    eventually(lambda: set(states(ec2, everyone).values()) == {"running"}, "everything running", 60)
    assert broker.view(late).target_name == TARGET
    one_each(raw, broker_id, broker, everyone)
    happened = broker.events([*everyone, broker.target_id])
    assert not [e for e in happened if e[2] == "failed" or e[1] == "unmanaged"], happened
