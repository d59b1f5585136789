"""Quotas under 50 concurrent requests for the last few units, beyond the ``instances`` quota:
vCPUs, memory, a group quota shared by two members, volumes, volume size and addresses. Each
admits exactly what fits, refuses the rest with QuotaExceeded and leaves exactly the admitted
rows in the database, on SQLite and on PostgreSQL.

Launches in one runtime are written by one group-commit writer, which alone keeps them in
order; so the launches here come from several runtimes on the same database (as several broker
processes would), and only the quota row locks keep them from passing the last unit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import model as m
from broker.app import open_runtime
from broker.auth import SYSTEM, Caller
from broker.errors import QuotaExceeded
from broker.runtime import Runtime
from broker.seed import zone_name
from broker.service import addresses, instances, quotas, users
from broker.service import volumes as vols
from broker.service.instances import LaunchRequest
from tests.broker.test_service_instances import setup_world
from tests.conftest import Tenants, make_config

N = 50


async def storm(
    calls: Sequence[Callable[[], Awaitable[Any]]],
) -> tuple[list[Any], list[QuotaExceeded]]:
    """Run every call at once: (what was admitted, the QuotaExceeded refusals); nothing else."""
    results = await asyncio.gather(*[call() for call in calls], return_exceptions=True)
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    others = [r for r in results if isinstance(r, BaseException) and r not in refused]
    assert not others, others
    return [r for r in results if not isinstance(r, BaseException)], refused


async def ids_of(rt: Runtime, column: Any, where: Any) -> set[str]:
    async with rt.engine.connect() as conn:
        return set((await conn.scalars(select(column).where(where))).all())


async def member(rt: Runtime, name: str, group: str) -> Caller:
    creds = await users.create_user(rt, SYSTEM, name, group=group)
    return Caller(creds.user.id, creds.user.name, creds.user.group_id, creds.user.role)


@contextlib.asynccontextmanager
async def fleet(rt: Runtime, tmp: Path, url: str, more: int = 3) -> AsyncIterator[list[Runtime]]:
    """``rt`` and ``more`` other runtimes (engines, launch writers) on the same database."""
    others: list[Runtime] = []
    try:
        for _ in range(more):
            others.append(await open_runtime(make_config(tmp, url), migrate=False))
        yield [rt, *others]
    finally:
        for other in others:
            await other.aclose()


def launches(
    rts: Sequence[Runtime], callers: Sequence[Caller], ami: str
) -> list[Callable[[], Any]]:
    """N single t3.micro launches (2 vCPUs, 1024 MiB each), runtimes and callers taking turns."""
    return [
        functools.partial(
            instances.launch,
            rts[i % len(rts)],
            callers[i % len(callers)],
            LaunchRequest(ami, "t3.micro"),
        )
        for i in range(N)
    ]


@pytest.mark.parametrize(
    ("resource", "limit"),
    [
        ("vcpus", 2 + 5 * 2 + 1),  # one held (2), room for 5 more and one vCPU spare
        ("memory_mb", 1024 + 5 * 1024 + 512),  # one held (1024 MiB), room for 5 more and a half
    ],
)
async def test_a_vcpu_or_memory_quota_admits_exactly_what_fits(
    rt: Runtime, tenants: Tenants, tmp_path: Path, db_url: str, resource: str, limit: int
) -> None:
    ami = await setup_world(rt)
    (held,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    await quotas.set_quota(rt, SYSTEM, "alice", resource, limit)
    async with fleet(rt, tmp_path, db_url) as rts:
        admitted, refused = await storm(launches(rts, [tenants.alice], ami))
    assert (len(admitted), len(refused)) == (5, N - 5)
    assert {e.field for e in refused} == {resource}
    launched = {i.id for batch in admitted for i in batch}
    assert len(launched) == 5
    rows = await ids_of(rt, m.Instance.id, m.Instance.owner_id == tenants.alice.user_id)
    assert rows == launched | {held.id}
    used = {q.resource: q.used for q in await quotas.show(rt, SYSTEM, "alice")}
    assert (used["instances"], used["vcpus"], used["memory_mb"]) == (6, 12, 6 * 1024)


@pytest.mark.parametrize(
    ("resource", "limit"),
    [("instances", 2 + 5), ("vcpus", 2 * 2 + 5 * 2 + 1)],
)
async def test_a_group_quota_holds_for_two_members_launching_at_once(
    rt: Runtime, tmp_path: Path, db_url: str, resource: str, limit: int
) -> None:
    ami = await setup_world(rt)
    ann, ben = await member(rt, "ann", "team"), await member(rt, "ben", "team")
    assert ann.group_id == ben.group_id
    held = {
        i.id
        for c in (ann, ben)
        for i in await instances.launch(rt, c, LaunchRequest(ami, "t3.micro"))
    }
    await quotas.set_quota(rt, SYSTEM, "group:team", resource, limit)
    async with fleet(rt, tmp_path, db_url) as rts:
        admitted, refused = await storm(launches(rts, [ann, ben], ami))
    assert (len(admitted), len(refused)) == (5, N - 5)
    assert {e.field for e in refused} == {resource}
    assert all("group quota" in e.message for e in refused)
    launched = {i.id for batch in admitted for i in batch}
    rows = await ids_of(rt, m.Instance.id, m.Instance.group_id == ann.group_id)
    assert rows == launched | held and len(rows) == 7
    used = {q.resource: q.used for q in await quotas.show(rt, SYSTEM, "group:team")}
    assert (used["instances"], used["vcpus"]) == (7, 14)


@pytest.mark.parametrize(
    ("resource", "limit", "size"),
    [
        ("volumes", 1 + 5, 1),  # one held, room for 5 more
        ("volume_gb", 10 + 5 * 10 + 9, 10),  # 10 GiB held, room for 5 more of 10 and 9 spare
    ],
)
async def test_a_volume_quota_admits_exactly_what_fits(
    rt: Runtime, tenants: Tenants, resource: str, limit: int, size: int
) -> None:
    alice, zone = tenants.alice, zone_name(rt)
    held = await vols.create(rt, alice, zone, size)
    await quotas.set_quota(rt, SYSTEM, "alice", resource, limit)
    admitted, refused = await storm([lambda: vols.create(rt, alice, zone, size)] * N)
    assert (len(admitted), len(refused)) == (5, N - 5)
    assert {e.field for e in refused} == {resource}
    assert {e.resource for e in refused} == {"volume"}
    rows = await ids_of(rt, m.Volume.id, m.Volume.owner_id == alice.user_id)
    assert rows == {v.id for v in admitted} | {held.id}
    used = {q.resource: q.used for q in await quotas.show(rt, SYSTEM, "alice")}
    assert (used["volumes"], used["volume_gb"]) == (6, 6 * size)


async def test_an_address_quota_admits_exactly_what_fits(rt: Runtime, tenants: Tenants) -> None:
    """A quota of 3 (below the fixed cap of addresses.MAX_PER_OWNER, so the quota decides)."""
    alice = tenants.alice
    assert addresses.MAX_PER_OWNER > 3
    held = await addresses.allocate(rt, alice)
    await quotas.set_quota(rt, SYSTEM, "alice", "addresses", 3)
    admitted, refused = await storm([lambda: addresses.allocate(rt, alice)] * N)
    assert (len(admitted), len(refused)) == (2, N - 2)
    assert {e.field for e in refused} == {"addresses"}
    assert {e.resource for e in refused} == {"address"}
    rows = await ids_of(rt, m.Address.id, m.Address.owner_id == alice.user_id)
    assert rows == {a.id for a in admitted} | {held.id}
    ips = await ids_of(rt, m.Address.public_ip, m.Address.owner_id == alice.user_id)
    assert len(ips) == 3
    used = {q.resource: q.used for q in await quotas.show(rt, SYSTEM, "alice")}
    assert used["addresses"] == 3


@pytest.mark.parametrize("who", ["a user", "two members of a group"])
async def test_launches_without_a_network_count_each_other_against_the_quota(
    rt: Runtime, tenants: Tenants, tmp_path: Path, db_url: str, who: str
) -> None:
    """The vCPU storm where no default network exists, so the launches lease no addresses.

    With a network, a launch writes its instances (and leases) at once, and the lease keys
    alone keep concurrent launches apart. Without one, a group-commit batch of launches defers
    its rows to one insert at the end, and only the quota check and the user's and group's row
    locks stand between them and between runtimes.

    Fails today: a launch without interfaces does not count the instances that earlier
    launches of the same batch admitted (not written yet), so a whole batch passes the quota
    (13 admitted here instead of 5); see the report of this change.
    """
    ami = await setup_world(rt)
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Network).values(is_default=False))
    if who == "a user":
        callers, subject = [tenants.alice], "alice"
        theirs = m.Instance.owner_id == tenants.alice.user_id
    else:
        callers = [await member(rt, "ann", "team"), await member(rt, "ben", "team")]
        subject, theirs = "group:team", m.Instance.group_id == callers[0].group_id
    held = {
        i.id for c in callers for i in await instances.launch(rt, c, LaunchRequest(ami, "t3.micro"))
    }
    assert all(not i.interfaces for i in (await instances.describe(rt, SYSTEM)).items)
    await quotas.set_quota(rt, SYSTEM, subject, "vcpus", 2 * len(held) + 5 * 2 + 1)
    async with fleet(rt, tmp_path, db_url) as rts:
        admitted, refused = await storm(launches(rts, callers, ami))
    assert (len(admitted), len(refused)) == (5, N - 5)
    assert {e.field for e in refused} == {"vcpus"}
    launched = {i.id for batch in admitted for i in batch}
    rows = await ids_of(rt, m.Instance.id, theirs)
    assert rows == launched | held
