"""The libvirt backend's overhead: real tiny guests to their boot marker, and simulated launches.

Part 1, real guests (``real``): ``cloudbroker serve`` runs as a process and ``cloudbroker lab up``
makes two lab hosts (network namespaces, private libvirtd over ``qemu+ssh``, TCG guests) and
registers them. The broker side is boto3 ``RunInstances`` (MaxCount=1, one call per guest, a
batch of calls back to back) of flavor ``bench.tiny`` (1 vCPU, 128 MiB) onto the lab subnet;
the time of each guest is from its RunInstances call to :data:`MARKER` in its console log file.
The raw side is what a script does without the broker: the inactive XML of a domain the broker
defined (``XMLDesc``), given its own name, MAC, console log and config drive (built before the
clock starts; its cost is reported as ``config_drive_ms``), then ``defineXML`` + ``create`` on
the same lab host and ``qemu+ssh`` URI, all guests of a batch at once in threads; time from the
define to the marker. A batch is 4 guests (the two lab hosts report this machine's 2 CPUs each
and the broker does not overcommit CPUs), so 20 guests per side are 5 batches. Batches alternate
sides (B R R B B R R B B R) so that both see the same load, the raw guests go to the hosts the
broker chose in its batch before, and every batch is torn down before the next. Figures per
side: p50/mean/max seconds to the marker, and to the console log appearing (libvirt starts the
domain); the launch call's latency (RunInstances, or defineXML + create); ``ratio`` broker/raw
of the mean and p50 and ``added_pct``. Target: the broker adds under 10%.

Part 2, simulated hosts (``simulated``): another broker with ``--simulated`` hosts on libvirt's
test driver and 1,000 ``t3.nano`` launched by one RunInstances (MaxCount=1000), then, after all
are terminated, by 10 calls of 100, sent as SigV4-signed raw HTTP (boto3's parsing of the 3 MB
answer is the client's time, not the broker's); time from the first call until all 1,000 are
running (the
bench counts running rows in the broker's SQLite database every 50 ms, so polling adds no load
to the broker's event loop; a final DescribeInstances with ``instance-state-name=running``
confirms the count). Baseline: the same 1,000 define+create cycles of the XML the backend builds
for a simulated host, on one test-driver connection from this script, measured before, between
and after the broker's runs. Target: at least 500 instances/s running.

``python -m bench.libvirt`` prints one JSON object on its last line. ``--profile DIR`` records the
serve process with py-spy (when installed) during the simulated runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from backends.libvirt import domain as dom
from backends.libvirt.configdrive import build_config_drive
from backends.libvirt.guest import MARKER
from backends.libvirt.lab import LabState, lab_down
from bench._common import (
    BrokerProcess,
    admin,
    cli,
    cli_json,
    ec2_client,
    emit,
    profiled,
    summary,
    write_config,
)
from broker.protocols import NicSpec

REPO = Path(__file__).resolve().parents[1]
FLAVOR = ("bench.tiny", 1, 128)
SUBNET = os.environ.get("BENCH_LIBVIRT_SUBNET", "10.77.233.0/24")
LAB_WORKDIR = Path(os.environ.get("BENCH_LIBVIRT_LAB", REPO / "var" / "bench" / "libvirt-lab"))
SIM_CIDR = "10.12.0.0/20"
SIM_NODE = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes>
       <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{kib}</memory>
</node>
"""
MARKER_BYTES = MARKER.encode()
POLL_S = 0.02
BOOT_TIMEOUT_S = 240.0


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- part 1: real guests ---------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Boot:
    """One guest's timings, seconds from the launch call."""

    name: str
    host: str
    api_s: float = 0.0  # RunInstances (broker) or defineXML + create (raw) returned
    file_s: float = 0.0  # the console log was created: libvirt is starting the domain
    marker_s: float = 0.0  # the boot marker is in the console log


def wait_markers(
    starts: dict[str, float], paths: Callable[[str], Path | None], boots: dict[str, Boot]
) -> None:
    """Poll every console log until each shows the marker; fill ``file_s`` and ``marker_s``."""
    found: dict[str, Path] = {}
    left = set(starts)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while left:
        for name in sorted(left):
            path = found.get(name) or paths(name)
            if path is None:
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            now = time.monotonic() - starts[name]
            if name not in found:
                found[name] = path
                boots[name].file_s = now
            if MARKER_BYTES in data:
                boots[name].marker_s = now
                left.discard(name)
        if time.monotonic() > deadline:
            tails = {n: found[n].read_bytes()[-500:].decode(errors="replace") for n in left
                     if n in found}  # fmt: skip
            raise RuntimeError(f"no boot marker from {sorted(left)}: {tails}")
        time.sleep(POLL_S)


class BrokerSide:
    """Launches through boto3 and finds each instance's console log under the broker's data."""

    def __init__(self, server: BrokerProcess, ec2: Any, image: str, subnet: str) -> None:
        self.server, self.ec2, self.image, self.subnet = server, ec2, image, subnet
        self.template: tuple[str, str, str] | None = None  # (host, rid, inactive XML)

    def console(self, rid: str) -> Path | None:
        hits = list((self.server.data / "hosts").glob(f"*/instances/{rid}/console.log"))
        return hits[0] if hits else None

    def batch(self, n: int, state: LabState) -> list[Boot]:
        starts: dict[str, float] = {}
        boots: dict[str, Boot] = {}
        for _ in range(n):
            t0 = time.monotonic()
            made = self.ec2.run_instances(
                ImageId=self.image,
                InstanceType=FLAVOR[0],
                MinCount=1,
                MaxCount=1,
                SubnetId=self.subnet,
            )
            rid = made["Instances"][0]["InstanceId"]
            starts[rid] = t0
            boots[rid] = Boot(rid, "", api_s=time.monotonic() - t0)
        wait_markers(starts, self.console, boots)
        for rid, boot in boots.items():
            path = self.console(rid)
            assert path is not None
            boot.host = path.parents[2].name.rsplit("-", 1)[-1]  # lab-<id>-h1 -> h1
        if self.template is None:
            rid = sorted(boots)[0]
            host = state.host(boots[rid].host)
            conn = libvirt.open(host.local_uri)
            try:
                xml = conn.lookupByName(rid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            finally:
                conn.close()
            self.template = (host.name, rid, str(xml))
        return list(boots.values())

    def teardown(self, boots: list[Boot]) -> None:
        ids = [b.name for b in boots]
        self.ec2.terminate_instances(InstanceIds=ids)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
            states = [i["State"]["Name"] for r in found for i in r["Instances"]]
            if all(s == "terminated" for s in states):
                return
            time.sleep(0.2)
        raise RuntimeError(f"instances not terminated: {states}")


def retarget(template: str, old_id: str, name: str, mac: str, old_dir: str, new_dir: str) -> str:
    """The broker's domain XML for another guest: name, no uuid, own MAC and files."""
    root = etree.fromstring(template.encode())
    root.find("name").text = name
    uuid = root.find("uuid")
    if uuid is not None:
        root.remove(uuid)
    for el in root.iter():
        if el.text == old_id:
            el.text = name
        for key, value in el.attrib.items():
            if old_dir in value:
                el.set(key, value.replace(old_dir, new_dir))
    (iface,) = root.findall("devices/interface")
    iface.find("mac").set("address", mac)
    for tag in ("target", "alias"):
        for el in iface.findall(tag):
            iface.remove(el)
    out = str(etree.tostring(root, encoding="unicode"))
    if old_id in out:
        raise RuntimeError(f"{old_id} is still in the retargeted XML")
    return out


class RawSide:
    """The same XML defined and started from this script on the same lab host URIs."""

    def __init__(self, state: LabState, folder: Path) -> None:
        self.state, self.folder = state, folder
        self.conns = {h.name: libvirt.open(h.libvirt_uri) for h in state.hosts}
        self.count = 0
        self.config_drive_s: list[float] = []

    def batch(self, hosts: list[str], template: tuple[str, str, str]) -> list[Boot]:
        _host, old_id, xml = template
        old_dir = str(
            next(p for p in etree.fromstring(xml.encode()).xpath("//source/@path"))
        ).rsplit("/", 1)[0]
        addresses = self.state.guest_addresses()
        jobs: list[tuple[str, str, str]] = []
        for k, host in enumerate(hosts):
            self.count += 1
            name = f"bench-raw-{self.count:03d}"
            mac = f"52:54:00:be:{self.count // 256:02x}:{self.count % 256:02x}"
            folder = self.folder / name
            folder.mkdir(parents=True)
            nic = NicSpec(mac, addresses[-1 - k], "lab", "br0", self.state.subnet,
                          self.state.lab_address, "")  # fmt: skip
            t0 = time.monotonic()
            build_config_drive(
                folder / "config.iso",
                instance_id=name,
                hostname=name,
                user_data=None,
                public_keys=[],
                nics=[nic],
            )
            self.config_drive_s.append(time.monotonic() - t0)
            jobs.append((name, host, retarget(xml, old_id, name, mac, old_dir, str(folder))))
        starts: dict[str, float] = {}
        boots = {name: Boot(name, host) for name, host, _ in jobs}

        def start(name: str, host: str, text: str, t0: float) -> None:
            self.conns[host].defineXML(text).create()
            boots[name].api_s = time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            futures = []
            for name, host, text in jobs:
                starts[name] = time.monotonic()
                futures.append(pool.submit(start, name, host, text, starts[name]))
            wait_markers(starts, lambda n: self.folder / n / "console.log", boots)
            for future in futures:
                future.result()
        return list(boots.values())

    def teardown(self, boots: list[Boot]) -> None:
        for boot in boots:
            d = self.conns[boot.host].lookupByName(boot.name)
            with contextlib.suppress(libvirt.libvirtError):
                d.destroy()
            d.undefine()
            shutil.rmtree(self.folder / boot.name, ignore_errors=True)

    def close(self) -> None:
        for conn in self.conns.values():
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


def side_figures(boots: list[Boot]) -> dict[str, Any]:
    return {
        "marker_s": summary([b.marker_s for b in boots]),
        "console_created_s": summary([b.file_s for b in boots]),
        "launch_call_s": summary([b.api_s for b in boots]),
        "hosts": {h: sum(1 for b in boots if b.host == h) for h in sorted({b.host for b in boots})},
    }


def real(tmp: Path, guests: int, batch: int) -> dict[str, Any]:
    server = BrokerProcess(write_config(tmp / "real", monitor=1.0, scheduler=0.2))
    server.start()
    raw: RawSide | None = None
    registered = False
    try:
        t0 = time.monotonic()
        cli_json(server.cfg, "lab", "up", "--hosts", "2", "--workdir", str(LAB_WORKDIR),
                 "--subnet", SUBNET, timeout=1200)  # fmt: skip
        registered = True
        lab_up_s = time.monotonic() - t0
        state = LabState.from_json(json.loads((LAB_WORKDIR / "lab.json").read_text()))
        cli(server.cfg, "flavor", "create", FLAVOR[0], "--vcpus", str(FLAVOR[1]),
            "--memory", str(FLAVOR[2]))  # fmt: skip
        ec2 = ec2_client(server, cli_json(server.cfg, "user", "create", "bench"))
        (image,) = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]}])["Images"]
        subnets = {s["CidrBlock"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
        # The lab's hosts report this machine's CPUs and the broker does not overcommit them.
        room = sum(h["total_cpu"] for h in cli_json(server.cfg, "host", "list")) // FLAVOR[1]
        if batch > room:
            log(f"batch {batch} > {room} guests the lab hosts can hold: using {room}")
            batch = room
        broker = BrokerSide(server, ec2, image["ImageId"], subnets[SUBNET])
        raw = RawSide(state, tmp / "raw")
        results: dict[str, list[Boot]] = {"broker": [], "raw": []}
        order = []
        for i in range(-(-guests // batch)):  # B R, R B, B R, ...: each side first as often
            order += ["broker", "raw"] if i % 2 == 0 else ["raw", "broker"]
        last_hosts: list[str] = []
        for side in order:
            if side == "broker":
                boots = broker.batch(min(batch, guests - len(results["broker"])), state)
                last_hosts = [b.host for b in boots]
                broker.teardown(boots)
            else:
                assert broker.template is not None
                boots = raw.batch(last_hosts, broker.template)
                raw.teardown(boots)
            results[side] += boots
            log(side, [(b.host, round(b.api_s, 2), round(b.file_s, 2), round(b.marker_s, 2))
                       for b in boots])  # fmt: skip
        b_mean = statistics.fmean(b.marker_s for b in results["broker"])
        r_mean = statistics.fmean(b.marker_s for b in results["raw"])
        b_p50 = statistics.median(b.marker_s for b in results["broker"])
        r_p50 = statistics.median(b.marker_s for b in results["raw"])
        return {
            "guests_per_side": len(results["broker"]),
            "batch": batch,
            "order": "".join(s[0].upper() for s in order),
            "launch": "RunInstances MaxCount=1, one call per guest, a batch back to back",
            "flavor": f"{FLAVOR[0]} {FLAVOR[1]} vCPU {FLAVOR[2]} MiB",
            "lab_up_s": round(lab_up_s, 1),
            "broker": side_figures(results["broker"]),
            "raw": side_figures(results["raw"]),
            "raw_baseline": "inactive XMLDesc of a broker domain, own name/MAC/files; "
            "defineXML+create over the same qemu+ssh URI, a batch at once in threads",
            "config_drive_ms": round(1000 * statistics.fmean(raw.config_drive_s), 1),
            "ratio_mean": round(b_mean / r_mean, 3),
            "added_pct_mean": round(100 * (b_mean / r_mean - 1), 1),
            "ratio_p50": round(b_p50 / r_p50, 3),
            "added_pct_p50": round(100 * (b_p50 / r_p50 - 1), 1),
            "added_s_mean": round(b_mean - r_mean, 3),
            "target_added_pct": 10,
        }
    finally:
        if raw is not None:
            raw.close()
        if registered:
            with contextlib.suppress(RuntimeError):
                cli(server.cfg, "lab", "down", "--workdir", str(LAB_WORKDIR), timeout=120)
        server.stop()
        lab_down(LAB_WORKDIR)


# --- part 2: simulated hosts -----------------------------------------------------------------


def raw_test_driver(node: Path, n: int, owner: str) -> float:
    """Seconds for ``n`` defineXML + create cycles of the backend's simulated-host XML."""
    conn = libvirt.open(f"test://{node}")
    try:
        domain_type = dom.choose_domain_type(conn.getCapabilities(), "kvm", "x86_64")
        xmls = [
            dom.build_domain_xml(
                dom.DomainSpec(
                    name=f"i-{i:017x}",
                    vcpus=2,
                    memory_mb=512,
                    hypervisor="kvm",
                    domain_type=domain_type,
                    owner=owner,
                    kernel_boot=dom.KernelBoot("/simulated/vmlinuz", None, ""),
                    config_drive_bus="ide",
                )
            )
            for i in range(n)
        ]
        t0 = time.perf_counter()
        for xml in xmls:
            conn.defineXML(xml).create()
        seconds = time.perf_counter() - t0
        for d in conn.listAllDomains(0):
            if d.isActive():
                d.destroy()
            d.undefine()
        return seconds
    finally:
        conn.close()


def count_states(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM instances GROUP BY state").fetchall())


def raw_run_instances(
    server: BrokerProcess, keys: dict[str, Any], params: dict[str, str]
) -> list[str]:
    """RunInstances as SigV4-signed raw HTTP: the ids read from the answer with a pattern, so
    the figure is the broker's time, not boto3's parsing of a reply of several megabytes."""
    from bench.ec2 import Conn, signed_request

    port = int(server.listen("ec2").rpartition(":")[2])
    raw = signed_request(port, "cloudbroker-1", keys["access_key"], keys["secret_key"], params)
    status, body = Conn(port).roundtrip(raw)
    if status != 200:
        raise RuntimeError(f"RunInstances answered {status}: {body[:300]!r}")
    return re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", body.decode())


def sim_run(
    server: BrokerProcess, keys: dict[str, Any], ec2: Any, image: str, subnet: str, total: int,
    calls: int, profile: Path | None,
) -> dict[str, Any]:  # fmt: skip
    db = server.data / "broker.db"
    per_call = total // calls
    assert server.proc is not None
    with profiled(server.proc.pid, profile):
        t0 = time.monotonic()
        ids: list[str] = []
        call_s = []
        for _ in range(calls):
            c0 = time.monotonic()
            made = raw_run_instances(
                server,
                keys,
                {"Action": "RunInstances", "ImageId": image, "InstanceType": "t3.nano",
                 "MinCount": str(per_call), "MaxCount": str(per_call), "SubnetId": subnet},
            )  # fmt: skip
            call_s.append(time.monotonic() - c0)
            if len(made) != per_call:
                raise RuntimeError(f"RunInstances made {len(made)} of {per_call}")
            ids += made
        accepted_s = time.monotonic() - t0
        first_s = None
        deadline = time.monotonic() + 600
        while True:
            states = count_states(db)
            running = states.get("running", 0)
            if running and first_s is None:
                first_s = time.monotonic() - t0
            if running >= total:
                break
            if time.monotonic() > deadline or states.get("failed", 0):
                raise RuntimeError(f"not all running: {states}")
            time.sleep(0.05)
        all_s = time.monotonic() - t0
    seen = 0
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["running"]}],
        PaginationConfig={"PageSize": 1000},
    ):
        seen += sum(len(r["Instances"]) for r in page["Reservations"])
    t1 = time.monotonic()
    for k in range(0, len(ids), 1000):
        ec2.terminate_instances(InstanceIds=ids[k : k + 1000])
    while True:
        states = count_states(db)
        if not any(n for s, n in states.items() if s not in ("done", "failed")):
            break
        if time.monotonic() - t1 > 600:
            raise RuntimeError(f"not all terminated: {states}")
        time.sleep(0.1)
    return {
        "calls": calls,
        "per_call": per_call,
        "run_instances_s": summary(call_s),
        "accepted_s": round(accepted_s, 3),
        "first_running_s": round(first_s or 0.0, 3),
        "all_running_s": round(all_s, 3),
        "running_per_s": round(total / all_s, 1),
        "describe_running_count": seen,
        "terminate_all_s": round(time.monotonic() - t1, 2),
    }


def simulated(tmp: Path, total: int, hosts: int, profile: Path | None) -> dict[str, Any]:
    folder = tmp / "sim"
    server = BrokerProcess(write_config(folder, monitor=1.0, scheduler=0.2))
    cpus = max(16, -(-2 * total // hosts) + 16)  # room for every t3.nano (2 vCPU, 512 MiB)
    node = folder / "node.xml"
    node.write_text(SIM_NODE.format(cpus=cpus, kib=cpus * 512 * 1024))
    server.start()
    try:
        client = admin(server)
        for i in range(hosts):
            client.call(
                "POST",
                "/api/v1/targets",
                {"name": f"sim{i:02d}", "kind": "host", "driver": "libvirt", "hypervisor": "kvm",
                 "cluster": "sim", "simulated": True, "settings": {"uri": f"test://{node}"}},
            )  # fmt: skip
        image = client.call(
            "POST",
            "/api/v1/images",
            {"name": "sim", "kind": "kernel", "kernel": "/simulated/vmlinuz",
             "hypervisor": "kvm", "visibility": "public"},
        )  # fmt: skip
        cli(server.cfg, "network", "create", "sim", "--cidr", SIM_CIDR)
        keys = cli_json(server.cfg, "user", "create", "bench")
        ec2 = ec2_client(server, keys)
        subnets = {s["CidrBlock"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
        owner = str(keys.get("id") or keys.get("user_id") or "u-bench")
        baseline = [raw_test_driver(node, total, owner)]
        runs = []
        for calls in (1, 10):
            prof = profile / f"serve-{calls}calls.txt" if profile else None
            runs.append(
                sim_run(server, keys, ec2, image["id"], subnets[SIM_CIDR], total, calls, prof)
            )
            log("simulated", runs[-1])
            baseline.append(raw_test_driver(node, total, owner))
        base_rate = total / statistics.median(baseline)
        return {
            "launches": total,
            "hosts": hosts,
            "host_cpus": cpus,
            "one_call": runs[0],
            "ten_calls": runs[1],
            "baseline": "defineXML+create of the backend's simulated-host XML, one test:/// "
            "connection, from this script (before, between and after the broker runs)",
            "baseline_per_s": round(base_rate),
            "baseline_runs_per_s": [round(total / s) for s in baseline],
            "ratio_one_call": round(runs[0]["running_per_s"] / base_rate, 4),
            "ratio_ten_calls": round(runs[1]["running_per_s"] / base_rate, 4),
            "target_running_per_s": 500,
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=20, help="real guests per side")
    ap.add_argument("--batch", type=int, default=4, help="real guests per batch (at most CPUs)")
    ap.add_argument("--launches", type=int, default=1000, help="simulated launches")
    ap.add_argument("--sim-hosts", type=int, default=10)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-simulated", action="store_true")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy output folder")
    args = ap.parse_args()
    out: dict[str, Any] = {"bench": "libvirt"}
    with tempfile.TemporaryDirectory(prefix="bench-libvirt-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_real:
            out["real"] = real(tmp, args.guests, args.batch)
        if not args.skip_simulated:
            out["simulated"] = simulated(tmp, args.launches, args.sim_hosts, args.profile)
    emit(out)


if __name__ == "__main__":
    main()
