"""The placement framework (policies.placement): capacity accounting, explanations, reasons,
and the bucketed fast path checked against a plain per-pair reference on random workloads."""

from __future__ import annotations

import random
from typing import Any

import pytest

from broker.protocols import Decision, PlacementPolicy, PlacementRequest, TargetSnapshot
from policies.filters import Free
from policies.placement import DefaultPolicy
from tests.policies.test_filters import host, peer, region, req


def test_is_a_placement_policy() -> None:
    policy: PlacementPolicy = DefaultPolicy()
    assert policy.place([], [host()]) == []


def test_capacity_is_never_exceeded_in_one_batch() -> None:
    targets = [host("a", cpu=4, mem=4096), host("b", cpu=2, mem=8192)]
    ds = DefaultPolicy().place([req(vcpus=1, memory_mb=1024) for _ in range(10)], targets)
    placed = [d.target_id for d in ds]
    assert placed.count("t-a") == 4 and placed.count("t-b") == 2 and placed.count(None) == 4


def test_waiting_reason_says_what_it_waits_for() -> None:
    d = DefaultPolicy().place([req(vcpus=9)], [host("a", cpu=8), host("b", state="disabled")])[0]
    assert d.target_id is None
    assert d.reason == (
        "no target fits: no local host fits (2 hosts: 1 by state, 1 by capacity); "
        "no burst target is configured; "
        "waits for a target with 9 CPU, 1024 MB memory and 10 GB disk free"
    )
    assert d.considered == {"a": "removed by capacity", "b": "removed by state"}


def test_no_targets_at_all() -> None:
    d = DefaultPolicy().place([req()], [])[0]
    assert d.target_id is None and "there are no local hosts" in d.reason


def test_considered_records_filters_and_ranks() -> None:
    policy = DefaultPolicy(requirements='CLUSTER != "old"')
    targets = [
        host("a", running=2),
        host("b", running=5),
        host("c", cluster="old"),
        host("d", hypervisor="xen"),
        host("e", free_cpu=0),
        region("us-east-1"),
    ]
    d = policy.place([req()], targets)[0]
    assert d.target_id == "t-b"
    assert d.reason == "b: best local host by packing (rank 5)"
    assert dict(d.considered) == {
        "a": "rank 2",
        "b": "rank 5, chosen",
        "c": "removed by requirements",
        "d": "removed by hypervisor",
        "e": "removed by capacity",
        "us-east-1": "removed by burst policy: not a burst target",
    }
    assert len(d.considered) == 6 and d.considered["a"] == "rank 2"
    with pytest.raises(KeyError):
        d.considered["nope"]
    assert "rank 5, chosen" in repr(d.considered)


def test_considered_is_frozen_at_decision_time() -> None:
    targets = [host("a", cpu=2), host("b", cpu=2)]
    ds = DefaultPolicy().place([req() for _ in range(4)], targets)
    assert dict(ds[0].considered) == {"a": "rank 0, chosen", "b": "rank 0"}
    assert dict(ds[1].considered) == {"a": "rank 1, chosen", "b": "rank 0"}
    assert dict(ds[2].considered) == {"a": "removed by capacity", "b": "rank 0, chosen"}
    assert dict(ds[3].considered) == {"a": "removed by capacity", "b": "rank 1, chosen"}


def test_instance_requirements_on_top_of_the_operator_default() -> None:
    policy = DefaultPolicy(requirements="TOTAL_CPU >= 8")
    targets = [host("small", cpu=4), host("big1", cpu=8, cluster="x"), host("big2", cpu=16)]
    assert policy.place([req()], targets)[0].target_id == "t-big1"
    d = policy.place([req(requirements='CLUSTER = "c1"')], targets)[0]
    assert d.target_id == "t-big2"
    assert d.considered["small"] == d.considered["big1"] == "removed by requirements"


def test_dynamic_requirements_are_re_evaluated_as_the_cycle_fills() -> None:
    targets = [host("a", cpu=4), host("b", cpu=4)]
    ds = DefaultPolicy().place([req(requirements="FREE_CPU >= 3") for _ in range(4)], targets)
    assert [d.target_id for d in ds] == ["t-a", "t-a", "t-b", "t-b"]


def test_invalid_instance_requirements_are_reported() -> None:
    d = DefaultPolicy().place([req(requirements="FREE_CPU >")], [host()])[0]
    assert d.target_id is None and "its requirements are invalid" in d.reason


def test_zone_and_cluster_placement() -> None:
    targets = [host("a", zone="z1", cluster="c1"), host("b", zone="z2", cluster="c2")]
    assert DefaultPolicy().place([req(zone="z2")], targets)[0].target_id == "t-b"
    assert DefaultPolicy().place([req(cluster="c2")], targets)[0].target_id == "t-b"
    assert DefaultPolicy().place([req(cluster="c3")], targets)[0].target_id is None


def test_arch_filter_through_placement() -> None:
    targets = [host("x", arch="x86_64"), host("arm", arch="aarch64")]
    assert DefaultPolicy().place([req(arch="arm64")], targets)[0].target_id == "t-arm"


def test_affinity_keeps_a_group_together() -> None:
    targets = [host("a"), host("b"), host("c")]
    reqs = [req(affinity_group="web", affinity="affinity") for _ in range(3)]
    ds = DefaultPolicy(preset="striping").place(reqs, targets)
    assert {d.target_id for d in ds} == {"t-a"}
    assert ds[1].considered["b"] == "removed by affinity"


def test_affinity_follows_members_already_running() -> None:
    targets = [host("a"), host("b", affinity_groups={"web": 2})]
    d = DefaultPolicy().place([req(affinity_group="web", affinity="affinity")], targets)[0]
    assert d.target_id == "t-b"


def test_anti_affinity_spreads_a_group_and_waits_when_out_of_hosts() -> None:
    targets = [host("a"), host("b", running=3), host("c")]
    reqs = [req(affinity_group="db", affinity="anti-affinity") for _ in range(4)]
    ds = DefaultPolicy(preset="packing").place(reqs, targets)
    assert [d.target_id for d in ds] == ["t-b", "t-a", "t-c", None]
    assert "3 by affinity" in ds[3].reason
    # others are not affected by the group
    assert DefaultPolicy().place([req()], targets)[0].target_id == "t-b"


def test_cost_ranker_over_local_hosts() -> None:
    targets = [host("dear", price_per_hour=0.5), host("cheap", price_per_hour=0.1)]
    assert DefaultPolicy(preset="cost").place([req()], targets)[0].target_id == "t-cheap"


def test_peers_and_regions_are_not_used_without_a_burst_policy() -> None:
    d = DefaultPolicy().place([req()], [host(free_cpu=0), peer(), region()])[0]
    assert d.target_id is None
    assert d.considered["lyon"] == "removed by burst policy: not a burst target"


def test_overcommit_from_a_negative_reservation() -> None:
    # 4 CPUs, reserved -100%: the snapshot offers 8
    ds = DefaultPolicy().place([req(vcpus=2) for _ in range(5)], [host(cpu=4, free_cpu=8)])
    assert [d.target_id is not None for d in ds] == [True] * 4 + [False]


# --------------------------------------------------------------------------- reference


def reference(
    policy: DefaultPolicy, requests: list[PlacementRequest], targets: list[TargetSnapshot]
) -> list[Decision]:
    """The plain per-pair loop the fast path must agree with (local hosts only)."""
    free = [Free.of(t) for t in targets]
    out = []
    for r in requests:
        ranker = policy.ranker_for(r)
        best: tuple[float, int] | None = None
        seen = {}
        for i, t in enumerate(targets):
            static = [f for f in policy.filters if not f.volatile(r)]
            volatile = [f for f in policy.filters if f.volatile(r) and f.name not in ("capacity",)]
            removed = next((f.name for f in static if not f.passes(t, free[i], r)), None)
            if removed is None and not free[i].fits(r):
                removed = "capacity"
            if removed is None:
                removed = next((f.name for f in volatile if not f.passes(t, free[i], r)), None)
            if removed is not None:
                seen[t.name] = f"removed by {removed}"
                continue
            score = ranker.score(t, free[i], r)
            seen[t.name] = f"rank {score:g}"
            if best is None or score > best[0]:
                best = (score, i)
        if best is None:
            out.append(Decision(r.instance_id, None, "", seen))
            continue
        i = best[1]
        seen[targets[i].name] += ", chosen"
        free[i].take(r)
        out.append(Decision(r.instance_id, targets[i].id, "", seen))
    return out


REQUIREMENTS = ["", 'CLUSTER = "c1"', "FREE_CPU >= 6", "RUNNING_VMS < 3", "LOAD < 0.5"]
RANKS = ["", "FREE_CPU * 2 - RUNNING_VMS", "-LOAD", "FREE_MEM"]


def random_world(rng: random.Random, n_hosts: int) -> list[TargetSnapshot]:
    out: list[TargetSnapshot] = []
    for i in range(n_hosts):
        cpu = rng.choice([4, 8, 16])
        out.append(
            host(
                f"h{i:03d}",
                cpu=cpu,
                free_cpu=rng.randint(0, cpu),
                mem=cpu * 2048,
                free_memory_mb=rng.randint(0, cpu * 2048),
                running=rng.randint(0, 6),
                cluster=rng.choice(["c1", "c2"]),
                zone=rng.choice(["z1", "z2"]),
                hypervisor=rng.choice(["kvm", "kvm", "xen"]),
                state=rng.choice(["enabled"] * 9 + ["disabled"]),
                load=round(rng.random(), 2),
            )
        )
    return out


def random_requests(rng: random.Random, n: int) -> list[PlacementRequest]:
    return [
        req(
            vcpus=rng.choice([1, 2, 4]),
            memory_mb=rng.choice([512, 1024, 4096]),
            zone=rng.choice([None, None, "z1"]),
            image_hypervisor=rng.choice(["kvm", ""]),
            requirements=rng.choice(REQUIREMENTS),
            rank=rng.choice(RANKS),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("preset", ["packing", "striping", "load-aware", "cost"])
@pytest.mark.parametrize("seed", range(4))
def test_fast_path_agrees_with_the_reference(preset: str, seed: int) -> None:
    rng = random.Random(seed)
    targets = random_world(rng, 40)
    requests = random_requests(rng, 300)
    requirement = rng.choice(["", "TOTAL_CPU >= 8", "FREE_MEM > 1000"])
    policy = DefaultPolicy(preset=preset, requirements=requirement)
    got = policy.place(requests, targets)
    want = reference(policy, requests, targets)
    assert [d.target_id for d in got] == [d.target_id for d in want]
    for i in rng.sample(range(len(got)), 25):
        assert dict(got[i].considered) == dict(want[i].considered), i


def test_many_requests_many_hosts_quickly() -> None:
    rng = random.Random(7)
    targets = random_world(rng, 300)
    requests = random_requests(rng, 3000)
    ds = DefaultPolicy(requirements='HYPERVISOR = "kvm"').place(requests, targets)
    assert len(ds) == 3000
    used: dict[str, list[Any]] = {}
    by_id = {t.id: t for t in targets}
    for r, d in zip(requests, ds, strict=True):
        if d.target_id:
            used.setdefault(d.target_id, []).append(r)
    for tid, rs in used.items():
        t = by_id[tid]
        assert sum(r.vcpus for r in rs) <= t.free_cpu
        assert sum(r.memory_mb for r in rs) <= t.free_memory_mb
