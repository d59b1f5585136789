"""Importing an OVF package into a target's datastore as a template VM, the standard way.

Decisions:

* vSphere reads the descriptor: ``OvfManager.CreateImportSpec`` against the target's resource
  pool and datastore turns it into an import spec and the list of files it needs; errors it
  reports there (an unsupported device, a malformed descriptor) are refused before anything is
  made. ``ResourcePool.ImportVApp`` then makes the VM, in the datacenter's VM folder, and a
  lease whose device URLs take the disks' bytes.
* The lease is read with ``RetrievePropertiesEx``, polled until it leaves ``initializing``
  (govmomi's simulator answers the ``Fetch`` accessor on a lease with a crash, so accessors
  are not used). Each file is PUT to its device URL (``*`` standing for the endpoint's host)
  streamed from disk, with the session's cookie and the target's TLS settings, and the
  lease's progress is reported after each, which also keeps it alive.
* Success is ``HttpNfcLeaseComplete`` and then ``MarkAsTemplate``: the template is what the
  image launches from (``template:NAME``). On any failure the lease is aborted and the VM it
  made destroyed, so a failed import leaves nothing in the inventory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.vmware.faults import fault_text
from backends.vmware.inventory import Where
from backends.vmware.sdk import vim, vmodl
from backends.vmware.session import Session
from broker.errors import BackendError, BackendTimeout, InvalidRequest

PC = vmodl.query.PropertyCollector
LEASE_POLL = 0.05


def import_template(
    session: Session,
    where: Where,
    name: str,
    descriptor: str,
    files: Mapping[str, Path],
    timeout: float,
) -> str:
    """Import the package as the template VM ``name``; returns its name."""
    what = f"import the OVF package as {name}"
    params = vim.OvfManager.CreateImportSpecParams(entityName=name, diskProvisioning="thin")
    result = session.call(
        lambda c: c.ovfManager.CreateImportSpec(descriptor, where.pool, where.datastore, params),
        what,
    )
    problems = [fault_text(e) for e in (result.error or ())]
    if problems or result.importSpec is None:
        raise InvalidRequest(
            f"vSphere cannot import this OVF: {'; '.join(problems) or 'no import spec'}",
            field="descriptor",
        )
    missing = sorted({i.path for i in result.fileItem or ()} - set(files))
    if missing:
        raise InvalidRequest(f"the OVF package lacks {', '.join(missing)}", field="files")
    lease = session.call(
        lambda _c: where.pool.ImportVApp(spec=result.importSpec, folder=where.vm_folder), what
    )
    entity = None
    try:
        info = _ready(session, lease, timeout, what)
        entity = info.entity
        items = list(result.fileItem or ())
        for n, item in enumerate(items, 1):
            url = next((u for u in info.deviceUrl if u.importKey == item.deviceId), None)
            if url is None:
                raise BackendError(f"{what}: the lease has no URL for {item.path}")
            session.put_file(url.url, files[item.path], _content_type(item.path))
            _progress(session, lease, int(100 * n / len(items)), what)
        session.call(lambda _c: lease.HttpNfcLeaseComplete(), what)
        session.call(lambda _c: entity.MarkAsTemplate(), f"mark {name} as a template")
    except BaseException:
        with contextlib.suppress(Exception):
            session.call(lambda _c: lease.HttpNfcLeaseAbort(), what)
        if entity is not None:
            with contextlib.suppress(Exception):
                session.call(lambda _c: entity.Destroy_Task(), f"remove {name}")
        raise
    return name


def _progress(session: Session, lease: Any, percent: int, what: str) -> None:
    session.call(lambda _c: lease.HttpNfcLeaseProgress(percent), what)


def _ready(session: Session, lease: Any, timeout: float, what: str) -> Any:
    """The lease's ``info`` once it is ready; its fault when it fails."""
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=lease)],
        propSet=[PC.PropertySpec(type=vim.HttpNfcLease, pathSet=["state", "info", "error"])],
    )
    deadline = time.monotonic() + timeout
    while True:
        found = session.retrieve([spec])
        props = found[0][1] if found else {}
        state = str(props.get("state", ""))
        if state == "ready":
            return props["info"]
        if state == "error":
            fault = props.get("error")
            raise BackendError(f"{what}: {fault_text(fault) if fault else 'the lease failed'}")
        if state not in ("initializing", "") or time.monotonic() > deadline:
            raise BackendTimeout(f"{what}: the lease is {state or 'unreadable'}")
        time.sleep(LEASE_POLL)


def _content_type(path: str) -> str:
    return (
        "application/x-vnd.vmware-streamVmdk"
        if path.endswith(".vmdk")
        else "application/x-iso9660-image"
    )
