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
