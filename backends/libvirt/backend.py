"""The libvirt backend: KVM and Xen hosts (and libvirt's test driver for simulated hosts).

One backend per host. Blocking libvirt calls run in the backend's own small thread pool, so the
event loop never waits on a host. A launch is idempotent per instance id (the domain is named
after it): a launch retried after a crash finds the domain it already made instead of making a
second one. A launch that fails leaves nothing behind (no domain, overlay or config drive).

Where the files live is the host setting ``store``: "shared" (the default) means the broker and
the host share a filesystem, and the broker makes overlays, config drives and volumes with local
file operations; "ssh" means ``image_dir`` is the host's own, and every file operation goes over
SSH (:mod:`backends.libvirt.remote`): images are copied once per host into
``<image_dir>/images`` over SFTP (resumable, SHA-256 checked on the host), overlays and volumes
are made with ``qemu-img`` on the host, config drives are built here and uploaded. File work is
awaited in the event loop; libvirt calls go to the thread pool. A host with ``ssh`` set is also
probed over SSH (load, available memory, free disk of the image store) whatever its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import libvirt

from backends.libvirt import domain as dom
from backends.libvirt.configdrive import build_config_drive
from backends.libvirt.migration import migrate_domain
from backends.libvirt.remote import HostShell, SshTarget
from backends.libvirt.states import to_state
from broker.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    Unsupported,
)
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
STORES = ("shared", "ssh")
CONSOLE_TAIL = 64 * 1024
_SHA256 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")


@dataclasses.dataclass(frozen=True, slots=True)
class _Disks:
    """The paths (on the host) a domain is defined with."""

    root: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    iso: str | None = None
    console: str | None = None


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
        self.store = str(config.settings.get("store") or "shared")
        ssh = SshTarget.from_settings(config.settings)
        self.shell = HostShell(ssh, name=config.name) if ssh and not self.simulated else None
        self._image_locks: dict[str, asyncio.Lock] = {}  # one copy of an image at a time
        self._sums: dict[tuple[str, int, int], str] = {}  # broker-side sha256 by path/size/mtime

    @property
    def remote_store(self) -> bool:
        """Whether this host's files are reached over SSH only."""
        return self.store == "ssh" and not self.simulated

    def _shell(self) -> HostShell:
        if self.shell is None:
            raise BackendError(f"{self.config.name} has store ssh but no ssh setting")
        return self.shell

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
        store = str(config.settings.get("store") or "shared")
        if store not in STORES:
            raise InvalidRequest("store must be shared or ssh", field="store")
        if store == "ssh" and not (config.settings.get("ssh") and config.settings.get("image_dir")):
            raise InvalidRequest(
                "a host with store ssh needs --ssh and --image-dir (a folder on the host)",
                field="store",
            )
        backend = LibvirtBackend(config)
        try:
            await backend.probe()
        finally:
            await backend.aclose()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` where libvirt calls belong: a host's calls in its thread pool (they
        wait on the network and the daemon); a simulated host's right here, as the test driver
        answers from memory in microseconds, less than a hand-off to a thread costs."""
        if self.simulated:
            return fn(*args)
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
        if self.shell is not None:
            await self.shell.aclose()

    # --- monitoring -----------------------------------------------------------------------

    async def probe(self) -> TargetProbe:
        if self.shell is None:
            return await self._run(self._probe, True)
        shell = self.shell
        try:
            async with asyncio.TaskGroup() as tg:
                virt = tg.create_task(self._run(self._probe, False))
                host = tg.create_task(shell.probe(str(self.dir)))
        except ExceptionGroup as group:  # a miss either way: say which part failed
            raise group.exceptions[0] from group
        seen = host.result()
        return dataclasses.replace(
            virt.result(),
            load=seen.load,
            free_memory_mb=seen.free_memory_mb,
            free_disk_gb=seen.free_disk_gb,
            total_disk_gb=int(seen.total_disk_gb),
        )

    def _probe(self, local_disk: bool) -> TargetProbe:
        conn = self._connection()
        try:
            info = conn.getInfo()
            free = conn.getFreeMemory() // (1024 * 1024)
            running = len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        except libvirt.libvirtError as exc:
            self._conn = None
            raise _translate(exc, "probe") from exc
        disk_free = 0.0
        if not local_disk:
            pass  # measured over ssh
        elif not self.simulated:
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
        if self.remote_store:
            tail = await self._shell().read_tail(str(path), CONSOLE_TAIL)
            return tail.decode("utf-8", "replace")

        def read() -> str:
            try:
                data = path.read_bytes()[-CONSOLE_TAIL:]
            except FileNotFoundError:
                return ""
            return data.decode("utf-8", "replace")

        return await self._run(read)

    # --- launch ---------------------------------------------------------------------------

    def _files(self, ref: str) -> dict[str, Path]:
        if not ref or "/" in ref or ref in (".", ".."):
            raise InvalidRequest(f"bad instance reference {ref!r}")
        base = self.dir / "instances" / ref
        return {
            "dir": base,
            "disk": base / "disk.qcow2",
            "iso": base / "config.iso",
            "console": base / "console.log",
        }

    async def launch(self, spec: LaunchSpec) -> Placement:
        files = self._files(spec.instance_id)
        if not self.remote_store:  # one trip to the pool: the hot path of simulated hosts
            return await self._run(self._launch_local, spec, files)
        found = await self._run(self._existing, spec.instance_id)
        if found is not None:
            return found
        try:
            disks = await self._prepare_remote(spec, files)
            return await self._run(self._start, spec, disks)
        except Exception:
            await self._remove_files(files)
            raise

    def _launch_local(self, spec: LaunchSpec, files: dict[str, Path]) -> Placement:
        found = self._existing(spec.instance_id)
        if found is not None:
            return found
        try:
            return self._start(spec, self._prepare_local(spec, files))
        except Exception:
            if not self.simulated:
                shutil.rmtree(files["dir"], ignore_errors=True)
            raise

    def _existing(self, instance_id: str) -> Placement | None:
        """The domain a launch made before (a retry), started again when it is off."""
        conn = self._connection()
        try:
            existing = conn.lookupByName(instance_id)
        except libvirt.libvirtError:
            return None
        try:
            state, _ = to_state(*existing.state())
            if state is State.POWEROFF:
                existing.create()
                state = State.RUNNING
        except libvirt.libvirtError as exc:
            raise _translate(exc, f"launch {instance_id}") from exc
        return Placement(ref=instance_id, state=state)

    def _prepare_local(self, spec: LaunchSpec, files: dict[str, Path]) -> _Disks:
        """Overlay and config drive made here: the host sees the same files (store shared)."""
        kernel = spec.image_kernel if spec.image_kind == "kernel" else None
        initrd = (spec.image_ramdisk or None) if kernel else None
        if self.simulated:
            root = str(files["disk"]) if spec.image_kind == "disk" else None
            return _Disks(root=root, kernel=kernel, initrd=initrd)
        files["dir"].mkdir(parents=True, exist_ok=True)
        root = None
        if spec.image_kind == "disk":
            _overlay(spec.image_location, files["disk"])
            root = str(files["disk"])
        self._build_config_drive(spec, files["iso"])
        return _Disks(root, kernel, initrd, str(files["iso"]), str(files["console"]))

    async def _prepare_remote(self, spec: LaunchSpec, files: dict[str, Path]) -> _Disks:
        """The image copied to the host (once), the overlay made there, the config drive
        uploaded (store ssh)."""
        shell = self._shell()
        console = str(files["console"])
        await shell.mkdir(str(files["dir"]))
        await shell.run("touch", "--", console)  # the ssh user's file: it can read it back
        kernel = initrd = root = None
        if spec.image_kind == "kernel":
            kernel = await self._image_on_host(spec, spec.image_kernel, "kernel")
            if spec.image_ramdisk:
                initrd = await self._image_on_host(spec, spec.image_ramdisk, "initrd")
        else:
            fmt = await asyncio.to_thread(_format_of, spec.image_location)
            base = await self._image_on_host(
                spec, spec.image_location, fmt, checksum=spec.image_checksum
            )
            root = str(files["disk"])
            await shell.run("qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", base, root)
        with tempfile.TemporaryDirectory(prefix="cloudbroker-iso-") as tmp:
            local = Path(tmp) / "config.iso"
            await asyncio.to_thread(self._build_config_drive, spec, local)
            await shell.put(local, str(files["iso"]), resume=False)
        return _Disks(root, kernel, initrd, str(files["iso"]), console)

    async def _image_on_host(
        self, spec: LaunchSpec, local_path: str, suffix: str, *, checksum: str = ""
    ) -> str:
        """``<image_dir>/images/<image id>.<suffix>`` on the host, copied and verified once."""
        shell = self._shell()
        final = str(self.dir / "images" / f"{spec.image_id}.{suffix}")
        lock = self._image_locks.setdefault(final, asyncio.Lock())
        async with lock:
            if await shell.exists(final):
                return final
            local = Path(local_path)
            match = _SHA256.fullmatch(checksum.strip())
            expected = match.group(1) if match else await asyncio.to_thread(self._sha256, local)
            await shell.put_verified(local, final, expected)
        return final

    def _sha256(self, path: Path) -> str:
        try:
            st = path.stat()
        except OSError as exc:
            raise BackendError(f"the image file {path} is not on the broker") from exc
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._sums:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            self._sums[key] = digest.hexdigest()
        return self._sums[key]

    @staticmethod
    def _build_config_drive(spec: LaunchSpec, path: Path) -> None:
        build_config_drive(
            path,
            instance_id=spec.instance_id,
            hostname=spec.hostname,
            user_data=spec.user_data,
            public_keys=[spec.public_key] if spec.public_key else [],
            nics=spec.nics,
        )

    def _start(self, spec: LaunchSpec, disks: _Disks) -> Placement:
        conn = self._connection()
        try:
            d = conn.defineXML(self._domain_xml(conn, spec, disks))
            try:
                d.create()
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    d.undefine()
                raise
        except libvirt.libvirtError as exc:
            raise _translate(exc, f"launch {spec.instance_id}") from exc
        return Placement(ref=spec.instance_id, state=State.RUNNING)

    def _domain_xml(self, conn: libvirt.virConnect, spec: LaunchSpec, disks: _Disks) -> str:
        if self._domain_type is None:
            caps = conn.getCapabilities()
            chosen = dom.choose_domain_type(caps, self.hypervisor, "x86_64")
            if self.virt_type == "qemu" and chosen == "kvm":
                chosen = "qemu"  # the operator says this host's KVM cannot be used
            self._domain_type = chosen
        kernel = None
        if disks.kernel:
            kernel = dom.KernelBoot(disks.kernel, disks.initrd, spec.image_cmdline)
        root = dom.RootDisk(disks.root) if disks.root else None
        nics = tuple(dom.DomainNic(mac=n.mac, bridge=n.bridge) for n in spec.nics if n.bridge)
        return dom.build_domain_xml(
            dom.DomainSpec(
                name=spec.instance_id,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                hypervisor=self.hypervisor,
                domain_type=self._domain_type,
                xen_mode="pv" if self.hypervisor == "xen" and kernel else "hvm",
                display_name=spec.tags.get("Name", ""),
                owner=spec.owner_id,
                root_disk=root,
                kernel_boot=kernel,
                config_drive=disks.iso,
                config_drive_bus="ide",
                nics=nics,
                console_log=disks.console,
            )
        )

    async def _remove_files(self, files: dict[str, Path]) -> None:
        if self.simulated:
            return
        if self.remote_store:
            with contextlib.suppress(BackendError):
                await self._shell().remove([str(files["dir"])])
        else:
            await self._run(shutil.rmtree, files["dir"], True)

    # --- volumes --------------------------------------------------------------------------

    def _volume_disk(self, volume: VolumeSpec) -> dom.VolumeDisk:
        path = volume.backend_ref or str(self.dir / "volumes" / f"{volume.volume_id}.qcow2")
        suffix = volume.device.removeprefix("/dev/").lstrip("sxvh").removeprefix("d")
        prefix = "xvd" if self.hypervisor == "xen" else "vd"
        serial = volume.volume_id.replace("-", "")  # virtio serials hold 20 characters
        return dom.VolumeDisk(path, prefix + suffix, "qcow2", serial=serial)

    async def attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        disk = self._volume_disk(volume)
        if self.remote_store:
            shell = self._shell()
            if not await shell.exists(disk.path):
                await shell.mkdir(str(Path(disk.path).parent))
                size = f"{volume.size_gb}G"
                await shell.run("qemu-img", "create", "-q", "-f", "qcow2", disk.path, size)
        elif not self.simulated:
            await self._run(_volume_file, disk.path, volume.size_gb)
        xml = dom.attach_volume_xml(disk, hypervisor=self.hypervisor)
        await self._run(self._change_disk, ref, xml, True)
        return disk.path

    async def detach_volume(self, ref: str, volume: VolumeSpec, *, force: bool = False) -> None:
        await self._run(self._detach_volume, ref, volume)

    def _detach_volume(self, ref: str, volume: VolumeSpec) -> None:
        xml = dom.detach_volume_xml(self._volume_disk(volume), hypervisor=self.hypervisor)
        self._change_disk(ref, xml, False)

    async def delete_volume(self, volume: VolumeSpec) -> None:
        if self.remote_store:
            await self._shell().remove([self._volume_disk(volume).path])
        elif not self.simulated:
            path = Path(self._volume_disk(volume).path)
            await self._run(lambda: path.unlink(missing_ok=True))

    def _change_disk(self, ref: str, xml: str, attach: bool) -> None:
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

    # --- snapshots ------------------------------------------------------------------------
    # libvirt's own: internal qcow2 snapshots (with the memory of a running guest) on KVM and
    # on the test driver; Xen's libxl has none, and says so through the BackendError below.

    async def snapshot(self, ref: str, name: str, description: str = "") -> None:
        xml = dom.snapshot_xml(name, description)
        await self._run(self._on_domain, ref, f"snapshot {ref}", lambda d: d.snapshotCreateXML(xml))

    async def snapshots(self, ref: str) -> list[str]:
        """Names, parents before children (libvirt's topological order)."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL
        found: list[str] = await self._run(
            self._on_domain,
            ref,
            f"list the snapshots of {ref}",
            lambda d: [s.getName() for s in d.listAllSnapshots(flags)],
        )
        return found

    async def revert_snapshot(self, ref: str, name: str) -> None:
        await self._run(
            self._on_domain,
            ref,
            f"revert {ref} to {name}",
            lambda d: d.revertToSnapshot(d.snapshotLookupByName(name)),
        )

    async def delete_snapshot(self, ref: str, name: str) -> None:
        await self._run(
            self._on_domain,
            ref,
            f"delete snapshot {name} of {ref}",
            lambda d: d.snapshotLookupByName(name).delete(),
        )

    def _on_domain(self, ref: str, what: str, fn: Callable[[libvirt.virDomain], T]) -> T:
        try:
            return fn(self._connection().lookupByName(ref))
        except libvirt.libvirtError as exc:
            raise _translate(exc, what) from exc

    # --- migration ------------------------------------------------------------------------

    async def migrate(self, ref: str, dest: TargetConfig) -> Observed:
        """Move the domain to ``dest`` (a host of the same cluster); see :mod:`.migration`."""
        if self.store != "shared":
            raise Unsupported(f"{self.config.name} keeps its own image store: no migration")
        return await self._run(lambda: migrate_domain(self._connection(), ref, dest))

    # --- actions --------------------------------------------------------------------------

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        observed = await self._run(self._act, ref, action)
        if action is Action.TERMINATE:
            await self._remove_files(self._files(ref))
        return observed

    def _act(self, ref: str, action: Action) -> Observed | None:
        conn = self._connection()
        try:
            try:
                d = conn.lookupByName(ref)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    if action is Action.TERMINATE:
                        return None  # its files are removed by act
                    raise BackendError(f"the domain {ref} no longer exists") from exc
                raise
            if action is Action.TERMINATE:
                if d.isActive():
                    d.destroy()
                d.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
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


def _volume_file(path: str, size_gb: int) -> None:
    if not Path(path).exists():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _qemu_img("create", "-q", "-f", "qcow2", path, f"{size_gb}G")


def _overlay(base: str, path: Path) -> None:
    """A qcow2 overlay backed by the image, so instances share the image read-only."""
    if not Path(base).is_file():
        raise BackendError(f"the image file {base} is not on this host")
    _qemu_img("create", "-q", "-f", "qcow2", "-F", _format_of(base), "-b", base, str(path))


def _format_of(path: str) -> str:
    if not Path(path).is_file():
        raise BackendError(f"the image file {path} is not on the broker")
    with open(path, "rb") as fh:
        return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"
