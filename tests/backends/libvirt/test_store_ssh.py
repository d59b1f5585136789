"""A host whose image store is its own (store "ssh"), end to end: boto3 -> serve -> a real guest.

``cloudbroker lab up --store ssh`` registers one lab host with ``image_dir`` in a folder that only
its sshd writes to (``labcli.host_store``). Two RunInstances boot the tiny guest to its boot
marker: the kernel and initrd reach the host over SFTP once (the second launch reuses them),
each instance's config drive and console log live in the host's store, and the broker's own
data folder holds none of them. A volume is made, hot-plugged, unplugged and deleted there;
terminating removes the instances' folders from the host. The host's probes come over SSH (load,
available memory, free disk of the store), and a host whose sshd does not answer fails its probe.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.libvirt.backend import LibvirtBackend
from backends.libvirt.guest import MARKER
from backends.libvirt.lab import LabState, lab_down
from broker.errors import BackendUnavailable
from broker.protocols import TargetConfig
from tests.backends.libvirt.test_e2e import (
    VOLUME_WAIT,
    domain_xml,
    ec2_client,
    wait_attached,
    wait_console,
    waiter,
)
from tests.broker.test_serve import Server, cli_json, free_port

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]
SUBNET = os.environ.get("CLOUDBROKER_TEST_STORE_SUBNET", "10.77.211.0/24")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, LabState, dict[str, object]]]:
    tmp_path = tmp_path_factory.mktemp("store-ssh")
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
            cfg, "lab", "up", "--hosts", "1", "--store", "ssh", "--workdir", str(work),
            "--subnet", SUBNET,
        )  # fmt: skip
        assert isinstance(made, dict)
        state = LabState.from_json(json.loads((work / "lab.json").read_text()))
        (name,) = made["registered"]["hosts"]
        # two guests on one host of this 2-core machine: a 1-vCPU size (as EC2's t2.nano)
        cli_json(cfg, "flavor", "create", "t2.nano", "--vcpus", "1", "--memory", "128")
        host = cli_json(cfg, "host", "show", name)
        assert isinstance(host, dict)
        yield server, state, host
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill(signal.SIGTERM)
        lab_down(work)


def launch(ec2: object, image: str, subnet: str) -> str:
    run = ec2.run_instances(  # type: ignore[attr-defined]
        ImageId=image, InstanceType="t2.nano", MinCount=1, MaxCount=1, SubnetId=subnet
    )
    rid = str(run["Instances"][0]["InstanceId"])
    waiter(ec2, "instance_running", rid)
    wait_console(ec2, rid, MARKER)
    return rid


def test_a_host_with_its_own_store_gets_images_over_ssh(
    world: tuple[Server, LabState, dict[str, object]],
) -> None:
    server, state, host = world
    settings = host["settings"]
    assert isinstance(settings, dict) and settings["store"] == "ssh"
    store = Path(settings["image_dir"])
    data = server.cfg.parent / "data"
    assert not store.is_relative_to(data)
    keys = cli_json(server.cfg, "user", "create", "carol")
    assert isinstance(keys, dict)
    ec2 = ec2_client(server, keys)
    (image,) = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]}])["Images"]
    ami = image["ImageId"]
    subnets = {s["CidrBlock"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}

    first = launch(ec2, ami, subnets[SUBNET])
    kernel, initrd = store / "images" / f"{ami}.kernel", store / "images" / f"{ami}.initrd"
    copied = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (kernel, initrd)}
    assert sorted(p.name for p in (store / "images").iterdir()) == sorted(
        [kernel.name, initrd.name]
    )  # no partial copy left
    second = launch(ec2, ami, subnets[SUBNET])
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in copied} == copied  # reused
    for rid in (first, second):
        xml = domain_xml(state, rid)
        assert f"<kernel>{kernel}</kernel>" in xml and str(store / "instances" / rid) in xml
        files = {p.name for p in (store / "instances" / rid).iterdir()}
        assert files == {"config.iso", "console.log"}
        assert (store / "instances" / rid / "console.log").stat().st_uid != 0  # made over ssh
    assert not list(data.glob("hosts/*/instances/*")) and not list(data.glob("hosts/*/images"))

    # a volume made, hot-plugged, unplugged and deleted in the host's store
    (placed,) = ec2.describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"]
    zone = placed["Placement"]["AvailabilityZone"]
    vid = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=first, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig=VOLUME_WAIT)
    wait_attached(ec2, vid, "attached")
    disk = store / "volumes" / f"{vid}.qcow2"
    assert disk.is_file() and str(disk) in domain_xml(state, first)
    ec2.detach_volume(VolumeId=vid)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=VOLUME_WAIT)
    assert "vdf" not in domain_xml(state, first)
    ec2.delete_volume(VolumeId=vid)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[vid], WaiterConfig=VOLUME_WAIT)
    assert not disk.exists()

    ec2.terminate_instances(InstanceIds=[first, second])
    for rid in (first, second):
        waiter(ec2, "instance_terminated", rid)
    assert list((store / "instances").iterdir()) == []
    assert kernel.is_file()  # images stay for the next launch

    # the monitor's samples come from the host over ssh
    db = sqlite3.connect(data / "broker.db")
    try:
        load, free_mb, free_gb = db.execute(
            "SELECT load, free_memory_mb, free_disk_gb FROM host_samples WHERE target_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (host["id"],),
        ).fetchone()
    finally:
        db.close()
    meminfo = Path("/proc/meminfo").read_text()  # the lab shares this machine's kernel
    available = int(meminfo.split("MemAvailable:")[1].split()[0]) // 1024
    statvfs = os.statvfs(store)
    assert load > 0
    assert abs(free_mb - available) < max(512, available // 5)
    assert abs(free_gb - statvfs.f_bavail * statvfs.f_frsize / 2**30) < 2


async def test_probes_come_over_ssh_and_a_silent_sshd_is_a_miss(
    world: tuple[Server, LabState, dict[str, object]], tmp_path: Path
) -> None:
    _server, _state, host = world
    settings = host["settings"]
    assert isinstance(settings, dict)

    def backend(**changes: object) -> LibvirtBackend:
        config = TargetConfig(
            id="t-1", name="probe", kind="host", driver="libvirt", hypervisor="kvm",
            settings={**settings, **changes}, secret={}, data_dir=str(tmp_path),
        )  # fmt: skip
        return LibvirtBackend(config)

    good = backend()
    try:
        started = time.monotonic()
        probe = await good.probe()
        assert probe.total_cpu > 0 and probe.free_memory_mb > 0 and probe.free_disk_gb > 0
        assert probe.total_disk_gb > 0 and probe.load >= 0
        again = time.monotonic()
        await good.probe()  # the same connection: no new login
        assert time.monotonic() - again < max(0.5, (again - started) / 2)
    finally:
        await good.aclose()
    address = str(settings["ssh"]).rsplit(":", 1)[0]
    silent = backend(ssh=f"{address}:1")  # libvirt answers, sshd does not
    try:
        with pytest.raises(BackendUnavailable, match="over ssh"):
            await silent.probe()
    finally:
        await silent.aclose()
