"""The libvirt backend on libvirt's test driver: KVM- and Xen-typed simulated hosts, driven
through the real service layer, scheduler and monitor."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from backends.libvirt.backend import LibvirtBackend
from backends.libvirt.local import simulated_node_file
from broker.auth import SYSTEM
from broker.errors import BackendUnavailable, InvalidRequest
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from policies.placement import DefaultPolicy
from tests.conftest import make_user


async def settle(rt: Runtime) -> None:
    sched = Scheduler(rt, DefaultPolicy())
    for _ in range(3):
        await sched.cycle()
        await sched.drain()


@pytest.mark.parametrize("hypervisor", ["kvm", "xen"])
async def test_lifecycle_on_a_simulated_host(sqlite_rt: Runtime, hypervisor: str) -> None:
    rt = sqlite_rt
    node = simulated_node_file(rt.config.data_path)
    host = await targets.add(
        rt,
        SYSTEM,
        name=f"sim-{hypervisor}",
        kind="host",
        driver="libvirt",
        hypervisor=hypervisor,
        settings={"uri": f"test://{node}"},
        simulated=True,
    )
    await Monitor(rt).cycle()
    assert (await targets.get(rt, SYSTEM, host.name)).total_cpu == 16
    ami = (
        await images.register(
            rt,
            SYSTEM,
            images.ImageSpec(
                name="k",
                kind="kernel",
                kernel="/boot/vmlinuz",
                hypervisor=hypervisor,
                visibility="public",
            ),
        )
    ).id
    alice = await make_user(rt, "alice")
    got = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro", 3, 3))
    await settle(rt)
    assert rt.backends is not None
    backend = await rt.backends.get(host.id)
    assert isinstance(backend, LibvirtBackend)
    seen = await backend.observe([i.id for i in got])
    assert {o.state for o in seen} == {State.RUNNING}
    rid = got[0].id
    for action, after in [
        (Action.STOP, State.POWEROFF),
        (Action.START, State.RUNNING),
        (Action.SUSPEND, State.SUSPENDED),
        (Action.RESUME, State.RUNNING),
        (Action.REBOOT, State.RUNNING),
    ]:
        await instances.act(rt, alice, [rid], action)
        await settle(rt)
        assert (await instances.get(rt, alice, rid)).state is after, action
    await instances.act(rt, alice, [i.id for i in got], Action.TERMINATE)
    await settle(rt)
    assert await backend.observe([i.id for i in got]) == []
    page = await instances.describe(rt, alice)
    assert {i.state for i in page.items} == {State.DONE}


async def test_a_domain_destroyed_behind_our_back_is_noticed(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    node = simulated_node_file(rt.config.data_path)
    host = await targets.add(
        rt,
        SYSTEM,
        name="sim",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{node}"},
    )
    ami = (
        await images.register(
            rt, SYSTEM, images.ImageSpec(name="k", kind="kernel", kernel="/k", visibility="public")
        )
    ).id
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await Monitor(rt).cycle()
    await settle(rt)
    assert rt.backends is not None
    backend = await rt.backends.get(host.id)
    assert isinstance(backend, LibvirtBackend)
    conn = backend._connection()
    conn.lookupByName(inst.id).destroy()
    await Monitor(rt).cycle()
    assert (await instances.get(rt, alice, inst.id)).state is State.POWEROFF
    conn.lookupByName(inst.id).undefine()
    await Monitor(rt).cycle()
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.FAILED and view.state_reason.startswith("lost")


async def test_host_add_refuses_bad_settings(sqlite_rt: Runtime, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        await targets.add(
            sqlite_rt,
            SYSTEM,
            name="h",
            kind="host",
            driver="libvirt",
            hypervisor="kvm",
            settings={"uri": ""},
        )
    with pytest.raises(BackendUnavailable):
        await targets.add(
            sqlite_rt,
            SYSTEM,
            name="h",
            kind="host",
            driver="libvirt",
            hypervisor="kvm",
            settings={"uri": f"test://{tmp_path}/missing.xml"},
        )
    node = simulated_node_file(sqlite_rt.config.data_path)
    for settings, why in [
        ({"store": "nfs"}, "store must be shared or ssh"),
        ({"store": "ssh", "image_dir": "/srv/images"}, "needs --ssh and --image-dir"),
        ({"store": "ssh", "ssh": "u@h:22"}, "needs --ssh and --image-dir"),
    ]:
        with pytest.raises(InvalidRequest, match=why):
            await targets.add(
                sqlite_rt,
                SYSTEM,
                name="h",
                kind="host",
                driver="libvirt",
                hypervisor="kvm",
                settings={"uri": f"test://{node}", **settings},
            )
    assert await targets.describe(sqlite_rt, SYSTEM) == []


def test_libvirt_is_the_real_binding() -> None:
    assert libvirt.getVersion() > 0


async def test_remove_with_force_leaves_instances_to_the_target(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    node = simulated_node_file(rt.config.data_path)
    await targets.add(
        rt,
        SYSTEM,
        name="sim",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{node}"},
    )
    ami = (
        await images.register(
            rt, SYSTEM, images.ImageSpec(name="k", kind="kernel", kernel="/k", visibility="public")
        )
    ).id
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await Monitor(rt).cycle()
    await settle(rt)
    with pytest.raises(InvalidRequest, match="still runs"):
        await targets.remove(rt, SYSTEM, "sim")
    assert await targets.remove(rt, SYSTEM, "sim", force=True) == [inst.id]
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.FAILED and view.state_reason.startswith("left on sim")
    assert await targets.describe(rt, SYSTEM) == []
