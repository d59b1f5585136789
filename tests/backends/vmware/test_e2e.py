"""End to end against govmomi's vSphere simulator (vCenter and ESX models), next to a KVM and a
Xen-typed host simulated on libvirt's test driver.

One broker runtime (SQLite) per simulator model runs in a background thread with its own event
loop: the three targets, the scheduler and monitor loops, and the EC2 and OCCI frontends on
loopback. Tests are plain synchronous clients: boto3 for EC2, raw HTTP (Basic auth) for OCCI,
and pyvmomi straight to the simulator to see what really happened there and to change VMs
behind the broker's back.

What is proven: the same image lands on the vSphere target, the Xen host or the KVM host by
the ``cloudbroker:requirements`` tag (``HYPERVISOR = "..."``) alone; a vSphere instance goes
through its whole life through boto3 and through OCCI while the simulator's VM really changes
power state; a VM powered off or destroyed behind the broker's back is marked (stopped; failed
with a "lost" reason) after one monitor cycle, not guessed.

``test_a_probe_overlapping_a_launch_does_not_hide_the_new_vm`` pins the interleaving in which
the monitor once acted on an inventory snapshot older than the launch it reconciled.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import WaiterError

from backends.libvirt.backend import LibvirtBackend
from backends.libvirt.local import simulated_node_file
from backends.vmware import backend as vmware_backend
from backends.vmware import vcsim
from backends.vmware.backend import VmwareBackend
from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.config import from_mapping
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.protocols import BackendFactory
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets, users
from broker.states import Action, State
from frontends.ec2.app import create_app as create_ec2
from frontends.occi.app import create_app as create_occi
from policies.placement import DefaultPolicy
from tests.backends.vmware.test_backend import (
    CLUSTER,
    TEMPLATE,
    Disconnect,
    _spec,
    config,
    direct,
    find_vm,
    secret,
    settings,
)
from tests.harness import in_thread

T = TypeVar("T")
REGION = "cloudbroker-1"
REQUIREMENTS_TAG = "cloudbroker:requirements"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
OS_SCHEME = "http://schemas.cloudbroker.org/occi/templates/os#"
RES_SCHEME = "http://schemas.cloudbroker.org/occi/templates/resource#"
PLACEMENT = "http://schemas.cloudbroker.org/occi/infrastructure#placement"
ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
MONITOR_INTERVAL = 0.5
ORIGINAL_REUSE = vmware_backend.REUSE_SECONDS
DRIVERS: dict[str, type] = {"libvirt": LibvirtBackend, "vmware": VmwareBackend}


def _loader(driver: str) -> BackendFactory:
    return DRIVERS[driver]  # type: ignore[return-value]


@dataclasses.dataclass
class World:
    """The running broker over one simulator, and what was set up in it."""

    loop: asyncio.AbstractEventLoop
    rt: Runtime
    sim: vcsim.Simulator
    ec2_url: str
    occi_url: str
    portable_image: str  # hypervisor "": a kernel for libvirt, a template for vSphere
    vmware_image: str  # hypervisor "vmware": the simulator's template VM only
    target_ids: dict[str, str]  # name -> id

    @property
    def vc_name(self) -> str:
        return f"vc-{self.sim.mode}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclasses.dataclass(frozen=True)
class Tenant:
    access_key: str
    secret_key: str

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.access_key}:{self.secret_key}".encode()).decode()


async def _targets(rt: Runtime, sim: vcsim.Simulator) -> dict[str, str]:
    node = simulated_node_file(rt.config.data_path)
    out = {}
    for hv in ("kvm", "xen"):
        own = node.with_name(f"{hv}-node.xml")  # one test-driver world per host
        shutil.copyfile(node, own)
        t = await targets.add(
            rt,
            SYSTEM,
            name=f"{hv}-1",
            kind="host",
            driver="libvirt",
            hypervisor=hv,
            settings={"uri": f"test://{own}"},
            simulated=True,
        )
        out[t.name] = t.id
    vc = await targets.add(
        rt,
        SYSTEM,
        name=f"vc-{sim.mode}",
        kind="host",
        driver="vmware",
        hypervisor="vmware",
        settings=settings(sim),
        secret=secret(sim),
    )
    out[vc.name] = vc.id
    return out


async def _images(rt: Runtime, sim: vcsim.Simulator) -> tuple[str, str]:
    template = TEMPLATE[sim.mode]
    portable = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="portable",
            kind="kernel",
            kernel="/boot/vmlinuz",
            visibility="public",
            mappings={"vmware": {"template": template, "linked": True}},
        ),
    )
    only_vmware = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="tpl",
            kind="disk",
            location=f"template:{template}",
            hypervisor="vmware",
            visibility="public",
            mappings={"vmware": {"template": template, "linked": True}},
        ),
    )
    return portable.id, only_vmware.id


async def _serve(
    tmp: Path, sim: vcsim.Simulator, ready: threading.Event, holder: dict[str, Any]
) -> None:
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none", "region": REGION},
            "monitor": {"interval": MONITOR_INTERVAL},
            "scheduler": {"interval": 0.2},
        },
        env={},
    )
    rt = await open_runtime(cfg, migrate=True)
    rt.backends = BackendRegistry(rt.engine, rt.box.open, str(rt.config.data_path), loader=_loader)
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    scheduler = Scheduler(rt, DefaultPolicy())
    stop = asyncio.Event()
    try:
        tids = await _targets(rt, sim)
        await Monitor(rt).cycle()
        portable, only_vmware = await _images(rt, sim)
        urls = []
        for factory in (create_ec2, create_occi):
            runner = web.AppRunner(factory(rt), access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            urls.append(f"http://{host}:{port}")
        tasks = [asyncio.create_task(scheduler.run()), asyncio.create_task(Monitor(rt).run())]
        holder["world"] = World(
            asyncio.get_running_loop(), rt, sim, urls[0], urls[1], portable, only_vmware, tids
        )
        holder["stop"] = stop
        ready.set()
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.aclose()
        for runner in runners:
            await runner.cleanup()
        await rt.aclose()


@pytest.fixture(scope="module", params=["vpx", "esx"])
def world(
    request: pytest.FixtureRequest, vcsim_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    mode = str(request.param)
    tmp = tmp_path_factory.mktemp(f"e2e-{mode}")
    yield from _serving(mode, tmp)


def _serving(mode: str, tmp: Path) -> Iterator[World]:
    sim = vcsim.start(mode, log=tmp / f"vcsim-{mode}.log")
    (tmp / "broker").mkdir()
    try:
        serving = in_thread(lambda ready, h: _serve(tmp / "broker", sim, ready, h), f"e2e-{mode}")
        for holder in serving:
            yield holder["world"]
    finally:
        sim.stop()


@pytest.fixture
def tenant(world: World) -> Tenant:
    creds = world.run(users.create_user(world.rt, SYSTEM, f"u{uuid.uuid4().hex[:10]}"))
    return Tenant(creds.access_key, creds.secret_key)


@pytest.fixture
def ec2(world: World, tenant: Tenant) -> Any:
    return boto3.session.Session().client(
        "ec2",
        region_name=REGION,
        endpoint_url=world.ec2_url,
        aws_access_key_id=tenant.access_key,
        aws_secret_access_key=tenant.secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


# --------------------------------------------------------------------------- helpers


def run(ec2: Any, image: str, requirements: str | None = None, count: int = 1) -> list[str]:
    kw: dict[str, Any] = {}
    if requirements is not None:
        tags = [{"Key": REQUIREMENTS_TAG, "Value": requirements}]
        kw["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
    got = ec2.run_instances(
        ImageId=image, InstanceType="t3.micro", MinCount=count, MaxCount=count, **kw
    )
    return [i["InstanceId"] for i in got["Instances"]]


def wait(ec2: Any, name: str, *rids: str) -> None:
    try:
        ec2.get_waiter(name).wait(
            InstanceIds=list(rids), WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
        )
    except WaiterError as exc:
        shown = [
            (i["InstanceId"], i["State"]["Name"], i.get("StateReason", {}).get("Message"))
            for r in ec2.describe_instances(InstanceIds=list(rids))["Reservations"]
            for i in r["Instances"]
        ]
        raise AssertionError(f"{name}: {shown}") from exc


def described(ec2: Any, rid: str) -> dict[str, Any]:
    (res,) = ec2.describe_instances(InstanceIds=[rid])["Reservations"]
    found: dict[str, Any] = res["Instances"][0]
    return found


def view(world: World, rid: str) -> instances.InstanceView:
    """The operator's view of an instance (the service the admin API renders)."""
    return world.run(instances.get(world.rt, SYSTEM, rid))


def power(world: World, rid: str) -> str | None:
    """The VM's power state in the simulator, asked directly (None: no such VM)."""
    si = direct(world.sim)
    try:
        vm = find_vm(si, rid)
        return None if vm is None else str(vm.runtime.powerState)
    finally:
        Disconnect(si)


def until_power(world: World, rid: str, want: str, timeout: float = 30) -> None:
    """The simulator's VM reaches ``want`` (OCCI calls a booting compute active already)."""
    deadline = time.monotonic() + timeout
    while (seen := power(world, rid)) != want:
        assert time.monotonic() < deadline, f"{rid} is {seen}, not {want}"
        time.sleep(0.1)


def behind_our_back(world: World, rid: str, change: Callable[[Any], Any]) -> None:
    """Run a pyvmomi task on the VM directly, as an operator in vSphere would, and wait."""
    si = direct(world.sim)
    try:
        task = change(find_vm(si, rid))
        deadline = time.monotonic() + 10
        while task.info.state not in ("success", "error") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert task.info.state == "success", task.info.error
    finally:
        Disconnect(si)


def one_monitor_cycle(world: World) -> None:
    world.run(Monitor(world.rt).cycle())


def occi_request(
    world: World,
    tenant: Tenant,
    method: str,
    path: str,
    body: str = "",
    content_type: str = "text/plain",
    accept: str = "application/occi+json",
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(world.occi_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        headers = {"Authorization": tenant.basic, "Accept": accept}
        if body:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body.encode() or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def occi_state(world: World, tenant: Tenant, location: str) -> tuple[str, str]:
    status, _, body = occi_request(world, tenant, "GET", location)
    assert status == 200, body
    attrs = json.loads(body)["attributes"]
    return attrs["occi.compute.state"], attrs.get("occi.compute.state.message", "")


def occi_wait(world: World, tenant: Tenant, location: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: tuple[str, str] = ("", "")
    while time.monotonic() < deadline:
        last = occi_state(world, tenant, location)
        if last[0] == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{location} stayed {last}, never {state}")


def occi_act(world: World, tenant: Tenant, location: str, term: str) -> None:
    body = f'Category: {term}; scheme="{ACTION}"; class="action"\n'
    status, _, reply = occi_request(world, tenant, "POST", f"{location}?action={term}", body)
    assert status == 200, (term, status, reply)


def observe_libvirt(world: World, target: str, rid: str) -> list[State]:
    async def go() -> list[State]:
        assert world.rt.backends is not None
        backend = await world.rt.backends.get(world.target_ids[target])
        return [o.state for o in await backend.observe([rid])]

    return world.run(go())


# --------------------------------------------------------------------------- tests


def test_placement_follows_the_requirements_tag(world: World, ec2: Any) -> None:
    (on_vc,) = run(ec2, world.portable_image, 'HYPERVISOR = "vmware"')
    (on_xen,) = run(ec2, world.portable_image, 'HYPERVISOR = "xen"')
    (on_kvm,) = run(ec2, world.portable_image, 'HYPERVISOR = "kvm"')
    (by_image,) = run(ec2, world.vmware_image)  # no requirements: the image's hypervisor decides
    everything = (on_vc, on_xen, on_kvm, by_image)
    wait(ec2, "instance_running", *everything)
    assert {rid: view(world, rid).target_name for rid in everything} == {
        on_vc: world.vc_name,
        on_xen: "xen-1",
        on_kvm: "kvm-1",
        by_image: world.vc_name,
    }
    assert observe_libvirt(world, "xen-1", on_xen) == [State.RUNNING]
    assert observe_libvirt(world, "kvm-1", on_kvm) == [State.RUNNING]
    assert observe_libvirt(world, "kvm-1", on_xen) == []
    si = direct(world.sim)
    try:
        for rid in (on_vc, by_image):
            vm = find_vm(si, rid)
            assert vm is not None and vm.runtime.powerState == "poweredOn"
            if CLUSTER[world.sim.mode]:
                assert vm.runtime.host.parent.name == CLUSTER[world.sim.mode]
        assert find_vm(si, on_xen) is None and find_vm(si, on_kvm) is None
    finally:
        Disconnect(si)
    ec2.terminate_instances(InstanceIds=list(everything))
    wait(ec2, "instance_terminated", *everything)
    assert power(world, on_vc) is None and power(world, by_image) is None
    assert observe_libvirt(world, "xen-1", on_xen) == []


def test_an_impossible_requirement_leaves_the_instance_unplaced(world: World, ec2: Any) -> None:
    (rid,) = run(ec2, world.portable_image, 'HYPERVISOR = "hyperv"')
    time.sleep(1.0)  # several scheduler cycles
    assert described(ec2, rid)["State"]["Name"] == "pending"
    unplaced = view(world, rid)
    assert unplaced.target_name is None
    assert "3 by requirements" in unplaced.state_reason, unplaced.state_reason
    ec2.terminate_instances(InstanceIds=[rid])
    wait(ec2, "instance_terminated", rid)


def test_lifecycle_through_boto3(world: World, ec2: Any) -> None:
    (rid,) = run(ec2, world.portable_image, 'HYPERVISOR = "vmware"')
    wait(ec2, "instance_running", rid)
    assert view(world, rid).target_name == world.vc_name
    until_power(world, rid, "poweredOn")
    ec2.stop_instances(InstanceIds=[rid])
    wait(ec2, "instance_stopped", rid)
    until_power(world, rid, "poweredOff")
    ec2.start_instances(InstanceIds=[rid])
    wait(ec2, "instance_running", rid)
    until_power(world, rid, "poweredOn")
    ec2.reboot_instances(InstanceIds=[rid])
    wait(ec2, "instance_running", rid)
    until_power(world, rid, "poweredOn")
    ec2.terminate_instances(InstanceIds=[rid])
    wait(ec2, "instance_terminated", rid)
    assert power(world, rid) is None
    assert view(world, rid).state is State.DONE


def test_lifecycle_through_occi(world: World, tenant: Tenant) -> None:
    doc = {
        "kind": INFRA + "compute",
        "mixins": [OS_SCHEME + world.portable_image, RES_SCHEME + "t3.micro", PLACEMENT],
        "attributes": {"org.cloudbroker.placement.requirements": 'HYPERVISOR = "vmware"'},
    }
    status, headers, body = occi_request(
        world, tenant, "POST", "/compute/", json.dumps(doc), "application/occi+json"
    )
    assert status == 201, body
    location = headers["Location"]
    rid = location.rsplit("/", 1)[1]
    occi_wait(world, tenant, location, "active")
    assert view(world, rid).target_name == world.vc_name
    until_power(world, rid, "poweredOn")
    occi_act(world, tenant, location, "stop")
    occi_wait(world, tenant, location, "inactive")
    until_power(world, rid, "poweredOff")
    occi_act(world, tenant, location, "start")
    occi_wait(world, tenant, location, "active")
    until_power(world, rid, "poweredOn")
    occi_act(world, tenant, location, "restart")
    occi_wait(world, tenant, location, "active")
    until_power(world, rid, "poweredOn")
    status, _, body = occi_request(world, tenant, "DELETE", location)
    assert status == 200, body
    deadline = time.monotonic() + 30
    while view(world, rid).state is not State.DONE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert view(world, rid).state is State.DONE
    assert power(world, rid) is None


def test_changes_behind_the_brokers_back_are_marked_within_one_cycle(
    world: World, ec2: Any, tenant: Tenant
) -> None:
    off, gone, untouched = run(ec2, world.portable_image, 'HYPERVISOR = "vmware"', count=3)
    wait(ec2, "instance_running", off, gone, untouched)
    behind_our_back(world, off, lambda vm: vm.PowerOffVM_Task())
    behind_our_back(world, gone, lambda vm: vm.PowerOffVM_Task())
    behind_our_back(world, gone, lambda vm: vm.Destroy_Task())
    one_monitor_cycle(world)  # the background monitor may have seen it first: fine, not later

    assert described(ec2, off)["State"]["Name"] == "stopped"
    lost = described(ec2, gone)
    assert lost["State"]["Name"] == "terminated"
    assert lost["StateReason"]["Code"] == "Server.InternalError"
    assert lost["StateReason"]["Message"].startswith("lost")
    assert described(ec2, untouched)["State"]["Name"] == "running"
    assert occi_state(world, tenant, f"/compute/{off}")[0] == "inactive"
    state, message = occi_state(world, tenant, f"/compute/{gone}")
    assert state == "error" and message.startswith("lost")
    assert occi_state(world, tenant, f"/compute/{untouched}")[0] == "active"
    assert view(world, off).state is State.POWEROFF
    assert view(world, gone).state is State.FAILED

    # marked, not guessed or repaired: later cycles leave both as they are
    one_monitor_cycle(world)
    time.sleep(3 * MONITOR_INTERVAL)
    assert power(world, off) == "poweredOff" and power(world, gone) is None
    assert view(world, off).state is State.POWEROFF
    assert view(world, gone).state is State.FAILED

    ec2.terminate_instances(InstanceIds=[off, gone, untouched])
    wait(ec2, "instance_terminated", off, gone, untouched)
    assert power(world, off) is None and power(world, untouched) is None


async def test_a_probe_overlapping_a_launch_does_not_hide_the_new_vm(
    esx: vcsim.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving the monitor meets with the scheduler, made deterministic: a probe reads
    the inventory, a launch runs to its end meanwhile, then the probe stores what it read; the
    monitor's observe() (within REUSE_SECONDS, as in one Monitor.check) must still see the VM."""
    monkeypatch.setattr(vmware_backend, "REUSE_SECONDS", ORIGINAL_REUSE)  # the product as is
    iid = "i-00000000000000e2"
    backend = VmwareBackend(config(esx))
    read, release = threading.Event(), threading.Event()
    real = backend.session.retrieve
    calls: list[int] = []

    def retrieve(specs: Any) -> Any:
        found = real(specs)
        calls.append(1)
        if len(calls) == 1:  # the probe's read: hold it until the launch has finished
            read.set()
            release.wait(10)
        return found

    monkeypatch.setattr(backend.session, "retrieve", retrieve)
    try:
        probing = asyncio.create_task(backend.probe())
        assert await asyncio.to_thread(read.wait, 10)
        placement = await backend.launch(_spec(iid, TEMPLATE["esx"]))
        assert placement.state is State.RUNNING
        release.set()
        await probing
        seen = await backend.observe([placement.ref])
        # the probe's read began before the launch ended, so it is not reused: observe reads
        # again (a stale reuse made the monitor mark the new instance failed, "lost")
        assert [(o.ref, o.state) for o in seen] == [(placement.ref, State.RUNNING)]
    finally:
        release.set()
        await backend.act(iid, Action.TERMINATE)
        await backend.aclose()
