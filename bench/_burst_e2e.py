"""The end-to-end half of bench/burst: launches through ``cloudbroker serve``'s EC2 endpoint, and
the same launches sent straight to moto's server, in one run.

One moto server process (``python -m moto.server`` with its request recorder on) is EC2 for both:

- ``direct``: boto3 RunInstances (MinCount=MaxCount=1) to moto from ``concurrency`` threads, in
  moto's ``us-west-2``, a region of its own so neither side's instances weigh on the other's
  describes;
- ``ours``: the same calls to a real ``python -m broker --config <tmp> serve`` (SQLite, no local
  host, scheduler and monitor loops, our EC2 listener) whose only target is the region
  ``us-east-1`` at moto, added with :func:`broker.service.targets.add` before ``serve`` starts,
  with a burst policy (``no_local_fit``) that sends every instance there.

A launch is timed from the moment its RunInstances is sent until a DescribeInstances *from the
same side* first shows it ``running`` (ours answers ``pending`` until the broker's monitor sees
it running in EC2; moto answers ``pending`` to RunInstances and ``running`` at once afterwards).
One watcher thread per side asks about every launched, not yet running instance every ``poll``
seconds (200 ids a call), so both sides are seen with the same resolution. For ours, the
broker's own record of when EC2 answered its RunInstances (``instances.launched_at``) splits the
time into "until EC2 holds it" and "until the monitor saw it run".

EC2 calls are counted at moto by its recorder (one line per HTTP request that reached moto,
retries included; requests that never arrived are not counted), attributed by the access key in
each request's SigV4 ``Credential``: the target's key is the broker, the direct client's key the
baseline. The count for ours runs from the first launch until all are seen running, so it holds
the broker's launches *and* every monitor observation in that window.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config

from bench._common import summary, write_config
from bench.ec2 import _prepare, free_port, process

OURS_REGION = "cloudbroker-1"
REGION = "us-east-1"  # the broker's region target
DIRECT_REGION = "us-west-2"  # the direct launches: same moto server, a region of their own
TARGET = "aws-bench"
TARGET_CREDS = {"access_key": "AKIDBURSTTARGET00001", "secret_key": "bench-target-not-real"}
DIRECT_CREDS = {"access_key": "AKIDBURSTDIRECT00001", "secret_key": "bench-direct-not-real"}
CHECK_CREDS = {"access_key": "AKIDBURSTCHECK000001", "secret_key": "bench-check-not-real"}
USER_DATA = b"#!/bin/sh\necho burst\n"
CHUNK = 200  # instance ids per watcher DescribeInstances

Launch = Callable[[int], tuple[str, str]]
Describe = Callable[[list[str]], dict[str, str]]


def ec2(url: str, region: str, creds: dict[str, str], pool: int = 10) -> Any:
    """A boto3 client that retries nothing (errors are counted, not hidden)."""
    return boto3.session.Session().client(
        "ec2",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=pool,
            read_timeout=120,
        ),
    )


def launcher(client: Any, tag: str, **params: Any) -> Launch:
    def launch(i: int) -> tuple[str, str]:
        got = client.run_instances(
            MinCount=1,
            MaxCount=1,
            UserData=USER_DATA,
            ClientToken=f"{tag}-{i}-{uuid.uuid4().hex[:8]}",
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": tag, "Value": str(i)}]}
            ],
            **params,
        )
        inst = got["Instances"][0]
        return str(inst["InstanceId"]), str(inst["State"]["Name"])

    return launch


def describer(client: Any) -> Describe:
    def describe(ids: list[str]) -> dict[str, str]:
        got = client.describe_instances(InstanceIds=ids)
        return {
            i["InstanceId"]: i["State"]["Name"] for r in got["Reservations"] for i in r["Instances"]
        }

    return describe


@dataclasses.dataclass
class Fleet:
    """Times (``time.time()``) of every launch: sent, answered, first seen running."""

    sent: dict[str, float] = dataclasses.field(default_factory=dict)
    answered: dict[str, float] = dataclasses.field(default_factory=dict)
    running: dict[str, float] = dataclasses.field(default_factory=dict)
    start: float = 0.0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    polls: int = 0

    def figures(self) -> dict[str, Any]:
        per = [self.running[r] - self.sent[r] for r in self.running]
        call = [self.answered[r] - self.sent[r] for r in self.answered]
        return {
            "launched": len(self.sent),
            "running": len(self.running),
            "errors": dict(self.errors),
            "to_running_ms": summary([1000 * s for s in per], 1),
            "run_instances_ms": summary([1000 * s for s in call], 1),
            "all_answered_s": round(
                max(self.answered.values(), default=self.start) - self.start, 3
            ),
            "all_running_s": round(max(self.running.values(), default=self.start) - self.start, 3),
            "watcher_describes": self.polls,
        }


def fleet(
    launch: Launch, describe: Describe, n: int, concurrency: int, poll: float, timeout: float
) -> Fleet:
    """``n`` launches from ``concurrency`` threads; a watcher thread notes when each runs."""
    out = Fleet()
    lock = threading.Lock()
    waiting: set[str] = set()
    launched = threading.Event()

    def one(i: int) -> None:
        t = time.time()
        try:
            rid, state = launch(i)
        except Exception as exc:
            with lock:
                out.errors[f"RunInstances: {type(exc).__name__}: {str(exc)[:120]}"] += 1
            return
        now = time.time()
        with lock:
            out.sent[rid], out.answered[rid] = t, now
            if state == "running":
                out.running[rid] = now
            else:
                waiting.add(rid)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            finished = launched.is_set()
            with lock:
                ids = sorted(waiting)
            if not ids and finished:
                return
            for k in range(0, len(ids), CHUNK):
                try:
                    states = describe(ids[k : k + CHUNK])
                except Exception as exc:
                    with lock:
                        out.errors[f"DescribeInstances: {type(exc).__name__}"] += 1
                    continue
                now = time.time()
                with lock:
                    out.polls += 1
                    for rid, state in states.items():
                        if state == "running" and rid in waiting:
                            waiting.discard(rid)
                            out.running[rid] = now
            time.sleep(poll)
        with lock:
            out.errors[f"not running after {timeout:g} s"] += len(waiting)

    watcher = threading.Thread(target=watch, name="bench-watcher", daemon=True)
    out.start = time.time()
    watcher.start()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    launched.set()
    watcher.join(timeout + 10)
    return out


# --- what moto saw ----------------------------------------------------------------------------


def reset_recording(url: str) -> None:
    req = urllib.request.Request(f"{url}/moto-api/recorder/reset-recording", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def recorded(path: Path) -> Counter[tuple[str, str]]:
    """Requests moto recorded, by (access key, EC2 action)."""
    out: Counter[tuple[str, str]] = Counter()
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            out[("?", "unreadable line")] += 1
            continue
        headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
        auth = str(headers.get("authorization", ""))
        key = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else "?"
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        query = parse_qs(urlsplit(entry.get("url", "")).query)
        action = (parse_qs(body).get("Action") or query.get("Action") or ["?"])[0]
        out[(key, action)] += 1
    return out


def by_action(counts: Counter[tuple[str, str]], key: str) -> dict[str, int]:
    return {action: c for (k, action), c in sorted(counts.items()) if k == key}


@contextlib.contextmanager
def moto_server(tmp: Path) -> Iterator[tuple[str, Path]]:
    """``python -m moto.server`` recording every request to a file; its URL and that file."""
    port, log = free_port(), tmp / "moto-requests.jsonl"
    cmd = ["env", "MOTO_ENABLE_RECORDING=1", f"MOTO_RECORDER_FILEPATH={log}", sys.executable]
    cmd += ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with process(cmd, port, tmp / "moto.log"):
        yield f"http://127.0.0.1:{port}", log


# --- the broker ----------------------------------------------------------------------------------


async def _region(config: Path, moto_url: str, ami: str, n: int) -> str:
    """The region target at moto, an image mapped to ``ami`` there, and the burst policy."""
    from broker.app import open_runtime
    from broker.auth import SYSTEM
    from broker.config import load
    from broker.service import images, policies, targets

    rt = await open_runtime(load(str(config)), migrate=False)
    try:
        image = await images.register(
            rt,
            SYSTEM,
            images.ImageSpec(name="burst", kind="kernel", kernel="/k", visibility="public"),
        )
        await targets.add(
            rt,
            SYSTEM,
            name=TARGET,
            kind="region",
            driver="ec2",
            secret=TARGET_CREDS,
            settings={"region": REGION, "endpoint": moto_url, "max_instances": 2 * n},
        )
        policy = {
            "default": {"trigger": "no_local_fit"},
            "targets": [{"name": TARGET, "image_map": {image.id: ami}}],
        }
        await policies.set_policy(rt, SYSTEM, policy, "bench: every instance bursts")
        return image.id
    finally:
        await rt.aclose()


def launched_at(db: Path) -> dict[str, float]:
    """Our instance id -> when the broker recorded EC2's answer to its RunInstances."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, launched_at FROM instances WHERE launched_at IS NOT NULL")
        return {
            rid: dt.datetime.fromisoformat(str(at)).replace(tzinfo=dt.UTC).timestamp()
            for rid, at in rows
        }
    finally:
        conn.close()


def run(n: int, concurrency: int, poll: float, monitor: float, scheduler: float) -> dict[str, Any]:
    """Both sides in one run; the figures for the JSON line."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-burst-")))
        moto_url, log = stack.enter_context(moto_server(tmp))
        amis = {
            region: str(
                ec2(moto_url, region, CHECK_CREDS).register_image(
                    Name="bench-burst", RootDeviceName="/dev/sda1"
                )["ImageId"]
            )
            for region in (REGION, DIRECT_REGION)
        }
        cfg = write_config(tmp / "broker", monitor=monitor, scheduler=scheduler)
        subnet, key, secret = asyncio.run(_prepare(cfg))
        image = asyncio.run(_region(cfg, moto_url, amis[REGION], n))
        from broker.config import load

        ec2_port = int(load(str(cfg)).ec2.listen.rpartition(":")[2])
        serve = [sys.executable, "-m", "broker", "--config", str(cfg), "serve"]
        stack.enter_context(process(serve, ec2_port, tmp / "serve.log"))
        ours_url = f"http://127.0.0.1:{ec2_port}"
        user = {"access_key": key, "secret_key": secret}
        pool = concurrency + 4

        # (b) the baseline: RunInstances straight to moto
        direct = ec2(moto_url, DIRECT_REGION, DIRECT_CREDS, pool)
        direct.describe_instances(MaxResults=5)  # connection and model warm-up, not timed
        launch = launcher(
            direct, "bench-direct", ImageId=amis[DIRECT_REGION], InstanceType="t3.micro"
        )
        reset_recording(moto_url)
        base = fleet(
            launch, describer(ec2(moto_url, DIRECT_REGION, DIRECT_CREDS)), n, concurrency, poll, 120
        )
        base_calls = recorded(log)

        # (a) ours: the same calls to our EC2 endpoint, bursting to moto's us-east-1
        client = ec2(ours_url, OURS_REGION, user, pool)
        client.describe_instances(MaxResults=5)
        launch = launcher(
            client, "bench-ours", ImageId=image, InstanceType="t3.micro", SubnetId=subnet
        )
        reset_recording(moto_url)
        got = fleet(launch, describer(ec2(ours_url, OURS_REGION, user)), n, concurrency, poll, 150)
        calls = recorded(log)
        at_ec2 = launched_at(cfg.parent / "data" / "broker.db")

        check = ec2(moto_url, REGION, CHECK_CREDS)
        pages = check.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": ["cloudbroker:broker"]}],
            PaginationConfig={"PageSize": 1000},
        )
        in_ec2 = sum(len(r["Instances"]) for page in pages for r in page["Reservations"])
    return figures(n, base, base_calls, got, calls, at_ec2, in_ec2, monitor, scheduler, poll)


def figures(
    n: int,
    base: Fleet,
    base_calls: Counter[tuple[str, str]],
    got: Fleet,
    calls: Counter[tuple[str, str]],
    at_ec2: dict[str, float],
    in_ec2: int,
    monitor: float,
    scheduler: float,
    poll: float,
) -> dict[str, Any]:
    b, o = base.figures(), got.figures()
    to_ec2 = [1000 * (at_ec2[r] - got.sent[r]) for r in got.sent if r in at_ec2]
    after = [1000 * (got.running[r] - at_ec2[r]) for r in got.running if r in at_ec2]
    o["to_ec2_answered_ms"] = summary(to_ec2, 1)
    o["ec2_answered_to_running_ms"] = summary(after, 1)
    ours_calls = by_action(calls, TARGET_CREDS["access_key"])
    total = sum(ours_calls.values())
    runs = ours_calls.get("RunInstances", 0)
    bm, om = b["to_running_ms"], o["to_running_ms"]
    return {
        "setup": (
            f"cloudbroker serve (SQLite, local_host none, monitor {monitor:g} s, scheduler "
            f"{scheduler:g} s) bursting to moto's {REGION}; direct: boto3 to moto's "
            f"{DIRECT_REGION}; same moto process; launches timed until a DescribeInstances "
            f"(polled every {poll:g} s) shows them running"
        ),
        "direct": b,
        "ours": o,
        "added_ms_per_launch": {
            "mean": round(om.get("mean", 0) - bm.get("mean", 0), 1),
            "p50": round(om.get("p50", 0) - bm.get("p50", 0), 1),
        },
        "ratio_per_launch_mean": round(om["mean"] / bm["mean"], 2) if bm and om else None,
        "ratio_all_running": round(o["all_running_s"] / b["all_running_s"], 2)
        if b["all_running_s"]
        else None,
        "ec2_calls": {
            "by_action": ours_calls,
            "total": total,
            "per_instance": round(total / n, 4),
            "run_instances_per_instance": round(runs / n, 4),
            "instances_per_run_instances": round(n / runs, 1) if runs else None,
            "counted": "every request with the target's key moto recorded, from the first "
            "launch until all ran (launches and monitor observation)",
        },
        "direct_ec2_calls": by_action(base_calls, DIRECT_CREDS["access_key"]),
        "instances_in_ec2": in_ec2,
    }
