"""Where a target's VMs go, and how much room the target has.

Decisions:

* A target is one compute resource: a vCenter cluster (``cluster``), a standalone host's compute
  resource (``cluster`` naming the host works too), or, on a standalone ESXi host, its only one.
  A name the inventory does not have is refused at ``host add`` with the names it does have.
* VMs go into the compute resource's root resource pool (or ``resource_pool`` by name below it),
  the datacenter's VM folder, and ``datastore`` (else the compute resource's datastore with the
  most free space). NICs go on the port group named by the network mapping, else ``network``.
* Capacity is read in one property retrieval: connected hosts outside maintenance mode give CPUs
  (logical threads) and memory; the limits of a named resource pool lower them (its CPU limit
  counted in cores of the hosts' speed; a root pool's "limits" are the hosts' own capacity, so
  they are not applied twice); the datastore gives disk; quickStats give use. ``cpu_ratio`` and
  ``memory_ratio`` (default 1) are the operator's overcommit, as vSphere clusters usually run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from backends.vmware.sdk import vim, vmodl
from broker.errors import InvalidRequest
from broker.protocols import TargetProbe

PC = vmodl.query.PropertyCollector
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclasses.dataclass(frozen=True, slots=True)
class Network:
    name: str
    obj: Any
    switch_uuid: str = ""  # distributed port groups only
    portgroup_key: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Where:
    datacenter: Any
    datacenter_name: str
    compute: Any
    pool: Any
    vm_folder: Any
    datastore: Any
    datastore_name: str
    hosts: tuple[Any, ...]
    networks: Mapping[str, Network]
    default_network: str
    vcenter: bool
    child_pool: bool


def _pick(kind: str, items: Sequence[Any], name: str, setting: str) -> Any:
    names = [i.name for i in items]
    if name:
        for item in items:
            if item.name == name:
                return item
        raise InvalidRequest(
            f"no {kind} named '{name}' (there are: {', '.join(names) or 'none'})", field=setting
        )
    if len(items) == 1:
        return items[0]
    raise InvalidRequest(
        f"there are {len(items)} {kind}s ({', '.join(names) or 'none'}): name one with --{setting}",
        field=setting,
    )


def resolve(content: Any, settings: Mapping[str, Any]) -> Where:
    """Find the datacenter, compute resource, pool, folder, datastore and networks named."""
    dcs = [e for e in content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
    dc = _pick("datacenter", dcs, str(settings.get("datacenter") or ""), "datacenter")
    computes = _compute_resources(dc.hostFolder)
    want = str(settings.get("cluster") or "")
    compute = next((c for c in computes if want and want in [h.name for h in c.host]), None)
    if compute is None or any(c.name == want for c in computes):
        compute = _pick("cluster or host", computes, want, "cluster")
    pool = compute.resourcePool
    if settings.get("resource_pool"):
        pool = _pick(
            "resource pool",
            list(pool.resourcePool),
            str(settings["resource_pool"]),
            "resource_pool",
        )
    stores = list(compute.datastore)
    ds_name = str(settings.get("datastore") or "")
    if ds_name:
        datastore = _pick("datastore", stores, ds_name, "datastore")
    elif stores:
        datastore = max(stores, key=lambda d: d.summary.freeSpace)
    else:
        raise InvalidRequest(
            f"the compute resource {compute.name} has no datastore", field="datastore"
        )
    networks = {n.name: _network(n) for n in compute.network}
    default = str(settings.get("network") or "")
    if default and default not in networks:
        raise InvalidRequest(
            f"no network named '{default}' (there are: {', '.join(sorted(networks)) or 'none'})",
            field="network",
        )
    if not default:
        default = next((n for n in networks if not networks[n].switch_uuid), "") or next(
            iter(networks), ""
        )
    return Where(
        datacenter=dc,
        datacenter_name=dc.name,
        compute=compute,
        pool=pool,
        vm_folder=dc.vmFolder,
        datastore=datastore,
        datastore_name=datastore.name,
        hosts=tuple(compute.host),
        networks=networks,
        default_network=default,
        vcenter=content.about.apiType == "VirtualCenter",
        child_pool=pool != compute.resourcePool,
    )


def _compute_resources(folder: Any) -> list[Any]:
    out: list[Any] = []
    for child in folder.childEntity:
        if isinstance(child, vim.ComputeResource):
            out.append(child)
        elif isinstance(child, vim.Folder):
            out.extend(_compute_resources(child))
    return out


def _network(net: Any) -> Network:
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        return Network(net.name, net, net.config.distributedVirtualSwitch.uuid, str(net.key))
    return Network(net.name, net)


def capacity_specs(where: Where) -> list[Any]:
    """The property specs of one capacity read (hosts, datastore, resource pool)."""
    objs = [PC.ObjectSpec(obj=h) for h in where.hosts]
    objs += [PC.ObjectSpec(obj=where.datastore), PC.ObjectSpec(obj=where.pool)]
    props = [
        PC.PropertySpec(
            type=vim.HostSystem,
            pathSet=[
                "summary.hardware.numCpuThreads",
                "summary.hardware.cpuMhz",
                "summary.hardware.memorySize",
                "summary.quickStats.overallCpuUsage",
                "summary.quickStats.overallMemoryUsage",
                "runtime.connectionState",
                "runtime.inMaintenanceMode",
            ],
        ),
        PC.PropertySpec(type=vim.Datastore, pathSet=["summary.capacity", "summary.freeSpace"]),
        PC.PropertySpec(
            type=vim.ResourcePool,
            pathSet=["config.cpuAllocation.limit", "config.memoryAllocation.limit"],
        ),
    ]
    return [PC.FilterSpec(objectSet=objs, propSet=props)]


def to_probe(
    found: Sequence[tuple[Any, dict[str, Any]]],
    running: int,
    *,
    pool_limits: bool,
    cpu_ratio: float = 1.0,
    memory_ratio: float = 1.0,
) -> TargetProbe:
    """A capacity sample from what :func:`capacity_specs` read."""
    cpus = mem = used_mhz = used_mb = 0
    total_mhz = 0
    disk_total = disk_free = 0
    cpu_limit = mem_limit = -1
    for obj, p in found:
        if isinstance(obj, vim.HostSystem):
            if p.get("runtime.connectionState") != "connected" or p.get(
                "runtime.inMaintenanceMode"
            ):
                continue
            threads = int(p.get("summary.hardware.numCpuThreads") or 0)
            cpus += threads
            total_mhz += threads * int(p.get("summary.hardware.cpuMhz") or 0)
            mem += int(p.get("summary.hardware.memorySize") or 0) // MIB
            used_mhz += int(p.get("summary.quickStats.overallCpuUsage") or 0)
            used_mb += int(p.get("summary.quickStats.overallMemoryUsage") or 0)
        elif isinstance(obj, vim.Datastore):
            disk_total = int(p.get("summary.capacity") or 0)
            disk_free = int(p.get("summary.freeSpace") or 0)
        elif isinstance(obj, vim.ResourcePool) and pool_limits:
            cpu_limit = int(p.get("config.cpuAllocation.limit", -1) or -1)
            mem_limit = int(p.get("config.memoryAllocation.limit", -1) or -1)
    mhz_per_cpu = total_mhz / cpus if cpus else 0.0
    if cpu_limit >= 0 and mhz_per_cpu:
        cpus = min(cpus, max(1, int(cpu_limit // mhz_per_cpu)))
    if mem_limit >= 0:
        mem = min(mem, mem_limit)
    used_cpu = used_mhz / mhz_per_cpu if mhz_per_cpu else 0.0
    cpus, mem = int(cpus * cpu_ratio), int(mem * memory_ratio)
    return TargetProbe(
        total_cpu=cpus,
        total_memory_mb=mem,
        total_disk_gb=disk_total // GIB,
        used_cpu=round(used_cpu, 2),
        free_memory_mb=max(0, mem - used_mb),
        free_disk_gb=round(disk_free / GIB, 2),
        load=round(used_cpu / cpus, 3) if cpus else 0.0,
        running=running,
        hypervisor="vmware",
    )
