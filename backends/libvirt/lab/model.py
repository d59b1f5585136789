"""What a lab is made of: its names, its address plan and the JSON state saved in its workdir.

Decides the lab's naming and numbering, so that every run on the same workdir finds the same
things again (even after a crash that lost ``lab.json``):

- the lab id is a short hash of the resolved workdir; every kernel object carries it: network
  namespaces ``cbl<id>-lab`` and ``cbl<id>-h<N>``, the root-namespace veth ``cbl<id>``, cgroups
  ``cloudbroker-lab-<id>-h<N>``, and the public runtime folder ``/run/cloudbroker-lab/<id>``
  (libvirt sockets and authorized_keys, readable by the ssh user wherever the workdir lives);
- the subnet (default 10.77.0.0/24, at least a /24) is numbered: .1 the root namespace's
  uplink (where the broker talks from), .2 the lab namespace's bridge, .11, .12, ... the hosts,
  .100 up to .250 free for guests (each host bridges its guests onto the same segment).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from pathlib import Path
from typing import Any

DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_USER = "cblab"
DEFAULT_SSH_PORT = 22
HOST_BRIDGE = "br0"
LAB_BRIDGE = "labbr"
RUNTIME_ROOT = Path("/run/cloudbroker-lab")
STATE_FILE = "lab.json"
MAX_HOSTS = 80
HOST_OFFSET = 10
GUEST_FIRST_OFFSET = 100
GUEST_LAST_OFFSET = 250


class LabError(RuntimeError):
    """The lab could not be brought up, inspected or torn down; the message says why."""


def lab_id(workdir: Path) -> str:
    """Six hex digits naming this workdir's lab in namespaces, links and cgroups."""
    return hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:6]


@dataclasses.dataclass(frozen=True, slots=True)
class LabPlan:
    """The names and addresses of a lab, derived from its workdir, size and subnet."""

    workdir: Path
    id: str
    hosts: int
    subnet: ipaddress.IPv4Network
    user: str = DEFAULT_USER
    ssh_port: int = DEFAULT_SSH_PORT

    @classmethod
    def make(
        cls,
        workdir: Path,
        hosts: int,
        subnet: str = DEFAULT_SUBNET,
        user: str = DEFAULT_USER,
        ssh_port: int = DEFAULT_SSH_PORT,
    ) -> LabPlan:
        """Validate and build a plan."""
        try:
            network = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise LabError(f"bad lab subnet {subnet!r}: {exc}") from exc
        if network.prefixlen > 24:
            raise LabError(f"lab subnet {subnet} is smaller than a /24")
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}")
        if not user.isidentifier() or not user.islower():
            raise LabError(f"bad lab user name {user!r}")
        return cls(workdir.resolve(), lab_id(workdir), hosts, network, user, ssh_port)

    @property
    def prefix(self) -> str:
        return f"cbl{self.id}"

    @property
    def lab_namespace(self) -> str:
        return f"{self.prefix}-lab"

    @property
    def uplink(self) -> str:
        return self.prefix

    @property
    def gateway(self) -> str:
        return str(self.subnet[1])

    @property
    def lab_address(self) -> str:
        return str(self.subnet[2])

    @property
    def runtime_dir(self) -> Path:
        return RUNTIME_ROOT / self.id

    @property
    def key_path(self) -> Path:
        return self.workdir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "ssh" / "known_hosts"

    def host_names(self) -> list[str]:
        return [f"h{index}" for index in range(1, self.hosts + 1)]

    def hostname(self, name: str) -> str:
        return f"cblab-{name}"

    def host_namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def host_address(self, name: str) -> str:
        return str(self.subnet[HOST_OFFSET + int(name.removeprefix("h"))])

    def host_dir(self, name: str) -> Path:
        return self.workdir / "hosts" / name

    def host_socket(self, name: str) -> Path:
        return self.runtime_dir / name / "libvirt-sock"

    def cgroup(self, name: str) -> str:
        return f"cloudbroker-lab-{self.id}-{name}"

    def libvirt_uri(self, name: str) -> str:
        """How the broker reaches the host: libvirt's ssh transport, as for a real host."""
        return (
            f"qemu+ssh://{self.user}@{self.host_address(name)}:{self.ssh_port}/system"
            f"?socket={self.host_socket(name)}&keyfile={self.key_path}&no_verify=1"
        )

    @property
    def guest_first(self) -> str:
        return str(self.subnet[GUEST_FIRST_OFFSET])

    @property
    def guest_last(self) -> str:
        return str(self.subnet[min(GUEST_LAST_OFFSET, self.subnet.num_addresses - 2)])

    def etc_hosts(self) -> str:
        """/etc/hosts of every lab host: all hosts by name, so no lookup ever goes to DNS."""
        lines = ["127.0.0.1 localhost"]
        lines += [f"{self.host_address(n)} {self.hostname(n)}" for n in self.host_names()]
        return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True, slots=True)
class LabHost:
    """One lab host as the broker sees it: where to ssh, which libvirt URI, which pids."""

    name: str
    hostname: str
    namespace: str
    address: str
    ssh_port: int
    user: str
    key_path: str
    libvirt_uri: str
    socket_path: str
    bridge: str
    host_uuid: str
    cgroup: str
    pids: dict[str, int]  # reaper, sshd, libvirtd

    @property
    def local_uri(self) -> str:
        """The same daemon without ssh, for code running as root on this machine."""
        return f"qemu:///system?socket={self.socket_path}"

    def migration_uri(self, port: int = 49152) -> str:
        """An explicit qemu migration URI to this host (libvirt needs one between lab hosts)."""
        return f"tcp://{self.address}:{port}"


@dataclasses.dataclass(frozen=True, slots=True)
class LabState:
    """Everything lab_up made, saved as ``<workdir>/lab.json``."""

    workdir: str
    id: str
    subnet: str
    gateway: str
    lab_namespace: str
    lab_address: str
    lab_bridge: str
    uplink: str
    user: str
    key_path: str
    known_hosts: str
    runtime_dir: str
    guest_first: str  # guests may use guest_first..guest_last on the hosts' bridges
    guest_last: str
    hosts: list[LabHost]
    created_user: bool = False
    started_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        """The inverse of :meth:`to_json`."""
        values = dict(data)
        values["hosts"] = [LabHost(**host) for host in values.get("hosts", [])]
        return cls(**values)

    def guest_addresses(self) -> list[str]:
        """The addresses free for guests, in order."""
        first = ipaddress.IPv4Address(self.guest_first)
        last = ipaddress.IPv4Address(self.guest_last)
        return [str(first + i) for i in range(int(last) - int(first) + 1)]

    def host(self, name: str) -> LabHost:
        """The host called ``name`` (h1, h2, ...)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)


def load_state(workdir: Path) -> LabState | None:
    """The saved state, or None when there is none or it cannot be read."""
    try:
        data = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
        return LabState.from_json(data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_state(workdir: Path, state: LabState) -> None:
    """Write ``lab.json`` atomically."""
    tmp = workdir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(workdir / STATE_FILE)
