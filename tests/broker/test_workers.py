"""``[ec2] workers``: real ``serve`` processes whose EC2 listener worker processes serve, driven
with boto3 (broker/workers.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from prometheus_client import generate_latest

from broker import metrics
from broker.config import dumps, from_mapping, load, loads
from broker.errors import ConfigError
from broker.metrics import Metrics, _Summed
from broker.runtime import Runtime
from broker.workers import CoreLink
from frontends.ec2.actions import ACTIONS
from frontends.ec2.app import IN_CORE, IN_WORKERS
from tests.broker.test_serve import Server, cli_json, free_port

FAST = {"Delay": 0.2, "MaxAttempts": 150}


def write_config(tmp: Path, workers: int, database: str = "", **ec2: object) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in ec2.items())
    db = f'[database]\nurl = "{database}"\n' if database else ""
    cfg = tmp / "broker.toml"
    cfg.write_text(
        f'[broker]\ndata_dir = "data"\nlocal_host = "simulated"\n{db}'
        f'[ec2]\nlisten = "127.0.0.1:{free_port()}"\nworkers = {workers}\n{extra}'
        f'[occi]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[monitor]\ninterval = 0.5\n[scheduler]\ninterval = 60.0\n"
    )
    return cfg


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start(cfg: Path, workers: int) -> Server:
    srv = Server(cfg)
    srv.start()
    assert srv.proc is not None
    pid = srv.proc.pid
    wait_for(lambda: len(children(pid)) == workers, f"{workers} workers")
    return srv


@pytest.fixture
def serve2(tmp_path: Path) -> Iterator[Server]:
    srv = start(write_config(tmp_path, 2), 2)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill(signal.SIGTERM)


def ec2_client(cfg: Path, user: dict[str, Any], retries: int = 1) -> Any:
    listen = load(str(cfg), env={}).ec2.listen
    return boto3.session.Session().client(
        "ec2",
        region_name="cloudbroker-1",
        endpoint_url=f"http://{listen}",
        aws_access_key_id=user["access_key"],
        aws_secret_access_key=user["secret_key"],
        config=BotoConfig(retries={"max_attempts": retries, "mode": "standard"}),
    )


def request_head(answer: dict[str, Any]) -> str:
    """The part of a request id that tells which process's app answered."""
    return str(answer["ResponseMetadata"]["RequestId"])[:24]


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_workers_carry_the_lifecycle_and_hand_backend_actions_to_the_core(
    tmp_path: Path, db: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("pg_url")) if db == "postgres" else ""
    srv = start(write_config(tmp_path, 1, url), 1)
    try:
        user = cli_json(srv.cfg, "user", "create", "alice")
        assert isinstance(user, dict)
        ec2 = ec2_client(srv.cfg, user)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        heads = {request_head(ec2.describe_regions()) for _ in range(3)}
        assert len(heads) == 1  # one worker, one head
        run = ec2.run_instances(ImageId=image, InstanceType="t3.nano", MinCount=1, MaxCount=1)
        rid = run["Instances"][0]["InstanceId"]
        assert request_head(run) in heads
        # the scheduler runs every minute here: a launch running sooner was woken by the worker
        t0 = time.monotonic()
        ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=FAST)
        assert time.monotonic() - t0 < 20
        console = ec2.get_console_output(InstanceId=rid)
        assert console["InstanceId"] == rid
        assert request_head(console) not in heads  # answered by the core's own app
        zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
        volume = ec2.create_volume(Size=1, AvailabilityZone=zone)
        assert request_head(volume) not in heads
        ec2.stop_instances(InstanceIds=[rid])
        ec2.get_waiter("instance_stopped").wait(InstanceIds=[rid], WaiterConfig=FAST)
        ec2.terminate_instances(InstanceIds=[rid])
        ec2.get_waiter("instance_terminated").wait(InstanceIds=[rid], WaiterConfig=FAST)
        with pytest.raises(ClientError) as bad:
            ec2.get_console_output(InstanceId="i-00000000000000000")
        assert code(bad) == "InvalidInstanceID.NotFound"  # the core's error, as it answered
        assert bad.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    finally:
        srv.kill(signal.SIGTERM)


def test_a_user_disabled_is_refused_by_every_worker_at_once(serve2: Server) -> None:
    user = cli_json(serve2.cfg, "user", "create", "bob")
    assert isinstance(user, dict)
    heads: set[str] = set()
    for _ in range(40):  # new connections, until both workers have the key cached
        heads.add(request_head(ec2_client(serve2.cfg, user).describe_regions()))
        if len(heads) == 2:
            break
    assert len(heads) == 2
    cli_json(serve2.cfg, "user", "disable", "bob")
    for _ in range(20):
        with pytest.raises(ClientError) as refused:
            ec2_client(serve2.cfg, user).describe_regions()
        assert code(refused) == "AuthFailure"


def test_a_worker_that_dies_is_replaced(serve2: Server) -> None:
    assert serve2.proc is not None
    user = cli_json(serve2.cfg, "user", "create", "carol")
    assert isinstance(user, dict)
    first = children(serve2.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    now = wait_for(
        lambda: (c := children(serve2.proc.pid)) and len(c) == 2 and first[0] not in c and c,
        "a new worker",
    )
    assert first[1] in now
    for _ in range(10):
        assert ec2_client(serve2.cfg, user).describe_regions()["Regions"]
    log = (serve2.cfg.parent / "serve.log").read_text()
    assert f"(pid {first[0]}) exited" in log


def test_metrics_count_the_requests_of_every_worker(serve2: Server) -> None:
    user = cli_json(serve2.cfg, "user", "create", "dave")
    assert isinstance(user, dict)
    heads = {request_head(ec2_client(serve2.cfg, user).describe_key_pairs()) for _ in range(30)}
    saved = json.loads((serve2.cfg.parent / "data" / "operator.json").read_text())
    req = urllib.request.Request(
        saved["url"] + "/metrics", headers={"Authorization": f"Bearer {saved['token']}"}
    )
    with urllib.request.urlopen(req, timeout=30) as answer:
        text = answer.read().decode()
    line = 'cloudbroker_api_requests_total{action="DescribeKeyPairs",frontend="ec2",status="200"}'
    counted = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)]
    assert counted == [30.0], (heads, [x for x in text.splitlines() if "DescribeKeyPairs" in x])
    bucket = 'cloudbroker_api_request_duration_seconds_count{action="DescribeKeyPairs"'
    assert [x.split()[-1] for x in text.splitlines() if x.startswith(bucket)] == ["30.0"]


def test_workers_end_with_serve_and_without_it(tmp_path: Path) -> None:
    srv = start(write_config(tmp_path, 2), 2)
    assert srv.proc is not None
    workers = children(srv.proc.pid)
    assert srv.kill(signal.SIGTERM) == 0
    assert not any(alive(p) for p in workers)
    # a core killed outright: its workers see the control channel close and exit by themselves
    srv = start(write_config(tmp_path, 2), 2)
    assert srv.proc is not None
    workers = children(srv.proc.pid)
    srv.kill(signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in workers), "orphaned workers to exit")


def test_one_worker_limits_each_key_once_for_all_its_actions(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1, rate_limit=0.01, rate_burst=3)
    srv = start(cfg, 1)
    try:
        user = cli_json(cfg, "user", "create", "erin")
        assert isinstance(user, dict)
        ec2 = ec2_client(cfg, user)
        ec2.describe_regions()
        ec2.describe_regions()
        with pytest.raises(ClientError) as missing:  # handed to the core: still one token
            ec2.get_console_output(InstanceId="i-00000000000000000")
        assert code(missing) == "InvalidInstanceID.NotFound"
        with pytest.raises(ClientError) as limited:
            ec2.describe_regions()
        assert code(limited) == "RequestLimitExceeded"
        assert limited.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        srv.kill(signal.SIGTERM)


def test_every_ec2_action_is_placed_in_the_workers_or_the_core() -> None:
    assert not IN_WORKERS & IN_CORE
    assert set(ACTIONS) == IN_WORKERS | IN_CORE


def test_workers_settings_are_checked() -> None:
    assert from_mapping({"ec2": {"workers": 3}}, env={}).ec2.workers == 3
    assert from_mapping({"ec2": {"workers": 1, "rate_limit": 5}}, env={}).ec2.workers == 1
    for bad in ({"workers": -1}, {"workers": 65}, {"workers": 2, "rate_limit": 5}):
        with pytest.raises(ConfigError, match="workers"):
            from_mapping({"ec2": bad}, env={})


def test_a_worker_gets_the_very_configuration_of_its_core(tmp_path: Path) -> None:
    cfg = load(str(write_config(tmp_path, 2, rate_limit=0)), env={})
    policy = {"version": 1, "rules": [{"when": "full", "burst": "aws"}]}
    cfg = dataclasses.replace(cfg, policy=policy)
    assert loads(dumps(cfg)) == cfg


def test_metrics_add_the_workers_samples_to_their_own() -> None:
    ours, theirs = Metrics(), Metrics()
    ours.observe_request("ec2", "DescribeRegions", 200, 0.002)
    theirs.observe_request("ec2", "DescribeRegions", 200, 0.3)
    theirs.observe_request("ec2", "RunInstances", 400, 0.001)
    text = generate_latest(_Summed(ours.registry, [theirs.request_samples()])).decode()
    lines = set(text.splitlines())
    labels = 'action="DescribeRegions",frontend="ec2",status="200"'
    assert f"cloudbroker_api_requests_total{{{labels}}} 2.0" in lines
    bucket = 'cloudbroker_api_request_duration_seconds_bucket{action="DescribeRegions",'
    assert f'{bucket}frontend="ec2",le="0.005",status="200"}} 1.0' in lines
    assert f'{bucket}frontend="ec2",le="0.5",status="200"}} 2.0' in lines
    run = 'action="RunInstances",frontend="ec2",status="400"'
    assert f"cloudbroker_api_requests_total{{{run}}} 1.0" in lines
    assert f"cloudbroker_api_request_duration_seconds_count{{{run}}} 1.0" in lines
    assert text.count("# TYPE cloudbroker_api_requests_total counter") == 1


def test_two_workers_launching_at_once_take_turns_on_the_database(serve2: Server) -> None:
    """Each launch reads the free addresses and quotas, then writes: with two processes writing,
    a transaction holds SQLite's write lock from its start, so no two launches take one
    address (they did, and the second launch failed, before transactions began IMMEDIATE)."""
    user = cli_json(serve2.cfg, "user", "create", "frank")
    assert isinstance(user, dict)
    image = ec2_client(serve2.cfg, user).describe_images()["Images"][0]["ImageId"]

    def launches(_: int) -> list[tuple[str, str]]:
        ec2 = ec2_client(serve2.cfg, user)
        made = []
        for _ in range(8):
            run = ec2.run_instances(ImageId=image, InstanceType="t3.nano", MinCount=1, MaxCount=1)
            made += [(i["InstanceId"], i["PrivateIpAddress"]) for i in run["Instances"]]
        return made

    with ThreadPoolExecutor(16) as pool:
        made = [pair for part in pool.map(launches, range(16)) for pair in part]
    assert len(made) == 128
    assert len({ip for _, ip in made}) == 128


async def test_a_workers_metrics_of_every_action_fit_one_packet() -> None:
    """Every action with three statuses is 329 KB of samples, more than one packet of the
    control channel carries (about 200 KB): they are sent compressed."""
    rt = cast(Runtime, SimpleNamespace())
    for action in ACTIONS:
        for status in (200, 400, 503):
            metrics.install(rt).observe_request("ec2", action, status, 0.01)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gone = asyncio.Event()
    link = CoreLink(rt, theirs, "", gone)
    try:
        ours.send(b"metrics")
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        answer = await asyncio.wait_for(loop.sock_recv(ours, 1 << 20), 10)
        samples = json.loads(zlib.decompress(answer[len(b"metrics ") :]))
        assert len(samples) == len(ACTIONS) * 3 * 16  # a counter and 15 histogram samples
        assert not gone.is_set()
    finally:
        await link.aclose()
        ours.close()
