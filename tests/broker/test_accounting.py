"""Accounting: the pure per-hour function (hour splitting, billed states, open intervals, moves
between targets, prices), and the accounting pass on SQLite and PostgreSQL: idempotent, following
new transitions, and removing hours a corrected history no longer uses."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import model as m
from broker.accounting import (
    InstanceFacts,
    Rate,
    TargetPrices,
    Transition,
    account,
    rate,
    run_accounting,
    usage_hours,
)
from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import instances, targets
from broker.service.instances import LaunchRequest
from broker.states import Action
from tests.broker.test_service_instances import settle, setup_world
from tests.conftest import Tenants

DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


def at(hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return DAY + dt.timedelta(hours=hh, minutes=mm, seconds=ss)


INST = InstanceFacts("i-0000000000000001", "u-a", "g-a", "m1.small", 2, 2048, "t-host")
HOST = Rate("local", 0.6)


def hours(found: list[Any]) -> dict[int, tuple[int, float, str]]:
    return {u.hour.hour: (u.seconds, u.cost, u.target_id) for u in found}


def test_running_time_is_split_at_clock_hours() -> None:
    moves = [
        Transition(at(8, 0), "prolog", "t-host"),
        Transition(at(8, 40), "running"),
        Transition(at(10, 15), "shutdown"),
        Transition(at(10, 16), "poweroff"),
    ]
    found = usage_hours(INST, moves, {"t-host": HOST}, at(23))
    # 08:40-09:00 = 1200 s, 09:00-10:00 = 3600 s, 10:00-10:15 = 900 s; 0.6 an hour
    assert hours(found) == {
        8: (1200, 0.2, "t-host"),
        9: (3600, 0.6, "t-host"),
        10: (900, 0.15, "t-host"),
    }
    assert {u.hour for u in found} == {at(8), at(9), at(10)}
    assert all(u.target_kind == "local" and u.vcpus == 2 and u.memory_mb == 2048 for u in found)


def test_only_running_is_billed() -> None:
    moves = [
        Transition(at(8, 0), "pending"),
        Transition(at(8, 0), "prolog", "t-host"),
        Transition(at(8, 1), "boot"),
        Transition(at(8, 2), "running"),
        Transition(at(9, 0), "shutdown"),
        Transition(at(9, 1), "poweroff"),
        Transition(at(9, 30), "boot"),
        Transition(at(9, 31), "running"),
        Transition(at(10, 0), "suspended"),
        Transition(at(10, 10), "running"),
        Transition(at(10, 20), "unknown"),
        Transition(at(10, 25), "running"),
        Transition(at(10, 30), "epilog"),
        Transition(at(10, 31), "done"),
    ]
    found = usage_hours(INST, moves, {"t-host": HOST}, at(23))
    # hour 8: 08:02-09:00 = 3480 s; hour 9: 09:31-10:00 = 1740 s;
    # hour 10: 10:10-10:20 + 10:25-10:30 = 900 s (suspended and unknown are not billed)
    assert {h: s for h, (s, _c, _t) in hours(found).items()} == {8: 3480, 9: 1740, 10: 900}


def test_an_open_interval_counts_up_to_now_and_grows_when_recomputed() -> None:
    moves = [Transition(at(11, 0), "prolog", "t-host"), Transition(at(11, 30), "running")]
    first = usage_hours(INST, moves, {"t-host": HOST}, at(12, 20))
    assert hours(first) == {11: (1800, 0.3, "t-host"), 12: (1200, 0.2, "t-host")}
    later = usage_hours(INST, moves, {"t-host": HOST}, at(13))
    assert hours(later) == {11: (1800, 0.3, "t-host"), 12: (3600, 0.6, "t-host")}
    assert usage_hours(INST, moves, {"t-host": HOST}, at(13)) == later  # same input, same rows


def test_transitions_after_now_are_not_counted() -> None:
    moves = [
        Transition(at(8), "prolog", "t-host"),
        Transition(at(8), "running"),
        Transition(at(9, 30), "shutdown"),
    ]
    assert hours(usage_hours(INST, moves, {"t-host": HOST}, at(9))) == {8: (3600, 0.6, "t-host")}


def test_an_hour_on_two_targets_names_the_longer_and_sums_both_costs() -> None:
    moves = [
        Transition(at(8), "prolog", "t-host"),
        Transition(at(8), "running"),
        Transition(at(8, 30), "shutdown"),
        Transition(at(8, 31), "poweroff"),
        Transition(at(8, 32), "stopped"),
        Transition(at(8, 33), "pending"),
        Transition(at(8, 40), "prolog", "t-east"),
        Transition(at(8, 45), "running"),
        Transition(at(9, 15), "epilog"),
    ]
    rates = {"t-host": HOST, "t-east": Rate("burst", 0.0208)}
    found = usage_hours(INST, moves, rates, at(23))
    # hour 8: 1800 s on the host (0.30) + 900 s in the region (0.0052); hour 9: 900 s region
    assert hours(found) == {8: (2700, 0.3052, "t-host"), 9: (900, 0.0052, "t-east")}
    assert [u.target_kind for u in found] == ["local", "burst"]


def test_rates_by_target_kind() -> None:
    host = TargetPrices("t-h", "host", cpu_cost=0.01, memory_cost=0.005)
    assert rate(host, "m1.small", 2, 2048, 9.9) == Rate("local", pytest.approx(0.03))
    region = TargetPrices(
        "t-r",
        "region",
        settings={"flavor_map": {"m1.small": "t3.small"}, "prices": {"t3.small": 0.0208}},
    )
    assert rate(region, "m1.small", 2, 2048, 9.9) == Rate("burst", 0.0208)
    assert rate(region, "t3.micro", 2, 1024, 0.0104) == Rate("burst", 0.0104)  # not in the table
    default = TargetPrices("t-r", "region", settings={"default_price": 0.05, "prices": {}})
    assert rate(default, "t3.micro", 2, 1024, 0.0104) == Rate("burst", 0.05)
    bare_peer = TargetPrices("t-p", "peer", settings={"url": "http://peer"})
    assert rate(bare_peer, "t3.micro", 2, 1024, 0.0104) == Rate("peer", 0.0104)
    priced_peer = TargetPrices("t-p", "peer", settings={"prices": {"t3.micro": 0.02}})
    assert rate(priced_peer, "t3.micro", 2, 1024, 0.0104) == Rate("peer", 0.02)
    assert rate(None, "t3.micro", 2, 1024, 0.0104) == Rate("", 0.0104)


# --- the accounting pass on both databases ------------------------------------------------------


async def stamp(rt: Runtime, rids: list[str], when: dt.datetime) -> None:
    """Move the transitions the real scheduler just wrote (now) to ``when`` of the test's day."""
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(m.Event)
            .where(m.Event.resource_id.in_(rids), m.Event.at > DAY + dt.timedelta(days=1))
            .values(at=when)
        )


async def records(rt: Runtime) -> list[tuple[Any, ...]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(
                m.UsageRecord.instance_id,
                m.UsageRecord.hour,
                m.UsageRecord.target_id,
                m.UsageRecord.target_kind,
                m.UsageRecord.seconds,
                m.UsageRecord.cost,
                m.UsageRecord.owner_id,
                m.UsageRecord.group_id,
            ).order_by(m.UsageRecord.instance_id, m.UsageRecord.hour)
        )
        return [tuple(r) for r in rows]


async def test_the_pass_is_idempotent_and_follows_new_transitions(
    rt: Runtime, tenants: Tenants
) -> None:
    ami = await setup_world(rt)
    host = await targets.set_costs(rt, SYSTEM, "h1", cpu_cost=0.01, memory_cost=0.02)
    made = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro", 2, 2))
    rids = sorted(i.id for i in made)
    await settle(rt)
    await stamp(rt, rids, at(8))
    # t3.micro: 2 vCPUs, 1 GiB -> 2 x 0.01 + 1 x 0.02 = 0.04 an hour on h1
    assert await account(rt, at(10, 30), batch=1) == 6
    first = await records(rt)
    owner, group = tenants.alice.user_id, tenants.alice.group_id
    assert first == [
        (rid, at(h), host.id, "local", s, c, owner, group)
        for rid in rids
        for h, s, c in ((8, 3600, 0.04), (9, 3600, 0.04), (10, 1800, 0.02))
    ]
    assert await account(rt, at(10, 30)) == 2  # from the newest hour on: hour 10 again
    assert await records(rt) == first
    await asyncio.gather(*(account(rt, at(10, 30), since=DAY) for _ in range(3)))
    assert await records(rt) == first  # concurrent passes upsert the same rows

    await instances.act(rt, tenants.alice, [rids[0]], Action.STOP)
    await settle(rt)
    await stamp(rt, rids, at(11, 15))
    await account(rt, at(12))
    await account(rt, at(12))
    after = {(r[0], r[1].hour): (r[4], r[5]) for r in await records(rt)}
    assert after == {
        **{(rid, h): (3600, 0.04) for rid in rids for h in (8, 9, 10)},
        (rids[0], 11): (900, 0.01),  # stopped at 11:15
        (rids[1], 11): (3600, 0.04),  # runs on; 12:00 itself holds no second yet
    }

    # a corrected history (the second instance only started at 09:30) drops its hour 8
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(m.Event)
            .where(m.Event.resource_id == rids[1], m.Event.to_state == "running")
            .values(at=at(9, 30))
        )
    await account(rt, at(12), since=DAY)
    again = {(r[0], r[1].hour): (r[4], r[5]) for r in await records(rt)}
    assert (rids[1], 8) not in again and again[(rids[1], 9)] == (1800, 0.02)
    assert again[(rids[0], 8)] == (3600, 0.04)


async def test_a_pass_over_nothing_writes_nothing(rt: Runtime) -> None:
    assert await account(rt, at(12)) == 0
    assert await records(rt) == []


async def test_the_loop_accounts_until_cancelled(rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    (made,) = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    async with rt.engine.begin() as conn:  # it has been running for 90 minutes
        await conn.execute(
            update(m.Event)
            .where(m.Event.resource_id == made.id)
            .values(at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=90))
        )
    task = asyncio.create_task(run_accounting(rt, interval=0.05))
    try:
        for _ in range(400):
            if len(await records(rt)) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    found = await records(rt)
    assert [r[0] for r in found] == [made.id] * len(found) and 2 <= len(found) <= 3
    assert sum(r[4] for r in found) >= 5399  # 90 minutes (each partial hour rounded)
