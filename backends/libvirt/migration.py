"""Moving a domain between two libvirt hosts of one cluster.

The broker opens the destination itself and drives the migration (libvirt's managed direct
migration), so no host needs credentials for another. A running domain moves live, its memory
copied while it runs; a powered-off one moves its definition only (offline). Either way the
destination keeps the definition and the source forgets it, so exactly one host holds the
domain afterwards. Disks stay where they are: the hosts of a cluster share the instances'
storage (a host whose store is reached over SSH is refused: its files would be left behind).
The hypervisor's own migration stream goes to ``migration_uri`` when the destination has one
(``tcp://ADDR:PORT``: hosts whose libvirt cannot guess a reachable address, as the lab's).
"""

from __future__ import annotations

import libvirt

from broker.errors import BackendError, Unsupported
from broker.protocols import Observed, TargetConfig
from broker.states import State


def migrate_domain(source: libvirt.virConnect, ref: str, dest: TargetConfig) -> Observed:
    """Move domain ``ref`` from ``source`` to the host ``dest``; what it is there."""
    if str(dest.settings.get("store", "shared")) != "shared":
        raise Unsupported(f"{dest.name} keeps its own image store: migration needs shared disks")
    try:
        domain = source.lookupByName(ref)
        live = bool(domain.isActive())
        target = libvirt.open(str(dest.settings.get("uri", "")))
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot migrate {ref}: {exc.get_error_message()}") from exc
    flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    flags |= libvirt.VIR_MIGRATE_LIVE if live else libvirt.VIR_MIGRATE_OFFLINE
    params: dict[str, str] = {}
    uri = str(dest.settings.get("migration_uri", ""))
    if uri and live:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = uri
    try:
        domain.migrate3(target, params, flags)
        moved = target.lookupByName(ref)
        running = moved.isActive()
    except libvirt.libvirtError as exc:
        raise BackendError(
            f"migrating {ref} to {dest.name} failed: {exc.get_error_message()}"
        ) from exc
    finally:
        target.close()
    return Observed(ref, State.RUNNING if running else State.POWEROFF, f"migrated to {dest.name}")
