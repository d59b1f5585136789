"""Flavors: the instance sizes on offer (EC2 names such as t3.micro are rows, not code)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import insert, select

from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import AlreadyExists, InvalidRequest
from broker.events import audit, record
from broker.runtime import Runtime


@dataclasses.dataclass(frozen=True, slots=True)
class FlavorView:
    name: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    arch: str
    price_per_hour: float


async def describe(rt: Runtime, names: tuple[str, ...] = ()) -> list[FlavorView]:
    stmt = select(
        m.Flavor.name,
        m.Flavor.vcpus,
        m.Flavor.memory_mb,
        m.Flavor.disk_gb,
        m.Flavor.arch,
        m.Flavor.price_per_hour,
    ).order_by(m.Flavor.vcpus, m.Flavor.memory_mb)
    if names:
        stmt = stmt.where(m.Flavor.name.in_(names))
    async with rt.engine.connect() as conn:
        return [FlavorView(*r) for r in await conn.execute(stmt)]


async def create(rt: Runtime, caller: Caller, flavor: FlavorView) -> FlavorView:
    require_admin(caller)
    if (
        not 0 < len(flavor.name) <= 64
        or flavor.vcpus < 1
        or flavor.memory_mb < 64
        or flavor.disk_gb < 0
        or flavor.price_per_hour < 0
    ):
        raise InvalidRequest("a flavor needs a name, vcpus >= 1, memory >= 64 MiB, disk >= 0")
    async with rt.engine.begin() as conn:
        if await conn.scalar(select(m.Flavor.name).where(m.Flavor.name == flavor.name)):
            raise AlreadyExists(f"the flavor '{flavor.name}' exists", resource="flavor")
        await conn.execute(insert(m.Flavor).values(**dataclasses.asdict(flavor)))
        await record(conn, [audit(flavor.name, caller.name, "flavor created")])
    return flavor
