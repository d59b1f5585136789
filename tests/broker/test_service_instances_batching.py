"""Launches written together and describes read through broker.db.Reads, on both databases:
a refused launch leaves the others of its batch alone, one client token twice in a batch makes
one set, quotas stay exact, a describe shows a change at once, and a busy SQLite read hands off
to a thread that waits."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import threading
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from broker import model as m
from broker.auth import SYSTEM
from broker.errors import NotFound, QuotaExceeded
from broker.runtime import Runtime
from broker.service import instances, networks, quotas, tags
from broker.service.instances import InstanceFilter, LaunchRequest
from tests.broker.test_service_instances import setup_world
from tests.conftest import Tenants


async def test_a_refused_launch_leaves_its_batch_alone(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    asks = [LaunchRequest(ami, "t3.micro") for _ in range(6)]
    asks[2] = LaunchRequest("ami-0123456789abcdef0", "t3.micro")  # no such image
    asks[4] = LaunchRequest(ami, "no-such-flavor")
    got = await asyncio.gather(
        *[instances.launch(rt, tenants.alice, a) for a in asks], return_exceptions=True
    )
    assert isinstance(got[2], NotFound)
    assert isinstance(got[4], Exception) and not isinstance(got[4], NotFound | QuotaExceeded)
    made = [g for i, g in enumerate(got) if i not in (2, 4)]
    assert all(isinstance(g, list) and len(g) == 1 for g in made)
    page = await instances.describe(rt, tenants.alice)
    assert sorted(i.id for i in page.items) == sorted(g[0].id for g in made)  # type: ignore[index]


async def test_one_token_twice_in_a_batch_makes_one_set(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    req = LaunchRequest(ami, "t3.micro", 2, 2, client_token="same")
    first, second = await asyncio.gather(
        instances.launch(rt, tenants.alice, req), instances.launch(rt, tenants.alice, req)
    )
    assert [i.id for i in first] == [i.id for i in second]
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Instance)) == 2


async def test_quota_is_exact_within_a_batch(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    from broker.auth import SYSTEM

    await quotas.set_quota(rt, SYSTEM, "alice", "instances", 3)
    got = await asyncio.gather(
        *[instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro")) for _ in range(7)],
        return_exceptions=True,
    )
    assert sum(isinstance(g, list) for g in got) == 3
    assert sum(isinstance(g, QuotaExceeded) for g in got) == 4


async def test_describe_shows_a_change_at_once(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    (inst,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    one = InstanceFilter(ids=(inst.id,))
    assert (await instances.describe(rt, tenants.alice, one)).items[0].tags == {}
    await tags.create(rt, tenants.alice, [inst.id], {"Name": "web"})
    assert (await instances.describe(rt, tenants.alice, one)).items[0].tags == {"Name": "web"}
    await instances.terminate(rt, tenants.alice, [inst.id])
    assert (await instances.describe(rt, tenants.alice, one)).items[0].state.value == "done"


async def test_a_busy_reader_hands_off(sqlite_rt: Runtime) -> None:
    """A read that SQLite answers busy on the loop runs again on a reader thread, which waits
    for the lock as the writer does, instead of failing or stalling the event loop."""
    threads: list[str] = []

    def read(conn: Connection) -> int:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            busy = sqlite3.OperationalError("database is locked")
            raise OperationalError("SELECT 1", {}, busy)
        return int(conn.scalar(select(func.count()).select_from(m.Instance)) or 0)

    assert await sqlite_rt.reads.run(read) == 0
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("cloudbroker-read")


async def test_other_read_errors_are_not_retried(sqlite_rt: Runtime) -> None:
    calls = 0

    def read(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(OperationalError):
        await sqlite_rt.reads.run(read)
    assert calls == 1


@pytest.mark.parametrize("count", [1, 3])
async def test_describe_by_ids_one_or_many(rt: Runtime, tenants: Tenants, count: int) -> None:
    ami = await setup_world(rt)
    made = await instances.launch(
        rt, tenants.alice, LaunchRequest(ami, "t3.micro", count, count, tags={"k": "v"})
    )
    rids = tuple(i.id for i in made)
    page = await instances.describe(rt, tenants.alice, InstanceFilter(ids=rids))
    assert [i.id for i in page.items] == sorted(rids)
    assert all(i.tags == {"k": "v"} and len(i.security_groups) == 0 for i in page.items)
    assert (await instances.describe(rt, tenants.bob, InstanceFilter(ids=rids))).items == []


async def test_a_batch_reads_the_leases_it_may_take_once(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    net = await networks.create(rt, SYSTEM, name="batched", cidr="10.70.0.0/24")
    req = LaunchRequest(ami, "t3.micro", network_id=net.id)
    reads: list[str] = []

    def on_execute(*args: Any) -> None:
        if "FROM leases" in str(args[2]):
            reads.append(str(args[2]))

    engine = rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        # launches arriving together are one transaction
        got = await asyncio.gather(*[instances.launch(rt, tenants.alice, req) for _ in range(41)])
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
    ips = sorted(int(ipaddress.ip_address(g[0].private_ip or "")) for g in got)
    assert len(set(ips)) == 41 and ips[-1] - ips[0] == 40  # the lowest free, none twice
    assert len(reads) == 1, reads  # one look-up, sized for the transaction's launches
