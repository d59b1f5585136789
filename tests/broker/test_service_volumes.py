"""Volumes and snapshots on both databases: create, attach, detach, delete, isolation."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select, update

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.errors import InvalidRequest, InvalidState, NotFound, Unsupported
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.seed import zone_name
from broker.service import images, instances, targets
from broker.service import volumes as vols
from broker.service.common import TagFilter
from broker.service.volumes import SnapshotFilter, VolumeFilter
from broker.states import State
from broker.volumework import VolumeWorker
from tests.conftest import Tenants
from tests.fakes import FakeBackend


async def count(rt: Runtime, table: type[m.Base]) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def fake_target(rt: Runtime) -> str:
    """A host in the seeded zone whose (in-memory) backend holds volumes."""
    found = await targets.describe(rt, SYSTEM, "f1")
    if found:
        return found[0].id
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: FakeBackend
    )  # type: ignore[arg-type,return-value]
    view = await targets.add(
        rt, SYSTEM, name="f1", kind="host", driver="fake", hypervisor="kvm", cluster=zone_name(rt)
    )
    return view.id


async def make_instance(
    rt: Runtime,
    caller: Caller,
    state: str = "running",
    zone: str | None = None,
    placed: bool = True,
) -> str:
    """An instance in ``state``; ``placed``: running as a domain on the fake host f1."""
    tid = await fake_target(rt)
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    (inst,) = await instances.launch(
        rt, caller, instances.LaunchRequest(img.id, "t3.micro", zone=zone)
    )
    where = {"target_id": tid, "backend_ref": inst.id} if placed else {}
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(m.Instance).where(m.Instance.id == inst.id).values(state=state, **where)
        )
    if placed:
        assert rt.backends is not None
        backend = await rt.backends.get(tid)
        assert isinstance(backend, FakeBackend)
        backend.domains[inst.id] = State(state)
    return inst.id


async def work(rt: Runtime) -> None:
    """One scheduler pass over the volume work asked for."""
    await VolumeWorker(rt).cycle()


async def test_create_and_describe(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    v1 = await vols.create(rt, alice, zone, 10, tags={"Name": "data"})
    assert (v1.size_gb, v1.zone, v1.state, v1.instance_id) == (10, zone, "available", None)
    assert v1.id.startswith("vol-") and v1.tags == {"Name": "data"}
    v2 = await vols.create(rt, alice, zone, 20)
    page = await vols.describe(rt, alice)
    assert {v.id for v in page.items} == {v1.id, v2.id} and page.next_token is None
    assert [v.id for v in (await vols.describe(rt, alice, VolumeFilter(sizes=(20,)))).items] == [
        v2.id
    ]
    flt = VolumeFilter(tags=(TagFilter("Name", ("data",)),), zones=(zone,), states=("available",))
    assert [v.id for v in (await vols.describe(rt, alice, flt)).items] == [v1.id]
    first = await vols.describe(rt, alice, limit=1)
    second = await vols.describe(rt, alice, limit=1, token=first.next_token)
    assert first.next_token and second.next_token is None
    assert {first.items[0].id, second.items[0].id} == {v1.id, v2.id}
    with pytest.raises(NotFound) as err:
        await vols.describe(rt, alice, VolumeFilter(ids=(v1.id, "vol-0123456789abcdef0")))
    assert (err.value.resource, err.value.field) == ("volume", "vol-0123456789abcdef0")


async def test_bad_creates_create_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    vol = await vols.create(rt, alice, zone, 5)
    snap = await vols.create_snapshot(rt, alice, vol.id)
    before = await count(rt, m.Volume)
    bad = [
        dict(zone=zone, size_gb=0),
        dict(zone=zone, size_gb=16385),
        dict(zone=zone, size_gb=None),
        dict(zone="mars-1a", size_gb=1),
        dict(zone=zone, size_gb=4, snapshot_id=snap.id),
        dict(zone=zone, size_gb=8, snapshot_id="snap-nothex"),
    ]
    for kwargs in bad:
        with pytest.raises(InvalidRequest):
            await vols.create(rt, alice, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(NotFound) as err:
        await vols.create(rt, alice, zone, 8, snapshot_id="snap-0123456789abcdef0")
    assert err.value.resource == "snapshot"
    with pytest.raises(InvalidRequest):
        await vols.create(rt, alice, zone, 8, tags={"": "x"})
    assert await count(rt, m.Volume) == before
    big = await vols.create(rt, alice, zone, 16384)
    copy = await vols.create(rt, alice, zone, snapshot_id=snap.id)
    assert (big.size_gb, copy.size_gb, copy.snapshot_id) == (16384, 5, snap.id)


async def test_attach_and_detach(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    iid = await make_instance(rt, alice, zone=zone)
    vol = await vols.create(rt, alice, zone, 10)
    att = await vols.attach(rt, alice, vol.id, iid, "/dev/sdf")
    assert (att.instance_id, att.device, att.state) == (iid, "/dev/sdf", "attaching")
    view = await vols.get(rt, alice, vol.id)
    assert (view.state, view.instance_id, view.attach_state) == ("in-use", iid, "attaching")
    with pytest.raises(InvalidState):  # not attached yet
        await vols.detach(rt, alice, vol.id)
    await work(rt)
    view = await vols.get(rt, alice, vol.id)
    assert (view.state, view.instance_id, view.attach_state) == ("in-use", iid, "attached")
    host = await fake_backend(rt)
    assert (
        host.attached[iid] == {"/dev/sdf": f"disk-{vol.id}"} and host.disks[f"disk-{vol.id}"] == 10
    )
    flt = VolumeFilter(instance_ids=(iid,))
    assert [v.id for v in (await vols.describe(rt, alice, flt)).items] == [vol.id]
    with pytest.raises(InvalidState):  # in use
        await vols.attach(rt, alice, vol.id, iid, "/dev/sdg")
    with pytest.raises(InvalidState):
        await vols.delete(rt, alice, vol.id)
    other = await vols.create(rt, alice, zone, 1)
    with pytest.raises(InvalidRequest) as err:  # device taken
        await vols.attach(rt, alice, other.id, iid, "/dev/sdf")
    assert err.value.field == "Device"
    await vols.attach(rt, alice, other.id, iid, "/dev/vdb")
    with pytest.raises(NotFound):
        await vols.detach(rt, alice, vol.id, instance_id=iid, device="/dev/sdz")
    done = await vols.detach(rt, alice, vol.id, instance_id=iid, force=True)
    assert (done.state, done.device) == ("detaching", "/dev/sdf")
    await work(rt)
    assert (await vols.get(rt, alice, vol.id)).state == "available"
    assert host.attached[iid] == {"/dev/vdb": f"disk-{other.id}"}
    with pytest.raises(InvalidState):
        await vols.detach(rt, alice, vol.id)
    await vols.delete(rt, alice, vol.id)  # its disk is on f1: deleted there first
    assert (await vols.get(rt, alice, vol.id)).state == "deleting"
    await work(rt)
    assert f"disk-{vol.id}" not in host.disks
    with pytest.raises(NotFound):
        await vols.get(rt, alice, vol.id)
    async with rt.engine.connect() as conn:
        messages = (
            await conn.scalars(
                select(m.Event.message).where(m.Event.resource_id == vol.id).order_by(m.Event.id)
            )
        ).all()
    assert list(messages) == [
        "volume created",
        "volume attached",
        "volume attached on its target",
        "volume detached",
        "volume detached from its target",
        "volume deleted",
        "volume deleted on its target",
    ]


async def fake_backend(rt: Runtime) -> FakeBackend:
    assert rt.backends is not None
    backend = await rt.backends.get(await fake_target(rt))
    assert isinstance(backend, FakeBackend)
    return backend


async def test_target_failures_leave_the_volume_as_it_was(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    iid = await make_instance(rt, alice, zone=zone)
    vol = await vols.create(rt, alice, zone, 4)
    await vols.attach(rt, alice, vol.id, iid, "/dev/sdf")
    FakeBackend.fail_volumes = 1
    try:
        await work(rt)
    finally:
        FakeBackend.fail_volumes = 0
    view = await vols.get(rt, alice, vol.id)
    assert (view.state, view.instance_id, view.attach_state) == ("available", None, None)
    await vols.attach(rt, alice, vol.id, iid, "/dev/sdf")
    await work(rt)
    await vols.detach(rt, alice, vol.id)
    FakeBackend.fail_volumes = 1
    try:
        await work(rt)
    finally:
        FakeBackend.fail_volumes = 0
    view = await vols.get(rt, alice, vol.id)
    assert (view.state, view.attach_state) == ("in-use", "attached")
    async with rt.engine.connect() as conn:
        errors = (
            await conn.scalars(
                select(m.Event.message).where(m.Event.kind == "error").order_by(m.Event.id)
            )
        ).all()
    assert [e.split(":")[0] for e in errors] == [
        "attach failed",
        f"attach of {vol.id} failed",
        "detach failed",
        f"detach of {vol.id} failed",
    ]


async def test_a_target_that_holds_no_volumes_is_refused(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    iid = await make_instance(rt, alice, zone=zone)
    vol = await vols.create(rt, alice, zone, 4)

    class NoVolumes(FakeBackend):
        attach_volume = None  # type: ignore[assignment]

    assert rt.backends is not None
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: NoVolumes
    )  # type: ignore[arg-type,return-value]
    with pytest.raises(Unsupported, match="holds no volumes"):
        await vols.attach(rt, alice, vol.id, iid, "/dev/sdf")
    assert (await vols.get(rt, alice, vol.id)).state == "available"


async def test_attach_checks_create_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    async with rt.engine.begin() as conn:
        await targets.ensure_cluster(conn, "other-1a")
    vol = await vols.create(rt, alice, zone, 10)
    far = await vols.create(rt, alice, "other-1a", 10)
    pending = await make_instance(rt, alice, state="pending", placed=False)
    done = await make_instance(rt, alice, state="done")
    zoned = await make_instance(rt, alice, zone=zone)
    for device in ("sdf", "/dev/sda", "/dev/vda", "/dev/sdf1", "/dev/../etc", "/dev/nvme0n1"):
        with pytest.raises(InvalidRequest) as err:
            await vols.attach(rt, alice, vol.id, zoned, device)
        assert err.value.field == "Device"
    for iid in (pending, done):
        with pytest.raises(InvalidState):
            await vols.attach(rt, alice, vol.id, iid, "/dev/sdf")
    with pytest.raises(InvalidRequest) as err:
        await vols.attach(rt, alice, far.id, zoned, "/dev/sdf")
    assert err.value.field == "zone"
    with pytest.raises(NotFound):
        await vols.attach(rt, alice, vol.id, "i-0123456789abcdef0", "/dev/sdf")
    with pytest.raises(NotFound):
        await vols.attach(rt, alice, "vol-0123456789abcdef0", zoned, "/dev/sdf")
    async with rt.engine.connect() as conn:
        attached = await conn.scalar(
            select(func.count()).select_from(m.Volume).where(m.Volume.instance_id.is_not(None))
        )
    assert attached == 0
    placed = await make_instance(rt, alice)  # no zone asked: the target's cluster counts
    async with rt.engine.begin() as conn:
        cid = await targets.ensure_cluster(conn, zone)
        await conn.execute(
            insert(m.Target).values(
                id="t-0123456789abcdef0", name="h9", kind="host", driver="x", cluster_id=cid
            )
        )
        await conn.execute(
            update(m.Instance)
            .where(m.Instance.id == placed)
            .values(target_id="t-0123456789abcdef0")
        )
    with pytest.raises(InvalidRequest):
        await vols.attach(rt, alice, far.id, placed, "/dev/sdf")
    unplaced = await make_instance(rt, alice, state="poweroff", placed=False)
    with pytest.raises(InvalidState):  # nowhere to make its disk
        await vols.attach(rt, alice, far.id, unplaced, "/dev/xvdf")


async def test_snapshots(rt: Runtime, tenants: Tenants) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    vol = await vols.create(rt, alice, zone, 7)
    snap = await vols.create_snapshot(rt, alice, vol.id, "nightly", tags={"k": "v"})
    assert (snap.state, snap.size_gb, snap.volume_id, snap.description) == (
        "completed",
        7,
        vol.id,
        "nightly",
    )
    assert snap.id.startswith("snap-") and snap.tags == {"k": "v"}
    page = await vols.describe_snapshots(rt, alice, SnapshotFilter(owners=("self",)))
    assert [s.id for s in page.items] == [snap.id]
    flt = SnapshotFilter(volume_ids=(vol.id,), states=("completed",), tags=(TagFilter("k"),))
    assert [s.id for s in (await vols.describe_snapshots(rt, alice, flt)).items] == [snap.id]
    with pytest.raises(NotFound) as err:
        await vols.describe_snapshots(rt, alice, SnapshotFilter(ids=("snap-0123456789abcdef0",)))
    assert err.value.resource == "snapshot"
    with pytest.raises(InvalidRequest):
        await vols.create_snapshot(rt, alice, vol.id, "d" * 256)
    with pytest.raises(NotFound):
        await vols.create_snapshot(rt, alice, "vol-0123456789abcdef0")
    assert await count(rt, m.Snapshot) == 1
    copy = await vols.create(rt, alice, zone, 9, snapshot_id=snap.id)
    await vols.delete_snapshot(rt, alice, snap.id)  # volumes made from it do not hold it
    assert (await vols.get(rt, alice, copy.id)).snapshot_id == snap.id
    assert (await vols.describe_snapshots(rt, alice)).items == []
    with pytest.raises(NotFound):
        await vols.delete_snapshot(rt, alice, snap.id)


async def test_another_tenant_cannot_see_or_touch(rt: Runtime, tenants: Tenants) -> None:
    alice, bob, zone = tenants.alice, tenants.bob, zone_name(rt)
    vol = await vols.create(rt, alice, zone, 3)
    snap = await vols.create_snapshot(rt, alice, vol.id)
    bobs_instance = await make_instance(rt, bob)
    alices_instance = await make_instance(rt, alice)
    bobs_volume = await vols.create(rt, bob, zone, 3)
    assert [v.id for v in (await vols.describe(rt, bob)).items] == [bobs_volume.id]
    assert (await vols.describe_snapshots(rt, bob)).items == []
    with pytest.raises(NotFound):
        await vols.get(rt, bob, vol.id)
    with pytest.raises(NotFound):
        await vols.get_snapshot(rt, bob, snap.id)
    with pytest.raises(NotFound):
        await vols.attach(rt, bob, vol.id, bobs_instance, "/dev/sdf")
    with pytest.raises(NotFound):  # nor attach his volume to her instance
        await vols.attach(rt, bob, bobs_volume.id, alices_instance, "/dev/sdf")
    with pytest.raises(NotFound):
        await vols.delete(rt, bob, vol.id)
    with pytest.raises(NotFound):
        await vols.create_snapshot(rt, bob, vol.id)
    with pytest.raises(NotFound):
        await vols.create(rt, bob, zone, 5, snapshot_id=snap.id)
    with pytest.raises(NotFound):
        await vols.delete_snapshot(rt, bob, snap.id)
    await vols.attach(rt, alice, vol.id, alices_instance, "/dev/sdf")
    with pytest.raises(NotFound):
        await vols.detach(rt, bob, vol.id)
    assert (await vols.get(rt, alice, vol.id)).state == "in-use"
    assert (await vols.get(rt, tenants.admin, vol.id)).id == vol.id


async def test_delete_of_a_backend_volume_leaves_it_deleting(rt: Runtime, tenants: Tenants) -> None:
    vol = await vols.create(rt, tenants.alice, zone_name(rt), 2)
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Volume).values(backend_ref="pool/vol-1"))
    await vols.delete(rt, tenants.alice, vol.id)
    assert (await vols.get(rt, tenants.alice, vol.id)).state == "deleting"
    with pytest.raises(InvalidState):
        await vols.delete(rt, tenants.alice, vol.id)
