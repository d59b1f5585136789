"""Domain XML: every document validates against libvirt's schema and runs in libvirt's test driver.

``virt-xml-validate`` (libvirt-clients + libxml2-utils) is required: these tests fail, never skip,
without it. The test driver (``test:///default``) accepts KVM- and Xen-typed domains alike.
The libvirt state table is checked here too, against the ``libvirt`` module's constants.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from backends.libvirt.domain import (
    METADATA_NS,
    DomainFacts,
    DomainNic,
    DomainSpec,
    KernelBoot,
    RootDisk,
    VolumeDisk,
    attach_volume_xml,
    build_domain_xml,
    choose_domain_type,
    detach_volume_xml,
    find_emulator,
    read_domain,
)
from backends.libvirt.states import STATE_MAP, DomainState, to_state
from broker.errors import InvalidRequest
from broker.states import State

HOSTILE = "x<&\"'>]]> ünïcödé 日本 😀\t\n\r\x00\x07 </title><name>evil</name>"

KVM_FULL = DomainSpec(
    name="i-0123456789abcdef0",
    uuid="6f1c3a52-8a3e-4b8e-9d0e-1f2a3b4c5d6e",
    vcpus=2,
    memory_mb=256,
    hypervisor="kvm",
    domain_type="kvm",
    display_name="web server",
    description="the front end",
    owner="user-42",
    root_disk=RootDisk("/var/lib/cloudbroker/i-0123456789abcdef0/disk.qcow2"),
    config_drive="/var/lib/cloudbroker/i-0123456789abcdef0/config.iso",
    volumes=(
        VolumeDisk("/var/lib/cloudbroker/volumes/vol-0a1b2c3d.raw", "vdb", serial="vol-0a1b2c3d"),
    ),
    nics=(
        DomainNic("52:54:00:12:34:56", bridge="br0", target_dev="cb3f2a1e0"),
        DomainNic("52:54:00:AB:CD:EF", network="default"),
    ),
    console_log="/var/log/cloudbroker/i-0123456789abcdef0.console",
    emulator="/usr/bin/qemu-system-x86_64",
    machine="pc",
)
KVM_KERNEL = DomainSpec(
    name="i-00000000000000001",
    vcpus=1,
    memory_mb=96,
    domain_type="qemu",
    kernel_boot=KernelBoot("/srv/guest/vmlinux", "/srv/guest/initrd.gz", "console=ttyS0 quiet"),
    config_drive="/srv/guest/config.iso",
    config_drive_bus="ide",
    nics=(DomainNic("52:54:00:00:00:01", bridge="cbbr0"),),
    console_log="/srv/guest/console.log",
)
XEN_HVM = DomainSpec(
    name="i-00000000000000002",
    vcpus=2,
    memory_mb=512,
    hypervisor="xen",
    domain_type="xen",
    xen_mode="hvm",
    root_disk=RootDisk("/srv/xen/disk.raw", format="raw"),
    config_drive="/srv/xen/config.iso",
    volumes=(VolumeDisk("/dev/vg0/vol-1", "xvdb", block=True),),
    nics=(DomainNic("00:16:3e:00:00:01", bridge="xenbr0"),),
    console_log="/var/log/xen/i-00000000000000002.log",
)
XEN_PV = DomainSpec(
    name="i-00000000000000003",
    vcpus=1,
    memory_mb=256,
    hypervisor="xen",
    domain_type="xen",
    xen_mode="pv",
    root_disk=RootDisk("/srv/xen/pv.qcow2"),
    kernel_boot=KernelBoot("/srv/xen/vmlinuz", None, "root=/dev/xvda console=hvc0"),
    config_drive="/srv/xen/pv-config.iso",
    nics=(DomainNic("00:16:3e:00:00:02", bridge="xenbr0", model="netfront"),),
)
XEN_PV_BOOTLOADER = DomainSpec(
    name="i-00000000000000004",
    vcpus=1,
    memory_mb=256,
    hypervisor="xen",
    domain_type="xen",
    xen_mode="pv",
    root_disk=RootDisk("/srv/xen/pv2.raw", format="raw"),
)
HOSTILE_SPEC = DomainSpec(
    name="i-0fedcba9876543210",
    vcpus=1,
    memory_mb=128,
    display_name=HOSTILE,
    description=HOSTILE,
    owner=HOSTILE,
    root_disk=RootDisk("/var/lib/cb/we<ird> & \"quoted\" 'dir'/ünï.qcow2"),
    kernel_boot=KernelBoot("/boot/vmlinuz", None, HOSTILE),
    volumes=(VolumeDisk("/var/lib/cb/vol <&>.raw", "sdb"),),
    nics=(DomainNic("52:54:00:00:00:09", bridge="br-x"),),
    console_log="/var/log/cb/<&\"'>.log",
)

DOCUMENTS = {
    "kvm-disk-iso-2nics-volume": KVM_FULL,
    "kvm-direct-kernel": KVM_KERNEL,
    "xen-hvm": XEN_HVM,
    "xen-pv": XEN_PV,
    "xen-pv-bootloader": XEN_PV_BOOTLOADER,
    "hostile-strings": HOSTILE_SPEC,
}


def assert_valid(xml: str, tmp_path: Path) -> None:
    validator = shutil.which("virt-xml-validate")
    assert validator, "virt-xml-validate is missing: install libvirt-clients and libxml2-utils"
    assert shutil.which("xmllint"), "xmllint is missing: install libxml2-utils"
    doc = tmp_path / "domain.xml"
    doc.write_text(xml, encoding="utf-8")
    done = subprocess.run(
        [validator, str(doc), "domain"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
    c = libvirt.open("test:///default")
    try:
        yield c
    finally:
        c.close()


def run_lifecycle(conn: libvirt.virConnect, xml: str, name: str) -> DomainFacts:
    """Define, start, look up, read back, destroy, undefine; return what was read back."""
    dom = conn.defineXML(xml)
    try:
        dom.create()
        found = conn.lookupByName(name)
        assert found.UUIDString() == dom.UUIDString()
        assert to_state(*found.state()) == (State.RUNNING, "running: booted")
        facts = read_domain(found.XMLDesc())
        found.destroy()
        assert to_state(*found.state()) == (State.POWEROFF, "shut off: destroyed")
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)
    return facts


@pytest.mark.parametrize("spec", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_document_validates_and_runs(
    spec: DomainSpec, tmp_path: Path, conn: libvirt.virConnect
) -> None:
    xml = build_domain_xml(spec)
    assert_valid(xml, tmp_path)
    facts = run_lifecycle(conn, xml, spec.name)
    assert facts.name == spec.name
    assert facts.instance_id == spec.name
    assert facts.macs == tuple(n.mac.lower() for n in spec.nics)
    expected_paths = {d.path for d in spec.volumes}
    if spec.root_disk:
        expected_paths.add(spec.root_disk.path)
    if spec.config_drive:
        expected_paths.add(spec.config_drive)
    assert set(facts.disk_paths) == expected_paths


def test_kvm_full_document_shape() -> None:
    root = etree.fromstring(build_domain_xml(KVM_FULL).encode())
    assert root.get("type") == "kvm"
    assert root.findtext("uuid") == KVM_FULL.uuid
    assert root.findtext("title") == "i-0123456789abcdef0 web server"
    assert root.find("memory").get("unit") == "MiB"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert root.find("os/type").get("machine") == "pc"
    assert root.find("features/acpi") is not None  # ACPI shutdown needs it
    disks = {d.find("target").get("dev"): d for d in root.iterfind("devices/disk")}
    assert set(disks) == {"vda", "vdb", "sda"}
    assert disks["vda"].find("target").get("bus") == "virtio"
    assert disks["vda"].find("driver").get("type") == "qcow2"
    assert disks["vdb"].findtext("serial") == "vol-0a1b2c3d"
    cdrom = disks["sda"]
    assert (cdrom.get("device"), cdrom.find("target").get("bus")) == ("cdrom", "sata")
    assert cdrom.find("readonly") is not None
    ifaces = root.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["bridge", "network"]
    assert [i.find("model").get("type") for i in ifaces] == ["virtio", "virtio"]
    assert ifaces[0].find("target").get("dev") == "cb3f2a1e0"
    assert ifaces[1].find("mac").get("address") == "52:54:00:ab:cd:ef"
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == KVM_FULL.console_log


def test_direct_kernel_boot_has_no_boot_device() -> None:
    root = etree.fromstring(build_domain_xml(KVM_KERNEL).encode())
    assert root.get("type") == "qemu"
    assert root.findtext("os/kernel") == "/srv/guest/vmlinux"
    assert root.findtext("os/initrd") == "/srv/guest/initrd.gz"
    assert root.findtext("os/cmdline") == "console=ttyS0 quiet"
    assert root.find("os/boot") is None
    cdrom = root.find("devices/disk[@device='cdrom']/target")
    assert (cdrom.get("dev"), cdrom.get("bus")) == ("hda", "ide")


def test_xen_hvm_shape() -> None:
    root = etree.fromstring(build_domain_xml(XEN_HVM).encode())
    assert root.findtext("os/type") == "hvm"
    assert root.find("features/pae") is not None
    targets = {d.find("target").get("dev"): d for d in root.iterfind("devices/disk")}
    # xvdb is disk index 1; the cdrom takes IDE index 2 (hdc), not hda (the same disk as xvda).
    assert set(targets) == {"xvda", "xvdb", "hdc"}
    assert targets["hdc"].get("device") == "cdrom"
    assert targets["xvdb"].get("type") == "block"
    assert targets["xvdb"].find("driver").get("name") == "phy"
    assert targets["xvdb"].find("source").get("dev") == "/dev/vg0/vol-1"
    assert root.find("devices/interface/model") is None
    assert root.find("devices/serial").get("type") == "file"


def test_xen_cdrom_moves_off_a_volume_with_the_same_index() -> None:
    spec = DomainSpec(
        name="i-00000000000000005",
        vcpus=1,
        memory_mb=128,
        hypervisor="xen",
        domain_type="xen",
        root_disk=RootDisk("/srv/r.raw", format="raw"),
        config_drive="/srv/c.iso",
        volumes=(VolumeDisk("/srv/v.raw", "xvdc"),),
    )
    root = etree.fromstring(build_domain_xml(spec).encode())
    assert root.find("devices/disk[@device='cdrom']/target").get("dev") == "hdd"


def test_xen_pv_shape() -> None:
    root = etree.fromstring(build_domain_xml(XEN_PV).encode())
    assert root.findtext("os/type") == "xen"
    assert root.find("features") is None
    assert root.find("bootloader") is None
    (iso,) = root.xpath("devices/disk[source/@file='/srv/xen/pv-config.iso']")
    assert iso.get("device") == "disk"  # libxl offers PV guests no emulated cdrom
    assert iso.find("readonly") is not None
    assert iso.find("target").get("dev") == "xvdc"
    console = root.find("devices/console")
    assert (console.get("type"), console.find("target").get("type")) == ("pty", "xen")
    assert root.find("devices/serial") is None
    assert root.find("devices/interface/model").get("type") == "netfront"
    boot = etree.fromstring(build_domain_xml(XEN_PV_BOOTLOADER).encode())
    assert boot.findtext("bootloader") == "pygrub"
    assert boot.find("os/kernel") is None


def test_hostile_strings_are_escaped_by_construction(
    tmp_path: Path, conn: libvirt.virConnect
) -> None:
    xml = build_domain_xml(HOSTILE_SPEC)
    root = etree.fromstring(xml.encode())
    assert root.findtext("name") == HOSTILE_SPEC.name
    assert len(root.findall("name")) == 1
    assert len(root.findall("title")) == 1
    title = root.findtext("title")
    assert "\n" not in title
    assert title.startswith("i-0fedcba9876543210 x<&\"'>]]> ünïcödé 日本 😀 ")
    assert title.endswith("</title><name>evil</name>")
    cleaned = HOSTILE.replace("\x00", "").replace("\x07", "")
    # XML turns a literal CR in text into LF unless escaped; lxml escapes it, so it survives.
    assert root.findtext("description") == cleaned
    assert root.findtext("os/cmdline") == " ".join(cleaned.split())
    assert root.find("devices/disk/source").get("file") == HOSTILE_SPEC.root_disk.path  # type: ignore[union-attr]
    facts = run_lifecycle(conn, xml, HOSTILE_SPEC.name)
    assert facts.display_name == cleaned
    assert facts.owner == cleaned
    assert facts.disk_paths == (HOSTILE_SPEC.root_disk.path, "/var/lib/cb/vol <&>.raw")  # type: ignore[union-attr]


def test_metadata_is_in_our_namespace(conn: libvirt.virConnect) -> None:
    dom = conn.defineXML(build_domain_xml(KVM_FULL))
    try:
        meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
    finally:
        dom.undefine()
    # libvirt hands the element back without its namespace.
    el = etree.fromstring(meta.encode())
    assert (el.tag, el.findtext("id")) == ("instance", "i-0123456789abcdef0")
    assert el.findtext("owner") == "user-42"
    assert el.findtext("name") == "web server"


def test_read_domain_of_a_foreign_domain(conn: libvirt.virConnect) -> None:
    facts = read_domain(conn.lookupByName("test").XMLDesc())
    assert facts.name == "test"
    assert facts.instance_id is None
    assert facts.owner is None


@pytest.mark.parametrize("hypervisor", ["kvm", "xen"])
def test_volume_attach_and_detach_xml(hypervisor: str, tmp_path: Path) -> None:
    target = "xvdf" if hypervisor == "xen" else "vdf"
    vol = VolumeDisk("/var/lib/cb/vol-0f.qcow2", target, format="qcow2", serial="vol-0f")
    attach = attach_volume_xml(vol, hypervisor=hypervisor)  # type: ignore[arg-type]
    detach = detach_volume_xml(vol, hypervisor=hypervisor)  # type: ignore[arg-type]
    disk = etree.fromstring(attach.encode())
    assert disk.tag == "disk"
    assert disk.find("target").get("dev") == target
    assert disk.find("target").get("bus") == ("xen" if hypervisor == "xen" else "virtio")
    assert etree.fromstring(detach.encode()).find("target").get("dev") == target
    # The test driver cannot hot-plug, so check the element inside a whole domain document.
    host = KVM_FULL if hypervisor == "kvm" else XEN_HVM
    domain = etree.fromstring(build_domain_xml(host).encode())
    domain.find("devices").append(disk)
    assert_valid(etree.tostring(domain, encoding="unicode"), tmp_path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "../etc/passwd"}, "name"),
        ({"name": "i-1 <x>"}, "name"),
        ({"domain_type": "xen"}, "domain_type"),
        ({"arch": "sparc"}, "arch"),
        ({"vcpus": 0}, "vcpus"),
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"root_disk": None}, "root_disk"),
        ({"root_disk": RootDisk("relative/disk.qcow2")}, "path"),
        ({"root_disk": RootDisk("/a\nb")}, "path"),
        ({"root_disk": RootDisk("/a", bus="xen")}, "bus"),
        ({"volumes": (VolumeDisk("/v", "vda"),)}, "device"),
        ({"volumes": (VolumeDisk("/v", "eth0"),)}, "device"),
        ({"volumes": (VolumeDisk("/v", "xvdb"),)}, "device"),
        ({"volumes": (VolumeDisk("/v", "vdb", serial="a<b"),)}, "serial"),
        (
            {"nics": (DomainNic("52:54:00:00:00:01", bridge="br0", target_dev="vnet0"),)},
            "target_dev",
        ),
        ({"nics": (DomainNic("52:54:00:00:00:01", bridge="br0", target_dev="a b"),)}, "target_dev"),
        ({"nics": (DomainNic("01:00:5e:00:00:01", bridge="br0"),)}, "mac"),
        ({"nics": (DomainNic("52:54:00:00:00:01"),)}, "bridge"),
        ({"nics": (DomainNic("52:54:00:00:00:01", bridge="br0", network="default"),)}, "bridge"),
        ({"nics": (DomainNic("52:54:00:00:00:01", bridge="br0<"),)}, "bridge"),
        (
            {
                "nics": (
                    DomainNic("52:54:00:00:00:01", bridge="br0"),
                    DomainNic("52:54:00:00:00:01", bridge="br1"),
                )
            },
            "mac",
        ),
    ],
)
def test_bad_specs_are_refused(change: dict[str, object], field: str) -> None:
    spec = DomainSpec(name="i-00000000000000009", vcpus=1, memory_mb=64, root_disk=RootDisk("/d"))
    bad = DomainSpec(**{**_fields(spec), **change})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as info:
        build_domain_xml(bad)
    assert info.value.field == field


def test_xen_index_clash_is_refused() -> None:
    spec = DomainSpec(
        name="i-00000000000000009",
        vcpus=1,
        memory_mb=64,
        hypervisor="xen",
        domain_type="xen",
        root_disk=RootDisk("/d", target_dev="hda"),
        volumes=(VolumeDisk("/v", "xvda"),),
    )
    with pytest.raises(InvalidRequest, match="used twice"):
        build_domain_xml(spec)


def _fields(spec: DomainSpec) -> dict[str, object]:
    return {name: getattr(spec, name) for name in DomainSpec.__dataclass_fields__}


# --- choose_domain_type and find_emulator ---------------------------------------------------

CAPS_WITH_KVM = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'>
      <emulator>/usr/bin/qemu-system-i386</emulator>
      <domain type='qemu'/>
    </arch>
  </guest>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc</machine>
      <domain type='qemu'/>
      <domain type='kvm'><emulator>/usr/libexec/qemu-kvm</emulator></domain>
    </arch>
  </guest>
</capabilities>"""

CAPS_WITHOUT_KVM = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'>
      <emulator>/usr/bin/qemu-system-i386</emulator>
      <domain type='qemu'/>
      <domain type='kvm'/>
    </arch>
  </guest>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <domain type='qemu'/>
    </arch>
  </guest>
</capabilities>"""


def test_choose_domain_type_from_samples() -> None:
    assert choose_domain_type(CAPS_WITH_KVM, "kvm", "x86_64") == "kvm"
    assert choose_domain_type(CAPS_WITH_KVM, "kvm", "i686") == "qemu"
    assert choose_domain_type(CAPS_WITHOUT_KVM, "kvm", "x86_64") == "qemu"
    assert choose_domain_type(CAPS_WITHOUT_KVM, "kvm", "i686") == "kvm"
    assert choose_domain_type(CAPS_WITHOUT_KVM, "xen", "x86_64") == "xen"
    with pytest.raises(InvalidRequest):
        choose_domain_type(CAPS_WITH_KVM, "vmware", "x86_64")
    with pytest.raises(InvalidRequest):
        choose_domain_type("<capabilities", "kvm", "x86_64")


def test_find_emulator_from_samples() -> None:
    kw = {"arch": "x86_64"}
    assert find_emulator(CAPS_WITH_KVM, domain_type="kvm", **kw) == "/usr/libexec/qemu-kvm"
    assert find_emulator(CAPS_WITH_KVM, domain_type="qemu", **kw) == "/usr/bin/qemu-system-x86_64"
    assert find_emulator(CAPS_WITHOUT_KVM, domain_type="kvm", **kw) is None
    assert find_emulator(CAPS_WITH_KVM, domain_type="qemu", arch="aarch64") is None


def test_choose_domain_type_from_the_test_driver(conn: libvirt.virConnect) -> None:
    caps = conn.getCapabilities()
    assert choose_domain_type(caps, "kvm", "x86_64") == "qemu"  # it offers no KVM guests
    assert choose_domain_type(caps, "xen", "x86_64") == "xen"
    assert find_emulator(caps, domain_type="test", arch="i686") == "/usr/bin/test-hv"
    assert find_emulator(caps, domain_type="test", arch="i686", os_type="xen") == "/usr/bin/test-hv"
    assert find_emulator(caps, domain_type="kvm", arch="x86_64") is None
    spec = DomainSpec(
        name="i-0000000000000000a",
        vcpus=1,
        memory_mb=64,
        domain_type=choose_domain_type(caps, "kvm", "x86_64"),
        root_disk=RootDisk("/d.qcow2"),
    )
    facts = run_lifecycle(conn, build_domain_xml(spec), spec.name)
    assert facts.instance_id == spec.name


# --- the libvirt state table ----------------------------------------------------------------


def test_state_numbers_are_libvirts() -> None:
    for state in DomainState:
        assert getattr(libvirt, f"VIR_DOMAIN_{state.name}") == state.value
    assert set(STATE_MAP) == {s.value for s in DomainState}


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (libvirt.VIR_DOMAIN_NOSTATE, 0, (State.UNKNOWN, "no state")),
        (
            libvirt.VIR_DOMAIN_RUNNING,
            libvirt.VIR_DOMAIN_RUNNING_BOOTED,
            (State.RUNNING, "running: booted"),
        ),
        (
            libvirt.VIR_DOMAIN_RUNNING,
            libvirt.VIR_DOMAIN_RUNNING_UNPAUSED,
            (State.RUNNING, "running: unpaused"),
        ),
        (libvirt.VIR_DOMAIN_BLOCKED, 0, (State.RUNNING, "blocked")),
        (
            libvirt.VIR_DOMAIN_PAUSED,
            libvirt.VIR_DOMAIN_PAUSED_USER,
            (State.SUSPENDED, "paused: by user"),
        ),
        (
            libvirt.VIR_DOMAIN_PAUSED,
            libvirt.VIR_DOMAIN_PAUSED_IOERROR,
            (State.SUSPENDED, "paused: I/O error"),
        ),
        (
            libvirt.VIR_DOMAIN_PAUSED,
            libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
            (State.SUSPENDED, "paused: post-copy migration failed"),
        ),
        (
            libvirt.VIR_DOMAIN_SHUTDOWN,
            libvirt.VIR_DOMAIN_SHUTDOWN_USER,
            (State.SHUTDOWN, "shutting down: by user"),
        ),
        (
            libvirt.VIR_DOMAIN_SHUTOFF,
            libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN,
            (State.POWEROFF, "shut off: shutdown"),
        ),
        (
            libvirt.VIR_DOMAIN_SHUTOFF,
            libvirt.VIR_DOMAIN_SHUTOFF_CRASHED,
            (State.POWEROFF, "shut off: crashed"),
        ),
        (
            libvirt.VIR_DOMAIN_SHUTOFF,
            libvirt.VIR_DOMAIN_SHUTOFF_DAEMON,
            (State.POWEROFF, "shut off: daemon"),
        ),
        (
            libvirt.VIR_DOMAIN_CRASHED,
            libvirt.VIR_DOMAIN_CRASHED_PANICKED,
            (State.FAILED, "crashed: panicked"),
        ),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, (State.SUSPENDED, "suspended by the guest")),
        (libvirt.VIR_DOMAIN_SHUTOFF, 99, (State.POWEROFF, "shut off: reason 99")),
        (42, 3, (State.UNKNOWN, "libvirt state 42")),
    ],
)
def test_to_state(state: int, reason: int, expected: tuple[State, str]) -> None:
    assert to_state(state, reason) == expected


def test_states_seen_through_the_test_driver(conn: libvirt.virConnect) -> None:
    spec = DomainSpec(name="i-0000000000000000b", vcpus=1, memory_mb=64, root_disk=RootDisk("/d"))
    dom = conn.defineXML(build_domain_xml(spec))
    try:
        assert to_state(*dom.state()) == (State.POWEROFF, "shut off")
        dom.create()
        dom.suspend()
        assert to_state(*dom.state()) == (State.SUSPENDED, "paused: by user")
        dom.resume()
        assert to_state(*dom.state()) == (State.RUNNING, "running: unpaused")
        dom.shutdown()
        assert to_state(*dom.state()) == (State.POWEROFF, "shut off: shutdown")
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
