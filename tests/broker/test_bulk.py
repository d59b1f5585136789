"""Many rows through :mod:`broker.bulk` are stored exactly as ``conn.execute`` stores them: the
same type processing (UTC times, JSON, booleans, None), the columns' defaults, the statement's own
values; on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update

from broker import bulk
from broker import model as m
from broker.model import utcnow
from broker.runtime import Runtime

WHEN = dt.datetime(2026, 11, 26, 12, 30, 15, 123456, tzinfo=dt.UTC)


def _events(prefix: str) -> list[dict[str, Any]]:
    return [
        {"resource_id": f"{prefix}-1", "kind": "transition", "detail": None, "at": WHEN},
        {"resource_id": f"{prefix}-2", "kind": "audit", "detail": {"a": [1, "ü"]}, "at": WHEN},
        {"resource_id": f"{prefix}-3", "kind": "error", "detail": {}, "at": WHEN},
    ]


async def _stored(rt: Runtime, prefix: str) -> list[tuple[Any, ...]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(
                m.Event.resource_id,
                m.Event.kind,
                m.Event.actor,
                m.Event.from_state,
                m.Event.message,
                m.Event.detail,
                m.Event.at,
            )
            .where(m.Event.resource_id.like(f"{prefix}-%"))
            .order_by(m.Event.resource_id)
        )
        return [tuple(r) for r in rows]


async def test_inserted_rows_read_back_as_executes_do(rt: Runtime) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(insert(m.Event), _events("old"))
        await bulk.insert_rows(conn, m.Event, _events("new"))
    old, new = await _stored(rt, "old"), await _stored(rt, "new")
    assert [r[1:] for r in new] == [r[1:] for r in old]
    assert new[0][1:] == ("transition", "", "", "", None, WHEN)  # defaults filled, aware time
    assert new[1][5] == {"a": [1, "ü"]}


async def test_callable_defaults_are_filled_in(rt: Runtime) -> None:
    before = utcnow()
    async with rt.engine.begin() as conn:
        # no "at": the column's own default, utcnow
        await bulk.insert_rows(conn, m.Event, [{"resource_id": "dflt-1", "kind": "audit"}])
    (row,) = await _stored(rt, "dflt")
    assert before <= row[6] <= utcnow()


_RENAME: Any = (
    update(m.Event)
    .where(m.Event.resource_id == bindparam("b_id"), m.Event.kind == "audit")
    .values(message=bindparam("b_message"), actor="bulk")
)


async def test_an_update_binds_its_own_values_and_the_rows(rt: Runtime) -> None:
    async with rt.engine.begin() as conn:
        await bulk.insert_rows(conn, m.Event, _events("upd"))
        await bulk.execute_many(
            conn,
            _RENAME,
            [{"b_id": "upd-1", "b_message": "not audit"}, {"b_id": "upd-2", "b_message": "x"}],
        )
    stored = {r[0]: r for r in await _stored(rt, "upd")}
    assert stored["upd-1"][2:5] == ("", "", "")  # a transition: the WHERE kept it out
    assert stored["upd-2"][2:5] == ("bulk", "", "x")


async def test_rows_of_many_types_and_a_failing_batch_writes_nothing(rt: Runtime) -> None:
    net_rows = [
        {"id": "net-bulk", "name": "bulk", "cidr": "10.9.0.0/24", "gateway": "10.9.0.1",
         "range_start": "10.9.0.2", "range_end": "10.9.0.9"},
    ]  # fmt: skip
    async with rt.engine.begin() as conn:
        await bulk.insert_rows(conn, m.Network, net_rows)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        async with rt.engine.begin() as conn:
            await bulk.insert_rows(
                conn,
                m.Lease,
                [
                    {"network_id": "net-bulk", "ip": "10.9.0.2", "mac": "02:00:00:00:00:02"},
                    {"network_id": "net-bulk", "ip": "10.9.0.2", "mac": "02:00:00:00:00:03"},
                ],
            )
    async with rt.engine.connect() as conn:
        leases = (await conn.execute(select(m.Lease.ip))).all()
        net = (await conn.execute(select(m.Network).where(m.Network.id == "net-bulk"))).one()
    assert leases == []
    assert net.is_default is False and net.bridge == ""  # defaults of a boolean and a string


async def test_a_row_key_the_statement_has_no_place_for_is_refused(rt: Runtime) -> None:
    async with rt.engine.begin() as conn:
        with pytest.raises(Exception, match=r"no_such_column|Unconsumed"):
            await bulk.insert_rows(conn, m.Event, [{"resource_id": "x", "no_such_column": 1}])
