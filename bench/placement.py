"""Placement throughput: 10,000 pending instances onto 1,000 synthetic hosts in one cycle.

The workload uses an operator requirements expression, per-instance requirements (three
distinct texts, one of them reading FREE_CPU so it must be re-evaluated as hosts fill) and a
rank expression that also reads live values. Figures:

- ``policy``: ``DefaultPolicy.place`` on the whole workload (best of ``--repeat`` runs);
- ``bare_loop``: the baseline, a plain Python loop per instance over every host that only
  checks free CPU and memory and takes the first fit, on the same workload;
- ``naive_policy``: the per-pair filter-then-rank loop this module replaced (the previous
  ``DefaultPolicy``, its logic inlined here) on the first ``--naive`` instances only, since the
  full workload would take minutes; its rate is per decision and so comparable, not equal;
- ``explain_ms``: reading one decision's full ``considered`` map (lazily computed);
- ``burst_1000``: the time from a burst of 1,000 launches (boto3 RunInstances, one call) to all
  of them running on 10 simulated hosts through a real ``serve`` (the whole scheduler: place,
  dispatch, launch results), against defineXML+create of the same domains on libvirt's test
  driver from a script; the run of :mod:`bench.libvirt`'s simulated part (``--skip-dispatch``).

``python -m bench.placement`` prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from broker.protocols import Decision, PlacementRequest, TargetSnapshot
from policies import expr
from policies.placement import DefaultPolicy

OPERATOR_REQUIREMENTS = 'HYPERVISOR = "kvm" & !(CLUSTER = "old*")'
INSTANCE_REQUIREMENTS = ["", 'ARCH = "x86_64" & TOTAL_CPU >= 16', "FREE_CPU >= 4"]
RANK = "FREE_CPU * 2 - RUNNING_VMS * 4 - LOAD * 10"
FLAVORS = [("m1.tiny", 1, 512, 5), ("m1.small", 1, 2048, 20), ("m1.medium", 2, 4096, 40),
           ("m1.large", 4, 8192, 80)]  # fmt: skip


def hosts(n: int, rng: random.Random) -> list[TargetSnapshot]:
    out = []
    for i in range(n):
        cpu = rng.choice([16, 32, 48, 64])
        mem = cpu * 4096
        used = rng.randint(0, cpu // 2)
        cluster = rng.choice(["prod-a", "prod-b", "old-1"])
        hv = rng.choice(["kvm"] * 9 + ["xen"])
        free_cpu, free_mem = cpu - used, mem - used * 4096
        out.append(
            TargetSnapshot(
                id=f"t-{i:05d}",
                name=f"host{i:05d}",
                kind="host",
                driver="libvirt",
                hypervisor=hv,
                cluster=cluster,
                state="enabled" if rng.random() > 0.02 else "disabled",
                total_cpu=cpu,
                total_memory_mb=mem,
                free_cpu=free_cpu,
                free_memory_mb=free_mem,
                free_disk_gb=2000,
                running=used,
                load=round(rng.random(), 2),
                zone=cluster,
                attrs={"ARCH": "x86_64"},
            )
        )
    return out


def requests(n: int, rng: random.Random) -> list[PlacementRequest]:
    out = []
    for i in range(n):
        flavor, cpu, mem, disk = rng.choice(FLAVORS)
        out.append(
            PlacementRequest(
                instance_id=f"i-{i:017x}",
                owner_id="u1",
                group_id=rng.choice(["g1", "g2"]),
                vcpus=cpu,
                memory_mb=mem,
                disk_gb=disk,
                flavor=flavor,
                image_id=rng.choice(["ami-1", "ami-2"]),
                image_hypervisor="kvm",
                arch="x86_64",
                requirements=rng.choice(INSTANCE_REQUIREMENTS),
            )
        )
    return out


def bare_loop(reqs: Sequence[PlacementRequest], targets: Sequence[TargetSnapshot]) -> int:
    """Baseline: first fit by free CPU and memory, nothing else."""
    free = [[t.free_cpu, t.free_memory_mb] for t in targets]
    placed = 0
    for r in reqs:
        for f in free:
            if f[0] >= r.vcpus and f[1] >= r.memory_mb:
                f[0] -= r.vcpus
                f[1] -= r.memory_mb
                placed += 1
                break
    return placed


def naive_policy(
    reqs: Sequence[PlacementRequest], targets: Sequence[TargetSnapshot]
) -> list[Decision]:
    """The previous DefaultPolicy: every filter and the ranker per (instance, host) pair."""
    default = expr.parse_requirements(OPERATOR_REQUIREMENTS)
    rank = expr.parse_rank(RANK)
    cache: dict[str, expr.Requirement] = {}
    free = {t.id: [t.free_cpu, t.free_memory_mb, t.free_disk_gb, t.running] for t in targets}
    out = []
    for r in reqs:
        own = cache.get(r.requirements) or cache.setdefault(
            r.requirements, expr.parse_requirements(r.requirements)
        )
        considered: dict[str, str] = {}
        best: tuple[float, TargetSnapshot] | None = None
        for t in targets:
            left = free[t.id]
            attrs = dict(t.attrs)
            attrs.update(
                HYPERVISOR=t.hypervisor,
                CLUSTER=t.cluster,
                TOTAL_CPU=t.total_cpu,
                LOAD=t.load,
                FREE_CPU=left[0],
                FREE_MEM=left[1],
                RUNNING_VMS=left[3],
            )
            if t.state != "enabled":
                why = "state"
            elif r.zone is not None and t.zone != r.zone:
                why = "zone"
            elif r.image_hypervisor and r.image_hypervisor != t.hypervisor:
                why = "hypervisor"
            elif left[0] < r.vcpus or left[1] < r.memory_mb or left[2] < r.disk_gb:
                why = "capacity"
            elif not default(attrs) or not own(attrs):
                why = "requirements"
            else:
                score = rank(attrs)
                considered[t.name] = f"rank {score:g}"
                if best is None or score > best[0]:
                    best = (score, t)
                continue
            considered[t.name] = f"removed by {why}"
        if best is None:
            out.append(Decision(r.instance_id, None, "no target can take it", considered))
            continue
        left = free[best[1].id]
        left[0] -= r.vcpus
        left[1] -= r.memory_mb
        left[2] -= r.disk_gb
        left[3] += 1
        out.append(Decision(r.instance_id, best[1].id, "best", considered))
    return out


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=1_000)
    ap.add_argument("--naive", type=int, default=500, help="instances for the naive policy")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-dispatch", action="store_true", help="skip the 1,000-launch burst")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    targets = hosts(args.hosts, rng)
    reqs = requests(args.instances, rng)

    best = float("inf")
    decisions: list[Decision] = []
    for _ in range(args.repeat):
        policy = DefaultPolicy(requirements=OPERATOR_REQUIREMENTS, rank=RANK)
        seconds, decisions = timed(policy.place, reqs, targets)
        best = min(best, seconds)
    placed = sum(1 for d in decisions if d.target_id is not None)

    bare_s, bare_placed = min(
        (timed(bare_loop, reqs, targets) for _ in range(args.repeat)), key=lambda x: x[0]
    )
    naive_s, naive_ds = timed(naive_policy, reqs[: args.naive], targets)

    sample = decisions[:: max(1, len(decisions) // 50)]
    explain_s, _ = timed(lambda: [dict(d.considered) for d in sample])

    rate = len(reqs) / best
    bare_rate = len(reqs) / bare_s
    naive_rate = len(naive_ds) / naive_s
    for d in decisions[:3] + decisions[-2:]:
        print(d.instance_id, d.target_id, d.reason)
    print(
        json.dumps(
            {
                "bench": "placement",
                "instances": len(reqs),
                "hosts": len(targets),
                "placed": placed,
                "waiting": len(reqs) - placed,
                "seconds": round(best, 4),
                "decisions_per_s": round(rate),
                "target_decisions_per_s": 20_000,
                "baseline": "bare_loop: first fit on free CPU and memory only, same workload",
                "baseline_decisions_per_s": round(bare_rate),
                "baseline_placed": bare_placed,
                "ratio_vs_baseline": round(rate / bare_rate, 2),
                "naive_policy": f"previous per-pair DefaultPolicy, first {len(naive_ds)} instances",
                "naive_decisions_per_s": round(naive_rate),
                "ratio_vs_naive": round(rate / naive_rate, 1),
                "explain_ms_per_decision": round(1000 * explain_s / len(sample), 3),
                **({} if args.skip_dispatch else {"burst_1000": burst_to_dispatched()}),
            }
        )
    )


def burst_to_dispatched() -> dict[str, Any]:
    from pathlib import Path

    from bench.libvirt import simulated

    with tempfile.TemporaryDirectory(prefix="bench-placement-") as tmp:
        sim = simulated(Path(tmp), 1000, 10, None)
    one = sim["one_call"]
    return {
        "launches": sim["launches"],
        "accepted_s": one["accepted_s"],
        "all_running_s": one["all_running_s"],
        "baseline_s": round(sim["launches"] / sim["baseline_per_s"], 3),
        "ratio_vs_baseline": round(sim["baseline_per_s"] / one["running_per_s"], 2),
    }


if __name__ == "__main__":
    main()
