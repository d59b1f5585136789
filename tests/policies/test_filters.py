"""Each placement filter over synthetic snapshots (policies.filters).

``Snap`` and ``Req`` add the fields proposed for broker.protocols (arch, prices, per-flavor
capacity, affinity groups; cluster, affinity, image mappings, pending age) so the tests
exercise them before the lead adds them; the other test modules import these helpers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from broker.protocols import PlacementRequest, TargetSnapshot
from policies.filters import (
    DYNAMIC_NAMES,
    Affinity,
    ArchMatch,
    ClusterMatch,
    EnoughCapacity,
    Free,
    HopLimit,
    HypervisorMatch,
    ImageAvailable,
    Requirements,
    TargetEnabled,
    World,
    ZoneMatch,
    default_filters,
    same_arch,
    target_attrs,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Snap(TargetSnapshot):
    arch: str = ""
    prices: Mapping[str, float] = dataclasses.field(default_factory=dict)
    capacity_by_flavor: Mapping[str, int] | None = None
    affinity_groups: Mapping[str, int] = dataclasses.field(default_factory=dict)
    running_by_flavor: Mapping[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Req(PlacementRequest):
    cluster: str | None = None
    affinity_group: str = ""
    affinity: str = ""
    image_mappings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pending_seconds: float = 0.0


def host(name: str = "h1", *, cpu: int = 8, mem: int = 16384, **kw: Any) -> Snap:
    base: dict[str, Any] = dict(
        id=f"t-{name}",
        name=name,
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        cluster="c1",
        state="enabled",
        total_cpu=cpu,
        total_memory_mb=mem,
        free_cpu=cpu,
        free_memory_mb=mem,
        free_disk_gb=500,
        running=0,
        zone="c1",
        arch="x86_64",
    )
    base.update(kw)
    return Snap(**base)


def region(name: str = "us-east-1", **kw: Any) -> Snap:
    base: dict[str, Any] = dict(
        kind="region", driver="ec2", hypervisor="", cluster="", zone="", cpu=1000, mem=4_000_000
    )
    base.update(kw)
    return host(name, **base)


def peer(name: str = "lyon", **kw: Any) -> Snap:
    return region(name, kind="peer", driver="peer", **kw)


_n = 0


def req(**kw: Any) -> Req:
    global _n
    _n += 1
    base: dict[str, Any] = dict(
        instance_id=f"i-{_n:017x}",
        owner_id="u1",
        group_id="g1",
        vcpus=1,
        memory_mb=1024,
        disk_gb=10,
        flavor="m1.small",
        image_id="ami-1",
        image_hypervisor="kvm",
        arch="x86_64",
    )
    base.update(kw)
    return Req(**base)


def passes(flt: Any, target: TargetSnapshot, r: PlacementRequest) -> bool:
    return bool(flt.passes(target, Free.of(target), r))


# --------------------------------------------------------------------------- static filters


def test_enabled() -> None:
    assert passes(TargetEnabled(), host(), req())
    for state in ("disabled", "draining", "error"):
        assert not passes(TargetEnabled(), host(state=state), req())


def test_zone() -> None:
    assert passes(ZoneMatch(), host(zone="a"), req())
    assert passes(ZoneMatch(), host(zone="a"), req(zone="a"))
    assert not passes(ZoneMatch(), host(zone="a"), req(zone="b"))


def test_cluster() -> None:
    assert passes(ClusterMatch(), host(cluster="c1"), req())
    assert passes(ClusterMatch(), host(cluster="c1"), req(cluster="c1"))
    assert not passes(ClusterMatch(), host(cluster="c1"), req(cluster="c2"))


def test_hypervisor_only_binds_local_hosts() -> None:
    assert passes(HypervisorMatch(), host(hypervisor="kvm"), req(image_hypervisor="kvm"))
    assert not passes(HypervisorMatch(), host(hypervisor="xen"), req(image_hypervisor="kvm"))
    assert passes(HypervisorMatch(), host(hypervisor="xen"), req(image_hypervisor=""))
    assert passes(HypervisorMatch(), region(), req(image_hypervisor="kvm"))


def test_arch() -> None:
    assert passes(ArchMatch(), host(arch="x86_64"), req(arch="x86_64"))
    assert passes(ArchMatch(), host(arch="amd64"), req(arch="x86_64"))
    assert not passes(ArchMatch(), host(arch="aarch64"), req(arch="x86_64"))
    assert passes(ArchMatch(), host(arch=""), req(arch="aarch64"))
    # a target that does not say its architecture but has ARCH among its attributes
    assert passes(ArchMatch(), host(arch="", attrs={"ARCH": "arm64"}), req(arch="aarch64"))
    assert same_arch("ARM64", "aarch64") and not same_arch("i386", "x86_64")


def test_image_available_or_mapped() -> None:
    flt = ImageAvailable({"us-east-1": frozenset({"ami-1"}), "lyon": frozenset({"*"})})
    assert passes(flt, host(), req(image_id="ami-9"))
    assert passes(flt, region(), req(image_id="ami-1"))
    assert not passes(flt, region(), req(image_id="ami-2"))
    assert passes(flt, peer(), req(image_id="ami-2"))
    assert not passes(flt, region("eu-west-1"), req(image_id="ami-1"))
    # the image's own mappings (target name or id -> remote id)
    assert passes(flt, region("eu-west-1"), req(image_mappings={"eu-west-1": "ami-0abc"}))
    assert passes(flt, region("eu-west-1"), req(image_mappings={"t-eu-west-1": "ami-0abc"}))


def test_hop_limit_only_binds_peers() -> None:
    assert passes(HopLimit(1), peer(), req(hops=0))
    assert not passes(HopLimit(1), peer(), req(hops=1))
    assert passes(HopLimit(1), region(), req(hops=3))
    assert passes(HopLimit(2), peer(), req(hops=1))


# --------------------------------------------------------------------------- volatile filters


def test_capacity_cpu_memory_disk() -> None:
    flt = EnoughCapacity()
    t = host(cpu=4, mem=4096, free_disk_gb=20)
    assert passes(flt, t, req(vcpus=4, memory_mb=4096, disk_gb=20))
    assert not passes(flt, t, req(vcpus=5))
    assert not passes(flt, t, req(memory_mb=4097))
    assert not passes(flt, t, req(disk_gb=21))
    assert flt.volatile(req())


def test_capacity_overcommit_and_reservations_come_from_the_snapshot() -> None:
    # 8 CPUs with a reservation of -50% (overcommit): the snapshot says 12 free
    assert passes(EnoughCapacity(), host(cpu=8, free_cpu=12), req(vcpus=12))
    # 8 CPUs with 2 reserved
    assert not passes(EnoughCapacity(), host(cpu=8, free_cpu=6), req(vcpus=7))


def test_capacity_per_flavor_for_regions() -> None:
    t = region(capacity_by_flavor={"m1.small": 1})
    free = Free.of(t)
    r = req(flavor="m1.small")
    assert EnoughCapacity().passes(t, free, r)
    assert not EnoughCapacity().passes(t, free, req(flavor="m1.large"))
    free.take(r)
    assert not EnoughCapacity().passes(t, free, r)


def test_take_updates_attrs() -> None:
    free = Free.of(host(cpu=8, mem=8192))
    free.take(req(vcpus=3, memory_mb=1000, disk_gb=5))
    assert (free.cpu, free.memory_mb, free.running) == (5, 7192, 1)
    assert free.attrs["FREE_CPU"] == 5 and free.attrs["FREE_MEM"] == 7192
    assert free.attrs["RUNNING_VMS"] == 1 and free.attrs["FREE_DISK"] == 495
    then = free.at(8, 8192, 500, 0)
    assert then.attrs["FREE_CPU"] == 8 and free.attrs["FREE_CPU"] == 5


def test_affinity_together() -> None:
    world = World()
    a, b = host("a"), host("b")
    fa, fb = Free.of(a, world), Free.of(b, world)
    r = req(affinity_group="web", affinity="affinity")
    flt = Affinity()
    assert flt.volatile(r) and not flt.volatile(req())
    assert flt.passes(a, fa, r) and flt.passes(b, fb, r)  # nobody placed yet
    fa.take(r)
    assert flt.passes(a, fa, r) and not flt.passes(b, fb, r)
    assert flt.passes(b, fb, req())  # not in a group


def test_anti_affinity_apart() -> None:
    world = World()
    a = host("a", affinity_groups={"db": 1})
    b = host("b")
    r = req(affinity_group="db", affinity="anti-affinity")
    assert not Affinity().passes(a, Free.of(a, world), r)
    fb = Free.of(b, world)
    assert Affinity().passes(b, fb, r)
    fb.take(r)
    assert not Affinity().passes(b, fb, r)


def test_requirements_operator_and_instance() -> None:
    flt = Requirements('HYPERVISOR = "kvm"')
    assert passes(flt, host(), req())
    assert not passes(flt, host(hypervisor="xen"), req())
    assert passes(flt, host(cluster="new-1"), req(requirements='CLUSTER = "new*"'))
    assert not passes(flt, host(cluster="old-1"), req(requirements='CLUSTER = "new*"'))
    assert not flt.volatile(req(requirements='CLUSTER = "x"'))
    assert flt.volatile(req(requirements="FREE_CPU > 2"))
    assert Requirements("RUNNING_VMS < 3").volatile(req())


def test_requirements_malformed_instance_expression_removes_all() -> None:
    flt = Requirements()
    bad = req(requirements="FREE_CPU >")
    assert not passes(flt, host(), bad)
    assert "position" in flt.error(bad)
    assert flt.error(req(requirements="FREE_CPU > 1")) == ""


def test_requirements_see_live_values() -> None:
    t = host(cpu=4)
    free = Free.of(t)
    r = req(requirements="FREE_CPU >= 3", vcpus=2)
    assert Requirements().passes(t, free, r)
    free.take(r)
    assert not Requirements().passes(t, free, r)


def test_attrs_cover_the_documented_names() -> None:
    attrs = target_attrs(host(attrs={"CUSTOM": 1}))
    for name in ("NAME", "KIND", "HYPERVISOR", "CLUSTER", "ARCH", "TOTAL_CPU", "LOAD", "PRICE"):
        assert name in attrs
    assert attrs.keys() >= DYNAMIC_NAMES and attrs["CUSTOM"] == 1


def test_default_chain_names_are_unique_and_ordered() -> None:
    names = [f.name for f in default_filters()]
    assert len(set(names)) == len(names)
    assert names.index("capacity") < names.index("requirements")
    assert names[0] == "state"


@pytest.mark.parametrize("flt", default_filters())
def test_static_filters_read_only_their_keys(flt: Any) -> None:
    """A filter that is not volatile must answer the same for requests equal on its keys."""
    t = host()
    r1 = req()
    r2 = dataclasses.replace(r1, instance_id="i-other", owner_id="u2", group_id="g9")
    if not flt.volatile(r1):
        assert passes(flt, t, r1) == passes(flt, t, r2)
