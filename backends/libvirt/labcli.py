"""``cloudbroker lab up|down|status``: the local lab of libvirt hosts, registered with the broker.

``lab up`` makes the hosts (see :mod:`backends.libvirt.lab`), builds the tiny guest image from
Debian packages, and, when a broker answers, registers each lab host (reached through its own
sshd with ``qemu+ssh://``), the lab's network (the hosts' guest bridge and its free addresses)
and the tiny image. ``lab down`` removes from the broker what it registered (hosts that still
run instances are refused and named) and leaves nothing running and nothing behind.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import click

from backends.libvirt.guest import build_tiny_guest
from backends.libvirt.lab import LabError, LabState, lab_down, lab_status, lab_up
from broker.cli import Ctx, fail, pass_ctx, show
from broker.client import AdminClient, ClientError

DEFAULT_WORKDIR = "var/lab"


@click.group()
def lab() -> None:
    """A local lab of libvirt hosts in network namespaces, for development, demos and tests."""


def _host_name(state: LabState, name: str) -> str:
    return f"lab-{state.id[:6]}-{name}"


def register(
    client: AdminClient, state: LabState, cache: Path, virt_type: str = "qemu"
) -> dict[str, Any]:
    """Register the lab's hosts, network and tiny image with the broker (idempotent)."""
    guest = build_tiny_guest(cache)
    net = ipaddress.ip_network(state.subnet)
    network_name = f"lab-{state.id[:6]}"
    known = {n["name"]: n for n in client.call("GET", "/api/v1/networks")}
    if network_name not in known:
        known[network_name] = client.call(
            "POST",
            "/api/v1/networks",
            {
                "name": network_name,
                "cidr": str(net),
                "bridge": state.hosts[0].bridge,
                "gateway": state.lab_address,
                "range_start": state.guest_first,
                "range_end": state.guest_last,
            },
        )
    targets = {t["name"] for t in client.call("GET", "/api/v1/targets")}
    hosts = []
    for host in state.hosts:
        name = _host_name(state, host.name)
        if name not in targets:
            client.call(
                "POST",
                "/api/v1/targets",
                {
                    "name": name,
                    "kind": "host",
                    "driver": "libvirt",
                    "hypervisor": "kvm",
                    "cluster": f"lab-{state.id[:6]}",
                    "settings": {
                        "uri": host.libvirt_uri,
                        "ssh": f"{host.user}@{host.address}:{host.ssh_port}",
                        "ssh_key": host.key_path,
                        "known_hosts": state.known_hosts,
                        "virt_type": virt_type,
                    },
                },
            )
        hosts.append(name)
    images = {i["name"]: i for i in client.call("GET", "/api/v1/images")}
    image = images.get("tiny")
    if image is None or image.get("state") != "available":
        image = client.call(
            "POST",
            "/api/v1/images",
            {
                "name": "tiny",
                "kind": "kernel",
                "kernel": str(guest.kernel),
                "ramdisk": str(guest.initrd),
                "cmdline": guest.cmdline,
                "hypervisor": "kvm",
                "visibility": "public",
                "description": "a tiny Linux guest built from Debian",
            },
        )
    return {"network": known[network_name]["id"], "hosts": hosts, "image": image["id"]}


@lab.command("up")
@click.option("--hosts", "count", type=click.IntRange(1, 8), default=2)
@click.option("--workdir", default=DEFAULT_WORKDIR, type=click.Path(file_okay=False))
@click.option("--subnet", default="10.77.0.0/24")
@click.option("--no-register", is_flag=True, help="do not register the lab with the broker")
@click.option(
    "--virt-type",
    type=click.Choice(["auto", "kvm", "qemu"]),
    default="qemu",
    help="qemu (software emulation) by default: KVM on the machines this lab was "
    "made for cannot run stock kernels; auto uses KVM where libvirt offers it",
)
@pass_ctx
def up(ctx: Ctx, count: int, workdir: str, subnet: str, no_register: bool, virt_type: str) -> None:
    """Make (or find) the lab and register it with the running broker."""
    work = Path(workdir).resolve()
    try:
        state = lab_up(work, count, subnet=subnet)
    except LabError as exc:
        fail(str(exc))
    out: dict[str, Any] = {
        "lab": state.id,
        "workdir": str(work),
        "hosts": [
            {"name": h.name, "address": h.address, "uri": h.libvirt_uri} for h in state.hosts
        ],
    }
    if not no_register:
        try:
            out["registered"] = register(ctx.client(), state, work / "images" / "tiny", virt_type)
        except ClientError as exc:
            fail(f"the lab is up but could not be registered: {exc.message}")
    show(ctx, out)


@lab.command("down")
@click.option("--workdir", default=DEFAULT_WORKDIR, type=click.Path(file_okay=False))
@pass_ctx
def down(ctx: Ctx, workdir: str) -> None:
    """Unregister the lab's hosts and stop everything the lab started."""
    work = Path(workdir).resolve()
    status = lab_status(work)
    left: list[str] = []
    if status.state is not None:
        try:
            client = ctx.client()
            for host in status.state.hosts:
                name = _host_name(status.state, host.name)
                try:
                    client.call("DELETE", f"/api/v1/targets/{name}")
                except ClientError as exc:
                    if "does not exist" not in exc.message:
                        left.append(f"{name}: {exc.message}")
        except ClientError:
            pass  # no broker: nothing registered to remove
    if left:
        fail("the lab stays up; " + "; ".join(left))
    show(ctx, {"stopped": lab_down(work)})


@lab.command("status")
@click.option("--workdir", default=DEFAULT_WORKDIR, type=click.Path(file_okay=False))
@pass_ctx
def status(ctx: Ctx, workdir: str) -> None:
    """What of the lab is up."""
    show(ctx, lab_status(Path(workdir).resolve()).to_json())
