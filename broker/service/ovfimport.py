"""OVF packages imported into a target's storage as images (a vSphere template, for now).

Decides:

* Operators only: the package lands in one host's datastore, the image may be public.
* Three steps, so a package's disks stream through the admin API and never sit in memory:
  :func:`begin` reads the descriptor (lxml; at most :data:`MAX_DESCRIPTOR` bytes; no entities,
  no network) for the files it references, registers the image *pending* and keeps the
  descriptor, the target and the expected files in ``<data_dir>/ovf/<image id>/``;
  :func:`receive` stores one referenced file there (no more bytes than the descriptor's
  ``ovf:size`` says, when it says); :func:`finish` hands descriptor and files to the target's
  driver (:class:`broker.protocols.OvfImportBackend`), and the image becomes *available* with the
  location ``template:cloudbroker-<image id>``, which the VMware backend launches by cloning.
* A file reference is a plain name beside the descriptor (no directories, no ``..``): the
  package is a flat directory, as OVF tools write it. A descriptor naming none is refused.
* A target whose driver cannot import OVF is refused at :func:`begin` with ``Unsupported``.
* Whatever happens in :func:`finish`, the staged files are removed; a failure marks the image
  *failed* with the reason as an ``error`` event, so a half-imported image is never launched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lxml import etree  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import select, update

from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import (
    BackendTimeout,
    BrokerError,
    InvalidRequest,
    InvalidState,
    NotFound,
    Unsupported,
)
from broker.events import EventRecord, audit, record
from broker.protocols import OvfImportBackend, imports_ovf
from broker.runtime import Runtime
from broker.service import images, targets
from broker.service.common import check_ids

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
MAX_DESCRIPTOR = 1 << 20
MAX_FILES = 64
MAX_FILE_BYTES = 256 * 2**30
TIMEOUT = 3600.0
HREF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True, slots=True)
class OvfFile:
    href: str
    size: int | None  # as the descriptor declares it


@dataclasses.dataclass(frozen=True, slots=True)
class OvfImportView:
    image: images.ImageView
    target: str
    files: tuple[OvfFile, ...]


def staging_root(rt: Runtime) -> Path:
    return rt.config.data_path / "ovf"


def referenced_files(descriptor: str) -> tuple[OvfFile, ...]:
    """The files an OVF descriptor's ``References`` name, checked (see the module docstring)."""
    if len(descriptor.encode()) > MAX_DESCRIPTOR:
        raise InvalidRequest(f"an OVF descriptor is limited to {MAX_DESCRIPTOR} bytes")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(descriptor.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidRequest(f"the OVF descriptor is not XML: {exc}", field="descriptor") from None
    if root.tag != f"{{{OVF_NS}}}Envelope":
        raise InvalidRequest("the descriptor is not an OVF 1.x Envelope", field="descriptor")
    found: dict[str, OvfFile] = {}
    for el in root.iterfind(f"{{{OVF_NS}}}References/{{{OVF_NS}}}File"):
        href = el.get(f"{{{OVF_NS}}}href") or ""
        if not HREF.match(href):
            raise InvalidRequest(
                f"the OVF references '{href[:60]}': only plain file names beside the "
                "descriptor are taken",
                field="descriptor",
            )
        size = el.get(f"{{{OVF_NS}}}size")
        if size is not None and (not size.isdigit() or int(size) > MAX_FILE_BYTES):
            raise InvalidRequest(f"the OVF gives '{href}' a bad size", field="descriptor")
        found[href] = OvfFile(href, int(size) if size is not None else None)
    if not found or len(found) > MAX_FILES:
        raise InvalidRequest(
            f"an OVF package references 1 to {MAX_FILES} files (disks)", field="descriptor"
        )
    return tuple(found.values())


async def begin(
    rt: Runtime,
    caller: Caller,
    *,
    name: str,
    target: str,
    descriptor: str,
    visibility: str = "private",
    description: str = "",
) -> OvfImportView:
    """Register the image (pending) and stage the descriptor; the files are uploaded next."""
    require_admin(caller)
    files = referenced_files(descriptor)
    where = await targets.get(rt, caller, target)
    if rt.backends is None or not imports_ovf(rt.backends.factory(where.driver)):
        raise Unsupported(f"the {where.driver} driver of '{where.name}' cannot import OVF packages")
    spec = images.ImageSpec(
        name=name,
        kind="disk",
        location="upload:ovf",
        hypervisor=where.hypervisor or "vmware",
        visibility=visibility,
        description=description,
    )
    view = await images.register(rt, caller, spec)
    stage = staging_root(rt) / view.id
    stage.mkdir(parents=True, exist_ok=False)
    (stage / "descriptor.ovf").write_text(descriptor, encoding="utf-8")
    manifest = {"target": where.id, "files": [dataclasses.asdict(f) for f in files]}
    (stage / "manifest.json").write_text(json.dumps(manifest))
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Image).where(m.Image.id == view.id).values(state="pending"))
        await record(conn, [audit(view.id, caller.name, "OVF import begun", target=where.name)])
    return OvfImportView(await images.get(rt, caller, view.id), where.name, files)


async def _staged(rt: Runtime, caller: Caller, image_id: str) -> tuple[Path, dict[str, Any]]:
    require_admin(caller)
    check_ids("image", [image_id], "image")
    async with rt.engine.connect() as conn:
        state = await conn.scalar(select(m.Image.state).where(m.Image.id == image_id))
    stage = staging_root(rt) / image_id
    if state is None:
        raise NotFound(f"the image '{image_id}' does not exist", resource="image", field=image_id)
    if state != "pending" or not (stage / "manifest.json").is_file():
        raise InvalidState(
            f"the image '{image_id}' is {state}, not an OVF import waiting for its files",
            resource="image",
            state=state,
        )
    return stage, json.loads((stage / "manifest.json").read_text())


async def receive(
    rt: Runtime,
    caller: Caller,
    image_id: str,
    href: str,
    chunks: AsyncIterator[bytes],
) -> OvfFile:
    """Store one file the descriptor references."""
    stage, manifest = await _staged(rt, caller, image_id)
    declared = {f["href"]: f["size"] for f in manifest["files"]}
    if href not in declared:
        raise NotFound(
            f"the OVF of '{image_id}' references no file '{href[:60]}'", resource="file", field=href
        )
    limit = declared[href] if declared[href] is not None else MAX_FILE_BYTES
    partial, size = stage / f"{href}.part", 0
    try:
        with partial.open("wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise InvalidRequest(f"'{href}' is larger than the {limit} bytes declared")
                fh.write(chunk)
        if declared[href] is not None and size != declared[href]:
            raise InvalidRequest(f"'{href}' has {size} bytes; the OVF declares {declared[href]}")
        partial.replace(stage / href)
    finally:
        partial.unlink(missing_ok=True)
    return OvfFile(href, size)


def _sizes(files: dict[str, str]) -> dict[str, int | None]:
    """Each staged file's size (None: not uploaded yet)."""
    return {h: Path(p).stat().st_size if Path(p).is_file() else None for h, p in files.items()}


async def finish(rt: Runtime, caller: Caller, image_id: str) -> images.ImageView:
    """Import the staged package on its target; the image becomes available, or failed."""
    stage, manifest = await _staged(rt, caller, image_id)
    files = {f["href"]: str(stage / f["href"]) for f in manifest["files"]}
    sizes = _sizes(files)
    missing = sorted(h for h, n in sizes.items() if n is None)
    if missing:
        raise InvalidState(
            f"the OVF import '{image_id}' still waits for {', '.join(missing)}",
            resource="image",
            state="pending",
        )
    template = f"cloudbroker-{image_id}"
    size = sum(n or 0 for n in sizes.values())
    assert rt.backends is not None
    try:
        backend = await rt.backends.get(manifest["target"])
        if not imports_ovf(backend):
            raise Unsupported("the target's driver cannot import OVF packages")
        importer: OvfImportBackend = backend  # type: ignore[assignment]
        descriptor = (stage / "descriptor.ovf").read_text(encoding="utf-8")
        made = await asyncio.wait_for(importer.import_ovf(template, descriptor, files), TIMEOUT)
    except (BrokerError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, BrokerError) else "no answer in time"
        failed = BackendTimeout(f"the OVF import of '{image_id}': {reason}")
        async with rt.engine.begin() as conn:
            await conn.execute(update(m.Image).where(m.Image.id == image_id).values(state="failed"))
            await record(
                conn, [EventRecord(image_id, "error", caller.name, message=f"OVF import: {reason}")]
            )
        if isinstance(exc, BrokerError):
            raise
        raise failed from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(m.Image)
            .where(m.Image.id == image_id)
            .values(state="available", location=f"template:{made}", size_bytes=size)
        )
        await record(conn, [audit(image_id, caller.name, "OVF imported", template=made)])
    return await images.get(rt, caller, image_id)
