"""Metrics scraped over HTTP while a broker works: API requests through the middleware, the
scheduler's cycles, instances, targets and their samples read from the database, burst spend
at the policy's prices; each runtime keeps its own registry.

Real parts: the admin API's routes and error middleware on a real server, the libvirt test
driver host, the scheduler and monitor, the EC2 backend against moto for the burst spend.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from broker import metrics
from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import instances, policies
from broker.service.instances import LaunchRequest
from frontends.admin import app as admin
from tests.broker.test_burst_e2e import burst_world
from tests.broker.test_hooks import local_host
from tests.conftest import make_config, make_user
from tests.frontends.admin.conftest import API, admin_api

Samples = list[Sample]


async def tagged(request: web.Request) -> web.Response:
    request[metrics.ACTION] = "RunInstances"
    return web.json_response({})


@pytest.fixture
async def api(sqlite_rt: Runtime) -> AsyncIterator[API]:
    app = admin.create_app(sqlite_rt)
    app.router.add_route("POST", "/tagged", tagged)
    async with admin_api(sqlite_rt, app) as served:
        yield served


async def scrape(server: TestServer, session: ClientSession) -> Samples:
    async with session.get(server.make_url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert found, f"no {name} {labels}"
    return sum(found)


async def cycle(rt: Runtime, sched: Scheduler, monitor: Monitor) -> None:
    """One scheduler cycle reported as the scheduler reports it."""
    await monitor.cycle()
    started = time.perf_counter()
    await sched.cycle()
    metrics.observe_cycle(rt, time.perf_counter() - started, len(sched._inflight))
    await sched.drain()


async def test_scrape_during_a_run_shows_every_family(
    api: tuple[TestServer, ClientSession], sqlite_rt: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_rt
    server, session = api
    image_id = await local_host(rt, tmp_path)
    assert rt.policy_factory is not None
    sched, monitor = Scheduler(rt, rt.policy_factory(), rt.policy_factory), Monitor(rt)
    alice = await make_user(rt, "alice")
    await instances.launch(rt, alice, LaunchRequest(image_id, "t3.micro", 2, 2))
    before = await scrape(server, session)
    assert value(before, "cloudbroker_instances", state="pending", target="") == 2
    assert value(before, "cloudbroker_scheduler_queue_length", queue="pending") == 2
    for _ in range(3):
        await cycle(rt, sched, monitor)
    for path, status in (
        ("/api/v1/targets", 200),
        ("/api/v1/hooks/nosuch", 404),
        ("/api/v1/instances?state=flying", 400),
        ("/nothing/here", 404),
    ):
        async with session.get(server.make_url(path)) as resp:
            assert resp.status == status
    async with session.post(server.make_url("/tagged")) as resp:
        assert resp.status == 200
    async with ClientSession() as anonymous, anonymous.get(server.make_url("/metrics")) as resp:
        assert resp.status == 401
    got = await scrape(server, session)

    req = "cloudbroker_api_requests_total"
    assert value(got, req, frontend="admin", action="/api/v1/targets", status="200") == 1
    assert value(got, req, action="/api/v1/hooks/{name}", status="404") == 1
    assert value(got, req, action="/api/v1/instances", status="400") == 1
    assert value(got, req, action="", status="404") == 1
    assert value(got, req, action="RunInstances", status="200") == 1
    assert value(got, req, action="/metrics", status="401") == 1
    latency = "cloudbroker_api_request_duration_seconds"
    assert value(got, f"{latency}_count", action="/api/v1/targets") == 1
    assert value(got, f"{latency}_bucket", action="/api/v1/targets", le="+Inf") == 1

    assert value(got, "cloudbroker_instances", state="running", target="local") == 2
    assert value(got, "cloudbroker_scheduler_queue_length", queue="pending") == 0
    assert value(got, "cloudbroker_scheduler_cycle_seconds_count") == 3
    assert value(got, "cloudbroker_scheduler_in_flight") == 0
    host = {"target": "local", "kind": "host"}
    assert value(got, "cloudbroker_target_up", **host) == 1
    assert value(got, "cloudbroker_target_state", state="enabled", **host) == 1
    assert value(got, "cloudbroker_target_cpus", **host) == 16
    assert value(got, "cloudbroker_target_memory_bytes", **host) > 0
    assert value(got, "cloudbroker_target_allocated_cpus", **host) == 4  # 2 x t3.micro
    assert value(got, "cloudbroker_target_running", **host) == 2
    assert value(got, "cloudbroker_target_used_memory_bytes", **host) >= 0
    assert value(got, "cloudbroker_target_last_seen_timestamp_seconds", **host) > 0
    assert [s for s in got if s.name == "cloudbroker_burst_spend_usd_per_hour"] == []


async def test_each_runtime_has_its_own_registry(sqlite_rt: Runtime, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    url = f"sqlite+aiosqlite:///{other_dir / 'broker.db'}"
    other = await open_runtime(make_config(other_dir, url), migrate=True)
    try:
        assert metrics.install(sqlite_rt) is metrics.install(sqlite_rt)
        assert metrics.install(sqlite_rt).registry is not metrics.install(other).registry
        metrics.observe_cycle(sqlite_rt, 0.5, 3)
        mine = (await metrics.install(sqlite_rt).scrape(sqlite_rt)).decode()
        theirs = (await metrics.install(other).scrape(other)).decode()
        assert "cloudbroker_scheduler_cycle_seconds_count 1.0" in mine
        assert "cloudbroker_scheduler_cycle_seconds_count 0.0" in theirs
        assert "cloudbroker_scheduler_in_flight 3.0" in mine
    finally:
        await other.aclose()


async def test_burst_spend_at_the_policy_prices(
    sqlite_rt: Runtime, moto_url: str, tmp_path: Path
) -> None:
    rt = sqlite_rt
    image_id, document = await burst_world(rt, moto_url, tmp_path, west_budget=0.35)
    await policies.set_policy(rt, SYSTEM, document, "burst")
    assert rt.policy_factory is not None
    sched, monitor = Scheduler(rt, rt.policy_factory(), rt.policy_factory), Monitor(rt)
    alice = await make_user(rt, "alice")
    for _ in range(6):  # 2 local, 2 east, 2 west
        await instances.launch(rt, alice, LaunchRequest(image_id, "t3.micro"))
        for _ in range(2):
            await cycle(rt, sched, monitor)
    text = (await metrics.install(rt).scrape(rt)).decode()
    got = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    spend = "cloudbroker_burst_spend_usd_per_hour"
    assert value(got, spend, target="east") == pytest.approx(0.20)
    assert value(got, spend, target="west") == pytest.approx(0.20)
    assert value(got, "cloudbroker_instances", state="running", target="west") == 2
    assert value(got, "cloudbroker_target_up", target="east", kind="region") == 1


def test_spend_follows_the_flavor_map_and_the_default_price() -> None:
    settings = {
        "flavor_map": {"m1.small": "t3.small", "*": "*"},
        "prices": {"t3.small": 0.02, "t3.micro": 0.01},
        "default_price": 0.5,
    }
    by_flavor = {"m1.small": 2, "t3.micro": 1, "m1.huge": 1}
    assert metrics.spend_per_hour(settings, by_flavor) == pytest.approx(0.04 + 0.01 + 0.5)
    assert metrics.spend_per_hour({"prices": {"a": 1.0}}, {"a": 3, "b": 1}) == 3.0
