"""The machine's own host on first start: real libvirt where a daemon answers, else simulated.

``cloudbroker serve`` with no configuration must give a working cloud. Where
``qemu:///system`` answers, the local host is this machine (software emulation when KVM is not
usable) and the ready image is the tiny guest built from Debian packages. Otherwise the host is
a clearly labelled simulation on libvirt's test driver, and so is its image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import libvirt

from backends.libvirt import backend as _backend  # noqa: F401 - quiets libvirt's stderr
from backends.libvirt.guest import GuestBuildError, build_tiny_guest
from backends.libvirt.lab.debian import PackageError
from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.seed import zone_name
from broker.service import images, targets

log = logging.getLogger(__name__)

SIMULATED_NODE = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>16</active><nodes>1</nodes>
       <sockets>1</sockets><cores>16</cores><threads>1</threads></cpu>
  <memory>33554432</memory>
</node>
"""


def _libvirtd_answers(uri: str) -> bool:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
    return True


def simulated_node_file(data_dir: Path) -> Path:
    path = data_dir / "hosts" / "simulated-node.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(SIMULATED_NODE)
    return path


async def add_local_host(rt: Runtime) -> None:
    mode = rt.config.broker.local_host
    real = mode == "libvirt" or (
        mode == "auto" and await asyncio.to_thread(_libvirtd_answers, "qemu:///system")
    )
    zone = zone_name(rt)
    if real:
        await targets.add(
            rt,
            SYSTEM,
            name="local",
            kind="host",
            driver="libvirt",
            hypervisor="kvm",
            cluster=zone,
            settings={"uri": "qemu:///system"},
        )
        await register_tiny_guest(rt, tiny_guest_cache(rt.config.data_path))
        return
    node = simulated_node_file(rt.config.data_path)
    await targets.add(
        rt,
        SYSTEM,
        name="local-simulated",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        cluster=zone,
        simulated=True,
        settings={"uri": f"test://{node}"},
    )
    await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="tiny-simulated",
            kind="kernel",
            kernel="/simulated/vmlinuz",
            description="boots nothing: for the simulated local host (libvirt's test driver)",
            visibility="public",
        ),
    )
    log.info("no libvirtd answers at qemu:///system: the local host is simulated")


def tiny_guest_cache(data_dir: Path) -> Path:
    """Where the ready image of a real local host is built and kept (the lab and the tests
    use the same place under the repository's ``var``)."""
    return data_dir / "cache" / "images" / "tiny"


async def register_tiny_guest(rt: Runtime, cache: Path) -> str | None:
    """Build (or reuse) the tiny guest in ``cache`` and register it as the public image
    ``tiny``; its id, or ``None`` with a warning saying what to do when it cannot be built."""
    try:
        guest = await asyncio.to_thread(build_tiny_guest, cache)
    except (GuestBuildError, PackageError, OSError) as exc:
        log.warning(
            "the ready image could not be built (%s): register one with "
            "`cloudbroker image register`",
            exc,
        )
        return None
    image = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="tiny",
            kind="kernel",
            kernel=str(guest.kernel),
            ramdisk=str(guest.initrd),
            cmdline=guest.cmdline,
            hypervisor="kvm",
            description="a tiny Linux guest built from Debian packages",
            visibility="public",
        ),
    )
    return image.id
