"""The first real launch, end to end: boto3 -> our EC2 endpoint -> scheduler -> a real guest.

``cloudbroker serve`` runs as a process; ``cloudbroker lab up`` makes two hosts (network
namespaces with their own sshd and private libvirtd) and registers them, their network and the
tiny guest image. A boto3 client with a fresh user's keys then runs an instance with user data,
reads the guest's boot marker and the user data it found on its config drive through
GetConsoleOutput, fetches its web page from the lab's namespace, stops, starts, reboots and
terminates it, and checks that no domain, disk, config drive or lease is left. Then a host's
network goes away: the host goes to error and its instance to unknown; when it is back, the
instance is found again. Nothing is skipped: a missing component fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import libvirt
import pytest
from botocore.config import Config

from backends.libvirt.guest import MARKER, READY_MARKER, USERDATA_BEGIN, USERDATA_END
from backends.libvirt.lab import LabState, lab_down
from tests.broker.test_serve import Server, cli, cli_json, free_port

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("CLOUDBROKER_TEST_CACHE", REPO / "var" / "cache"))
SUBNET = os.environ.get("CLOUDBROKER_TEST_E2E_SUBNET", "10.77.210.0/24")
USER_DATA = "hello-cloudbroker-e2e"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Server, LabState, Path]]:
    cfg = tmp_path / "broker.toml"
    cfg.write_text(
        f'[broker]\ndata_dir = "data"\nlocal_host = "none"\n'
        f'[ec2]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[occi]\nenabled = false\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[monitor]\ninterval = 1.0\nmisses = 2\nprobe_timeout = 3.0\n"
        f"[scheduler]\ninterval = 0.5\n"
    )
    server = Server(cfg)
    server.start()
    work = tmp_path / "lab"
    try:
        made = cli_json(
            cfg, "lab", "up", "--hosts", "2", "--workdir", str(work), "--subnet", SUBNET
        )
        assert isinstance(made, dict)
        state = LabState.from_json(json.loads((work / "lab.json").read_text()))
        yield server, state, work
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill(signal.SIGTERM)
        lab_down(work)


def ec2_client(server: Server, keys: dict[str, Any]) -> Any:
    text = server.cfg.read_text()
    port = text.split('[ec2]\nlisten = "127.0.0.1:')[1].split('"')[0]
    return boto3.client(
        "ec2",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="cloudbroker-1",
        aws_access_key_id=keys["access_key"],
        aws_secret_access_key=keys["secret_key"],
        config=Config(retries={"max_attempts": 1}),
    )


def wait_console(ec2: Any, rid: str, *needles: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = ec2.get_console_output(InstanceId=rid).get("Output", "")  # boto3 decodes it
        if all(n in text for n in needles):
            return text
        time.sleep(1)
    raise AssertionError(f"console never showed {needles}: {text[-2000:]}")


def lab_get(state: LabState, url: str, context: str = "") -> str:
    argv = ["ip", "netns", "exec", state.lab_namespace, "busybox", "wget", "-q", "-O-", url]
    for _ in range(30):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0:
            return proc.stdout
        time.sleep(1)
    raise AssertionError(f"wget {url}: {proc.stderr} {context[-1500:]}")


def domain_xml(state: LabState, rid: str) -> str:
    for host in state.hosts:
        conn = libvirt.open(host.local_uri)
        try:
            if rid in [d.name() for d in conn.listAllDomains(0)]:
                return str(conn.lookupByName(rid).XMLDesc(0))
        finally:
            conn.close()
    return ""


VOLUME_WAIT = {"Delay": 1, "MaxAttempts": 60}


def wait_attached(ec2: Any, vid: str, want: str) -> None:
    for _ in range(60):
        (vol,) = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
        if vol["Attachments"] and vol["Attachments"][0]["State"] == want:
            return
        time.sleep(0.5)
    raise AssertionError(f"{vid} never {want}: {vol}")


def waiter(ec2: Any, name: str, rid: str) -> None:
    ec2.get_waiter(name).wait(InstanceIds=[rid], WaiterConfig={"Delay": 1, "MaxAttempts": 180})


def launch_tiny(server: Server, user: str) -> tuple[Any, str, str]:
    """A new user's boto3 client and the tiny guest it launched with our user data on the lab
    subnet: (client, instance id, private address)."""
    keys = cli_json(server.cfg, "user", "create", user)
    assert isinstance(keys, dict)
    ec2 = ec2_client(server, keys)
    (image,) = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]}])["Images"]
    subnets = {s["CidrBlock"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
    run = ec2.run_instances(
        ImageId=image["ImageId"],
        InstanceType="t3.nano",
        MinCount=1,
        MaxCount=1,
        UserData=USER_DATA,
        SubnetId=subnets[SUBNET],
    )
    made = run["Instances"][0]
    return ec2, str(made["InstanceId"]), str(made["PrivateIpAddress"])


def test_boto3_launch_boots_a_real_guest_and_leaves_nothing(
    world: tuple[Server, LabState, Path],
) -> None:
    server, state, _work = world
    ec2, rid, ip = launch_tiny(server, "alice")
    waiter(ec2, "instance_running", rid)
    text = wait_console(ec2, rid, MARKER, USERDATA_END, READY_MARKER)
    assert USER_DATA in text.split(USERDATA_BEGIN, 1)[1]
    assert rid in lab_get(state, f"http://{ip}/", text + domain_xml(state, rid))

    # a volume hot-plugged into the running guest, then unplugged and deleted with its file
    (placed,) = ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"]
    vid = ec2.create_volume(AvailabilityZone=placed["Placement"]["AvailabilityZone"], Size=1)[
        "VolumeId"
    ]
    ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig=VOLUME_WAIT)
    wait_attached(ec2, vid, "attached")
    live = domain_xml(state, rid)
    assert "<target dev='vdf' bus='virtio'/>" in live and vid.replace("-", "") in live, live
    (disk,) = (server.cfg.parent / "data" / "hosts").glob(f"*/volumes/{vid}.qcow2")
    ec2.detach_volume(VolumeId=vid)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=VOLUME_WAIT)
    assert "vdf" not in domain_xml(state, rid)
    ec2.delete_volume(VolumeId=vid)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[vid], WaiterConfig=VOLUME_WAIT)
    assert not disk.exists()

    ec2.stop_instances(InstanceIds=[rid])
    waiter(ec2, "instance_stopped", rid)
    ec2.start_instances(InstanceIds=[rid])
    waiter(ec2, "instance_running", rid)
    assert rid in lab_get(state, f"http://{ip}/")
    ec2.reboot_instances(InstanceIds=[rid])
    waiter(ec2, "instance_running", rid)
    ec2.terminate_instances(InstanceIds=[rid])
    waiter(ec2, "instance_terminated", rid)

    for host in state.hosts:
        conn = libvirt.open(host.local_uri)
        try:
            assert rid not in [d.name() for d in conn.listAllDomains(0)]
        finally:
            conn.close()
    leftovers = list((server.cfg.parent / "data" / "hosts").glob(f"*/instances/{rid}"))
    assert leftovers == []
    nets = cli_json(server.cfg, "network", "list")
    assert isinstance(nets, list) and all(n["leased"] == 0 for n in nets)


def test_a_host_that_stops_answering_goes_to_error_and_comes_back(
    world: tuple[Server, LabState, Path],
) -> None:
    server, state, _work = world
    ec2, rid, _ip = launch_tiny(server, "bob")
    waiter(ec2, "instance_running", rid)
    shown = cli_json(server.cfg, "instance", "show", rid)
    assert isinstance(shown, dict)
    host = next(h for h in state.hosts if shown["target_name"].endswith(h.name))
    link = ["ip", "netns", "exec", host.namespace, "ip", "link", "set", "eth0"]
    subprocess.run([*link, "down"], check=True)  # the host stops answering; its guest runs on
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            view = cli_json(server.cfg, "instance", "show", rid)
            assert isinstance(view, dict)
            if view["state"] == "unknown":
                break
            time.sleep(1)
        assert view["state"] == "unknown", view
        target = cli_json(server.cfg, "host", "show", shown["target_name"])
        assert isinstance(target, dict) and target["state"] == "error"
    finally:
        subprocess.run([*link, "up"], check=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = cli_json(server.cfg, "instance", "show", rid)
        assert isinstance(view, dict)
        if view["state"] == "running":
            break
        time.sleep(1)
    assert view["state"] == "running", view
    ec2.terminate_instances(InstanceIds=[rid])
    waiter(ec2, "instance_terminated", rid)
    assert cli(server.cfg, "host", "show", shown["target_name"]).returncode == 0


def test_a_running_guest_migrates_live_between_lab_hosts(
    world: tuple[Server, LabState, Path],
) -> None:
    server, state, _work = world
    ec2, rid, ip = launch_tiny(server, "mover")
    waiter(ec2, "instance_running", rid)
    wait_console(ec2, rid, MARKER, READY_MARKER)
    shown = cli_json(server.cfg, "instance", "show", rid)
    assert isinstance(shown, dict)
    hosts = cli_json(server.cfg, "host", "list")
    assert isinstance(hosts, list)
    source = str(shown["target_name"])
    (dest,) = [h["name"] for h in hosts if h["name"] != source]

    same = cli(server.cfg, "instance", "migrate", rid, source, check=False)
    assert same.returncode == 1 and same.stderr.startswith("error: ")
    cli(server.cfg, "instance", "migrate", rid, dest)
    deadline = time.monotonic() + 180
    while True:
        shown = cli_json(server.cfg, "instance", "show", rid)
        assert isinstance(shown, dict)
        if shown["target_name"] == dest and shown["state"] == "running":
            break
        assert time.monotonic() < deadline, shown
        time.sleep(1)
    holders = []
    for host in state.hosts:
        conn = libvirt.open(host.local_uri)
        try:
            if rid in [d.name() for d in conn.listAllDomains(0)]:
                holders.append(host.name)
        finally:
            conn.close()
    assert len(holders) == 1, holders  # the destination keeps it, the source forgot it
    assert rid in lab_get(state, f"http://{ip}/")  # the guest kept running through the move
    ec2.terminate_instances(InstanceIds=[rid])
    waiter(ec2, "instance_terminated", rid)
