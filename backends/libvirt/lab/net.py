"""The lab's network: namespaces, veth pairs and bridges, made and removed with iproute2.

Decides the topology (all of it inside namespaces the lab owns, except one veth end)::

    root ns            lab ns (cbl<id>-lab)              host ns (cbl<id>-hN)
    cbl<id> .1 ─────── uplink ─┐
                               labbr .2 ──── vh<N> ─────── eth0 ─┐
                                                                 br0 .1N ── guests' taps (libvirt)

The root namespace gets one address and the route to the lab subnet, so the broker reaches every
host (and every guest) directly; nothing else in the root namespace changes. Hosts get no default
route: nothing in the lab can send traffic beyond the lab subnet. Before that the
subnet is checked against the root namespace's routes and addresses, so a lab never shadows a
network that is already there.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from backends.libvirt.lab.model import HOST_BRIDGE, LAB_BRIDGE, LabError, LabPlan

NETNS_DIR = Path("/run/netns")


def ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    """Run one ``ip`` command (in ``namespace`` when given) and return its output."""
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def namespaces(prefix: str) -> list[str]:
    """Network namespaces whose names start with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def namespace_pids(name: str) -> list[int]:
    """Processes inside a network namespace."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(word) for word in out.stdout.split() if word.isdigit()]


def link_exists(name: str, namespace: str | None = None) -> bool:
    argv = ["ip", *(["-n", namespace] if namespace else []), "link", "show", "dev", name]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def check_subnet_free(plan: LabPlan) -> None:
    """Refuse a subnet that overlaps a route or an address of the root namespace."""
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]")
    addrs = json.loads(ip("-j", "-4", "addr", "show") or "[]")
    taken: list[tuple[str, ipaddress.IPv4Network]] = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default" and route.get("dev") != plan.uplink:
            try:
                taken.append((f"route {dst} dev {route.get('dev')}", _network(dst)))
            except ValueError:
                continue
    for link in addrs:
        if link.get("ifname") == plan.uplink:
            continue
        for info in link.get("addr_info", []):
            net = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
            taken.append((f"address {info['local']} on {link.get('ifname')}", net))
    for what, net in taken:
        if net.prefixlen > 0 and net.overlaps(plan.subnet) and not net.is_loopback:
            raise LabError(
                f"lab subnet {plan.subnet} overlaps {what} in the root namespace; "
                "choose another subnet"
            )


def _network(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text if "/" in text else f"{text}/32", strict=False)


def _bridge(name: str, namespace: str, address: str | None, prefixlen: int) -> None:
    # A bridge whose own MAC is not set takes the lowest of its ports': a guest's tap (fe:54:..)
    # joining it could then change it, and the tap of a guest migrating in gives the second
    # host's bridge the very same MAC as the first one's, so neither answers the other (a live
    # migration's stream found "no route to host"). Each bridge gets a MAC of its own from its
    # address instead, which no port changes.
    mac = ["address", _mac_of(address)] if address else []
    ip("link", "add", name, *mac, "type", "bridge", "stp_state", "0", "forward_delay", "0",
       namespace=namespace)  # fmt: skip
    if address:
        ip("addr", "add", f"{address}/{prefixlen}", "dev", name, namespace=namespace)
    ip("link", "set", name, "up", namespace=namespace)


def _mac_of(address: str) -> str:
    """A locally administered unicast MAC made from an IPv4 address (unique in the lab)."""
    return "02:00:" + ":".join(f"{int(octet):02x}" for octet in address.split("."))


def create_lab_network(plan: LabPlan) -> None:
    """The lab namespace with its bridge, and the root namespace's uplink into it."""
    ns = plan.lab_namespace
    ip("netns", "add", ns)
    ip("link", "set", "lo", "up", namespace=ns)
    _bridge(LAB_BRIDGE, ns, plan.lab_address, plan.subnet.prefixlen)
    ip("link", "add", plan.uplink, "type", "veth", "peer", "name", "uplink", "netns", ns)
    ip("link", "set", "uplink", "master", LAB_BRIDGE, "up", namespace=ns)
    ip("addr", "add", f"{plan.gateway}/{plan.subnet.prefixlen}", "dev", plan.uplink)
    ip("link", "set", plan.uplink, "up")


def create_host_network(plan: LabPlan, name: str) -> None:
    """A host namespace: eth0 (veth into the lab bridge) enslaved to br0, which has its address.

    Guests' taps join br0, so they sit on the lab segment next to their host.
    """
    ns = plan.host_namespace(name)
    lab_end = f"v{name}"
    ip("netns", "add", ns)
    ip("link", "set", "lo", "up", namespace=ns)
    ip("link", "add", lab_end, "netns", plan.lab_namespace, "type", "veth",
       "peer", "name", "eth0", "netns", ns)  # fmt: skip
    ip("link", "set", lab_end, "master", LAB_BRIDGE, "up", namespace=plan.lab_namespace)
    _bridge(HOST_BRIDGE, ns, plan.host_address(name), plan.subnet.prefixlen)
    ip("link", "set", "eth0", "master", HOST_BRIDGE, "up", namespace=ns)


def delete_network(plan: LabPlan) -> list[str]:
    """Delete every namespace of the lab and the uplink; return what was removed."""
    removed = []
    for ns in namespaces(f"{plan.prefix}-"):
        ip("netns", "del", ns, check=False)
        removed.append(f"netns {ns}")
    if link_exists(plan.uplink):
        ip("link", "del", plan.uplink, check=False)
        removed.append(f"link {plan.uplink}")
    return removed


def leftovers(plan: LabPlan) -> list[str]:
    """Network objects of this lab that still exist."""
    found = [f"netns {ns}" for ns in namespaces(f"{plan.prefix}-")]
    if link_exists(plan.uplink):
        found.append(f"link {plan.uplink}")
    return found


def exec_in(namespace: str, argv: Sequence[str]) -> list[str]:
    """The argument list that runs ``argv`` inside a lab namespace."""
    return ["ip", "netns", "exec", namespace, *argv]
