"""``GET /api/v1/capacity``: the small read-only document a federated peer places by.

Decides what a linking site may learn of this one: our site id and region, how much is free
on our enabled local hosts (in total and as a count per flavor), capped by the caller's own
quotas (a linking site is an ordinary user here, so it never sees more room than we would give
it), and the images it may launch (id and name). Regions and peers of ours are not offered:
what we forward onwards is not ours to promise.

The caller authenticates with its EC2 access key, as HTTP Basic ``access_key:secret``, or with
an admin API bearer token. Nothing here writes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import errors
from broker import model as m
from broker.auth import Caller
from broker.model import utcnow
from broker.runtime import Runtime
from broker.service import flavors, images, quotas
from broker.snapshots import snapshot_targets

MAX_CREDENTIAL = 512


def _runtime(request: web.Request) -> Runtime:
    from frontends.admin.app import RUNTIME  # app.py imports this module for its routes

    return request.app[RUNTIME]


async def caller_of(request: web.Request) -> Caller:
    """The caller of a Basic (EC2 key) or Bearer (admin token) request."""
    rt = _runtime(request)
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        caller = await rt.caller_for_token(value)
        if caller is None:
            raise errors.Unauthenticated("the token is unknown or expired")
        return caller
    if scheme.lower() != "basic" or not value or len(value) > MAX_CREDENTIAL:
        raise errors.Unauthenticated(
            "send 'Authorization: Basic base64(access_key:secret)' or a bearer token"
        )
    try:
        key, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.Unauthenticated("the Basic credential is not valid base64") from None
    found = await rt.caller_for_key(key) if sep and key else None
    if found is None or not hmac.compare_digest(found[1].encode(), secret.encode()):
        raise errors.Unauthenticated("AuthFailure: the access key or secret is not valid")
    return found[0]


def site_id(rt: Runtime) -> str:
    """This site's name in federation: ``[broker] site_id``, else its region."""
    return rt.config.broker.site_id or rt.config.broker.region


async def _quota_room(conn: AsyncConnection, caller: Caller) -> dict[str, float]:
    """What the caller's user and group quotas still admit (absent: no limit)."""
    room: dict[str, float] = {}
    if not caller.user_id:
        return room
    for sid, kind in ((caller.user_id, "user"), (caller.group_id, "group")):
        limits = {
            r: lim
            for r, lim in await conn.execute(
                select(m.Quota.resource, m.Quota.limit).where(m.Quota.subject_id == sid)
            )
        }
        if not limits:
            continue
        used = await quotas.usage(conn, sid, kind)
        for resource in ("instances", "vcpus", "memory_mb"):
            if resource in limits:
                left = max(0.0, limits[resource] - used[resource])
                room[resource] = min(room.get(resource, math.inf), left)
    return room


def _fits(cpu: int, mem: int, disk: int, flavor: flavors.FlavorView) -> int:
    counts = []
    for free, per in ((cpu, flavor.vcpus), (mem, flavor.memory_mb), (disk, flavor.disk_gb)):
        if per > 0:
            counts.append(max(0, free) // per)
    return min(counts) if counts else 0


async def document(rt: Runtime, caller: Caller) -> dict[str, Any]:
    """The capacity document for ``caller`` (see the module docstring)."""
    async with rt.engine.connect() as conn:
        hosts = [t for t in await snapshot_targets(conn) if t.kind == "host"]
        room = await _quota_room(conn, caller)
    usable = [t for t in hosts if t.state == "enabled"]
    known = await flavors.describe(rt)
    free_cpu = sum(max(0, t.free_cpu) for t in usable)
    free_mem = sum(max(0, t.free_memory_mb) for t in usable)
    free_disk = sum(max(0, t.free_disk_gb) for t in usable)
    capped: Mapping[str, float] = {
        "vcpus": min(free_cpu, room.get("vcpus", math.inf)),
        "memory_mb": min(free_mem, room.get("memory_mb", math.inf)),
    }
    flavor_room = []
    for flavor in known:
        count = sum(_fits(t.free_cpu, t.free_memory_mb, t.free_disk_gb, flavor) for t in usable)
        for resource, per in (
            ("instances", 1),
            ("vcpus", flavor.vcpus),
            ("memory_mb", flavor.memory_mb),
        ):
            if resource in room and per > 0:
                count = min(count, int(room[resource] // per))
        flavor_room.append(
            {
                "name": flavor.name,
                "vcpus": flavor.vcpus,
                "memory_mb": flavor.memory_mb,
                "disk_gb": flavor.disk_gb,
                "free": count,
            }
        )
    page = await images.describe(rt, caller)
    return {
        "site": site_id(rt),
        "region": rt.config.broker.region,
        "at": utcnow().isoformat().replace("+00:00", "Z"),
        "hosts": {"enabled": len(usable), "total": len(hosts)},
        "free": {
            "vcpus": int(capped["vcpus"]),
            "memory_mb": int(capped["memory_mb"]),
            "disk_gb": free_disk,
            "instances": None if "instances" not in room else int(room["instances"]),
        },
        "flavors": flavor_room,
        "images": [
            {"id": i.id, "name": i.name, "arch": i.arch, "hypervisor": i.hypervisor}
            for i in page.items
            if i.state == "available"
        ],
    }


async def capacity(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    doc = await document(_runtime(request), caller)
    return web.json_response(doc, headers={"Cache-Control": "no-store"})
