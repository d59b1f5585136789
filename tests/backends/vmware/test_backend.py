"""The VMware backend against govmomi's vSphere simulator (ESX and vCenter models), driven
through the real service layer, scheduler and monitor."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pyVim.connect import Disconnect as _disconnect
from pyVim.connect import SmartConnect
from pyVmomi import vim

from backends.vmware.backend import VmwareBackend
from backends.vmware.states import POWER_STATES, to_state
from backends.vmware.vcsim import Simulator
from broker.auth import SYSTEM
from broker.errors import BackendError, BackendUnavailable, InvalidRequest
from broker.monitor import Monitor
from broker.protocols import TargetConfig, VolumeSpec, stores_volumes
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from policies.placement import DefaultPolicy
from tests.conftest import make_user

TEMPLATE = {"esx": "ha-host_VM0", "vpx": "DC0_C0_RP0_VM0"}
CLUSTER = {"esx": "", "vpx": "DC0_C0"}


def settings(sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {
        "url": sim.url,
        "insecure": True,
        "cluster": CLUSTER[sim.mode],
        "cpu_ratio": 16,
        "memory_ratio": 4,
        **extra,
    }


def secret(sim: Simulator) -> dict[str, str]:
    return {"user": sim.user or "root", "password": sim.password or "secret"}


async def settle(rt: Runtime) -> None:
    sched = Scheduler(rt, DefaultPolicy())
    for _ in range(3):
        await sched.cycle()
        await sched.drain()


async def world(rt: Runtime, sim: Simulator) -> tuple[str, str]:
    """Add the simulator as a target and register a template image; (target id, image id)."""
    host = await targets.add(
        rt,
        SYSTEM,
        name=f"vs-{sim.mode}",
        kind="host",
        driver="vmware",
        hypervisor="vmware",
        settings=settings(sim),
        secret=secret(sim),
    )
    await Monitor(rt).cycle()
    img = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="tpl",
            kind="disk",
            location=f"template:{TEMPLATE[sim.mode]}",
            hypervisor="vmware",
            visibility="public",
            mappings={"vmware": {"template": TEMPLATE[sim.mode], "linked": True}},
        ),
    )
    return host.id, img.id


def direct(sim: Simulator) -> Any:
    si = SmartConnect(
        host=sim.host,
        port=sim.port,
        user=secret(sim)["user"],
        pwd=secret(sim)["password"],
        disableSslCertValidation=True,
    )
    return si


def Disconnect(si: Any) -> None:
    _disconnect(si)
    si._stub.DropConnections()


def find_vm(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next((v for v in view.view if v.name == name), None)
    finally:
        view.DestroyView()


def datastore_files(si: Any, sim: Simulator) -> set[str]:
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    ds = dc.hostFolder.childEntity[-1].datastore[0]
    spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*"])
    task = ds.browser.SearchDatastoreSubFolders_Task(f"[{ds.name}]", spec)
    while task.info.state not in ("success", "error"):
        time.sleep(0.01)
    out = set()
    for r in task.info.result or ():
        for f in r.file or ():
            out.add(f"{r.folderPath.rstrip('/')}/{f.path}")
    return out


async def backend_of(rt: Runtime, tid: str) -> VmwareBackend:
    assert rt.backends is not None
    b = await rt.backends.get(tid)
    assert isinstance(b, VmwareBackend)
    return b


def test_the_state_table() -> None:
    assert to_state("poweredOn") == (State.RUNNING, "powered on")
    assert to_state("poweredOff")[0] is State.POWEROFF
    assert to_state("suspended")[0] is State.SUSPENDED
    assert to_state("somethingNew")[0] is State.UNKNOWN
    assert to_state("poweredOn", "orphaned") == (State.UNKNOWN, "the VM is orphaned")
    assert set(POWER_STATES) == {str(s) for s in vim.VirtualMachine.PowerState.values}


async def test_full_lifecycle_through_the_broker(vrt: Runtime, sim: Simulator) -> None:
    rt = vrt
    tid, ami = await world(rt, sim)
    target = await targets.get(rt, SYSTEM, f"vs-{sim.mode}")
    assert target.total_cpu == (6 if sim.mode == "vpx" else 2) * 16
    assert target.total_memory_mb > 4000 * 4
    alice = await make_user(rt, "alice")
    got = await instances.launch(
        rt, alice, LaunchRequest(ami, "t3.micro", 2, 2, user_data=b"#cloud-config\n")
    )
    await settle(rt)
    for inst in got:
        view = await instances.get(rt, alice, inst.id)
        assert view.state is State.RUNNING, view.state_reason
    si = direct(sim)
    try:
        vm = find_vm(si, got[0].id)
        assert vm is not None
        assert vm.config.hardware.numCPU == 2 and vm.config.hardware.memoryMB == 1024
        assert got[0].id in vm.config.annotation
        cds = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualCdrom)]
        assert cds[0].backing.fileName.endswith(f"cloudbroker/{got[0].id}.iso")
        nics = [
            d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ]
        inst0 = await instances.get(rt, alice, got[0].id)
        assert [n.macAddress for n in nics] == [i.mac for i in inst0.interfaces]
        assert any(f.endswith(f"cloudbroker/{got[0].id}.iso") for f in datastore_files(si, sim))
    finally:
        Disconnect(si)
    rid = got[0].id
    for action, after in [
        (Action.STOP, State.POWEROFF),
        (Action.START, State.RUNNING),
        (Action.SUSPEND, State.SUSPENDED),
        (Action.RESUME, State.RUNNING),
        (Action.REBOOT, State.RUNNING),
        (Action.POWEROFF, State.POWEROFF),
        (Action.START, State.RUNNING),
    ]:
        await instances.act(rt, alice, [rid], action)
        await settle(rt)
        view = await instances.get(rt, alice, rid)
        assert view.state is after, (action, view.state_reason)
    await Monitor(rt).cycle()
    assert (await instances.get(rt, alice, rid)).state is State.RUNNING
    backend = await backend_of(rt, tid)
    await instances.act(rt, alice, [i.id for i in got], Action.TERMINATE)
    await settle(rt)
    assert await backend.observe([i.id for i in got]) == []
    page = await instances.describe(rt, alice)
    assert {i.state for i in page.items} == {State.DONE}
    si = direct(sim)
    try:
        assert all(find_vm(si, i.id) is None for i in got)
        assert not any(i.id in f for i in got for f in datastore_files(si, sim))
    finally:
        Disconnect(si)


async def test_vms_changed_behind_our_back_are_noticed_in_one_cycle(
    vrt: Runtime, sim: Simulator
) -> None:
    rt = vrt
    _tid, ami = await world(rt, sim)
    alice = await make_user(rt, "alice")
    a, b = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro", 2, 2))
    await settle(rt)
    si = direct(sim)
    try:
        vm_a, vm_b = find_vm(si, a.id), find_vm(si, b.id)
        vm_a.PowerOffVM_Task()
        vm_b.PowerOffVM_Task()
        time.sleep(0.2)
        vm_b.Destroy_Task()
        time.sleep(0.2)
    finally:
        Disconnect(si)
    await Monitor(rt).cycle()
    assert (await instances.get(rt, alice, a.id)).state is State.POWEROFF
    view = await instances.get(rt, alice, b.id)
    assert view.state is State.FAILED and view.state_reason.startswith("lost")


async def test_an_unreachable_target_makes_instances_unknown_not_gone(
    vrt: Runtime, esx: Simulator
) -> None:
    rt = vrt
    _tid, ami = await world(rt, esx)
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    esx.stop()
    for _ in range(rt.config.monitor.misses):
        await Monitor(rt).cycle()
    assert (await instances.get(rt, alice, inst.id)).state is State.UNKNOWN


async def test_host_add_gives_clear_errors(vrt: Runtime, vpx_locked: Simulator) -> None:
    rt = vrt

    async def add(s: dict[str, Any], sec: dict[str, str]) -> None:
        await targets.add(
            rt,
            SYSTEM,
            name="vc",
            kind="host",
            driver="vmware",
            hypervisor="vmware",
            settings=s,
            secret=sec,
        )

    good = {"user": "admin", "password": "s3cret"}
    with pytest.raises(InvalidRequest, match="refused the user name or password"):
        await add(settings(vpx_locked), {"user": "admin", "password": "wrong"})
    with pytest.raises(BackendUnavailable, match=r"cannot reach https://127\.0\.0\.1:9"):
        await add({**settings(vpx_locked), "url": "https://127.0.0.1:9"}, good)
    with pytest.raises(BackendUnavailable, match="certificate"):
        await add({**settings(vpx_locked), "insecure": False}, good)
    with pytest.raises(InvalidRequest, match="--vsphere https://"):
        await add({**settings(vpx_locked), "url": "ftp://x"}, good)
    with pytest.raises(InvalidRequest, match=r"--user and --password"):
        await add(settings(vpx_locked), {"user": "admin"})
    with pytest.raises(InvalidRequest, match=r"no datastore named 'nope'.*LocalDS_0"):
        await add({**settings(vpx_locked), "datastore": "nope"}, good)
    with pytest.raises(InvalidRequest, match="no cluster or host named 'C9'"):
        await add({**settings(vpx_locked), "cluster": "C9"}, good)
    assert await targets.describe(rt, SYSTEM) == []
    await add({**settings(vpx_locked), "datastore": "LocalDS_0", "network": "VM Network"}, good)
    assert [t.name for t in await targets.describe(rt, SYSTEM)] == ["vc"]


def config(sim: Simulator, **extra: Any) -> TargetConfig:
    return TargetConfig(
        "t-1", "t", "host", "vmware", "vmware", settings(sim, **extra), secret(sim), "/tmp"
    )


async def test_a_failed_launch_leaves_nothing_and_a_retry_finds_its_vm(
    vrt: Runtime, esx: Simulator
) -> None:
    rt = vrt
    tid, ami = await world(rt, esx)
    bad = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="gone",
            kind="disk",
            location="template:no-such-vm",
            hypervisor="vmware",
            visibility="public",
        ),
    )
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(bad.id, "t3.micro"))
    await settle(rt)
    view = await instances.get(rt, alice, inst.id)
    assert "no-such-vm" in view.state_reason
    si = direct(esx)
    try:
        assert find_vm(si, inst.id) is None
        assert not any(inst.id in f for f in datastore_files(si, esx))
    finally:
        Disconnect(si)
    (ok,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    backend = await backend_of(rt, tid)
    from broker.specs import launch_specs  # the spec the scheduler would send

    async with rt.engine.connect() as conn:
        specs = await launch_specs(conn, [ok.id], DefaultPolicy().target_settings)
    again = await backend.launch(specs[ok.id])
    assert again.ref == ok.id
    si = direct(esx)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        assert [v.name for v in view.view].count(ok.id) == 1
    finally:
        Disconnect(si)


async def test_volumes_snapshots_and_prompt_power_changes(esx: Simulator) -> None:
    backend = VmwareBackend(config(esx))
    try:
        from tests.backends.vmware.test_backend import _spec

        await backend.launch(_spec("i-00000000000000aa", TEMPLATE["esx"]))
        path = await backend.attach_volume("i-00000000000000aa", VolumeSpec("vol-1", "/dev/sdb", 2))
        assert path.endswith("cloudbroker-volumes/vol-1.vmdk")
        assert path in await backend.attached_disks("i-00000000000000aa")
        held = VolumeSpec("vol-1", "/dev/sdb", 2, backend_ref=path)
        await backend.detach_volume("i-00000000000000aa", held)
        assert path not in await backend.attached_disks("i-00000000000000aa")
        again = await backend.attach_volume("i-00000000000000aa", held)
        assert again == path
        await backend.detach_volume("i-00000000000000aa", held)
        await backend.delete_volume(held)
        assert stores_volumes(backend)
        await backend.snapshot("i-00000000000000aa", "before")
        assert await backend.snapshots("i-00000000000000aa") == ["before"]
        await backend.revert_snapshot("i-00000000000000aa", "before")
        await backend.delete_snapshot("i-00000000000000aa", "before")
        assert await backend.snapshots("i-00000000000000aa") == []
        with pytest.raises(BackendError, match="no snapshot named"):
            await backend.revert_snapshot("i-00000000000000aa", "nope")
        # WaitForUpdatesEx: a power-off made elsewhere reaches the watcher without polling
        backend.watch.start()
        moref = backend._vms["i-00000000000000aa"]._moId
        deadline = time.monotonic() + 10
        while backend.watch.power(moref) != "poweredOn" and time.monotonic() < deadline:
            time.sleep(0.02)
        si = direct(esx)
        try:
            t0 = time.monotonic()
            find_vm(si, "i-00000000000000aa").PowerOffVM_Task()
            assert backend.watch.wait_for(moref, {"poweredOff"}, 5.0) == "poweredOff"
            assert time.monotonic() - t0 < 2.0
        finally:
            Disconnect(si)
        await backend.act("i-00000000000000aa", Action.TERMINATE)
        assert await backend.observe(["i-00000000000000aa"]) == []
    finally:
        await backend.aclose()


def _spec(iid: str, template: str) -> Any:
    from broker.protocols import LaunchSpec

    return LaunchSpec(
        instance_id=iid,
        target_id="t-1",
        target_settings={},
        hostname="h",
        vcpus=1,
        memory_mb=512,
        disk_gb=1,
        flavor="t3.nano",
        image_id="ami-1",
        image_kind="disk",
        image_location=f"template:{template}",
        image_kernel="",
        image_ramdisk="",
        image_cmdline="",
        image_checksum="",
        image_mappings={},
        user_data=None,
        key_name=None,
        public_key=None,
        nics=(),
    )
