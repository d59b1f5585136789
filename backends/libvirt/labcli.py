"""``cloudbroker lab up|down|status``: the local lab of libvirt hosts, registered with the broker.

``lab up`` makes the hosts (see :mod:`backends.libvirt.lab`), builds the tiny guest image from
Debian packages, and, when a broker answers, registers each lab host (reached through its own
sshd with ``qemu+ssh://``), the lab's network (the hosts' guest bridge and its free addresses)
and the tiny image. With ``--store ssh`` each host gets an image store of its own that only the
SSH side writes to (see :func:`host_store`). ``lab down`` removes from the broker what it
registered (hosts that still run instances are refused and named) and leaves nothing running
and nothing behind.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from pathlib import Path
from typing import Any

import click

from backends.libvirt.guest import build_tiny_guest
from backends.libvirt.lab import LabError, LabHost, LabState, lab_down, lab_status, lab_up
from broker.cli import Ctx, fail, pass_ctx, show
from broker.client import AdminClient, ClientError

DEFAULT_WORKDIR = "var/lab"


@click.group()
def lab() -> None:
    """A local lab of libvirt hosts in network namespaces, for development, demos and tests."""


def _host_name(state: LabState, name: str) -> str:
    return f"lab-{state.id[:6]}-{name}"


def host_store(state: LabState, host: LabHost) -> Path:
    """The image store of a lab host registered with store "ssh", made and owned by the lab user.

    The lab's namespaces share one filesystem with the broker, so "not shared" can only mean a
    distinct path: a folder in the lab's runtime folder (removed by ``lab down``) that the broker
    never touches with local file operations; only the host's sshd (as the lab user) writes there.
    """
    path = Path(state.runtime_dir) / host.name / "store"
    path.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(host.user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o755)
    return path


def register(
    client: AdminClient,
    state: LabState,
    cache: Path,
    virt_type: str = "qemu",
    store: str = "shared",
) -> dict[str, Any]:
    """Register the lab's hosts, network and tiny image with the broker (idempotent).

    ``store`` "shared": the hosts' files are made by the broker under its own data folder;
    "ssh": each host has its own image store (:func:`host_store`) reached over SSH only."""
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
            settings: dict[str, Any] = {
                "uri": host.libvirt_uri,
                "ssh": f"{host.user}@{host.address}:{host.ssh_port}",
                "ssh_key": host.key_path,
                "known_hosts": state.known_hosts,
                "virt_type": virt_type,
                "migration_uri": host.migration_uri(),  # qemu cannot guess a lab host's address
            }
            if store == "ssh":
                settings |= {"store": "ssh", "image_dir": str(host_store(state, host))}
            client.call(
                "POST",
                "/api/v1/targets",
                {
                    "name": name,
                    "kind": "host",
                    "driver": "libvirt",
                    "hypervisor": "kvm",
                    "cluster": f"lab-{state.id[:6]}",
                    "settings": settings,
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
@click.option(
    "--store",
    type=click.Choice(["shared", "ssh"]),
    default="shared",
    help="shared: the broker makes the hosts' files in its data folder; ssh: each host has "
    "an image store of its own, written over SSH only",
)
@pass_ctx
def up(
    ctx: Ctx,
    count: int,
    workdir: str,
    subnet: str,
    no_register: bool,
    virt_type: str,
    store: str,
) -> None:
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
            out["registered"] = register(
                ctx.client(), state, work / "images" / "tiny", virt_type, store
            )
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
