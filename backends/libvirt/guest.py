"""The tiny real guest: a Debian kernel and a busybox initramfs, built once and cached.

Decides what the lab's test guest is made of and where it is cached:

- the kernel comes from the current ``linux-image-*-amd64`` package (``apt-get download``, then
  ``dpkg-deb -x``, never installed); the uncompressed ``vmlinux`` is cut out of the bzImage's xz
  payload because it boots twice as fast under TCG (qemu enters it through its PVH note); the
  bzImage is the fall-back when the payload is not xz or has no PVH entry;
- the initramfs (cpio newc, gzip, written here byte for byte so the same inputs give the same
  sha256) holds busybox-static, :data:`GUEST_MODULES` with their dependencies (read from each
  module's ``.modinfo``, in load order) and ``labfiles/guest-init.sh`` as ``/init``;
- the cache (``<cache_dir>/manifest.json`` beside the files) is reused while its recipe (init
  script, module list, builder version) is unchanged; ``refresh=True`` looks for a newer kernel.

The guest prints :data:`MARKER` and the other ``CLOUDBROKER-*`` lines (see the init script) on
the serial console, serves its hostname over HTTP on port 80 and powers off on the ACPI button.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from backends.libvirt.lab.debian import apt_env, ensure_packages

MARKER = "CLOUDBROKER-GUEST-UP"
READY_MARKER = "CLOUDBROKER-READY"
USERDATA_BEGIN = "CLOUDBROKER-USERDATA-BEGIN"
USERDATA_END = "CLOUDBROKER-USERDATA-END"
POWEROFF_MARKER = "CLOUDBROKER-POWEROFF"

GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_balloon",
    "virtio_scsi",
    "e1000",
    "button",
    "evdev",
    "ata_piix",
    "ahci",
    "sr_mod",
    "cdrom",
    "isofs",
)
"""Loaded by /init in dependency order: NICs, disks, CD-ROMs on IDE/SATA/virtio-scsi, ACPI."""

CMDLINE = "console=ttyS0 no_timer_check panic=-1 quiet cryptomgr.notests mitigations=off nokaslr"
MIN_MEMORY_MIB = 96
BUILDER_VERSION = 1
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("labfiles") / "guest-init.sh"
META_PACKAGE = "linux-image-amd64"
_XEN_ELFNOTE_PHYS32_ENTRY = 18


class GuestBuildError(RuntimeError):
    """The tiny guest could not be built (no kernel package, a module missing, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TinyGuest:
    """A built guest: what a domain's ``<os>`` needs for a direct kernel boot."""

    kernel: Path  # vmlinux when it boots through PVH, else the bzImage
    initrd: Path
    cmdline: str
    marker: str
    kernel_version: str
    kernel_format: str  # "vmlinux" | "bzImage"
    bzimage: Path
    kernel_sha256: str
    initrd_sha256: str
    min_memory_mib: int = MIN_MEMORY_MIB
    ready_marker: str = READY_MARKER

    def to_json(self) -> dict[str, Any]:
        """Plain values (paths as strings) for the cache manifest."""
        out = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TinyGuest:
        """The inverse of :meth:`to_json`."""
        values = dict(data)
        for key in ("kernel", "initrd", "bzimage"):
            values[key] = Path(values[key])
        return cls(**values)


def build_tiny_guest(cache_dir: Path, *, refresh: bool = False) -> TinyGuest:
    """Return the tiny guest cached in ``cache_dir``, building it first when needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock"):
        recipe = _recipe()
        cached = _load_manifest(cache_dir, recipe)
        if cached is not None and not refresh:
            return cached
        ensure_packages(["busybox-static"])
        package = _current_kernel_package()
        if cached is not None and cached.kernel_version == package.removeprefix("linux-image-"):
            return cached
        guest = _build(cache_dir, package)
        manifest = {"recipe": recipe, "guest": guest.to_json()}
        tmp = cache_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        tmp.replace(cache_dir / "manifest.json")
        keep = {guest.kernel, guest.initrd, guest.bzimage}
        for stale in (*cache_dir.glob("vmlinu*-*"), *cache_dir.glob("initrd-*")):
            if stale not in keep:  # an older kernel's files
                stale.unlink(missing_ok=True)
        return guest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builders of one cache directory (two test runs may build at once)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _recipe() -> str:
    """What the cached files depend on besides the kernel package."""
    digest = hashlib.sha256()
    digest.update(f"v{BUILDER_VERSION} {CMDLINE} {' '.join(GUEST_MODULES)}\n".encode())
    digest.update(INIT_SCRIPT.read_bytes())
    return digest.hexdigest()


def _load_manifest(cache_dir: Path, recipe: str) -> TinyGuest | None:
    try:
        data = json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
        if data.get("recipe") != recipe:
            return None
        guest = TinyGuest.from_json(data["guest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (guest.kernel.is_file() and guest.initrd.is_file() and guest.bzimage.is_file()):
        return None
    return guest


def _current_kernel_package() -> str:
    """The versioned package that ``linux-image-amd64`` depends on now."""
    proc = subprocess.run(
        ["apt-cache", "depends", META_PACKAGE],
        capture_output=True,
        text=True,
        env=apt_env(),
        check=False,
    )
    for line in proc.stdout.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise GuestBuildError(f"apt-cache depends {META_PACKAGE} names no kernel: {proc.stderr}")


def _build(cache_dir: Path, package: str) -> TinyGuest:
    version = package.removeprefix("linux-image-")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp_name:
        tmp = Path(tmp_name)
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=tmp)
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise GuestBuildError(f"apt-get download {package} produced no .deb")
        # The bzImage comes first in the tar: cut the vmlinux out of it on the other core
        # while the module files stream past (lzma releases the GIL).
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            futures: list[concurrent.futures.Future[bytes | None]] = []
            tree = read_kernel_package(
                debs[0], version, lambda data: futures.append(pool.submit(extract_vmlinux, data))
            )
            vmlinux = futures[0].result() if futures else extract_vmlinux(tree.bzimage)
    bzimage = cache_dir / f"vmlinuz-{version}"
    _write_atomic(bzimage, tree.bzimage)
    kernel, kernel_format = bzimage, "bzImage"
    if vmlinux is not None and has_pvh_entry(vmlinux):
        kernel, kernel_format = cache_dir / f"vmlinux-{version}", "vmlinux"
        _write_atomic(kernel, vmlinux)
    initrd = cache_dir / f"initrd-{version}.cpio.gz"
    _write_atomic(initrd, build_initramfs(tree))
    return TinyGuest(
        kernel=kernel,
        initrd=initrd,
        cmdline=CMDLINE,
        marker=MARKER,
        kernel_version=version,
        kernel_format=kernel_format,
        bzimage=bzimage,
        kernel_sha256=_sha256(kernel),
        initrd_sha256=_sha256(initrd),
    )


@dataclasses.dataclass(slots=True)
class KernelTree:
    """What the guest needs from a kernel package: the bzImage and the modules, by name."""

    bzimage: bytes = b""
    modules: dict[str, bytes] = dataclasses.field(default_factory=dict)  # name -> raw .ko[.xz]
    module_files: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> file name
    builtin: set[str] = dataclasses.field(default_factory=set)

    @classmethod
    def from_directory(cls, root: Path, version: str) -> KernelTree:
        """Read an unpacked package (``dpkg-deb -x`` output) or an installed kernel."""
        tree = cls(bzimage=(root / "boot" / f"vmlinuz-{version}").read_bytes())
        modules_dir = root / "lib" / "modules" / version
        for path in (modules_dir / "kernel").rglob("*.ko*"):
            tree.add_module(path.name, path.read_bytes())
        builtin = modules_dir / "modules.builtin"
        if builtin.is_file():
            tree.builtin = {_modname(line) for line in builtin.read_text().split()}
        return tree

    def add_module(self, file_name: str, data: bytes) -> None:
        name = _modname(file_name)
        self.modules[name] = data
        self.module_files[name] = file_name


def read_kernel_package(
    deb: Path, version: str, on_bzimage: Callable[[bytes], object] | None = None
) -> KernelTree:
    """Stream the package's data tar once (no 400 MB unpacked on disk) into a KernelTree.

    ``on_bzimage`` is called with the kernel image as soon as it has been read.
    """
    tree = KernelTree()
    modules_prefix = f"./lib/modules/{version}/"
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name if member.name.startswith("./") else f"./{member.name}"
                wanted_kernel = name == f"./boot/vmlinuz-{version}"
                wanted_module = name.startswith(modules_prefix + "kernel/") and ".ko" in name
                wanted_builtin = name == modules_prefix + "modules.builtin"
                if not (wanted_kernel or wanted_module or wanted_builtin):
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                if wanted_kernel:
                    tree.bzimage = data
                    if on_bzimage is not None:
                        on_bzimage(data)
                elif wanted_module:
                    tree.add_module(name.rsplit("/", 1)[-1], data)
                else:
                    tree.builtin = {_modname(line) for line in data.decode().split()}
    finally:
        proc.stdout.close()
        returncode = proc.wait()
    if returncode != 0 or not tree.bzimage or not tree.modules:
        raise GuestBuildError(f"{deb.name} has no boot/vmlinuz-{version} or no modules")
    return tree


def _run(argv: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=apt_env(), check=False)
    if proc.returncode != 0:
        raise GuestBuildError(f"{argv[0]} {argv[1]} failed: {proc.stderr.strip()[-500:]}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the kernel ---------------------------------------------------------------------------------


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage whose payload is xz, or None."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        return None
    try:
        data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    except lzma.LZMAError:
        return None
    return data if data.startswith(b"\x7fELF\x02") else None


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit ELF kernel carries the Xen PVH entry note qemu boots it through."""
    if not elf.startswith(b"\x7fELF\x02\x01"):
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + index * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and n_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(size: int) -> int:
    return (size + 3) & ~3


# -- kernel modules -----------------------------------------------------------------------------


def _modname(path_or_name: str) -> str:
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        base = base.removesuffix(suffix)
    return base.replace("-", "_")


def modinfo_depends(module: bytes) -> list[str]:
    """The ``depends=`` names of a kernel module, from its ELF ``.modinfo`` section."""
    shoff = struct.unpack_from("<Q", module, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _t, _f, _a, offset, size = struct.unpack_from(
            "<IIQQQQ", module, shoff + index * shentsize
        )
        return name, offset, size

    _n, strtab, _s = section(shstrndx)
    for index in range(shnum):
        name_off, offset, size = section(index)
        end = module.index(b"\x00", strtab + name_off)
        if module[strtab + name_off : end] == b".modinfo":
            for entry in module[offset : offset + size].split(b"\x00"):
                if entry.startswith(b"depends="):
                    value = entry.removeprefix(b"depends=").decode()
                    return [_modname(dep) for dep in value.split(",") if dep]
            return []
    return []


def _read_module(file_name: str, data: bytes) -> bytes:
    if file_name.endswith(".xz"):
        return lzma.decompress(data)
    if file_name.endswith(".gz"):
        return gzip.decompress(data)
    if file_name.endswith(".zst"):
        raise GuestBuildError(f"zstd-compressed modules are not supported: {file_name}")
    return data


def resolve_modules(tree: KernelTree, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """``(file name, uncompressed .ko)`` for ``wanted`` and their dependencies, in load order.

    Modules built into the kernel (``modules.builtin``) are skipped; a module that is neither
    built in nor shipped is an error.
    """
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in tree.builtin:
            return
        if name in chain:
            raise GuestBuildError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in tree.modules:
            raise GuestBuildError(f"kernel module {name} is neither built in nor shipped")
        data = _read_module(tree.module_files[name], tree.modules[name])
        for dep in modinfo_depends(data):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append((f"{name}.ko", data))

    for name in wanted:
        visit(_modname(name), ())
    return order


# -- the initramfs ------------------------------------------------------------------------------


class _Cpio:
    """A cpio "newc" archive written in memory, deterministically (mtime 0, fixed inodes)."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\x00"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._out.write(b"070701" + b"".join(b"%08X" % value for value in fields))
        self._out.write(encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\x00" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def build_initramfs(tree: KernelTree) -> bytes:
    """The gzip'd initramfs: busybox, /init, the modules and their load order."""
    if not BUSYBOX.is_file():
        raise GuestBuildError(f"{BUSYBOX} is missing (package busybox-static)")
    modules = resolve_modules(tree, GUEST_MODULES)
    archive = _Cpio()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "www"):
        archive.directory(directory)
    archive.chardev("dev/console", 5, 1)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    archive.file("etc/cloudbroker-modules", "".join(f"{n}\n" for n, _ in modules).encode())
    for name, data in modules:
        archive.file(f"lib/modules/{name}", data)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def main() -> None:  # pragma: no cover - manual use: python -m backends.libvirt.guest DIR
    """Build (or reuse) the guest in the directory given and print its manifest."""
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "var/images/tiny")
    print(json.dumps(build_tiny_guest(target.resolve()).to_json(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
