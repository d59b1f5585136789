"""The virtual hardware of a launch: NICs, the config-drive CD-ROM, disks, and the VM's config.

Decisions:

* NICs are VMXNET3 with the MAC the broker leased (manual address), so the config drive's
  network-config, which matches NICs by MAC, fits the VM. The port group of a NIC is the
  target's ``networks`` mapping for the broker network, else a vSphere network named like its
  bridge or network, else the target's default ``network``.
* A clone drops the template's NICs and CD-ROMs it does not need: its first CD-ROM is pointed at
  the config drive, the others stay; new VMs get one CD-ROM on the first IDE controller.
* The VM's name is the instance id; its annotation and ``guestinfo.cloudbroker.instance-id``
  carry the instance id, owner, image and flavor, so an operator (and the broker after a crash)
  can tell which instance a VM is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backends.vmware.inventory import Network, Where
from backends.vmware.sdk import vim
from broker.protocols import LaunchSpec, NicSpec

Dev = vim.vm.device
Op = Dev.VirtualDeviceSpec.Operation
FileOp = Dev.VirtualDeviceSpec.FileOperation


def annotation(spec: LaunchSpec) -> str:
    return (
        f"cloudbroker instance {spec.instance_id}\n"
        f"owner {spec.owner_id}\nimage {spec.image_id}\nflavor {spec.flavor}\n"
    )


def network_for(nic: NicSpec, where: Where, mapping: Mapping[str, Any]) -> Network:
    for name in (str(mapping.get(nic.network) or ""), nic.bridge, nic.network):
        if name and name in where.networks:
            return where.networks[name]
    if where.default_network:
        return where.networks[where.default_network]
    raise LookupError(f"no vSphere network for the broker network '{nic.network}'")


def nic_add(net: Network, mac: str, key: int) -> Any:
    card = Dev.VirtualVmxnet3()
    card.key = key
    card.addressType = "manual" if mac else "generated"
    if mac:
        card.macAddress = mac
    if net.switch_uuid:
        card.backing = Dev.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=net.switch_uuid, portgroupKey=net.portgroup_key)
        )
    else:
        card.backing = Dev.VirtualEthernetCard.NetworkBackingInfo(
            deviceName=net.name, network=net.obj
        )
    card.connectable = Dev.VirtualDevice.ConnectInfo(
        startConnected=True, allowGuestControl=True, connected=True
    )
    return Dev.VirtualDeviceSpec(operation=Op.add, device=card)


def cdrom(iso: str, *, existing: Any = None, controller_key: int = 200, unit: int = 0) -> Any:
    """A CD-ROM with the ISO at datastore path ``iso`` (edits ``existing`` when given)."""
    drive = existing if existing is not None else Dev.VirtualCdrom(key=-50)
    if existing is None:
        drive.controllerKey = controller_key
        drive.unitNumber = unit
    drive.backing = Dev.VirtualCdrom.IsoBackingInfo(fileName=iso)
    drive.connectable = Dev.VirtualDevice.ConnectInfo(
        startConnected=True, allowGuestControl=True, connected=True
    )
    return Dev.VirtualDeviceSpec(
        operation=Op.edit if existing is not None else Op.add, device=drive
    )


def remove(device: Any) -> Any:
    return Dev.VirtualDeviceSpec(operation=Op.remove, device=device)


def scsi_add(key: int) -> Any:
    ctl = Dev.ParaVirtualSCSIController(key=key, busNumber=0, sharedBus="noSharing")
    return Dev.VirtualDeviceSpec(operation=Op.add, device=ctl)


def disk_add(path: str, controller_key: int, unit: int, *, size_gb: int = 0, key: int = -1) -> Any:
    """A disk at datastore ``path``; made there (thin, ``size_gb``) when ``size_gb`` > 0."""
    disk = Dev.VirtualDisk(key=key, controllerKey=controller_key, unitNumber=unit)
    disk.backing = Dev.VirtualDisk.FlatVer2BackingInfo(
        fileName=path, diskMode="persistent", thinProvisioned=True
    )
    spec = Dev.VirtualDeviceSpec(operation=Op.add, device=disk)
    if size_gb:
        disk.capacityInKB = size_gb * 1024 * 1024
        spec.fileOperation = FileOp.create
    return spec


def nics_and_cdrom(
    spec: LaunchSpec, where: Where, mapping: Mapping[str, Any], iso: str, template: Sequence[Any]
) -> list[Any]:
    """Device changes that give a VM (new, or cloned from ``template``'s devices) our NICs
    and the config drive."""
    changes = [remove(d) for d in template if isinstance(d, Dev.VirtualEthernetCard)]
    for i, nic in enumerate(spec.nics):
        changes.append(nic_add(network_for(nic, where, mapping), nic.mac, -100 - i))
    if not spec.nics and where.default_network:
        changes.append(nic_add(where.networks[where.default_network], "", -100))
    drives = [d for d in template if isinstance(d, Dev.VirtualCdrom)]
    if drives:
        changes.append(cdrom(iso, existing=drives[0]))
    else:
        ide = [d for d in template if isinstance(d, Dev.VirtualIDEController)]
        used = {d.unitNumber for d in template if ide and d.controllerKey == ide[0].key}
        unit = 0 if 0 not in used else 1
        changes.append(cdrom(iso, controller_key=ide[0].key if ide else 200, unit=unit))
    return changes


def config_spec(spec: LaunchSpec, changes: Sequence[Any]) -> Any:
    return vim.vm.ConfigSpec(
        name=spec.instance_id,
        numCPUs=spec.vcpus,
        memoryMB=spec.memory_mb,
        annotation=annotation(spec),
        extraConfig=[
            vim.option.OptionValue(key="guestinfo.cloudbroker.instance-id", value=spec.instance_id)
        ],
        deviceChange=list(changes),
    )


def free_unit(devices: Sequence[Any], controller_key: int) -> int:
    """The lowest free unit on a SCSI controller (7 is the controller's own)."""
    used = {d.unitNumber for d in devices if d.controllerKey == controller_key}
    for unit in range(16):
        if unit != 7 and unit not in used:
            return unit
    raise LookupError("the SCSI controller has no free unit")
