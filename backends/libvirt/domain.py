"""Libvirt domain XML: what a cloudbroker instance looks like to libvirt, and what we read back.

This module decides the shape of every domain we define on a KVM or Xen host:

* ``domain type``: ``kvm`` where the host's capabilities offer it for the guest arch, else
  ``qemu`` (software emulation, same code path); ``xen`` for Xen hosts (:func:`choose_domain_type`).
* Disks: the root disk (``vda`` on virtio for KVM, ``xvda`` for Xen), extra volumes at the
  target the caller names, and the config drive (cloud-init NoCloud ISO) read-only: a SATA
  (or IDE) cdrom on KVM, an IDE cdrom at ``hdc``/``hdd`` on Xen HVM, and a read-only ``xvd``
  disk on Xen PV (libxl gives PV guests no emulated cdrom; cloud-init finds the ISO by label).
  Xen names ``hdX``, ``sdX`` and ``xvdX`` with the same letter are the same disk, so targets are
  checked for clashes by that index there.
* NICs: a bridge or a libvirt network, virtio on KVM and the hypervisor's default on Xen; a
  target (tap) name is ours only if libvirt would not rename it (no ``vnet``/``vif``/``macv``).
* Console: a serial port writing to a log file (KVM, Xen HVM); Xen PV consoles are always a
  pty served by xenconsoled, whose own logging (``/var/log/xen/console``) keeps the output.
* Our metadata element (namespace :data:`METADATA_NS`) carries the instance id, owner and
  user-visible name, so a host's domains can be matched to ours after any restart.

Every document is built with lxml, so user strings are escaped by construction; strings that
XML cannot carry at all (control characters) are dropped from free text and refused in
identifiers and paths.
"""

from __future__ import annotations

import dataclasses
import re
import uuid as uuidlib
from collections.abc import Iterable
from typing import Literal

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from broker.errors import InvalidRequest

METADATA_NS = "https://cloudbroker.example/ns/instance/1"
METADATA_PREFIX = "cloudbroker"

Hypervisor = Literal["kvm", "xen"]
DomainType = Literal["kvm", "qemu", "xen"]
XenMode = Literal["hvm", "pv"]
DiskFormat = Literal["qcow2", "raw"]
DiskBus = Literal["virtio", "sata", "scsi", "ide", "xen"]
CdromBus = Literal["sata", "ide"]

_ARCHES: dict[Hypervisor, frozenset[str]] = {
    "kvm": frozenset({"x86_64", "i686", "aarch64"}),
    "xen": frozenset({"x86_64", "i686"}),
}
_DOMAIN_TYPES: dict[Hypervisor, frozenset[str]] = {
    "kvm": frozenset({"kvm", "qemu"}),
    "xen": frozenset({"xen"}),
}
_BUS_PREFIX: dict[str, str] = {
    "virtio": "vd",
    "sata": "sd",
    "scsi": "sd",
    "ide": "hd",
    "xen": "xvd",
}
_PREFIX_BUS: dict[str, DiskBus] = {"vd": "virtio", "sd": "scsi", "hd": "ide", "xvd": "xen"}
_TARGET_RE = re.compile(r"^(xvd|vd|sd|hd)([a-z]{1,3})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAC_RE = re.compile(r"^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_RESERVED_IFNAMES = ("vnet", "vif", "macvtap", "macvlan")
_SERIAL_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,20}$")
#: Characters XML 1.0 cannot carry (C0 controls but tab/newline/return, surrogates, U+FFFE/F).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclasses.dataclass(frozen=True, slots=True)
class RootDisk:
    """The instance's boot disk on the host; ``bus``/``target_dev`` default per hypervisor."""

    path: str
    format: DiskFormat = "qcow2"
    bus: DiskBus | None = None
    target_dev: str | None = None
    block: bool = False  # a host block device (LVM volume) rather than a file


@dataclasses.dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot: files on the host, handed to the hypervisor instead of a bootloader."""

    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class VolumeDisk:
    """An extra disk; the bus follows the target prefix (vd virtio, sd scsi, hd ide, xvd xen)."""

    path: str
    target_dev: str
    format: DiskFormat = "raw"
    serial: str | None = None  # e.g. the volume id, seen by the guest under /dev/disk/by-id
    readonly: bool = False
    block: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class DomainNic:
    """One NIC: exactly one of ``bridge`` (host bridge) or ``network`` (libvirt network)."""

    mac: str
    bridge: str | None = None
    network: str | None = None
    model: str | None = None  # None: virtio on KVM, the hypervisor's default on Xen
    target_dev: str | None = None  # the host tap name; never vnet*, which libvirt renames


@dataclasses.dataclass(frozen=True, slots=True)
class DomainSpec:
    """Everything that goes into one domain definition; ``name`` is our instance id."""

    name: str
    vcpus: int
    memory_mb: int
    hypervisor: Hypervisor = "kvm"
    domain_type: DomainType = "kvm"
    xen_mode: XenMode = "hvm"
    arch: str = "x86_64"
    uuid: str | None = None
    display_name: str = ""  # the user-visible name (EC2 Name tag, OCCI title)
    description: str = ""
    owner: str = ""
    root_disk: RootDisk | None = None
    kernel_boot: KernelBoot | None = None
    config_drive: str | None = None  # path of the NoCloud ISO on the host
    config_drive_bus: CdromBus = "sata"  # KVM only; Xen picks its own
    volumes: tuple[VolumeDisk, ...] = ()
    nics: tuple[DomainNic, ...] = ()
    console_log: str | None = None  # None: a pty serial console
    emulator: str | None = None  # from :func:`find_emulator`; None lets libvirt choose
    machine: str | None = None  # e.g. "pc" or "q35"; None lets libvirt choose
    bootloader: str | None = None  # Xen PV without a kernel; defaults to "pygrub"


@dataclasses.dataclass(frozen=True, slots=True)
class DiskFacts:
    target_dev: str
    path: str | None
    device: str  # disk | cdrom


@dataclasses.dataclass(frozen=True, slots=True)
class DomainFacts:
    """What :func:`read_domain` finds in a domain's XML."""

    name: str
    uuid: str | None
    instance_id: str | None  # from our metadata; None for a domain we did not define
    owner: str | None
    display_name: str | None
    macs: tuple[str, ...]
    disks: tuple[DiskFacts, ...]

    @property
    def disk_paths(self) -> tuple[str, ...]:
        return tuple(d.path for d in self.disks if d.path is not None)


# --- host capabilities ---------------------------------------------------------------------


def choose_domain_type(capabilities_xml: str, hypervisor: str, arch: str) -> DomainType:
    """``kvm`` if the host offers hardware virtualisation for ``arch``, else ``qemu``.

    Xen hosts always answer ``xen``; the capabilities only matter for KVM hosts.
    """
    if hypervisor == "xen":
        return "xen"
    if hypervisor != "kvm":
        raise InvalidRequest(f"unknown hypervisor {hypervisor!r}", field="hypervisor")
    caps = _parse(capabilities_xml)
    found = caps.xpath(
        "/capabilities/guest[os_type='hvm']/arch[@name=$arch]/domain[@type='kvm']", arch=arch
    )
    return "kvm" if found else "qemu"


def find_emulator(
    capabilities_xml: str, *, domain_type: str, arch: str, os_type: str = "hvm"
) -> str | None:
    """The emulator the host lists for that guest (the domain's own entry wins), or None."""
    caps = _parse(capabilities_xml)
    for guest_arch in caps.xpath(
        "/capabilities/guest[os_type=$os]/arch[@name=$arch][domain[@type=$dt]]",
        os=os_type,
        arch=arch,
        dt=domain_type,
    ):
        for path in ("domain[@type=$dt]/emulator/text()", "emulator/text()"):
            texts = guest_arch.xpath(path, dt=domain_type)
            if texts and str(texts[0]).strip():
                return str(texts[0]).strip()
    return None


# --- building ------------------------------------------------------------------------------


def build_domain_xml(spec: DomainSpec) -> str:
    """The full ``<domain>`` document for :meth:`virConnect.defineXML`."""
    _check_spec(spec)
    xen = spec.hypervisor == "xen"
    pv = xen and spec.xen_mode == "pv"
    root = etree.Element("domain", type=spec.domain_type)
    _text(root, "name", spec.name)
    if spec.uuid is not None:
        _text(root, "uuid", str(uuidlib.UUID(spec.uuid)))
    _text(root, "title", _one_line(f"{spec.name} {spec.display_name}".strip()))
    if spec.description:
        _text(root, "description", _clean(spec.description))
    root.append(_metadata(spec))
    _text(root, "memory", str(spec.memory_mb), unit="MiB")
    _text(root, "vcpu", str(spec.vcpus))
    if pv and spec.kernel_boot is None:
        _text(root, "bootloader", spec.bootloader or "pygrub")
    root.append(_os(spec, pv=pv))
    if not pv:
        features = etree.SubElement(root, "features")
        for name in ("acpi", "apic", "pae") if xen else ("acpi", "apic"):
            etree.SubElement(features, name)
    etree.SubElement(root, "clock", offset="utc")
    # A crash leaves the domain shut off with reason "crashed" (see states.py).
    for event, action in (
        ("on_poweroff", "destroy"),
        ("on_reboot", "restart"),
        ("on_crash", "destroy"),
    ):
        _text(root, event, action)
    root.append(_devices(spec, pv=pv))
    return _serialise(root)


def attach_volume_xml(volume: VolumeDisk, *, hypervisor: Hypervisor) -> str:
    """The ``<disk>`` element for :meth:`virDomain.attachDeviceFlags`."""
    _check_volume(volume, hypervisor)
    return _serialise(_volume_disk(volume, hypervisor))


def detach_volume_xml(volume: VolumeDisk, *, hypervisor: Hypervisor) -> str:
    """The ``<disk>`` element for :meth:`virDomain.detachDeviceFlags`.

    libvirt finds the disk to detach by its target name; the rest must still be a valid disk.
    """
    return attach_volume_xml(volume, hypervisor=hypervisor)


def with_disk(domain_xml: str, disk_xml: str, *, present: bool) -> str:
    """The domain document with the disk added (``present``) or its target's disk removed."""
    root, disk = _parse(domain_xml), _parse(disk_xml)
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    devices = root.find("devices")
    if devices is None or dev is None:
        raise InvalidRequest("a domain document needs <devices> and a disk a target")
    for old in devices.findall("disk"):
        found = old.find("target")
        if found is not None and found.get("dev") == dev:
            devices.remove(old)
    if present:
        devices.append(disk)
    return _serialise(root)


def snapshot_xml(name: str, description: str = "") -> str:
    """The ``<domainsnapshot>`` document for :meth:`virDomain.snapshotCreateXML`."""
    if not _NAME_RE.match(name):
        raise InvalidRequest(f"'{_one_line(name)[:40]}' is not a valid snapshot name", field="name")
    root = etree.Element("domainsnapshot")
    _text(root, "name", name)
    if description:
        _text(root, "description", _clean(description))
    return _serialise(root)


def _os(spec: DomainSpec, *, pv: bool) -> etree._Element:
    os_el = etree.Element("os")
    type_attrs = {"arch": spec.arch}
    if spec.machine:
        type_attrs["machine"] = spec.machine
    _text(os_el, "type", "xen" if pv else "hvm", **type_attrs)
    kb = spec.kernel_boot
    if kb is not None:
        _text(os_el, "kernel", kb.kernel)
        if kb.initrd:
            _text(os_el, "initrd", kb.initrd)
        if kb.cmdline:
            _text(os_el, "cmdline", _one_line(kb.cmdline))
    elif not pv:
        etree.SubElement(os_el, "boot", dev="hd")
    return os_el


def _metadata(spec: DomainSpec) -> etree._Element:
    meta = etree.Element("metadata")
    nsmap = {METADATA_PREFIX: METADATA_NS}
    inst = etree.SubElement(meta, f"{{{METADATA_NS}}}instance", nsmap=nsmap)
    for tag, value in (("id", spec.name), ("owner", spec.owner), ("name", spec.display_name)):
        _text(inst, f"{{{METADATA_NS}}}{tag}", _clean(value))
    return meta


def _devices(spec: DomainSpec, *, pv: bool) -> etree._Element:
    xen = spec.hypervisor == "xen"
    devices = etree.Element("devices")
    if spec.emulator:
        _text(devices, "emulator", spec.emulator)
    targets = _Targets(xen)
    if spec.root_disk is not None:
        rd = spec.root_disk
        if rd.bus is not None:
            bus: DiskBus = rd.bus
        elif rd.target_dev is not None:
            bus = _bus_of(rd.target_dev, spec.hypervisor)
        else:
            bus = "xen" if xen else "virtio"
        dev = rd.target_dev or _BUS_PREFIX[bus] + "a"
        targets.take(dev)
        devices.append(
            _disk(rd.path, dev, bus, rd.format, hypervisor=spec.hypervisor, block=rd.block)
        )
    for vol in spec.volumes:
        targets.take(vol.target_dev)
        devices.append(_volume_disk(vol, spec.hypervisor))
    if spec.config_drive is not None:
        devices.append(_config_drive(spec, targets, pv=pv))
    for nic in spec.nics:
        devices.append(_interface(nic, xen=xen))
    if pv:
        console = etree.SubElement(devices, "console", type="pty")
        etree.SubElement(console, "target", type="xen", port="0")
    elif spec.console_log is not None:
        serial = etree.SubElement(devices, "serial", type="file")
        # append: the log survives a reboot and a migration instead of starting over
        etree.SubElement(serial, "source", path=spec.console_log, append="on")
        etree.SubElement(serial, "target", port="0")
    else:
        serial = etree.SubElement(devices, "serial", type="pty")
        etree.SubElement(serial, "target", port="0")
    return devices


def _config_drive(spec: DomainSpec, targets: _Targets, *, pv: bool) -> etree._Element:
    assert spec.config_drive is not None
    if pv:
        dev, bus, device = targets.first_free("xvd", start=2), "xen", "disk"
    elif spec.hypervisor == "xen":
        dev, bus, device = targets.first_free("hd", start=2, stop=4), "ide", "cdrom"
    else:
        bus = spec.config_drive_bus
        dev, device = targets.first_free(_BUS_PREFIX[bus]), "cdrom"
    targets.take(dev)
    disk = _disk(spec.config_drive, dev, bus, "raw", hypervisor=spec.hypervisor, device=device)
    etree.SubElement(disk, "readonly")
    return disk


def _volume_disk(vol: VolumeDisk, hypervisor: Hypervisor) -> etree._Element:
    bus = _bus_of(vol.target_dev, hypervisor)
    disk = _disk(vol.path, vol.target_dev, bus, vol.format, hypervisor=hypervisor, block=vol.block)
    if vol.serial:
        _text(disk, "serial", vol.serial)
    if vol.readonly:
        etree.SubElement(disk, "readonly")
    return disk


def _disk(
    path: str,
    dev: str,
    bus: str,
    fmt: str,
    *,
    hypervisor: Hypervisor,
    device: str = "disk",
    block: bool = False,
) -> etree._Element:
    disk = etree.Element("disk", type="block" if block else "file", device=device)
    driver = "phy" if hypervisor == "xen" and block and fmt == "raw" else "qemu"
    etree.SubElement(disk, "driver", name=driver, type=fmt)
    if block:
        etree.SubElement(disk, "source", dev=path)
    else:
        etree.SubElement(disk, "source", file=path)
    etree.SubElement(disk, "target", dev=dev, bus=bus)
    return disk


def _interface(nic: DomainNic, *, xen: bool) -> etree._Element:
    kind = "bridge" if nic.bridge is not None else "network"
    iface = etree.Element("interface", type=kind)
    etree.SubElement(iface, "mac", address=nic.mac.lower())
    if nic.bridge is not None:
        etree.SubElement(iface, "source", bridge=nic.bridge)
    else:
        etree.SubElement(iface, "source", network=str(nic.network))
    if nic.target_dev:
        etree.SubElement(iface, "target", dev=nic.target_dev)
    model = nic.model or (None if xen else "virtio")
    if model:
        etree.SubElement(iface, "model", type=model)
    if not xen:
        etree.SubElement(iface, "rom", enabled="no")  # no iPXE option ROM: we never net-boot
    return iface


# --- reading back --------------------------------------------------------------------------


def read_domain(xml: str) -> DomainFacts:
    """Our instance id, owner, name, the MACs and disks of a domain's XML (``XMLDesc()``)."""
    root = _parse(xml)
    ns = {"cb": METADATA_NS}

    def meta(tag: str) -> str | None:
        found = root.xpath(f"/domain/metadata/cb:instance/cb:{tag}/text()", namespaces=ns)
        return str(found[0]) if found else None

    has_meta = bool(root.xpath("/domain/metadata/cb:instance", namespaces=ns))
    disks = tuple(
        DiskFacts(
            target_dev=str(d.xpath("string(target/@dev)")),
            path=_source_path(d),
            device=d.get("device", "disk"),
        )
        for d in root.xpath("/domain/devices/disk")
    )
    uuid_text = root.findtext("uuid")
    return DomainFacts(
        name=str(root.findtext("name") or ""),
        uuid=str(uuid_text) if uuid_text else None,
        instance_id=(meta("id") or "") if has_meta else None,
        owner=(meta("owner") or "") if has_meta else None,
        display_name=(meta("name") or "") if has_meta else None,
        macs=tuple(str(m).lower() for m in root.xpath("/domain/devices/interface/mac/@address")),
        disks=disks,
    )


def _source_path(disk: etree._Element) -> str | None:
    source = disk.find("source")
    if source is None:
        return None
    for attr in ("file", "dev", "volume", "name"):
        value = source.get(attr)
        if value:
            return str(value)
    return None


# --- checks --------------------------------------------------------------------------------


class _Targets:
    """Disk target names in use; on Xen ``hdc``, ``sdc`` and ``xvdc`` are one disk (index 2)."""

    def __init__(self, xen: bool) -> None:
        self._xen = xen
        self._used: set[str] = set()

    def _key(self, dev: str) -> str:
        match = _TARGET_RE.match(dev)
        if self._xen and match:
            return str(_letters_index(match.group(2)))
        return dev

    def take(self, dev: str) -> None:
        key = self._key(dev)
        if key in self._used:
            raise InvalidRequest(f"disk target {dev} is used twice", field="device")
        self._used.add(key)

    def first_free(self, prefix: str, *, start: int = 0, stop: int = 26) -> str:
        for index in range(start, stop):
            dev = prefix + chr(ord("a") + index)
            if self._key(dev) not in self._used:
                return dev
        raise InvalidRequest(f"no free {prefix} disk target", field="device")


def _letters_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def _bus_of(target_dev: str, hypervisor: Hypervisor) -> DiskBus:
    match = _TARGET_RE.match(target_dev)
    if match is None:
        raise InvalidRequest(f"bad disk target {target_dev!r}", field="device")
    return "xen" if hypervisor == "xen" else _PREFIX_BUS[match.group(1)]


def _check_spec(spec: DomainSpec) -> None:
    if not _NAME_RE.match(spec.name):
        raise InvalidRequest(f"bad domain name {spec.name!r}", field="name")
    if spec.domain_type not in _DOMAIN_TYPES.get(spec.hypervisor, frozenset()):
        raise InvalidRequest(
            f"domain type {spec.domain_type!r} does not run on {spec.hypervisor!r}",
            field="domain_type",
        )
    if spec.arch not in _ARCHES[spec.hypervisor]:
        raise InvalidRequest(f"unsupported arch {spec.arch!r}", field="arch")
    if spec.xen_mode not in ("hvm", "pv"):
        raise InvalidRequest(f"unknown xen mode {spec.xen_mode!r}", field="xen_mode")
    if spec.vcpus < 1 or spec.memory_mb < 1:
        raise InvalidRequest("vcpus and memory must be positive", field="vcpus")
    if spec.uuid is not None:
        try:
            uuidlib.UUID(spec.uuid)
        except ValueError as exc:
            raise InvalidRequest(f"bad uuid {spec.uuid!r}", field="uuid") from exc
    if spec.root_disk is None and spec.kernel_boot is None:
        raise InvalidRequest("a domain needs a root disk or a kernel to boot", field="root_disk")
    if spec.root_disk is not None:
        _check_root(spec.root_disk, spec.hypervisor)
    if spec.kernel_boot is not None:
        _check_paths((spec.kernel_boot.kernel, spec.kernel_boot.initrd))
    for vol in spec.volumes:
        _check_volume(vol, spec.hypervisor)
    _check_paths((spec.config_drive, spec.console_log, spec.emulator))
    for opt in (spec.machine, spec.bootloader):
        if opt is not None and not re.fullmatch(r"[A-Za-z0-9_./-]+", opt):
            raise InvalidRequest(f"bad machine or bootloader {opt!r}", field="machine")
    if spec.config_drive_bus not in ("sata", "ide"):
        raise InvalidRequest("config drive bus must be sata or ide", field="config_drive_bus")
    macs = [nic.mac.lower() for nic in spec.nics]
    if len(set(macs)) != len(macs):
        raise InvalidRequest("two NICs share a MAC address", field="mac")
    for nic in spec.nics:
        _check_nic(nic)


def _check_root(rd: RootDisk, hypervisor: Hypervisor) -> None:
    _check_paths((rd.path,))
    _check_format(rd.format)
    allowed = ("xen",) if hypervisor == "xen" else ("virtio", "sata", "scsi", "ide")
    if rd.bus is not None and rd.bus not in allowed:
        raise InvalidRequest(f"disk bus {rd.bus!r} is not for {hypervisor}", field="bus")
    if rd.target_dev is not None:
        _bus_of(rd.target_dev, hypervisor)


def _check_volume(vol: VolumeDisk, hypervisor: Hypervisor) -> None:
    _check_paths((vol.path,))
    _check_format(vol.format)
    _bus_of(vol.target_dev, hypervisor)
    if hypervisor == "kvm" and vol.target_dev.startswith("xvd"):
        raise InvalidRequest(f"disk target {vol.target_dev} is for Xen", field="device")
    if vol.serial is not None and not _SERIAL_RE.match(vol.serial):
        raise InvalidRequest(f"bad disk serial {vol.serial!r}", field="serial")


def _check_format(fmt: str) -> None:
    if fmt not in ("qcow2", "raw"):
        raise InvalidRequest(f"unsupported disk format {fmt!r}", field="format")


def _check_paths(paths: Iterable[str | None]) -> None:
    for path in paths:
        if path is None:
            continue
        if not path.startswith("/") or _NOT_XML.search(path) or "\n" in path or "\r" in path:
            raise InvalidRequest(f"not an absolute host path: {path!r}", field="path")


def _check_nic(nic: DomainNic) -> None:
    if not _MAC_RE.match(nic.mac.lower()):
        raise InvalidRequest(f"bad unicast MAC {nic.mac!r}", field="mac")
    if (nic.bridge is None) == (nic.network is None):
        raise InvalidRequest("a NIC needs exactly one of bridge or network", field="bridge")
    if nic.bridge is not None and not _IFNAME_RE.match(nic.bridge):
        raise InvalidRequest(f"bad bridge name {nic.bridge!r}", field="bridge")
    if nic.network is not None and not _NAME_RE.match(nic.network):
        raise InvalidRequest(f"bad network name {nic.network!r}", field="network")
    if nic.model is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", nic.model):
        raise InvalidRequest(f"bad NIC model {nic.model!r}", field="model")
    if nic.target_dev is not None:
        if not _IFNAME_RE.match(nic.target_dev):
            raise InvalidRequest(f"bad tap name {nic.target_dev!r}", field="target_dev")
        if nic.target_dev.startswith(_RESERVED_IFNAMES):
            raise InvalidRequest(
                f"tap name {nic.target_dev!r} uses a prefix libvirt reserves", field="target_dev"
            )


# --- small helpers -------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Free text as XML can carry it: characters XML 1.0 forbids are dropped."""
    return _NOT_XML.sub("", text)


def _one_line(text: str) -> str:
    """Free text on one line (libvirt refuses newlines in a title)."""
    return " ".join(_clean(text).split())


def _text(parent: etree._Element, tag: str, text: str, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, **attrs)
    el.text = text
    return el


def _serialise(el: etree._Element) -> str:
    return str(etree.tostring(el, encoding="unicode", pretty_print=True))


def _parse(xml: str) -> etree._Element:
    try:
        # A parser per call: lxml parsers must not be shared between threads.
        parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
        return etree.fromstring(xml.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidRequest(f"unreadable XML: {exc}") from exc
