"""Reservations per host and per cluster, absolute or percent, negative for overcommit: what
placement sees as free, on both databases; bad values refused with nothing changed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker import model as m
from broker.auth import SYSTEM
from broker.errors import Forbidden, InvalidRequest, NotFound
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.service import reservations, targets
from broker.service.reservations import Amount, effective, parse, pick
from broker.snapshots import snapshot_targets
from tests.conftest import Tenants
from tests.fakes import FakeBackend


@pytest.mark.parametrize(
    ("text", "resource", "expected"),
    [
        ("2", "cpu", Amount(2, False)),
        ("-4", "cpu", Amount(-4, False)),
        ("25%", "memory", Amount(25, True)),
        ("-50%", "cpu", Amount(-50, True)),
        ("12.5%", "memory", Amount(12.5, True)),
        (" 0 ", "cpu", Amount(0, False)),
    ],
)
def test_parse(text: str, resource: str, expected: Amount) -> None:
    assert parse(text, resource) == expected


@pytest.mark.parametrize(
    "text", ["", "two", "2.5", "101%", "-1001%", "%", "5%%", "1e3", "200000", "--1"]
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse(text, "cpu")
    assert exc.value.field == "cpu"


def test_effective_and_pick() -> None:
    assert effective(16, 2, 0) == 2
    assert effective(16, 0, 25) == 4
    assert effective(16, 0, -100) == -16  # overcommit: twice the CPUs
    assert pick((0, 0), (1, 10)) == (1, 10)
    assert pick((0, 5), (1, 10)) == (0, 5)


async def _world(rt: Runtime) -> None:
    assert rt.backends is not None
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: FakeBackend
    )  # type: ignore[arg-type,return-value]
    for name, cluster in (("h1", "c1"), ("h2", "c1"), ("h3", None)):
        await targets.add(
            rt,
            SYSTEM,
            name=name,
            kind="host",
            driver="fake",
            hypervisor="kvm",
            cluster=cluster,
            settings={"cpu": 16, "memory_mb": 32768},
        )
    await Monitor(rt).cycle()


async def _free(rt: Runtime) -> dict[str, tuple[int, int]]:
    async with rt.engine.connect() as conn:
        return {s.name: (s.free_cpu, s.free_memory_mb) for s in await snapshot_targets(conn)}


async def test_host_and_cluster_reservations_shape_what_placement_sees(
    rt: Runtime, tenants: Tenants
) -> None:
    await _world(rt)
    assert await _free(rt) == {n: (16, 32768) for n in ("h1", "h2", "h3")}

    view = await reservations.set_for_cluster(rt, tenants.admin, "c1", cpu="25%", memory="1024")
    assert (view.reserved_cpu_pct, view.reserved_memory_mb, view.hosts) == (25, 1024, 2)
    assert await _free(rt) == {"h1": (12, 31744), "h2": (12, 31744), "h3": (16, 32768)}

    # a host's own reservation wins over its cluster's; a negative one overcommits
    host = await reservations.set_for_host(rt, tenants.admin, "h1", cpu="-100%")
    assert (host.reserved_cpu, host.reserved_cpu_pct) == (0, -100)
    assert (await _free(rt))["h1"] == (32, 31744)

    # an absolute value replaces the percent, and "0" gives the host back to its cluster
    host = await reservations.set_for_host(rt, tenants.admin, "h1", cpu="3")
    assert (host.reserved_cpu, host.reserved_cpu_pct) == (3, 0)
    assert (await _free(rt))["h1"] == (13, 31744)
    await reservations.set_for_host(rt, tenants.admin, "h1", cpu="0")
    assert (await _free(rt))["h1"] == (12, 31744)

    await reservations.set_for_host(rt, tenants.admin, "h3", memory="50%")
    assert (await _free(rt))["h3"] == (16, 16384)

    events = await _audits(rt)
    assert "cluster reservation set" in events and "host reservation set" in events


async def _audits(rt: Runtime) -> list[str]:
    async with rt.engine.connect() as conn:
        return list(
            (await conn.execute(select(m.Event.message).where(m.Event.kind == "audit"))).scalars()
        )


async def _rows(rt: Runtime) -> list[tuple[object, ...]]:
    async with rt.engine.connect() as conn:
        hosts = await conn.execute(
            select(m.Target.name, m.Target.reserved_cpu, m.Target.reserved_cpu_pct)
        )
        clusters = await conn.execute(select(m.Cluster.name, m.Cluster.reserved_cpu_pct))
        return sorted(map(tuple, hosts)) + sorted(map(tuple, clusters))


async def test_bad_reservations_change_nothing(rt: Runtime, tenants: Tenants) -> None:
    await _world(rt)
    before, audits = await _rows(rt), await _audits(rt)
    with pytest.raises(Forbidden):
        await reservations.set_for_host(rt, tenants.alice, "h1", cpu="1")
    with pytest.raises(Forbidden):
        await reservations.set_for_cluster(rt, tenants.alice, "c1", cpu="1")
    with pytest.raises(InvalidRequest):
        await reservations.set_for_host(rt, tenants.admin, "h1")
    with pytest.raises(InvalidRequest):  # the good cpu is not written when memory is bad
        await reservations.set_for_host(rt, tenants.admin, "h1", cpu="1", memory="lots")
    with pytest.raises(InvalidRequest):
        await reservations.set_for_cluster(rt, tenants.admin, "c1", cpu="150%")
    with pytest.raises(NotFound):
        await reservations.set_for_host(rt, tenants.admin, "nope", cpu="1")
    with pytest.raises(NotFound):
        await reservations.set_for_cluster(rt, tenants.admin, "nope", cpu="1")
    assert await _rows(rt) == before
    assert await _audits(rt) == audits


async def test_host_costs(rt: Runtime, tenants: Tenants) -> None:
    await _world(rt)
    view = await targets.set_costs(rt, tenants.admin, "h1", cpu_cost=0.02, memory_cost=0.005)
    assert (view.cpu_cost, view.memory_cost) == (0.02, 0.005)
    with pytest.raises(InvalidRequest):
        await targets.set_costs(rt, tenants.admin, "h1", cpu_cost=-1)
    with pytest.raises(InvalidRequest):
        await targets.set_costs(rt, tenants.admin, "h1")
    with pytest.raises(Forbidden):
        await targets.set_costs(rt, tenants.alice, "h1", cpu_cost=1)
    view = await targets.get(rt, tenants.admin, "h1")
    assert (view.cpu_cost, view.memory_cost) == (0.02, 0.005)
