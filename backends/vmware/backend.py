"""The VMware backend: one vCenter cluster or one standalone ESXi host per target.

Decisions:

* Blocking pyvmomi calls run in the backend's own bounded thread pool (``threads``, default 8);
  the event loop never waits on vSphere. One extra thread long-polls ``WaitForUpdatesEx``
  (:class:`~backends.vmware.tasks.PowerWatch`) for prompt power-state changes.
* A VM's name is the instance id and that is the backend reference, so a launch retried after
  a crash finds the VM it already made (and powers it on) instead of making a second one. A
  launch that fails leaves nothing behind: the VM is destroyed and its config drive deleted.
* Images: a template VM (``mappings: {"vmware": {"template": NAME, "linked": true}}`` or a
  location ``template:NAME``) is cloned (linked to its current snapshot when asked and it has
  one); a VMDK (``[datastore] path.vmdk``) is copied next to a new VM; an OVF in the datastore
  (``[datastore] path.ovf``) is read for its disk, which is then used as a VMDK image.
* The config drive (NoCloud ISO) goes to ``[datastore] cloudbroker/<instance>.iso`` and is
  attached as the first CD-ROM; terminate deletes it after destroying the VM.
* Monitoring reads, per cycle, one ``RetrievePropertiesEx``: capacity, and through a container
  view over the datacenter's VM folder every VM's name, power and connection state, host and IP
  (VMs on other compute resources are not counted as running here). The probe makes that call;
  the observe that follows it within a second reuses what it read.
* Volumes are extra VMDKs under ``[datastore] cloudbroker-volumes/``; snapshots are vSphere's.
* An OVF package is imported as a template VM (:mod:`~backends.vmware.ovfimport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import posixpath
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from backends.libvirt.configdrive import build_config_drive
from backends.vmware import devices as dev
from backends.vmware.inventory import Where, capacity_specs, resolve, to_probe
from backends.vmware.ovfimport import import_template
from backends.vmware.sdk import vim, vmodl
from backends.vmware.session import Session, endpoint_of
from backends.vmware.states import to_state
from backends.vmware.tasks import PowerWatch, wait_task
from broker.errors import BackendError, BrokerError, InvalidRequest, Unsupported
from broker.protocols import (
    LaunchSpec,
    Observed,
    Placement,
    TargetConfig,
    TargetProbe,
    VolumeSpec,
)
from broker.states import Action, State

T = TypeVar("T")
PC = vmodl.query.PropertyCollector
VM_PROPS = (
    "name",
    "runtime.powerState",
    "runtime.connectionState",
    "runtime.host",
    "guest.ipAddress",
)
REUSE_SECONDS = 1.0
ISO_DIR, VOLUME_DIR = "cloudbroker", "cloudbroker-volumes"
OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"


class VmwareBackend:
    kind: ClassVar[str] = "vmware"

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        settings = config.settings
        self.endpoint = endpoint_of(settings, config.secret)
        threads = max(1, int(settings.get("threads", 8)))
        self.task_timeout = float(settings.get("task_timeout", 120.0))
        self.stop_timeout = float(settings.get("stop_timeout", 60.0))
        self.session = Session(self.endpoint, pool_size=threads)
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"vmware-{config.name}"
        )
        self._lock = threading.Lock()
        self._where: Where | None = None
        self._view: Any = None
        self._vms: dict[str, Any] = {}  # instance id -> VM moref
        self._seen: tuple[float, dict[str, tuple[Any, dict[str, Any]]]] | None = None
        # bumped by every launch and action, before and after: a read that began before the
        # last bump may miss what they did, so it is never kept for reuse
        self._generation = 0
        self._dirs: set[str] = set()
        self.watch = PowerWatch(self.session, self._vm_view)

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    async def validate(config: TargetConfig) -> None:
        """Check the settings, log in, find the inventory named and read its capacity once."""
        if config.hypervisor not in ("", "vmware"):
            raise InvalidRequest("a VMware target's hypervisor is vmware", field="hypervisor")
        backend = VmwareBackend(config)
        try:
            await backend.probe()
        finally:
            await backend.aclose()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.watch.stop)
        await self._run(self.session.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def where(self) -> Where:
        with self._lock:
            if self._where is None:
                self._where = self.session.call(
                    lambda c: resolve(c, self.config.settings), "find the inventory"
                )
            return self._where

    def _vm_view(self) -> Any:
        where = self.where()
        with self._lock:
            if self._view is None:
                self._view = self.session.call(
                    lambda c: c.viewManager.CreateContainerView(
                        where.vm_folder, [vim.VirtualMachine], True
                    ),
                    "create a container view",
                )
            return self._view

    def _vm_spec(self) -> Any:
        return PC.FilterSpec(
            objectSet=[
                PC.ObjectSpec(
                    obj=self._vm_view(),
                    skip=True,
                    selectSet=[
                        PC.TraversalSpec(name="v", type=vim.view.ContainerView, path="view")
                    ],
                )
            ],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=list(VM_PROPS))],
        )

    def _ds_path(self, path: str) -> str:
        return f"[{self.where().datastore_name}] {path}"

    def _task(self, what: str, start: Callable[[], Any]) -> Any:
        task = self.session.call(lambda _c: start(), what, idempotent=False)
        return wait_task(self.session, task, self.task_timeout, what)

    # --- monitoring -----------------------------------------------------------------------

    async def probe(self) -> TargetProbe:
        return await self._run(self._probe)

    def _probe(self) -> TargetProbe:
        where = self.where()
        began = self._began()
        found = self.session.retrieve([*capacity_specs(where), self._vm_spec()])
        vms = self._remember(found, began)
        hosts = {h._moId for h in where.hosts}
        running = sum(
            1
            for _, p in vms.values()
            if p.get("runtime.powerState") == "poweredOn"
            and getattr(p.get("runtime.host"), "_moId", None) in hosts
        )
        settings = self.config.settings
        return to_probe(
            found,
            running,
            pool_limits=where.child_pool,
            cpu_ratio=float(settings.get("cpu_ratio", 1.0)),
            memory_ratio=float(settings.get("memory_ratio", 1.0)),
        )

    def _began(self) -> tuple[float, int]:
        with self._lock:
            return time.monotonic(), self._generation

    def _remember(
        self, found: Sequence[tuple[Any, dict[str, Any]]], began: tuple[float, int]
    ) -> dict[str, tuple[Any, dict[str, Any]]]:
        """The VMs of a read; kept for the observe of the same cycle unless a launch or an
        action ran while it was being read (then that observe reads again)."""
        vms = {
            str(p["name"]): (obj, p)
            for obj, p in found
            if isinstance(obj, vim.VirtualMachine) and "name" in p
        }
        with self._lock:
            if began[1] == self._generation:
                self._seen = (began[0], vms)
            self._vms.update({name: obj for name, (obj, _) in vms.items()})
        return vms

    def _forget(self) -> None:
        with self._lock:
            self._seen = None
            self._generation += 1

    async def observe(self, refs: Sequence[str]) -> list[Observed]:
        return await self._run(self._observe, tuple(refs))

    def _observe(self, refs: tuple[str, ...]) -> list[Observed]:
        with self._lock:
            seen = self._seen
        if seen is None or time.monotonic() - seen[0] > REUSE_SECONDS:
            began = self._began()
            vms = self._remember(self.session.retrieve([self._vm_spec()]), began)
        else:
            vms = seen[1]
        out = []
        for ref in refs:
            if ref in vms:
                out.append(_observed(ref, vms[ref][1]))
        return out

    async def console(self, ref: str) -> str:
        return await self._run(self._console, ref)

    def _console(self, ref: str) -> str:
        vm = self._require(ref)
        try:
            ticket = self.session.call(lambda _c: vm.AcquireTicket("webmks"), f"console {ref}")
        except BrokerError as exc:
            raise Unsupported(f"this vSphere endpoint gives no console ticket ({exc})") from exc
        return (
            f"wss://{ticket.host or self.endpoint.host}:{ticket.port or 443}/ticket/{ticket.ticket}"
        )

    # --- finding VMs ----------------------------------------------------------------------

    def _find(self, name: str) -> Any | None:
        """Our VM named ``name`` (a cached moref that still exists, or a search)."""
        with self._lock:
            cached = self._vms.get(name)
        if cached is not None:
            try:
                if self.session.call(lambda _c: cached.name, f"look up {name}") == name:
                    return cached
            except BrokerError:
                pass
            with self._lock:
                self._vms.pop(name, None)
        where = self.where()
        vm = self.session.call(
            lambda c: c.searchIndex.FindChild(where.vm_folder, name), f"look up {name}"
        )
        if vm is not None:
            with self._lock:
                self._vms[name] = vm
        return vm

    def _require(self, ref: str) -> Any:
        vm = self._find(ref)
        if vm is None:
            raise BackendError(f"the VM {ref} no longer exists")
        return vm

    def _find_anywhere(self, name: str) -> Any:
        """A template or VM by inventory path (``DC0/vm/tpl``) or by name in the datacenter."""
        where = self.where()

        def find(c: Any) -> Any:
            if "/" in name:
                return c.searchIndex.FindByInventoryPath(name)
            vm = c.searchIndex.FindChild(where.vm_folder, name)
            if vm is not None:
                return vm
            view = c.viewManager.CreateContainerView(where.vm_folder, [vim.VirtualMachine], True)
            try:
                return next((v for v in view.view if v.name == name), None)
            finally:
                view.DestroyView()

        vm = self.session.call(find, f"find the template {name}")
        if vm is None:
            raise BackendError(f"the image's template VM '{name}' is not in the inventory")
        return vm

    # --- launch ---------------------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> Placement:
        try:
            return await self._run(self._launch, spec)
        finally:
            self._forget()

    def _launch(self, spec: LaunchSpec) -> Placement:
        self._forget()
        existing = self._find(spec.instance_id)
        if existing is not None:
            power = self._props(existing, spec.instance_id, ["runtime.powerState"]).get(
                "runtime.powerState"
            )
            if power != "poweredOn":
                self._task(f"power on {spec.instance_id}", existing.PowerOnVM_Task)
            return Placement(ref=spec.instance_id, state=State.RUNNING)
        source = _image_source(spec)
        iso = self._upload_config_drive(spec)
        try:
            if "template" in source:
                vm = self._clone(spec, source, iso)
            else:
                vm = self._create(spec, source, iso)
            with self._lock:
                self._vms[spec.instance_id] = vm
            self._ensure_hardware(spec, vm)
            self._task(f"power on {spec.instance_id}", vm.PowerOnVM_Task)
        except BaseException:
            self._undo_launch(spec.instance_id, iso)
            raise
        return Placement(ref=spec.instance_id, state=State.RUNNING)

    def _mkdir(self, path: str) -> None:
        if path in self._dirs:
            return
        where = self.where()

        def make(c: Any) -> None:
            with contextlib.suppress(vim.fault.FileAlreadyExists):
                c.fileManager.MakeDirectory(
                    name=self._ds_path(path),
                    datacenter=where.datacenter,
                    createParentDirectories=True,
                )

        self.session.call(make, f"make {self._ds_path(path)}")
        self._dirs.add(path)

    def _upload_config_drive(self, spec: LaunchSpec) -> str:
        where = self.where()
        self._mkdir(ISO_DIR)
        path = f"{ISO_DIR}/{spec.instance_id}.iso"
        with tempfile.TemporaryDirectory(prefix="cb-vmware-") as tmp:
            local = os.path.join(tmp, "config.iso")
            build_config_drive(
                local,
                instance_id=spec.instance_id,
                hostname=spec.hostname,
                user_data=spec.user_data,
                public_keys=[spec.public_key] if spec.public_key else [],
                nics=spec.nics,
            )
            with open(local, "rb") as fh:
                data = fh.read()
        self.session.upload(where.datacenter_name, where.datastore_name, path, data)
        return self._ds_path(path)

    def _mapping(self) -> Mapping[str, Any]:
        nets = self.config.settings.get("networks") or {}
        return nets if isinstance(nets, Mapping) else {}

    def _clone(self, spec: LaunchSpec, source: Mapping[str, Any], iso: str) -> Any:
        where = self.where()
        template = self._find_anywhere(str(source["template"]))
        what = f"clone {source['template']} as {spec.instance_id}"

        p = self._props(template, str(source["template"]), ["config.hardware.device", "snapshot"])
        devices = list(p.get("config.hardware.device") or ())
        snapshot = p["snapshot"].currentSnapshot if p.get("snapshot") else None
        changes = dev.nics_and_cdrom(spec, where, self._mapping(), iso, devices)
        relocate = vim.vm.RelocateSpec(pool=where.pool, datastore=where.datastore)
        clone = vim.vm.CloneSpec(
            location=relocate,
            config=dev.config_spec(spec, changes),
            powerOn=False,
            template=False,
        )
        if source.get("linked") and snapshot is not None:
            relocate.diskMoveType = "createNewChildDiskBacking"
            clone.snapshot = snapshot
        return self._task(
            what,
            lambda: template.CloneVM_Task(
                folder=where.vm_folder, name=spec.instance_id, spec=clone
            ),
        )

    def _create(self, spec: LaunchSpec, source: Mapping[str, Any], iso: str) -> Any:
        where = self.where()
        disk = str(source["vmdk"])
        if source.get("ovf"):
            disk = self._ovf_disk(str(source["ovf"]))
        own = self._ds_path(f"{spec.instance_id}/{spec.instance_id}.vmdk")
        self._mkdir(spec.instance_id)
        self._task(
            f"copy {disk}",
            lambda: self.session.content.virtualDiskManager.CopyVirtualDisk_Task(
                sourceName=disk,
                sourceDatacenter=where.datacenter,
                destName=own,
                destDatacenter=where.datacenter,
            ),
        )
        changes = [dev.scsi_add(-200), dev.disk_add(own, -200, 0, key=-201)]
        changes += dev.nics_and_cdrom(spec, where, self._mapping(), iso, [])
        config = dev.config_spec(spec, changes)
        config.guestId = str(source.get("guest_id") or "otherGuest64")
        config.files = vim.vm.FileInfo(vmPathName=self._ds_path(spec.instance_id))
        return self._task(
            f"create {spec.instance_id}",
            lambda: where.vm_folder.CreateVM_Task(config=config, pool=where.pool),
        )

    def _ovf_disk(self, ovf: str) -> str:
        """The datastore path of the first disk an OVF descriptor in the datastore names."""
        where = self.where()
        ds, _, rel = ovf.partition("] ")
        data = self.session.download(where.datacenter_name, ds.lstrip("["), rel)
        root = etree.fromstring(
            data, parser=etree.XMLParser(resolve_entities=False, no_network=True)
        )
        for f in root.iter(f"{{{OVF_NS}}}File"):
            href = f.get(f"{{{OVF_NS}}}href") or ""
            if href.lower().endswith(".vmdk") and "/" not in href and ".." not in href:
                return f"{ds}] {posixpath.join(posixpath.dirname(rel), href)}"
        raise BackendError(f"the OVF {ovf} names no VMDK disk")

    def _ensure_hardware(self, spec: LaunchSpec, vm: Any) -> None:
        """Re-read the VM's CPUs, memory and annotation; reconfigure what the clone did not set."""
        what = f"configure {spec.instance_id}"
        p = self._props(
            vm,
            spec.instance_id,
            ["config.hardware.numCPU", "config.hardware.memoryMB", "config.annotation"],
        )
        fix = vim.vm.ConfigSpec()
        needed = False
        if p.get("config.hardware.numCPU") != spec.vcpus:
            fix.numCPUs, needed = spec.vcpus, True
        if p.get("config.hardware.memoryMB") != spec.memory_mb:
            fix.memoryMB, needed = spec.memory_mb, True
        if p.get("config.annotation") != dev.annotation(spec):
            fix.annotation, needed = dev.annotation(spec), True
        if needed:
            self._task(what, lambda: vm.ReconfigVM_Task(spec=fix))

    def _undo_launch(self, name: str, iso: str) -> None:
        with contextlib.suppress(Exception):
            vm = self._find(name)
            if vm is not None:
                self._destroy(name, vm)
        with contextlib.suppress(Exception):
            self._delete_file(self._ds_path(name))
        with contextlib.suppress(Exception):
            self._delete_file(iso)
        with self._lock:
            self._vms.pop(name, None)

    def _delete_file(self, path: str) -> None:
        where = self.where()
        try:
            self._task(
                f"delete {path}",
                lambda: self.session.content.fileManager.DeleteDatastoreFile_Task(
                    name=path, datacenter=where.datacenter
                ),
            )
        except BackendError as exc:
            if "FileNotFound" not in str(exc):
                raise

    def _destroy(self, name: str, vm: Any) -> None:
        power = self._props(vm, name, ["runtime.powerState"]).get("runtime.powerState")
        if power != "poweredOff":
            self._task(f"power off {name}", vm.PowerOffVM_Task)
        self._task(f"destroy {name}", vm.Destroy_Task)

    # --- actions --------------------------------------------------------------------------

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        try:
            return await self._run(self._act, ref, action, force)
        finally:
            self._forget()

    def _act(self, ref: str, action: Action, force: bool) -> Observed | None:
        self._forget()
        if action is Action.TERMINATE:
            vm = self._find(ref)
            if vm is not None:
                self._destroy(ref, vm)
            self._delete_file(self._ds_path(f"{ISO_DIR}/{ref}.iso"))
            with self._lock:
                self._vms.pop(ref, None)
            return None
        vm = self._require(ref)
        p = self._read(vm, ref)
        power, tools = p.get("runtime.powerState"), p.get("guest.toolsRunningStatus")
        if action is Action.STOP:
            if power == "poweredOn" and tools == "guestToolsRunning" and not force:
                self._guest_stop(ref, vm)
            if self._read(vm, ref).get("runtime.powerState") != "poweredOff":
                self._task(f"power off {ref}", vm.PowerOffVM_Task)
        elif action is Action.POWEROFF:
            if power != "poweredOff":
                self._task(f"power off {ref}", vm.PowerOffVM_Task)
        elif action in (Action.START, Action.RESUME):
            if power != "poweredOn":
                self._task(f"power on {ref}", vm.PowerOnVM_Task)
        elif action is Action.REBOOT:
            self._reboot(ref, vm, tools == "guestToolsRunning" and not force)
        elif action is Action.SUSPEND:
            if power == "poweredOn":
                self._task(f"suspend {ref}", vm.SuspendVM_Task)
        else:
            raise BackendError(f"the VMware backend cannot {action.value}")
        return _observed(ref, self._read(vm, ref))

    def _props(self, vm: Any, ref: str, paths: Sequence[str]) -> dict[str, Any]:
        """Properties of one VM in one retrieval (a property that is unset is simply absent)."""
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=vm)],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=list(paths))],
        )
        found = self.session.retrieve([spec])
        if not found:
            raise BackendError(f"the VM {ref} no longer exists")
        return found[0][1]

    def _read(self, vm: Any, ref: str) -> dict[str, Any]:
        return self._props(vm, ref, [*VM_PROPS, "guest.toolsRunningStatus"])

    def _guest_stop(self, ref: str, vm: Any) -> None:
        """Ask the guest to shut down; wait (on vSphere's updates) up to ``stop_timeout``."""
        self.watch.start()
        try:
            self.session.call(lambda _c: vm.ShutdownGuest(), f"shut down {ref}")
        except BrokerError:
            return  # the caller powers it off
        self.watch.wait_for(vm._moId, {"poweredOff"}, self.stop_timeout)

    def _reboot(self, ref: str, vm: Any, guest: bool) -> None:
        if guest:
            try:
                self.session.call(lambda _c: vm.RebootGuest(), f"reboot {ref}")
                return
            except BrokerError:
                pass  # tools gone or the call unsupported: reset instead
        self._task(f"reset {ref}", vm.ResetVM_Task)

    # --- volumes and snapshots ------------------------------------------------------------

    async def attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        """Attach ``volume`` (made first when it has no backend ref); return its disk path."""
        return await self._run(self._attach_volume, ref, volume)

    def _attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        vm = self._require(ref)
        devices = list(self._props(vm, ref, ["config.hardware.device"])["config.hardware.device"])
        changes = []
        ctls = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
        if ctls:
            key, unit = ctls[0].key, dev.free_unit(devices, ctls[0].key)
        else:
            changes.append(dev.scsi_add(-200))
            key, unit = -200, 0
        path = volume.backend_ref
        if path is None:
            self._mkdir(VOLUME_DIR)
            path = self._ds_path(f"{VOLUME_DIR}/{volume.volume_id}.vmdk")
        changes.append(
            dev.disk_add(path, key, unit, size_gb=0 if volume.backend_ref else volume.size_gb)
        )
        spec = vim.vm.ConfigSpec(deviceChange=changes)
        self._task(f"attach {volume.volume_id} to {ref}", lambda: vm.ReconfigVM_Task(spec=spec))
        return path

    async def detach_volume(self, ref: str, volume: VolumeSpec, *, force: bool = False) -> None:
        """Detach the volume's disk from the VM, keeping its file."""
        if volume.backend_ref is not None:
            await self._run(self._detach_volume, ref, volume.backend_ref)

    def _detach_volume(self, ref: str, path: str) -> None:
        vm = self._require(ref)
        devices = list(self._props(vm, ref, ["config.hardware.device"])["config.hardware.device"])
        disk = next(
            (
                d
                for d in devices
                if isinstance(d, vim.vm.device.VirtualDisk)
                and getattr(d.backing, "fileName", None) == path
            ),
            None,
        )
        if disk is None:
            return
        spec = vim.vm.ConfigSpec(deviceChange=[dev.remove(disk)])
        self._task(f"detach {path} from {ref}", lambda: vm.ReconfigVM_Task(spec=spec))

    async def delete_volume(self, volume: VolumeSpec) -> None:
        if volume.backend_ref is not None:
            await self._run(self._delete_volume, volume.backend_ref)

    def _delete_volume(self, path: str) -> None:
        where = self.where()
        try:
            self._task(
                f"delete {path}",
                lambda: self.session.content.virtualDiskManager.DeleteVirtualDisk_Task(
                    name=path, datacenter=where.datacenter
                ),
            )
        except BackendError as exc:
            if "FileNotFound" not in str(exc):
                raise

    async def attached_disks(self, ref: str) -> list[str]:
        """The datastore paths of the VM's disks, in device order."""

        def read() -> list[str]:
            vm = self._require(ref)
            devices = list(
                self._props(vm, ref, ["config.hardware.device"])["config.hardware.device"]
            )
            return [
                str(d.backing.fileName) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)
            ]

        return await self._run(read)

    async def snapshot(self, ref: str, name: str, description: str = "") -> None:
        def make() -> None:
            vm = self._require(ref)
            self._task(
                f"snapshot {ref}",
                lambda: vm.CreateSnapshot_Task(
                    name=name, description=description, memory=False, quiesce=False
                ),
            )

        await self._run(make)

    async def snapshots(self, ref: str) -> list[str]:
        def read() -> list[str]:
            vm = self._require(ref)
            return [s.name for s in self._snapshot_tree(ref, vm)]

        return await self._run(read)

    async def revert_snapshot(self, ref: str, name: str) -> None:
        await self._run(self._on_snapshot, ref, name, "revert")

    async def delete_snapshot(self, ref: str, name: str) -> None:
        await self._run(self._on_snapshot, ref, name, "delete")

    def _snapshot_tree(self, ref: str, vm: Any) -> list[Any]:
        info = self._props(vm, ref, ["snapshot"]).get("snapshot")
        out: list[Any] = []
        todo = list(info.rootSnapshotList) if info is not None else []
        while todo:
            node = todo.pop(0)
            out.append(node)
            todo.extend(node.childSnapshotList or ())
        return out

    def _on_snapshot(self, ref: str, name: str, op: str) -> None:
        vm = self._require(ref)
        node = next((s for s in self._snapshot_tree(ref, vm) if s.name == name), None)
        if node is None:
            raise BackendError(f"the VM {ref} has no snapshot named '{name}'")
        snap = node.snapshot
        if op == "revert":
            self._task(f"revert {ref} to {name}", lambda: snap.RevertToSnapshot_Task())
        else:
            self._task(
                f"delete snapshot {name} of {ref}",
                lambda: snap.RemoveSnapshot_Task(removeChildren=False),
            )

    # --- OVF import -----------------------------------------------------------------------

    async def import_ovf(self, name: str, descriptor: str, files: Mapping[str, str]) -> str:
        """Import an OVF package as the template ``name`` (see :mod:`.ovfimport`)."""
        paths = {href: Path(path) for href, path in files.items()}
        return await self._run(
            lambda: import_template(
                self.session, self.where(), name, descriptor, paths, self.task_timeout
            )
        )


def _observed(ref: str, p: Mapping[str, Any]) -> Observed:
    state, why = to_state(
        str(p.get("runtime.powerState", "")), str(p.get("runtime.connectionState", "connected"))
    )
    ip = p.get("guest.ipAddress") or None
    return Observed(ref=ref, state=state, reason=why, private_ip=ip, instance_id=ref)


def _image_source(spec: LaunchSpec) -> dict[str, Any]:
    """What to make the VM from: ``{"template": ...}``, ``{"vmdk": ...}`` or ``{"ovf": ...}``."""
    raw = spec.image_mappings.get("vmware", spec.image_mappings)
    mapping = dict(raw) if isinstance(raw, Mapping) else {}
    loc = spec.image_location.strip()
    if mapping.get("template"):
        return mapping
    if loc.startswith("template:"):
        return {**mapping, "template": loc.removeprefix("template:")}
    if loc.startswith("[") and loc.lower().endswith(".vmdk"):
        return {**mapping, "vmdk": loc}
    if loc.startswith("[") and loc.lower().endswith(".ovf"):
        return {**mapping, "vmdk": "", "ovf": loc}
    raise InvalidRequest(
        f"the image {spec.image_id} names no vSphere template, VMDK or OVF "
        "(mappings.vmware.template, or a location 'template:NAME' or '[datastore] path.vmdk')",
        field="image",
    )
