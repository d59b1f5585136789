"""The added time of one federation hop: launches from site A placed on site B, against
launches made on site B directly, measured in the same run on two real cloudbroker processes.

Each phase launches ``--count`` instances (one RunInstances each, from a pool of client
threads) and records, per instance, the time from its RunInstances to the first
DescribeInstances that shows it running at the site it was launched at. The direct phase runs
first on B; its instances are terminated before the federated phase. Prints ONE JSON object on
its last line: mean and p50/p95 latencies of both phases, the added time per launch and the
ratio federated/direct.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backends.peer.conftest import Site, states, wait_for


def _phase(client: Any, image: str, count: int, threads: int) -> dict[str, float]:
    started: dict[str, float] = {}
    lock = threading.Lock()

    def one(_: int) -> None:
        t0 = time.monotonic()
        got = client.run_instances(ImageId=image, InstanceType="t3.nano", MinCount=1, MaxCount=1)
        with lock:
            started[got["Instances"][0]["InstanceId"]] = t0

    t_begin = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    running: dict[str, float] = {}
    deadline = time.monotonic() + 600
    while len(running) < count and time.monotonic() < deadline:
        now = time.monotonic()
        for rid, state in states(client).items():
            if rid in started and rid not in running and state == "running":
                running[rid] = now - started[rid]
        time.sleep(0.05)
    if len(running) < count:
        raise SystemExit(f"only {len(running)} of {count} instances ran")
    lat = sorted(running.values())
    wall = time.monotonic() - t_begin
    ids = list(running)
    for i in range(0, len(ids), 100):
        client.terminate_instances(InstanceIds=ids[i : i + 100])
    wait_for(
        lambda: all(s == "terminated" for s in states(client).values()), 300, what="terminated"
    )
    return {
        "mean_s": statistics.fmean(lat),
        "p50_s": lat[len(lat) // 2],
        "p95_s": lat[min(len(lat) - 1, int(len(lat) * 0.95))],
        "wall_s": wall,
        "per_launch_s": wall / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-federation-"))
    a = Site(root, "a")
    b = Site(root, "b", cpus=2 * args.count + 16, memory_gb=args.count + 16)
    try:
        a.start()
        b.start()
        fed = b.user("fed-a")
        a.link(b, fed)
        a.cli("host", "disable", "local-simulated")
        a.burst_to("site-b")
        wait_for(lambda: a.json("peer", "list")[0]["total_cpu"] > 0, what="B's capacity at A")
        direct = _phase(b.ec2(b.user("bob")), b.image(), args.count, args.threads)
        via_a = _phase(a.ec2(a.user("alice")), a.image(), args.count, args.threads)
    finally:
        for site in (a, b):
            if site.alive():
                site.kill()
    print(f"direct on B: {direct}", file=sys.stderr)
    print(f"A -> B:      {via_a}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "federation",
                "launches": args.count,
                "direct_b": {k: round(v, 4) for k, v in direct.items()},
                "via_a": {k: round(v, 4) for k, v in via_a.items()},
                "added_per_launch_s": round(via_a["mean_s"] - direct["mean_s"], 4),
                "added_p50_s": round(via_a["p50_s"] - direct["p50_s"], 4),
                "ratio_mean": round(via_a["mean_s"] / direct["mean_s"], 3),
                "ratio_wall": round(via_a["wall_s"] / direct["wall_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
