"""VM snapshots through the service layer: on a simulated libvirt host (libvirt's test driver
keeps real snapshot metadata), refused cleanly on a driver without snapshots, for instances
that are not on a target, and for other tenants."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backends.libvirt.backend import LibvirtBackend
from backends.libvirt.local import simulated_node_file
from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.errors import (
    AlreadyExists,
    BackendError,
    InvalidRequest,
    InvalidState,
    NotFound,
    Unsupported,
)
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.protocols import BackendFactory, keeps_snapshots
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances, targets, users, vmsnapshots
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from policies.placement import DefaultPolicy
from tests.conftest import make_user
from tests.fakes import FakeBackend

DRIVERS: dict[str, type] = {"libvirt": LibvirtBackend, "fake": FakeBackend}


def _loader(driver: str) -> BackendFactory:
    return DRIVERS[driver]  # type: ignore[return-value]


async def settle(rt: Runtime) -> None:
    sched = Scheduler(rt, DefaultPolicy())
    for _ in range(3):
        await sched.cycle()
        await sched.drain()


async def world(rt: Runtime, driver: str) -> str:
    """One host of ``driver`` (libvirt: a simulated one) and a public image; the image id."""
    rt.backends = BackendRegistry(rt.engine, rt.box.open, str(rt.config.data_path), _loader)
    settings = {"uri": f"test://{simulated_node_file(rt.config.data_path)}"}
    await targets.add(
        rt,
        SYSTEM,
        name=f"{driver}-1",
        kind="host",
        driver=driver,
        hypervisor="kvm",
        settings=settings if driver == "libvirt" else {},
        simulated=driver == "libvirt",
    )
    await Monitor(rt).cycle()
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="k", kind="kernel", kernel="/k", visibility="public")
    )
    return img.id


async def audits(rt: Runtime, rid: str) -> list[str]:
    async with rt.engine.connect() as conn:
        rows = await conn.scalars(
            select(m.Event.message)
            .where(m.Event.resource_id == rid, m.Event.kind == "audit")
            .order_by(m.Event.id)
        )
        return list(rows)


def test_the_capability_is_detected_on_the_class() -> None:
    """What the service asks before reaching a target: EC2 regions and peers keep none."""
    from backends.ec2.backend import Ec2Backend
    from backends.peer.backend import PeerBackend

    assert keeps_snapshots(LibvirtBackend)
    assert not keeps_snapshots(FakeBackend)
    assert not keeps_snapshots(Ec2Backend)
    assert not keeps_snapshots(PeerBackend)


async def test_snapshots_on_a_simulated_libvirt_host(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    ami = await world(rt, "libvirt")
    alice, bob = await make_user(rt, "alice"), await make_user(rt, "bob")
    admin = await make_user(rt, "root", "admin")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    rid = inst.id
    assert (await instances.get(rt, alice, rid)).state is State.RUNNING

    made = await vmsnapshots.create(rt, alice, rid, "before-upgrade", "first one")
    assert made == vmsnapshots.SnapshotView(rid, "before-upgrade")
    await vmsnapshots.create(rt, alice, rid, "v2.0_b")
    listed = await vmsnapshots.describe(rt, alice, rid)
    assert [s.name for s in listed] == ["before-upgrade", "v2.0_b"]
    assert rt.backends is not None
    backend = await rt.backends.get((await instances.get(rt, alice, rid)).target_id or "")
    assert isinstance(backend, LibvirtBackend)
    domain = backend._connection().lookupByName(rid)
    assert sorted(domain.snapshotListNames()) == ["before-upgrade", "v2.0_b"]
    assert "first one" in domain.snapshotLookupByName("before-upgrade").getXMLDesc()

    with pytest.raises(AlreadyExists, match=r"already has a snapshot named 'v2\.0_b'"):
        await vmsnapshots.create(rt, alice, rid, "v2.0_b")
    await vmsnapshots.revert(rt, alice, rid, "before-upgrade")
    assert domain.snapshotCurrent().getName() == "before-upgrade"
    await vmsnapshots.delete(rt, alice, rid, "before-upgrade")
    assert [s.name for s in await vmsnapshots.describe(rt, admin, rid)] == ["v2.0_b"]
    for op in (vmsnapshots.revert, vmsnapshots.delete):
        with pytest.raises(NotFound, match="has no snapshot named 'before-upgrade'"):
            await op(rt, alice, rid, "before-upgrade")
    assert await audits(rt, rid) == [
        "snapshot 'before-upgrade' taken",
        "snapshot 'v2.0_b' taken",
        "reverted to snapshot 'before-upgrade'",
        "snapshot 'before-upgrade' deleted",
    ]

    # another tenant sees nothing, not even that the instance exists
    with pytest.raises(NotFound, match=f"the instance '{rid}' does not exist"):
        await vmsnapshots.describe(rt, bob, rid)
    with pytest.raises(NotFound, match=f"the instance '{rid}' does not exist"):
        await vmsnapshots.create(rt, bob, rid, "mine")
    for bad in ("", "a/b", "-lead", "with space", "x" * 65, "ü", "a\nb"):
        with pytest.raises(InvalidRequest, match="not a valid snapshot name"):
            await vmsnapshots.create(rt, alice, rid, bad)
    with pytest.raises(InvalidRequest, match="description"):
        await vmsnapshots.create(rt, alice, rid, "long", "d" * 257)
    assert [s.name for s in await vmsnapshots.describe(rt, alice, rid)] == ["v2.0_b"]

    # terminated: the VM and its snapshots are gone, and so is the instance for this purpose
    await instances.act(rt, alice, [rid], Action.TERMINATE)
    await settle(rt)
    with pytest.raises(InvalidState, match="is done"):
        await vmsnapshots.describe(rt, alice, rid)


async def in_group(rt: Runtime, name: str, role: str) -> Caller:
    creds = await users.create_user(rt, SYSTEM, name, role=role, group="team")
    return Caller(creds.user.id, creds.user.name, creds.user.group_id, creds.user.role)


async def test_the_group_admin_may_act_a_plain_group_member_may_not(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    ami = await world(rt, "libvirt")
    alice = await in_group(rt, "alice", "user")
    carol = await in_group(rt, "carol", "user")
    boss = await in_group(rt, "boss", "groupadmin")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    await vmsnapshots.create(rt, boss, inst.id, "s1")
    assert [s.name for s in await vmsnapshots.describe(rt, alice, inst.id)] == ["s1"]
    with pytest.raises(NotFound, match="does not exist"):
        await vmsnapshots.delete(rt, carol, inst.id, "s1")
    await vmsnapshots.delete(rt, boss, inst.id, "s1")


async def test_a_driver_without_snapshots_is_unsupported(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    ami = await world(rt, "fake")
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    assert (await instances.get(rt, alice, inst.id)).state is State.RUNNING
    for call in (
        vmsnapshots.describe(rt, alice, inst.id),
        vmsnapshots.create(rt, alice, inst.id, "s1"),
        vmsnapshots.revert(rt, alice, inst.id, "s1"),
        vmsnapshots.delete(rt, alice, inst.id, "s1"),
    ):
        with pytest.raises(Unsupported, match="whose fake driver keeps no snapshots"):
            await call
    assert await audits(rt, inst.id) == []


async def test_instances_off_their_targets_are_refused(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    ami = await world(rt, "libvirt")
    alice = await make_user(rt, "alice")
    await targets.set_state(rt, SYSTEM, "libvirt-1", "disabled")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    assert (await instances.get(rt, alice, inst.id)).state is State.PENDING
    with pytest.raises(InvalidState, match="is pending"):
        await vmsnapshots.create(rt, alice, inst.id, "s1")
    with pytest.raises(NotFound, match="does not exist"):
        await vmsnapshots.describe(rt, alice, "i-0123456789abcdef0")
    with pytest.raises(InvalidRequest, match="invalid id"):
        await vmsnapshots.describe(rt, alice, "nonsense")


class RefusingHost(LibvirtBackend):
    """A simulated libvirt host whose hypervisor refuses to delete snapshots."""

    async def delete_snapshot(self, ref: str, name: str) -> None:
        raise BackendError(f"delete snapshot {name} of {ref}: the hypervisor refused")


async def test_a_refusal_by_the_target_is_an_error_event(sqlite_rt: Runtime) -> None:
    rt = sqlite_rt
    ami = await world(rt, "libvirt")
    rt.backends = BackendRegistry(
        rt.engine,
        rt.box.open,
        str(rt.config.data_path),
        lambda _d: RefusingHost,  # type: ignore[arg-type,return-value]
    )
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    await vmsnapshots.create(rt, alice, inst.id, "s1")
    with pytest.raises(BackendError, match="the hypervisor refused"):
        await vmsnapshots.delete(rt, alice, inst.id, "s1")
    async with rt.engine.connect() as conn:
        errors = list(
            await conn.scalars(
                select(m.Event.message).where(
                    m.Event.resource_id == inst.id, m.Event.kind == "error"
                )
            )
        )
    assert errors == [
        f"could not delete snapshot 's1': delete snapshot s1 of {inst.id}: the hypervisor refused"
    ]
    assert await audits(rt, inst.id) == ["snapshot 's1' taken"]
    assert [s.name for s in await vmsnapshots.describe(rt, alice, inst.id)] == ["s1"]
