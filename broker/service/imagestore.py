"""The image store: image files uploaded to the broker, kept under ``<data_dir>/images``.

An import registers the image as *pending*, streams its bytes to a temporary file beside the
final one while hashing them, and only then renames it into place and marks the image
available with its size and SHA-256. A failed or aborted upload leaves no file and marks the
image failed, so a half-written image is never launched.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select, update

from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import InvalidRequest, InvalidState, NotFound
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service import images
from broker.service.common import check_ids

MAX_IMAGE_BYTES = 256 * 2**30


def store_root(rt: Runtime) -> Path:
    return rt.config.data_path / "images"


async def begin_import(rt: Runtime, caller: Caller, spec: images.ImageSpec) -> images.ImageView:
    """Register a disk image whose bytes are uploaded next (state pending, no location yet)."""
    placeholder = dataclasses.replace(spec, kind="disk", location="upload:")
    view = await images.register(rt, caller, placeholder)
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Image).where(m.Image.id == view.id).values(state="pending"))
    return await images.get(rt, caller, view.id)


async def receive(
    rt: Runtime,
    caller: Caller,
    image_id: str,
    chunks: AsyncIterator[bytes],
    *,
    expected_size: int | None = None,
) -> images.ImageView:
    """Store the uploaded bytes of a pending image and make it available."""
    check_ids("image", [image_id], "image")
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(m.Image.owner_id, m.Image.group_id, m.Image.state).where(
                    m.Image.id == image_id
                )
            )
        ).first()
    if row is None:
        raise NotFound(f"the image '{image_id}' does not exist", resource="image", field=image_id)
    authorize(caller, Ownership(row[0], row[1]), change=True, what="image", rid=image_id)
    if row[2] != "pending":
        raise InvalidState(
            f"the image '{image_id}' is {row[2]}; only a pending image takes an upload",
            resource=image_id,
            state=row[2],
        )
    root = store_root(rt)
    root.mkdir(parents=True, exist_ok=True)
    final = (root / f"{image_id}.img").resolve()
    if final.parent != root.resolve():
        raise InvalidRequest("bad image path")
    partial = final.with_suffix(".part")
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise InvalidRequest(f"images are limited to {MAX_IMAGE_BYTES} bytes")
                digest.update(chunk)
                fh.write(chunk)
        if expected_size is not None and size != expected_size:
            raise InvalidRequest(f"the upload ended after {size} of {expected_size} bytes")
        if size == 0:
            raise InvalidRequest("the upload was empty")
        partial.replace(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        async with rt.engine.begin() as conn:
            await conn.execute(update(m.Image).where(m.Image.id == image_id).values(state="failed"))
        raise
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(m.Image)
            .where(m.Image.id == image_id)
            .values(
                state="available",
                location=str(final),
                size_bytes=size,
                checksum="sha256:" + digest.hexdigest(),
            )
        )
        await record(conn, [audit(image_id, caller.name, "image uploaded", size=size)])
    return await images.get(rt, caller, image_id)
