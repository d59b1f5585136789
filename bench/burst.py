"""Burst launches against moto's server: EC2 API calls per launched instance, steady-state
observation calls per cycle, and the broker's added time per launch, in the backend alone and
end to end through ``cloudbroker serve``.

**The backend alone** (the first figures): both sides run in this process against one in-process
moto server, with the same concurrency (``--concurrency``, default 16: the scheduler's
``in_flight_per_target``):

- ``baseline``: plain boto3, one RunInstances per instance (MinCount=MaxCount=1, with a tag),
  from a thread pool; what a broker without batching would send;
- ``broker``: :class:`Ec2Backend.launch` for each instance, as the scheduler calls it. Every
  HTTP request it sends is counted (botocore's ``before-send``, so retries count too), including
  the inventory it reads before its first launch.

Then ``--cycles`` monitor cycles (probe + observe of every instance) measure the calls one
cycle costs. This leaves out the broker's own path (EC2 frontend, service, scheduler, monitor).

**End to end** (``end_to_end`` in the JSON; :mod:`bench._burst_e2e`): a moto server process and a
real ``python -m broker --config <tmp> serve`` (no local host, one EC2 region target at moto, a
``no_local_fit`` burst policy). In the same run, from ``--concurrency`` threads: the same
``--instances`` RunInstances (MinCount=MaxCount=1) straight to moto (``direct``), then through
our EC2 endpoint (``ours``). Each launch is timed from its call until a DescribeInstances of the
same side shows it running (a watcher polls every ``--poll`` seconds), with the wall time until
all run. ``added_ms_per_launch`` is ours minus direct, ``ratio_per_launch_mean`` ours over
direct. Ours is also split at the moment the broker recorded EC2's answer to its RunInstances
(``to_ec2_answered_ms``, then ``ec2_answered_to_running_ms``: waiting for a monitor cycle, so
about ``--monitor-interval``). ``ec2_calls`` are the requests moto's recorder saw with the
target's key from the first launch until all ran: launches and every monitor observation in
that window; ``instances_in_ec2`` checks that nothing was launched twice.

``python -m bench.burst`` prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from backends.ec2.backend import Ec2Backend
from bench import _burst_e2e
from broker.protocols import LaunchSpec, TargetConfig

REGION = "us-east-1"
CREDS = {"access_key": "AKIDBENCHBENCHBENCH", "secret_key": "bench-secret-not-real"}
USER_DATA = b"#!/bin/sh\necho burst\n"


def spec(ami: str, n: int) -> LaunchSpec:
    return LaunchSpec(
        instance_id=f"i-{uuid.uuid4().hex[:17]}",
        target_id="target-bench",
        target_settings={},
        hostname=f"burst-{n}",
        vcpus=2,
        memory_mb=1024,
        disk_gb=8,
        flavor="t3.micro",
        image_id="ami-00000000000000001",
        image_kind="disk",
        image_location="",
        image_kernel="",
        image_ramdisk="",
        image_cmdline="",
        image_checksum="",
        image_mappings={f"ec2:{REGION}": ami},
        user_data=USER_DATA,
        key_name=None,
        public_key=None,
        nics=(),
    )


def baseline(url: str, ami: str, n: int, concurrency: int) -> tuple[float, list[float], int]:
    client = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=CREDS["access_key"],
        aws_secret_access_key=CREDS["secret_key"],
    )
    client.describe_availability_zones()  # connection and model warm-up, not timed
    calls = 0

    def one(i: int) -> float:
        nonlocal calls
        t = time.perf_counter()
        client.run_instances(
            ImageId=ami,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            UserData=USER_DATA,
            ClientToken=f"base-{i}-{uuid.uuid4().hex[:8]}",
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "bench", "Value": str(i)}]}
            ],
        )
        calls += 1
        return time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(n)))
    return time.perf_counter() - start, latencies, calls


async def broker(
    url: str, ami: str, n: int, concurrency: int, cycles: int, data_dir: str
) -> dict[str, Any]:
    config = TargetConfig(
        id="target-bench",
        name="aws-bench",
        kind="region",
        driver="ec2",
        hypervisor="",
        settings={
            "region": REGION,
            "endpoint": url,
            "broker_id": f"cb-bench-{uuid.uuid4().hex[:8]}",
            "max_instances": n * 2,
            "threads": concurrency,
            "observe_reuse": 2.0,
        },
        secret=CREDS,
        data_dir=data_dir,
    )
    backend = Ec2Backend(config)
    try:
        await backend._call("DescribeAvailabilityZones", {})  # warm-up, like the baseline's
        backend.calls.clear()
        specs = [spec(ami, i) for i in range(n)]
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def one(s: LaunchSpec) -> str:
            async with gate:
                t = time.perf_counter()
                placed = await backend.launch(s)
                latencies.append(time.perf_counter() - t)
                return placed.ref

        start = time.perf_counter()
        refs = await asyncio.gather(*(one(s) for s in specs))
        seconds = time.perf_counter() - start
        launch_calls = dict(backend.calls)
        per_cycle: list[int] = []
        cycle_s: list[float] = []
        for _ in range(cycles):
            before = backend.calls.total()
            t = time.perf_counter()
            await backend.probe()
            seen = await backend.observe(refs)
            cycle_s.append(time.perf_counter() - t)
            per_cycle.append(backend.calls.total() - before)
            assert len(seen) == n, (len(seen), n)
            await asyncio.sleep(2.05)  # past observe_reuse: the next cycle reads afresh
        return {
            "seconds": seconds,
            "latencies": latencies,
            "launch_calls": launch_calls,
            "distinct": len(set(refs)),
            "per_cycle": per_cycle,
            "cycle_s": cycle_s,
        }
    finally:
        await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--instances", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.05, help="end to end: watcher period, s")
    parser.add_argument("--monitor-interval", type=float, default=1.0, help="end to end, s")
    parser.add_argument("--scheduler-interval", type=float, default=0.2, help="end to end, s")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        ami = str(
            boto3.client(
                "ec2",
                region_name=REGION,
                endpoint_url=url,
                aws_access_key_id=CREDS["access_key"],
                aws_secret_access_key=CREDS["secret_key"],
            ).register_image(Name="bench-burst", RootDeviceName="/dev/sda1")["ImageId"]
        )
        n = args.instances
        base_s, base_lat, base_calls = baseline(url, ami, n, args.concurrency)
        with tempfile.TemporaryDirectory() as tmp:
            got = asyncio.run(broker(url, ami, n, args.concurrency, args.cycles, tmp))
    finally:
        server.stop()
    e2e = _burst_e2e.run(
        args.instances, args.concurrency, args.poll, args.monitor_interval, args.scheduler_interval
    )
    calls = sum(got["launch_calls"].values())
    base_ms = 1000 * base_s / n
    ours_ms = 1000 * got["seconds"] / n
    print(
        json.dumps(
            {
                "bench": "burst",
                "instances": n,
                "concurrency": args.concurrency,
                "distinct_instances": got["distinct"],
                "launch_calls": got["launch_calls"],
                "calls_per_instance": round(calls / n, 4),
                "target_calls_per_instance": 1.1,
                "baseline": "boto3 RunInstances per instance, same concurrency, same server",
                "baseline_calls_per_instance": round(base_calls / n, 4),
                "ratio_calls_vs_baseline": round(calls / base_calls, 4),
                "observe_calls_per_cycle": got["per_cycle"],
                "observe_cycle_ms": [round(1000 * s, 1) for s in got["cycle_s"]],
                "baseline_seconds": round(base_s, 3),
                "broker_seconds": round(got["seconds"], 3),
                "baseline_ms_per_launch": round(base_ms, 3),
                "broker_ms_per_launch": round(ours_ms, 3),
                "added_ms_per_launch": round(ours_ms - base_ms, 3),
                "ratio_time_vs_baseline": round(got["seconds"] / base_s, 3),
                "baseline_p50_latency_ms": round(1000 * statistics.median(base_lat), 2),
                "broker_p50_latency_ms": round(1000 * statistics.median(got["latencies"]), 2),
                "end_to_end": e2e,
            }
        )
    )


if __name__ == "__main__":
    main()
