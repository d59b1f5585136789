"""End to end on real components: the tiny guest on a two-host lab, reached as real hosts are.

Builds (or reuses) the tiny guest, brings a lab of two hosts up, and then, through libvirt's
ssh transport and asyncssh only: boots a guest with a NoCloud drive on host 1, reads its serial
console, fetches its web page from the lab namespace, live-migrates it to host 2, shuts it down
through ACPI, destroys and undefines; finally tears the lab down and checks nothing is left.
Nothing here is skipped: a missing package, kernel feature or daemon makes the test fail.

Timings are printed (``pytest -s``) and written to ``<tmp>/timings.json``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import os
import shlex
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import libvirt
import pycdlib
import pytest
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from backends.libvirt.guest import (
    POWEROFF_MARKER,
    READY_MARKER,
    USERDATA_BEGIN,
    USERDATA_END,
    TinyGuest,
    build_tiny_guest,
)
from backends.libvirt.lab import LabHost, LabState, lab_down, lab_status, lab_up

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("CLOUDBROKER_TEST_CACHE", REPO / "var" / "cache")) / "images" / "tiny"
SUBNET = os.environ.get("CLOUDBROKER_TEST_LAB_SUBNET", "10.77.200.0/24")
BOOT_TIMEOUT_S = 120.0
USER_DATA = "hello-from-test"


class Stopwatch:
    """Named durations, printed and saved at the end."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def measure(self, name: str, start: float) -> float:
        self.times[name] = round(time.monotonic() - start, 3)
        return self.times[name]


def nocloud_iso(path: Path, hostname: str, instance_id: str) -> None:
    """A NoCloud config drive: ISO9660 labelled "cidata" with meta-data and user-data."""
    files = {
        "meta-data": f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n".encode(),
        "user-data": f"{USER_DATA}\n".encode(),
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, data) in enumerate(files.items()):
        iso.add_fp(
            io.BytesIO(data), len(data), f"/F{index}.;1", rr_name=name, joliet_path=f"/{name}"
        )
    iso.write(str(path))
    iso.close()


def domain_xml(
    name: str, guest: TinyGuest, address: str, gateway: str, iso: Path, serial: Path
) -> str:
    """A minimal TCG domain: direct kernel boot, NoCloud CD-ROM, NIC on br0, serial to a file."""
    root = etree.Element("domain", type="qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "memory", unit="MiB").text = str(guest.min_memory_mib)
    etree.SubElement(root, "vcpu").text = "1"
    os_ = etree.SubElement(root, "os")
    etree.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    etree.SubElement(os_, "kernel").text = str(guest.kernel)
    etree.SubElement(os_, "initrd").text = str(guest.initrd)
    etree.SubElement(
        os_, "cmdline"
    ).text = f"{guest.cmdline} ip={address}::{gateway}:255.255.255.0::eth0:off"
    etree.SubElement(etree.SubElement(root, "features"), "acpi")
    devices = etree.SubElement(root, "devices")
    disk = etree.SubElement(devices, "disk", type="file", device="cdrom")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", file=str(iso))
    etree.SubElement(disk, "target", dev="hdc", bus="ide")
    etree.SubElement(disk, "readonly")
    nic = etree.SubElement(devices, "interface", type="bridge")
    etree.SubElement(nic, "source", bridge="br0")
    etree.SubElement(nic, "model", type="virtio")
    etree.SubElement(nic, "rom", enabled="no")  # no iPXE option ROM: faster boot under TCG
    console = etree.SubElement(devices, "serial", type="file")
    etree.SubElement(console, "source", path=str(serial), append="on")  # survives migration
    etree.SubElement(console, "target", port="0")
    etree.SubElement(devices, "memballoon", model="virtio")
    return str(etree.tostring(root, encoding="unicode"))


def wait_for_text(path: Path, needle: str, timeout: float = BOOT_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no serial log)"
    raise AssertionError(f"{needle!r} not on the serial console after {timeout} s:\n{tail}")


def wait_for_state(dom: libvirt.virDomain, state: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while dom.state()[0] != state:
        assert time.monotonic() < deadline, f"domain state {dom.state()} is not {state}"
        time.sleep(0.05)


def fetch_in_lab(state: LabState, url: str) -> str:
    """GET ``url`` from inside the lab namespace (busybox wget), as a host on the segment would."""
    argv = ["ip", "netns", "exec", state.lab_namespace, "busybox", "wget", "-q", "-O-", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"wget {url}: {proc.stderr}"
    return proc.stdout


async def ssh_probe(state: LabState, host: LabHost) -> dict[str, str]:
    """What a host probe does: a few commands and an sftp round trip over one connection."""
    async with asyncssh.connect(
        host.address,
        port=host.ssh_port,
        username=host.user,
        client_keys=[host.key_path],
        known_hosts=state.known_hosts,
        connect_timeout=10,
    ) as conn:
        hostname = await conn.run("hostname", check=True, timeout=10)
        virsh = await conn.run(
            shlex.join(["virsh", "-c", f"qemu:///system?socket={host.socket_path}", "uri"]),
            check=True,
            timeout=10,
        )
        async with conn.start_sftp_client() as sftp:
            remote = f"probe-{host.name}.txt"
            async with sftp.open(remote, "w") as handle:
                await handle.write(f"probe {host.name}\n")
            async with sftp.open(remote, "r") as handle:
                back = await handle.read()
            await sftp.remove(remote)
        return {
            "hostname": str(hostname.stdout).strip(),
            "virsh": str(virsh.stdout).strip(),
            "sftp": str(back).strip(),
        }


def qemu_pid(state: LabState, host: str, domain: str) -> int:
    """The pid libvirtd wrote for a running domain (in the host's bind-mounted /run/libvirt)."""
    pidfile = Path(state.workdir) / "hosts" / host / "libvirt" / "run" / "qemu" / f"{domain}.pid"
    return int(pidfile.read_text().strip())


def lab_diagnosis(state: LabState) -> str:
    """What the lab's network looks like from each host: addresses, neighbours, listeners, reach."""
    h1, h2 = state.hosts
    reach = (
        "import socket,sys\n"
        "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close(); print('ok')\n"
        "except OSError as e:\n print(e)"
    )
    commands = {
        f"{h.name} {what}": ["ip", "netns", "exec", h.namespace, *argv]
        for h in state.hosts
        for what, argv in (
            ("addr", ["ip", "-br", "addr"]),
            ("neigh", ["ip", "neigh"]),
            ("listen", ["ss", "-ltn"]),
        )
    }
    commands[f"{h1.name} -> {h2.name} ssh"] = [
        "ip", "netns", "exec", h1.namespace, "python3", "-c", reach, h2.address, str(h2.ssh_port)
    ]
    lines = []
    for label, argv in commands.items():
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        lines.append(f"--- {label}\n{proc.stdout}{proc.stderr}")
    return "\n".join(lines)


def migrate_with_diagnosis(
    state: LabState, dom: libvirt.virDomain, conn2: libvirt.virConnect, flags: int
) -> libvirt.virDomain:
    """Live-migrate to the second host; a failure says what the network looked like then.

    A stream that cannot connect is tried once more on the next port, with a warning carrying
    the diagnosis (a CI run once timed out connecting here, and no local run reproduced it).
    """
    dest = state.hosts[1]
    try:
        return dom.migrate(conn2, flags, None, dest.migration_uri(), 0)
    except libvirt.libvirtError as exc:
        if "unable to connect" not in str(exc):
            raise AssertionError(f"migration failed: {exc}\n{lab_diagnosis(state)}") from exc
        warnings.warn(
            f"migration stream did not connect: {exc}\n{lab_diagnosis(state)}", stacklevel=2
        )
    try:
        return dom.migrate(conn2, flags, None, dest.migration_uri(49153), 0)
    except libvirt.libvirtError as exc:
        raise AssertionError(f"migration failed twice: {exc}\n{lab_diagnosis(state)}") from exc


def assert_nothing_left(state: LabState, pids: list[int]) -> None:
    status = lab_status(Path(state.workdir))
    assert not status.up
    assert status.leftovers == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"cbl{state.id}-" not in netns
    link = subprocess.run(["ip", "link", "show", "dev", state.uplink], capture_output=True)
    assert link.returncode != 0, f"link {state.uplink} is still there"
    assert not Path(state.runtime_dir).exists()
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
    assert alive == [], f"processes still running: {alive}"


def forget_known_hosts(addresses: list[str]) -> None:
    """Drop the entries that libvirt's ssh transport added to ~/.ssh/known_hosts for the lab.

    The next test lab has new host keys on the same addresses; stale entries only cause
    warnings (no_verify=1), but a test should not leave them behind. Hashed entries
    (``|1|salt|hmac``) are matched the way ssh does.
    """
    path = Path.home() / ".ssh" / "known_hosts"
    if not path.is_file():
        return
    names = set(addresses)
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        field = line.split(" ", 1)[0]
        if field.startswith("|1|"):
            salt, digest = (base64.b64decode(part) for part in field[3:].split("|", 1))
            if any(hmac.new(salt, n.encode(), "sha1").digest() == digest for n in names):
                continue
        elif names & set(field.split(",")):
            continue
        kept.append(line)
    path.write_text("".join(kept))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def stopwatch(tmp_path: Path) -> Iterator[Stopwatch]:
    watch = Stopwatch()
    yield watch
    (tmp_path / "timings.json").write_text(json.dumps(watch.times, indent=2))
    print("\nlab timings (s):", json.dumps(watch.times))


def test_tiny_guest_on_a_two_host_lab(tmp_path: Path, stopwatch: Stopwatch) -> None:
    start = time.monotonic()
    guest = build_tiny_guest(CACHE)
    stopwatch.measure("guest_build_or_reuse", start)
    assert guest.kernel.is_file() and guest.initrd.is_file()

    workdir = tmp_path / "lab"
    start = time.monotonic()
    state = lab_up(workdir, 2, subnet=SUBNET)
    stopwatch.measure("lab_up", start)
    pids = [pid for host in state.hosts for pid in host.pids.values()]
    try:
        start = time.monotonic()
        again = lab_up(workdir, 2, subnet=SUBNET)
        stopwatch.measure("lab_up_again", start)
        assert again == state, "a second lab_up must return the running lab unchanged"
        assert lab_status(workdir).up
        run_scenario(state, guest, tmp_path, stopwatch, pids)
    finally:
        start = time.monotonic()
        lab_down(workdir)
        stopwatch.measure("lab_down", start)
        forget_known_hosts([host.address for host in state.hosts])
    assert_nothing_left(state, pids)


def run_scenario(
    state: LabState, guest: TinyGuest, tmp: Path, stopwatch: Stopwatch, pids: list[int]
) -> None:
    h1, h2 = state.hosts
    probes = asyncio.run(_probe_all(state))
    for host, probe in zip(state.hosts, probes, strict=True):
        assert probe["hostname"] == host.hostname
        assert probe["virsh"].startswith("qemu:///system")
        assert probe["sftp"] == f"probe {host.name}"

    start = time.monotonic()
    conn1 = libvirt.open(h1.libvirt_uri)
    conn2 = libvirt.open(h2.libvirt_uri)
    stopwatch.measure("libvirt_open_ssh_x2", start)
    try:
        assert conn1.getHostname() == h1.hostname
        assert conn2.getHostname() == h2.hostname
        uuid1 = etree.fromstring(conn1.getCapabilities()).findtext("host/uuid")
        uuid2 = etree.fromstring(conn2.getCapabilities()).findtext("host/uuid")
        assert (uuid1, uuid2) == (h1.host_uuid, h2.host_uuid)
        boot_migrate_shutdown(state, guest, tmp, stopwatch, pids, conn1, conn2)
    finally:
        conn1.close()
        conn2.close()


async def _probe_all(state: LabState) -> list[dict[str, str]]:
    return list(await asyncio.gather(*(ssh_probe(state, host) for host in state.hosts)))


def boot_migrate_shutdown(
    state: LabState,
    guest: TinyGuest,
    tmp: Path,
    stopwatch: Stopwatch,
    pids: list[int],
    conn1: libvirt.virConnect,
    conn2: libvirt.virConnect,
) -> None:
    h1, h2 = state.hosts
    name, hostname, instance_id = "cbtest-g1", "guest-one", "i-0123456789abcdef0"
    address = state.guest_addresses()[0]
    iso, serial = tmp / "cidata.iso", tmp / "serial.log"
    nocloud_iso(iso, hostname, instance_id)
    dom = conn1.defineXML(domain_xml(name, guest, address, state.gateway, iso, serial))
    start = time.monotonic()
    dom.create()
    stopwatch.measure("create", start)
    pids.append(qemu_pid(state, h1.name, name))
    wait_for_text(serial, guest.marker)
    stopwatch.measure("create_to_marker", start)
    console = wait_for_text(serial, f"{READY_MARKER} {hostname}")
    stopwatch.measure("create_to_ready", start)
    user_data = console.split(USERDATA_BEGIN, 1)[1].split(USERDATA_END, 1)[0]
    assert user_data.strip() == USER_DATA
    assert f"CLOUDBROKER-INSTANCE-ID {instance_id}" in console

    page = fetch_in_lab(state, f"http://{address}/")
    assert f"hostname: {hostname}" in page and instance_id in page
    assert dom.getCPUStats(True)[0]["cpu_time"] > 0  # cgroups work inside the host

    start = time.monotonic()
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    moved = migrate_with_diagnosis(state, dom, conn2, flags)
    stopwatch.measure("live_migration", start)
    assert moved.isActive() and moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert conn1.listAllDomains() == []
    pids.append(qemu_pid(state, h2.name, name))
    assert f"hostname: {hostname}" in fetch_in_lab(state, f"http://{address}/")

    start = time.monotonic()
    moved.shutdown()  # ACPI power button
    wait_for_state(moved, libvirt.VIR_DOMAIN_SHUTOFF)
    stopwatch.measure("acpi_shutdown", start)
    wait_for_text(serial, POWEROFF_MARKER, timeout=5)

    moved.create()
    wait_for_text(serial, guest.marker)  # the log is appended to; the marker is there already
    start = time.monotonic()
    moved.destroy()
    stopwatch.measure("destroy", start)
    moved.undefine()
    assert conn2.listAllDomains() == []
