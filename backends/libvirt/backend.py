"""The libvirt backend: KVM and Xen hosts (and libvirt's test driver for simulated hosts).

One backend per host. Blocking libvirt calls run in the backend's own small thread pool, so the
event loop never waits on a host. A launch is idempotent per instance id (the domain is named
after it): a launch retried after a crash finds the domain it already made instead of making a
second one. A launch that fails leaves nothing behind (no domain, overlay or config drive).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import libvirt

from backends.libvirt import domain as dom
from backends.libvirt.configdrive import build_config_drive
from backends.libvirt.states import to_state
from broker.errors import BackendError, BackendTimeout, BackendUnavailable, InvalidRequest
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
STOP_POLL = 0.2


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised instead."""


libvirt.registerErrorHandler(_quiet, None)


def _translate(exc: libvirt.libvirtError, what: str) -> BackendError:
    """The one place libvirt errors become the broker's."""
    code = exc.get_error_code()
    text = exc.get_error_message() or str(exc)
    if (
        code
        in (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_ERR_RPC,
            libvirt.VIR_ERR_NO_CONNECT,
            libvirt.VIR_ERR_INTERNAL_ERROR,
        )
        and "connect" in text.lower()
    ):
        return BackendUnavailable(f"{what}: {text}")
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return BackendTimeout(f"{what}: {text}")
    return BackendError(f"{what}: {text}")


class LibvirtBackend:
    kind: ClassVar[str] = "libvirt"

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.uri = str(config.settings.get("uri", ""))
        self.hypervisor: dom.Hypervisor = "xen" if config.hypervisor == "xen" else "kvm"
        self.simulated = self.uri.startswith("test:")
        default_dir = Path(config.data_dir) / "hosts" / config.name
        self.dir = Path(str(config.settings.get("image_dir") or default_dir))
        self.stop_timeout = float(config.settings.get("stop_timeout", 60.0))
        self.virt_type = str(config.settings.get("virt_type", "auto"))  # auto | kvm | qemu
        self._pool = ThreadPoolExecutor(
            max_workers=int(config.settings.get("threads", 4)),
            thread_name_prefix=f"libvirt-{config.name}",
        )
        self._conn: libvirt.virConnect | None = None
        self._domain_type: dom.DomainType | None = None  # from the host's capabilities, once

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    async def validate(config: TargetConfig) -> None:
        uri = str(config.settings.get("uri", ""))
        if not uri or ("://" not in uri and not uri.startswith("test:")):
            raise InvalidRequest(
                "a libvirt host needs --uri (qemu+ssh://, qemu:///system, xen+ssh://, test:///...)",
                field="uri",
            )
        if str(config.settings.get("virt_type", "auto")) not in ("auto", "kvm", "qemu"):
            raise InvalidRequest("virt_type must be auto, kvm or qemu", field="virt_type")
        if config.hypervisor not in ("kvm", "xen"):
            raise InvalidRequest("hypervisor must be kvm or xen", field="hypervisor")
        backend = LibvirtBackend(config)
        try:
            await backend.probe()
        finally:
            await backend.aclose()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def _connection(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                if conn.isAlive():
                    return conn
            self._conn = None
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise BackendUnavailable(
                f"cannot connect to {self.uri}: {exc.get_error_message()}"
            ) from exc
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        def close() -> None:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

        await self._run(close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- monitoring -----------------------------------------------------------------------

    async def probe(self) -> TargetProbe:
        return await self._run(self._probe)

    def _probe(self) -> TargetProbe:
        conn = self._connection()
        try:
            info = conn.getInfo()
            free = conn.getFreeMemory() // (1024 * 1024)
            running = len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        except libvirt.libvirtError as exc:
            self._conn = None
            raise _translate(exc, "probe") from exc
        disk_free = 0.0
        if not self.simulated:
            self.dir.mkdir(parents=True, exist_ok=True)
            disk_free = shutil.disk_usage(self.dir).free / 2**30
        else:
            disk_free = 1024.0
        load = 0.0
        if not self.simulated and self.uri.startswith(("qemu:///", "xen:///")):
            with contextlib.suppress(OSError):
                load = float(Path("/proc/loadavg").read_text().split()[0])
        return TargetProbe(
            total_cpu=int(info[2]),
            total_memory_mb=int(info[1]),
            total_disk_gb=int(disk_free),
            free_memory_mb=int(free),
            free_disk_gb=disk_free,
            load=load,
            running=running,
            hypervisor=self.hypervisor,
        )

    async def observe(self, refs: Sequence[str]) -> list[Observed]:
        return await self._run(self._observe, tuple(refs))

    def _observe(self, refs: tuple[str, ...]) -> list[Observed]:
        wanted = set(refs)
        conn = self._connection()
        out = []
        try:
            for d in conn.listAllDomains(0):
                name = d.name()
                if name in wanted:
                    st, reason = d.state()
                    state, why = to_state(st, reason)
                    out.append(Observed(ref=name, state=state, reason=why, instance_id=name))
        except libvirt.libvirtError as exc:
            raise _translate(exc, "observe") from exc
        return out

    async def console(self, ref: str) -> str:
        path = self._files(ref)["console"]

        def read() -> str:
            try:
                data = path.read_bytes()[-64 * 1024 :]
            except FileNotFoundError:
                return ""
            return data.decode("utf-8", "replace")

        return await self._run(read)

    # --- launch ---------------------------------------------------------------------------

    def _files(self, ref: str) -> dict[str, Path]:
        base = self.dir / "instances" / ref
        return {
            "dir": base,
            "disk": base / "disk.qcow2",
            "iso": base / "config.iso",
            "console": base / "console.log",
        }

    async def launch(self, spec: LaunchSpec) -> Placement:
        return await self._run(self._launch, spec)

    def _launch(self, spec: LaunchSpec) -> Placement:
        conn = self._connection()
        with contextlib.suppress(libvirt.libvirtError):
            existing = conn.lookupByName(spec.instance_id)
            state, _ = to_state(*existing.state())
            if state is State.POWEROFF:
                existing.create()
                state = State.RUNNING
            return Placement(ref=spec.instance_id, state=state)
        files = self._files(spec.instance_id)
        try:
            xml = self._domain_xml(conn, spec, files)
            d = conn.defineXML(xml)
            try:
                d.create()
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    d.undefine()
                raise
        except libvirt.libvirtError as exc:
            self._remove_files(files)
            raise _translate(exc, f"launch {spec.instance_id}") from exc
        except Exception:
            self._remove_files(files)
            raise
        return Placement(ref=spec.instance_id, state=State.RUNNING)

    def _domain_xml(
        self, conn: libvirt.virConnect, spec: LaunchSpec, files: dict[str, Path]
    ) -> str:
        if self._domain_type is None:
            caps = conn.getCapabilities()
            chosen = dom.choose_domain_type(caps, self.hypervisor, "x86_64")
            if self.virt_type == "qemu" and chosen == "kvm":
                chosen = "qemu"  # the operator says this host's KVM cannot be used
            self._domain_type = chosen
        domain_type = self._domain_type
        kernel = root = None
        if spec.image_kind == "kernel":
            kernel = dom.KernelBoot(
                spec.image_kernel, spec.image_ramdisk or None, spec.image_cmdline
            )
        iso = console = None
        if not self.simulated:
            files["dir"].mkdir(parents=True, exist_ok=True)
            if spec.image_kind == "disk":
                _overlay(spec.image_location, files["disk"])
                root = dom.RootDisk(str(files["disk"]))
            build_config_drive(
                files["iso"],
                instance_id=spec.instance_id,
                hostname=spec.hostname,
                user_data=spec.user_data,
                public_keys=[spec.public_key] if spec.public_key else [],
                nics=spec.nics,
            )
            iso, console = str(files["iso"]), str(files["console"])
        elif spec.image_kind == "disk":
            root = dom.RootDisk(str(files["disk"]))
        nics = tuple(dom.DomainNic(mac=n.mac, bridge=n.bridge) for n in spec.nics if n.bridge)
        return dom.build_domain_xml(
            dom.DomainSpec(
                name=spec.instance_id,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                hypervisor=self.hypervisor,
                domain_type=domain_type,
                xen_mode="pv" if self.hypervisor == "xen" and kernel else "hvm",
                display_name=spec.tags.get("Name", ""),
                owner=spec.owner_id,
                root_disk=root,
                kernel_boot=kernel,
                config_drive=iso,
                config_drive_bus="ide",
                nics=nics,
                console_log=console,
            )
        )

    def _remove_files(self, files: dict[str, Path]) -> None:
        if not self.simulated:
            shutil.rmtree(files["dir"], ignore_errors=True)

    # --- volumes --------------------------------------------------------------------------

    def _volume_disk(self, volume: VolumeSpec) -> dom.VolumeDisk:
        path = volume.backend_ref or str(self.dir / "volumes" / f"{volume.volume_id}.qcow2")
        suffix = volume.device.removeprefix("/dev/").lstrip("sxvh").removeprefix("d")
        prefix = "xvd" if self.hypervisor == "xen" else "vd"
        serial = volume.volume_id.replace("-", "")  # virtio serials hold 20 characters
        return dom.VolumeDisk(path, prefix + suffix, "qcow2", serial=serial)

    async def attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        return await self._run(self._attach_volume, ref, volume)

    def _attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        disk = self._volume_disk(volume)
        xml = dom.attach_volume_xml(disk, hypervisor=self.hypervisor)
        if not self.simulated and not Path(disk.path).exists():
            Path(disk.path).parent.mkdir(parents=True, exist_ok=True)
            _qemu_img("create", "-q", "-f", "qcow2", disk.path, f"{volume.size_gb}G")
        self._change_disk(ref, xml, attach=True)
        return disk.path

    async def detach_volume(self, ref: str, volume: VolumeSpec, *, force: bool = False) -> None:
        await self._run(self._detach_volume, ref, volume)

    def _detach_volume(self, ref: str, volume: VolumeSpec) -> None:
        xml = dom.detach_volume_xml(self._volume_disk(volume), hypervisor=self.hypervisor)
        self._change_disk(ref, xml, attach=False)

    async def delete_volume(self, volume: VolumeSpec) -> None:
        if not self.simulated:
            path = Path(self._volume_disk(volume).path)
            await self._run(lambda: path.unlink(missing_ok=True))

    def _change_disk(self, ref: str, xml: str, *, attach: bool) -> None:
        """Hot-plug (and keep in the persistent definition) or unplug one disk. libvirt's test
        driver has no hot-plug: on a simulated host the persistent definition is rewritten."""
        conn = self._connection()
        what = f"{'attach' if attach else 'detach'} a disk on {ref}"
        try:
            d = conn.lookupByName(ref)
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if d.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            if self.simulated:
                conn.defineXML(dom.with_disk(d.XMLDesc(0), xml, present=attach))
            elif attach:
                d.attachDeviceFlags(xml, flags)
            else:
                d.detachDeviceFlags(xml, flags)
        except libvirt.libvirtError as exc:
            raise _translate(exc, what) from exc

    # --- actions --------------------------------------------------------------------------

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        return await self._run(self._act, ref, action)

    def _act(self, ref: str, action: Action) -> Observed | None:
        conn = self._connection()
        try:
            try:
                d = conn.lookupByName(ref)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    if action is Action.TERMINATE:
                        self._remove_files(self._files(ref))
                        return None
                    raise BackendError(f"the domain {ref} no longer exists") from exc
                raise
            if action is Action.TERMINATE:
                if d.isActive():
                    d.destroy()
                d.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
                self._remove_files(self._files(ref))
                return None
            if action is Action.STOP:
                self._graceful_stop(d)
            elif action is Action.POWEROFF:
                if d.isActive():
                    d.destroy()
            elif action is Action.START:
                if not d.isActive():
                    d.create()
            elif action is Action.REBOOT:
                try:
                    d.reboot(0)
                except libvirt.libvirtError:
                    d.reset(0)
            elif action is Action.SUSPEND:
                d.suspend()
            elif action is Action.RESUME:
                d.resume()
            else:
                raise BackendError(f"the libvirt backend cannot {action.value}")
            state, why = to_state(*d.state())
            return Observed(ref=ref, state=state, reason=why, instance_id=ref)
        except libvirt.libvirtError as exc:
            raise _translate(exc, f"{action.value} {ref}") from exc

    def _graceful_stop(self, d: libvirt.virDomain) -> None:
        """ACPI shutdown, then power off when the guest has not stopped in time."""
        if not d.isActive():
            return
        with contextlib.suppress(libvirt.libvirtError):
            d.shutdown()
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            if not d.isActive():
                return
            time.sleep(STOP_POLL)
        if d.isActive():
            d.destroy()


def _qemu_img(*args: str) -> None:
    result = subprocess.run(
        ["qemu-img", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise BackendError(f"qemu-img {args[0]} failed: {result.stderr.strip()[:300]}")


def _overlay(base: str, path: Path) -> None:
    """A qcow2 overlay backed by the image, so instances share the image read-only."""
    if not Path(base).is_file():
        raise BackendError(f"the image file {base} is not on this host")
    _qemu_img("create", "-q", "-f", "qcow2", "-F", _format_of(base), "-b", base, str(path))


def _format_of(path: str) -> str:
    with open(path, "rb") as fh:
        return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"
