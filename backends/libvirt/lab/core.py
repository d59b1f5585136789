"""Bringing the lab up, tearing it down, and saying what is up.

Decides the order of things and what "clean" means:

- ``lab_up`` is idempotent: a healthy lab with the same plan is returned as it is; anything else
  (a half-made lab, a dead daemon, another size) is torn down first and made again. A failure
  half-way tears down what was made and re-raises. One lock file serialises runs per workdir.
- ``lab_down`` finds its objects by name (namespaces ``cbl<id>-*``, link ``cbl<id>``, cgroups
  ``cloudbroker-lab-<id>-*``), not only from ``lab.json``, so it also cleans after a run that
  died. It stops the reapers (SIGTERM: they stop sshd, libvirtd and every qemu), then kills by
  pid whatever is still in the lab's cgroups or network namespaces, removes the cgroups,
  namespaces and link, the runtime folder, and the lab user if a lab created it (its home
  carries a mark) and no other lab is up. Keys, host UUIDs and logs stay in the workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends.libvirt.lab import hostd, net
from backends.libvirt.lab.debian import LAB_PACKAGES, ensure_packages
from backends.libvirt.lab.model import (
    DEFAULT_SSH_PORT,
    DEFAULT_SUBNET,
    DEFAULT_USER,
    HOST_BRIDGE,
    LAB_BRIDGE,
    RUNTIME_ROOT,
    STATE_FILE,
    LabError,
    LabHost,
    LabPlan,
    LabState,
    load_state,
    save_state,
)

STOP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class HostStatus:
    """Which of one host's processes are alive."""

    name: str
    reaper: bool
    sshd: bool
    libvirtd: bool
    socket: bool

    @property
    def up(self) -> bool:
        return self.reaper and self.sshd and self.libvirtd and self.socket


@dataclasses.dataclass(frozen=True, slots=True)
class LabStatus:
    """What ``lab_status`` found: the saved state, each host, and objects left over."""

    up: bool
    state: LabState | None
    hosts: list[HostStatus]
    leftovers: list[str]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.to_json() if self.state else None
        return out


def lab_up(
    workdir: Path,
    hosts: int = 2,
    *,
    subnet: str = DEFAULT_SUBNET,
    user: str = DEFAULT_USER,
    ssh_port: int = DEFAULT_SSH_PORT,
) -> LabState:
    """Make (or find) a lab of ``hosts`` libvirt hosts for ``workdir``; return its state."""
    _require_root()
    plan = LabPlan.make(workdir, hosts, subnet, user, ssh_port)
    ensure_packages(LAB_PACKAGES)
    with _locked(plan.workdir):
        current = lab_status(plan.workdir)
        if current.up and current.state is not None and _same_plan(current.state, plan):
            return current.state
        _down(plan, current.state)
        try:
            return _up(plan)
        except BaseException:
            _down(plan, load_state(plan.workdir))
            raise


def lab_down(workdir: Path) -> list[str]:
    """Stop and remove everything the lab of ``workdir`` made; return what was removed."""
    _require_root()
    state = load_state(workdir)
    plan = _plan_for(workdir, state)
    if not workdir.is_dir():  # nothing to lock; clean up by name all the same
        return _down(plan, state)
    with _locked(plan.workdir):
        return _down(plan, state)


def lab_status(workdir: Path) -> LabStatus:
    """Whether the lab is up, host by host, and what is left over from it."""
    state = load_state(workdir)
    plan = _plan_for(workdir, state)
    hosts = []
    if state is not None:
        for host in state.hosts:
            alive = {
                role: _alive(pid, host.cgroup) for role, pid in host.pids.items()
            }  # fmt: skip
            hosts.append(
                HostStatus(
                    name=host.name,
                    reaper=alive.get("reaper", False),
                    sshd=alive.get("sshd", False),
                    libvirtd=alive.get("libvirtd", False),
                    socket=Path(host.socket_path).is_socket(),
                )
            )
    found = net.leftovers(plan) + [str(p) for p in _cgroup_dirs(plan)]
    up = state is not None and bool(hosts) and all(h.up for h in hosts)
    return LabStatus(up=up, state=state, hosts=hosts, leftovers=[] if up else found)


def _up(plan: LabPlan) -> LabState:
    started = time.time()
    net.check_subnet_free(plan)
    created_user = hostd.ensure_users(plan.user)
    public_key = hostd.ensure_keypair(plan.key_path, f"cloudbroker-lab-{plan.id}")
    plan.runtime_dir.mkdir(parents=True, exist_ok=True)
    RUNTIME_ROOT.chmod(0o755)
    plan.runtime_dir.chmod(0o755)
    authorized = plan.runtime_dir / "authorized_keys"
    authorized.write_text(public_key + "\n")
    authorized.chmod(0o644)
    known = []
    uuids = {}
    configs = []
    net.create_lab_network(plan)
    for name in plan.host_names():
        host_key = hostd.ensure_keypair(
            plan.host_dir(name) / "ssh_host_ed25519_key", plan.hostname(name)
        )
        host_key_fields = " ".join(host_key.split()[:2])
        where = plan.host_address(name)
        if plan.ssh_port != 22:
            where = f"[{where}]:{plan.ssh_port}"
        known.append(f"{where} {host_key_fields}\n")
        uuids[name] = hostd.host_uuid(plan, name)
        net.create_host_network(plan, name)
        configs.append(hostd.write_host_files(plan, name, uuids[name]))
    plan.known_hosts.write_text("".join(known))
    (plan.workdir / "etc-hosts").write_text(plan.etc_hosts())
    (plan.workdir / "resolv.conf").write_text(
        "# the lab has no DNS\noptions timeout:1 attempts:1\n"
    )
    # Saved before the daemons start, so that a crash from here on is cleaned up by name and pid.
    save_state(plan.workdir, _state(plan, uuids, created_user, started))
    hostd.start_hosts(configs)
    hostd.check_hosts(plan, plan.host_names())
    state = _state(plan, uuids, created_user, started)
    save_state(plan.workdir, state)
    return state


def _state(plan: LabPlan, uuids: dict[str, str], created_user: bool, started: float) -> LabState:
    hosts = [
        LabHost(
            name=name,
            hostname=plan.hostname(name),
            namespace=plan.host_namespace(name),
            address=plan.host_address(name),
            ssh_port=plan.ssh_port,
            user=plan.user,
            key_path=str(plan.key_path),
            libvirt_uri=plan.libvirt_uri(name),
            socket_path=str(plan.host_socket(name)),
            bridge=HOST_BRIDGE,
            host_uuid=uuids[name],
            cgroup=plan.cgroup(name),
            pids=hostd.daemon_pids(plan, name),
        )
        for name in plan.host_names()
    ]
    return LabState(
        workdir=str(plan.workdir),
        id=plan.id,
        subnet=str(plan.subnet),
        gateway=plan.gateway,
        lab_namespace=plan.lab_namespace,
        lab_address=plan.lab_address,
        lab_bridge=LAB_BRIDGE,
        uplink=plan.uplink,
        user=plan.user,
        key_path=str(plan.key_path),
        known_hosts=str(plan.known_hosts),
        runtime_dir=str(plan.runtime_dir),
        guest_first=plan.guest_first,
        guest_last=plan.guest_last,
        hosts=hosts,
        created_user=created_user,
        started_at=started,
    )


def _down(plan: LabPlan, state: LabState | None) -> list[str]:
    removed: list[str] = []
    for name, pid, cgroup in _reapers(plan, state):
        if _alive(pid, cgroup):  # it stops its sshd, libvirtd and guests, then exits
            _signal(pid, signal.SIGTERM)
            removed.append(f"stopped {name} (reaper {pid})")
    if removed:
        _wait_empty(plan, STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        pids = dict(_lab_pids(plan))
        for ns in net.namespaces(f"{plan.prefix}-"):
            pids.update((pid, ns) for pid in net.namespace_pids(ns))
        pids.pop(os.getpid(), None)
        if not pids:
            break
        for pid, where in sorted(pids.items()):
            if _signal(pid, signal.SIGKILL):
                removed.append(f"killed {pid} ({where})")
        time.sleep(0.05)
    groups = _cgroup_dirs(plan)
    for path in groups:
        _rmdir_tree(path)
    removed += [f"cgroup {name}" for name in sorted({path.name for path in groups})]
    removed += net.delete_network(plan)
    if plan.runtime_dir.exists():
        shutil.rmtree(plan.runtime_dir, ignore_errors=True)
        removed.append(f"dir {plan.runtime_dir}")
    with contextlib.suppress(OSError):
        RUNTIME_ROOT.rmdir()  # only when no other lab uses it
    user = state.user if state is not None else plan.user
    if not RUNTIME_ROOT.exists() and hostd.lab_made_user(user):  # the last lab made it
        hostd.remove_user(user)
        removed.append(f"user {user}")
    (plan.workdir / STATE_FILE).unlink(missing_ok=True)
    return removed


# -- processes and cgroups ----------------------------------------------------------------------


def _reapers(plan: LabPlan, state: LabState | None) -> list[tuple[str, int, str]]:
    """``(host, pid, cgroup)`` of every reaper, from lab.json or else the hosts' daemons.json."""
    if state is not None:
        return [(h.name, h.pids["reaper"], h.cgroup) for h in state.hosts if "reaper" in h.pids]
    hosts_dir = plan.workdir / "hosts"
    names = sorted(p.name for p in hosts_dir.iterdir()) if hosts_dir.is_dir() else []
    found = []
    for name in names:
        pid = hostd.daemon_pids(plan, name).get("reaper")
        if pid:
            found.append((name, pid, plan.cgroup(name)))
    return found


def _cgroup_mounts() -> list[Path]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] in ("cgroup", "cgroup2"):
            out.append(Path(fields[1]))
    return out


def _cgroup_dirs(plan: LabPlan) -> list[Path]:
    return [
        path
        for mount in _cgroup_mounts()
        for path in sorted(mount.glob(f"cloudbroker-lab-{plan.id}-*"))
        if path.is_dir()
    ]


def _lab_pids(plan: LabPlan) -> list[tuple[int, str]]:
    """Every process in the lab's cgroups, with the cgroup it was found in."""
    found: dict[int, str] = {}
    for path in _cgroup_dirs(plan):
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for word in procs.read_text().split():
                    found.setdefault(int(word), path.name)
    found.pop(os.getpid(), None)
    return sorted(found.items())


def _wait_empty(plan: LabPlan, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _lab_pids(plan) and time.monotonic() < deadline:
        time.sleep(0.05)


def _rmdir_tree(path: Path) -> None:
    """Remove a cgroup directory and its children, deepest first (cgroupfs has no rm -r)."""
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _alive(pid: int, cgroup: str) -> bool:
    """The pid runs (not a zombie) and is still in the lab host's cgroup (not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        groups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and f"/{cgroup}" in groups


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# -- helpers ------------------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, cgroups, libvirtd as root)")


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / ".lab.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _plan_for(workdir: Path, state: LabState | None) -> LabPlan:
    if state is None:
        return LabPlan.make(workdir, 1)
    return LabPlan.make(workdir, max(1, len(state.hosts)), state.subnet, state.user, _port(state))


def _port(state: LabState) -> int:
    return state.hosts[0].ssh_port if state.hosts else DEFAULT_SSH_PORT


def _same_plan(state: LabState, plan: LabPlan) -> bool:
    return (
        len(state.hosts) == plan.hosts
        and state.subnet == str(plan.subnet)
        and state.user == plan.user
        and _port(state) == plan.ssh_port
    )
