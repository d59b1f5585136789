"""Quotas per user and per group, checked and reserved atomically with what they limit.

A quota is a row (subject, resource, limit); no row means no limit. A launch locks its user's
and group's rows (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer) before it
counts what they hold, so two concurrent launches cannot both take the last unit. Usage is
counted from the live resources themselves, so it is released exactly when they go away.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import InvalidRequest, NotFound, QuotaExceeded
from broker.events import audit, record
from broker.protocols import PlacementRequest
from broker.runtime import Runtime

RESOURCES = (
    "instances",
    "vcpus",
    "memory_mb",
    "volumes",
    "volume_gb",
    "addresses",
    "images",
    "spend_per_hour",
)
MAX_LIMIT = 10**9


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaView:
    subject: str
    subject_id: str
    resource: str
    limit: float | None
    used: float


async def _subject(conn: AsyncConnection, name: str) -> tuple[str, str]:
    """(id, kind) of a user or group given by name or id ("group:NAME" forces a group)."""
    if name.startswith("group:"):
        gid = await conn.scalar(select(m.Group.id).where(m.Group.name == name[6:]))
        if gid is None:
            raise NotFound(f"the group '{name[6:]}' does not exist", resource="group")
        return gid, "group"
    uid = await conn.scalar(select(m.User.id).where((m.User.name == name) | (m.User.id == name)))
    if uid is not None:
        return uid, "user"
    gid = await conn.scalar(select(m.Group.id).where((m.Group.name == name) | (m.Group.id == name)))
    if gid is not None:
        return gid, "group"
    raise NotFound(f"no user or group named '{name}'", resource="user")


async def set_quota(
    rt: Runtime, caller: Caller, subject: str, resource: str, limit: float | None
) -> QuotaView:
    """Set (or with ``None`` remove) one limit of a user or group."""
    require_admin(caller)
    if resource not in RESOURCES:
        raise InvalidRequest(
            f"unknown quota '{resource}'; use one of {', '.join(RESOURCES)}", field="resource"
        )
    if limit is not None and (not math.isfinite(limit) or limit < 0 or limit > MAX_LIMIT):
        raise InvalidRequest(f"a quota must be between 0 and {MAX_LIMIT}", field="limit")
    if limit is not None and resource != "spend_per_hour" and limit != int(limit):
        raise InvalidRequest(f"the '{resource}' quota must be a whole number", field="limit")
    async with rt.engine.begin() as conn:
        sid, _kind = await _subject(conn, subject)
        await conn.execute(
            delete(m.Quota).where(m.Quota.subject_id == sid, m.Quota.resource == resource)
        )
        if limit is not None:
            await conn.execute(
                insert(m.Quota).values(subject_id=sid, resource=resource, limit=limit)
            )
        await record(conn, [audit(sid, caller.name, "quota set", resource=resource, limit=limit)])
    found = [q for q in await show(rt, caller, subject) if q.resource == resource]
    return found[0]


async def show(rt: Runtime, caller: Caller, subject: str | None = None) -> list[QuotaView]:
    """Every limit of a user or group with what it uses now (a user sees only their own)."""
    async with rt.engine.connect() as conn:
        if subject is None:
            sid, kind = caller.user_id, "user"
        else:
            sid, kind = await _subject(conn, subject)
            if not caller.is_admin and sid not in (caller.user_id, caller.group_id):
                raise NotFound(f"no user or group named '{subject}'", resource="user")
        limits = {
            r: lim
            for r, lim in await conn.execute(
                select(m.Quota.resource, m.Quota.limit).where(m.Quota.subject_id == sid)
            )
        }
        used = await usage(conn, sid, kind)
    name = subject or caller.name
    return [QuotaView(name, sid, r, limits.get(r), used[r]) for r in RESOURCES]


async def usage(conn: AsyncConnection, sid: str, kind: str) -> dict[str, float]:
    inst = m.Instance.owner_id if kind == "user" else m.Instance.group_id
    vol = m.Volume.owner_id if kind == "user" else m.Volume.group_id
    row = (
        await conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(m.Instance.vcpus), 0),
                func.coalesce(func.sum(m.Instance.memory_mb), 0),
            ).where(inst == sid, m.Instance.state != "done")
        )
    ).one()
    burst_spend = await conn.scalar(
        select(func.coalesce(func.sum(m.Flavor.price_per_hour), 0.0))
        .select_from(m.Instance)
        .join(m.Flavor, m.Flavor.name == m.Instance.flavor)
        .join(m.Target, m.Target.id == m.Instance.target_id)
        .where(inst == sid, m.Instance.state != "done", m.Target.kind != "host")
    )
    vols = (
        await conn.execute(
            select(func.count(), func.coalesce(func.sum(m.Volume.size_gb), 0)).where(
                vol == sid, m.Volume.state.not_in(["deleted"])
            )
        )
    ).one()
    owners = select(m.User.id).where(m.User.group_id == sid) if kind == "group" else None
    addr_cond: Any = (
        (m.Address.owner_id == sid) if owners is None else m.Address.owner_id.in_(owners)
    )
    img_cond: Any = (m.Image.owner_id == sid) if owners is None else m.Image.group_id == sid
    addresses = await conn.scalar(select(func.count()).select_from(m.Address).where(addr_cond))
    images_n = await conn.scalar(
        select(func.count()).select_from(m.Image).where(img_cond, m.Image.state != "deregistered")
    )
    return {
        "instances": row[0],
        "vcpus": row[1],
        "memory_mb": row[2],
        "volumes": vols[0],
        "volume_gb": vols[1],
        "addresses": addresses or 0,
        "images": images_n or 0,
        "spend_per_hour": float(burst_spend or 0.0),
    }


async def lock(conn: AsyncConnection, caller: Caller) -> None:
    """Serialise a subject's quota checks until the transaction ends (PostgreSQL row locks).

    FOR NO KEY UPDATE: it excludes the other launches' locks but not the KEY SHARE locks that
    foreign keys to the user take, so a launch inserting rows never deadlocks with another.
    """
    for table, rid in ((m.User, caller.user_id), (m.Group, caller.group_id)):
        await conn.execute(select(table.id).where(table.id == rid).with_for_update(key_share=True))


async def admit_instances(
    conn: AsyncConnection,
    caller: Caller,
    min_count: int,
    max_count: int,
    vcpus: int,
    memory_mb: int,
) -> int:
    """How many of ``max_count`` instances the quotas admit (at least ``min_count``, or raise)."""
    if not caller.user_id:
        return max_count
    await lock(conn, caller)
    allowed = max_count
    for sid, kind in ((caller.user_id, "user"), (caller.group_id, "group")):
        limits = {
            r: lim
            for r, lim in await conn.execute(
                select(m.Quota.resource, m.Quota.limit).where(m.Quota.subject_id == sid)
            )
        }
        if not limits:
            continue
        used = await usage(conn, sid, kind)
        for resource, per in (("instances", 1), ("vcpus", vcpus), ("memory_mb", memory_mb)):
            if resource in limits and per > 0:
                room = int((limits[resource] - used[resource]) // per)
                if room < min_count:
                    raise QuotaExceeded(
                        f"the {kind} quota of {limits[resource]:g} {resource} is reached "
                        f"({used[resource]:g} in use, {min_count * per:g} more asked)",
                        resource="instances",
                        field=resource,
                    )
                allowed = min(allowed, room)
    return allowed


async def admit(
    conn: AsyncConnection, caller: Caller, resource: str, amount: float, what: str
) -> None:
    """Raise QuotaExceeded unless ``amount`` more of ``resource`` fits for user and group."""
    if not caller.user_id:
        return
    await lock(conn, caller)
    for sid, kind in ((caller.user_id, "user"), (caller.group_id, "group")):
        limit = await conn.scalar(
            select(m.Quota.limit).where(m.Quota.subject_id == sid, m.Quota.resource == resource)
        )
        if limit is None:
            continue
        used = (await usage(conn, sid, kind))[resource]
        if used + amount > limit:
            raise QuotaExceeded(
                f"the {kind} quota of {limit:g} {resource} is reached ({used:g} in use)",
                resource=what,
                field=resource,
            )


async def spend_refusals(
    conn: AsyncConnection, bursts: Sequence[PlacementRequest]
) -> dict[str, str]:
    """Which of these bursts would pass their user's or group's ``spend_per_hour`` quota, with
    why; the others are charged in order, so one placement batch never passes a quota either."""
    subjects = {r.owner_id for r in bursts} | {r.group_id for r in bursts}
    limits = {
        sid: lim
        for sid, lim in await conn.execute(
            select(m.Quota.subject_id, m.Quota.limit).where(
                m.Quota.resource == "spend_per_hour", m.Quota.subject_id.in_(subjects)
            )
        )
    }
    if not limits:
        return {}
    prices = {n: p for n, p in await conn.execute(select(m.Flavor.name, m.Flavor.price_per_hour))}
    spent = {
        sid: (await usage(conn, sid, "group" if sid.startswith("g-") else "user"))["spend_per_hour"]
        for sid in limits
    }
    refused: dict[str, str] = {}
    for req in bursts:
        price = float(prices.get(req.flavor, 0.0))
        charged = [sid for sid in (req.owner_id, req.group_id) if sid in limits]
        over = [sid for sid in charged if spent[sid] + price > limits[sid] + 1e-9]
        if over:
            sid = over[0]
            kind = "group" if sid.startswith("g-") else "user"
            refused[req.instance_id] = (
                f"the {kind} quota of {limits[sid]:g} per hour of burst spend is reached "
                f"({spent[sid]:g} in use, {price:g} more asked)"
            )
            continue
        for sid in charged:
            spent[sid] += price
    return refused
