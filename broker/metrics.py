"""Metrics in Prometheus' text format: what is counted as it happens and what is read at scrape.

Decides the metric families and where each comes from. Counted as it happens, by the parts
that see it: API requests by frontend, action and status with their latency (the aiohttp
middleware from :func:`middleware`, which every frontend puts outermost), and the scheduler's
cycle time and operations in flight (:func:`observe_cycle`). Read from the database at each
scrape, so every node of a shared database reports the same truth: instances by state and
target, the scheduler's queue, each target's health, capacity, reservations, allocation and
last monitoring sample, and the spend per hour of what runs on each public-cloud region at the
prices of the burst policy in force.

Each :class:`~broker.runtime.Runtime` has its own registry (never prometheus-client's global
one), so several brokers in one process, as in tests, never mix their numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import model as m
from broker.protocols import PlacementPolicy
from broker.runtime import Runtime
from broker.states import ON_TARGET, State

CONTENT_TYPE = CONTENT_TYPE_LATEST
MB = 1024 * 1024
GB = 1024 * MB
_HELD = tuple(s.value for s in ON_TARGET)
_ATTR = "metrics"
#: Where a frontend's handler names the action a request was (``request[ACTION] = "RunInstances"``).
ACTION = web.RequestKey("metrics.action", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Snapshot(Collector):
    """Hands the registry the families read from the database for the scrape under way."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)

    def describe(self) -> Iterable[Metric]:
        return []


class _Summed:
    """A registry's families with other processes' request samples added, sample by sample
    (a series only they have is added to its family)."""

    def __init__(
        self, registry: CollectorRegistry, others: list[list[tuple[str, dict[str, str], float]]]
    ) -> None:
        self.registry = registry
        self.others = others

    def collect(self) -> Iterable[Metric]:
        extra: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for samples in self.others:
            for name, labels, value in samples:
                key = (name, tuple(sorted(labels.items())))
                extra[key] = extra.get(key, 0.0) + value
        for family in self.registry.collect():
            if extra and family.name in _REQUEST_FAMILIES:
                family.samples = _add(family.samples, extra, family.name)
            yield family


_REQUEST_FAMILIES = ("cloudbroker_api_requests", "cloudbroker_api_request_duration_seconds")


def _add(
    samples: list[Sample], extra: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> list[Sample]:
    summed: list[Sample] = []
    for s in samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        summed.append(s._replace(value=s.value + extra.pop(key, 0.0)))
    for (sample_name, labels), value in list(extra.items()):
        if sample_name.startswith(name):
            summed.append(Sample(sample_name, dict(labels), value))
            del extra[(sample_name, labels)]
    return summed


class Metrics:
    """One broker's registry and the metrics its parts update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("frontend", "action", "status")
        self.requests = Counter(
            "cloudbroker_api_requests",
            "API requests answered, by frontend, action and HTTP status",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "cloudbroker_api_request_duration_seconds",
            "Time to answer an API request",
            labels,
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.cycle = Histogram(
            "cloudbroker_scheduler_cycle_seconds",
            "Time of one scheduler cycle (placement and dispatch)",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight = Gauge(
            "cloudbroker_scheduler_in_flight",
            "Backend operations the scheduler has under way",
            registry=self.registry,
        )
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._policy: tuple[int | None, PlacementPolicy | None] = (-1, None)
        self._lock = asyncio.Lock()
        #: (frontend, action, status) -> its request counter and latency histogram children
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, frontend: str, action: str, status: int, seconds: float) -> None:
        key = (frontend, action, status)
        series = self._series.get(key)
        if series is None:  # labels() looks the child up each time: keep each pair found
            names = (frontend, action, str(status))
            series = self._series[key] = (
                self.requests.labels(*names),
                self.latency.labels(*names),
            )
        series[0].inc()
        series[1].observe(seconds)

    def request_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """The request counts and latencies so far, as (sample name, labels, value)."""
        return [
            (s.name, s.labels, s.value)
            for family in (*self.requests.collect(), *self.latency.collect())
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    async def scrape(self, rt: Runtime) -> bytes:
        """Read the database and render every family in Prometheus' text format, with the
        requests that worker processes (:mod:`broker.workers`) answered added in."""
        async with self._lock:  # one scrape reads at a time; the next gets fresh numbers
            async with rt.reader.connect() as conn:
                families = await _read(conn, await self._policy_in_force(rt, conn))
            self._snapshot.families = families
            if rt.workers is None:
                return generate_latest(self.registry)
            return generate_latest(_Summed(self.registry, await rt.workers.samples()))

    async def _policy_in_force(self, rt: Runtime, conn: AsyncConnection) -> PlacementPolicy | None:
        if rt.policy_factory is None:
            return None
        row = (
            await conn.execute(
                select(m.PolicyVersion.id, m.PolicyVersion.document)
                .order_by(m.PolicyVersion.id.desc())
                .limit(1)
            )
        ).first()
        version = None if row is None else int(row[0])
        if self._policy[0] != version or self._policy[1] is None:
            policy = rt.policy_factory() if row is None else rt.policy_factory.from_document(row[1])
            self._policy = (version, policy)
        return self._policy[1]


def install(rt: Runtime) -> Metrics:
    """The runtime's metrics, made on first use (``serve`` calls this at start)."""
    found = getattr(rt, _ATTR, None)
    if isinstance(found, Metrics):
        return found
    made = Metrics()
    setattr(rt, _ATTR, made)
    return made


def observe_cycle(rt: Runtime, seconds: float, in_flight: int) -> None:
    """The scheduler's report after each cycle: how long it took, how much is under way."""
    metrics = install(rt)
    metrics.cycle.observe(seconds)
    metrics.in_flight.set(in_flight)


def middleware(rt: Runtime, frontend: str) -> Middleware:
    """An aiohttp middleware counting every request of ``frontend`` (put it outermost).

    The action is what the handler put in ``request[ACTION]``, else the matched route's path
    pattern (a bounded set), else "" (no route matched).
    """
    metrics = install(rt)

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _timed(metrics, frontend, handler, request)

    return observe


def observed(rt: Runtime, frontend: str, handler: Handler) -> Handler:
    """``handler`` counted as :func:`middleware` counts, for an app whose one catch-all route
    takes every request (the EC2 endpoint): no middleware chain to build for each request."""
    metrics = install(rt)

    async def timed(request: web.Request) -> web.StreamResponse:
        return await _timed(metrics, frontend, handler, request)

    return timed


async def _timed(
    metrics: Metrics, frontend: str, handler: Handler, request: web.Request
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        metrics.observe_request(frontend, _action(request), status, time.perf_counter() - started)


def _action(request: web.Request) -> str:
    action = request.get(ACTION, "")
    if action:
        return str(action)
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def spend_per_hour(settings: Mapping[str, Any], by_flavor: Mapping[str, int]) -> float:
    """USD per hour of ``by_flavor`` (our flavor -> instances) at a region's prices.

    ``flavor_map`` translates our flavors to the region's instance types (none: same names,
    ``"*"``: any other flavor, to ``"*"``: the same name); ``prices`` are per instance type,
    and ``default_price`` is charged for a type the table does not list.
    """
    fmap = settings.get("flavor_map") or {}
    prices = settings.get("prices") or {}
    default = float(settings.get("default_price", 0.0) or 0.0)
    total = 0.0
    for flavor, n in by_flavor.items():
        itype = flavor
        if fmap:
            itype = fmap.get(flavor) or fmap.get("*") or flavor
            if itype == "*":
                itype = flavor
        total += n * float(prices.get(itype, default))
    return total


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


async def _read(conn: AsyncConnection, policy: PlacementPolicy | None) -> list[Metric]:
    targets = (
        await conn.execute(
            select(
                m.Target.id,
                m.Target.name,
                m.Target.kind,
                m.Target.state,
                m.Target.total_cpu,
                m.Target.total_memory_mb,
                m.Target.total_disk_gb,
                m.Target.reserved_cpu,
                m.Target.reserved_memory_mb,
                m.Target.misses,
                m.Target.last_seen_at,
                m.Target.settings,
            ).order_by(m.Target.name)
        )
    ).all()
    names = {t[0]: t[1] for t in targets}
    out: list[Metric] = []
    out.extend(await _instances(conn, names))
    out.extend(_targets(targets))
    out.extend(await _usage(conn, targets))
    out.extend(await _spend(conn, targets, policy))
    return out


async def _instances(conn: AsyncConnection, names: Mapping[str, str]) -> list[Metric]:
    by_state = _gauge("cloudbroker_instances", "Instances by state and target", ("state", "target"))
    for state, tid, n in await conn.execute(
        select(m.Instance.state, m.Instance.target_id, func.count()).group_by(
            m.Instance.state, m.Instance.target_id
        )
    ):
        by_state.add_metric([state, names.get(tid or "", "")], n)
    queue = _gauge(
        "cloudbroker_scheduler_queue_length",
        "Instances waiting for the scheduler: to be placed (pending) or for an action (intent)",
        ("queue",),
    )
    pending = await conn.scalar(
        select(func.count()).select_from(m.Instance).where(m.Instance.state == State.PENDING)
    )
    intents = await conn.scalar(
        select(func.count()).select_from(m.Instance).where(m.Instance.intent.is_not(None))
    )
    queue.add_metric(["pending"], pending or 0)
    queue.add_metric(["intent"], intents or 0)
    return [by_state, queue]


def _targets(targets: Iterable[Any]) -> list[Metric]:
    lt = ("target", "kind")
    up = _gauge("cloudbroker_target_up", "1 if the target answers its probes, else 0", lt)
    state = _gauge(
        "cloudbroker_target_state", "The target's state (1 for the current one)", (*lt, "state")
    )
    misses = _gauge("cloudbroker_target_probe_misses", "Probes missed in a row", lt)
    seen = _gauge(
        "cloudbroker_target_last_seen_timestamp_seconds", "When the target last answered", lt
    )
    cpus = _gauge("cloudbroker_target_cpus", "CPUs the target has", lt)
    mem = _gauge("cloudbroker_target_memory_bytes", "Memory the target has", lt)
    disk = _gauge("cloudbroker_target_disk_bytes", "Disk the target has", lt)
    rcpu = _gauge("cloudbroker_target_reserved_cpus", "CPUs reserved from placement", lt)
    rmem = _gauge("cloudbroker_target_reserved_memory_bytes", "Memory reserved", lt)
    for _tid, name, kind, st, cpu, memory, dsk, rc, rm, miss, last, _settings in targets:
        labels = [name, kind]
        up.add_metric(labels, 0 if st == "error" else 1)
        state.add_metric([*labels, st], 1)
        misses.add_metric(labels, miss)
        if last is not None:
            seen.add_metric(labels, last.timestamp())
        cpus.add_metric(labels, cpu)
        mem.add_metric(labels, memory * MB)
        disk.add_metric(labels, dsk * GB)
        rcpu.add_metric(labels, rc)
        rmem.add_metric(labels, rm * MB)
    return [up, state, misses, seen, cpus, mem, disk, rcpu, rmem]


async def _usage(conn: AsyncConnection, targets: Iterable[Any]) -> list[Metric]:
    lt = ("target", "kind")
    kinds = {t[0]: (t[1], t[2]) for t in targets}
    acpu = _gauge("cloudbroker_target_allocated_cpus", "vCPUs of the instances held there", lt)
    amem = _gauge(
        "cloudbroker_target_allocated_memory_bytes", "Memory of the instances held there", lt
    )
    held = {
        tid: (cpu or 0, mem or 0)
        for tid, cpu, mem in await conn.execute(
            select(m.Instance.target_id, func.sum(m.Instance.vcpus), func.sum(m.Instance.memory_mb))
            .where(m.Instance.state.in_(_HELD), m.Instance.target_id.is_not(None))
            .group_by(m.Instance.target_id)
        )
    }
    for tid, (name, kind) in kinds.items():
        cpu, memory = held.get(tid, (0, 0))
        acpu.add_metric([name, kind], cpu)
        amem.add_metric([name, kind], memory * MB)
    ucpu = _gauge("cloudbroker_target_used_cpus", "CPUs in use at the last probe", lt)
    umem = _gauge("cloudbroker_target_used_memory_bytes", "Memory in use at the last probe", lt)
    load = _gauge("cloudbroker_target_load", "Load at the last probe", lt)
    running = _gauge("cloudbroker_target_running", "Machines running at the last probe", lt)
    latest = (
        select(m.HostSample.target_id, func.max(m.HostSample.id).label("sid"))
        .group_by(m.HostSample.target_id)
        .subquery()
    )
    for tid, used_cpu, used_mem, ld, run in await conn.execute(
        select(
            m.HostSample.target_id,
            m.HostSample.used_cpu,
            m.HostSample.used_memory_mb,
            m.HostSample.load,
            m.HostSample.running,
        ).join(latest, latest.c.sid == m.HostSample.id)
    ):
        if tid not in kinds:
            continue
        labels = list(kinds[tid])
        ucpu.add_metric(labels, used_cpu)
        umem.add_metric(labels, used_mem * MB)
        load.add_metric(labels, ld)
        running.add_metric(labels, run)
    return [acpu, amem, ucpu, umem, load, running]


async def _spend(
    conn: AsyncConnection, targets: Iterable[Any], policy: PlacementPolicy | None
) -> list[Metric]:
    spend = _gauge(
        "cloudbroker_burst_spend_usd_per_hour",
        "What the instances on a public-cloud region cost per hour, at the policy's prices",
        ("target",),
    )
    regions = {t[0]: (t[1], t[11] or {}) for t in targets if t[2] == "region"}
    by_flavor: dict[str, dict[str, int]] = {tid: {} for tid in regions}
    if regions:
        for tid, flavor, n in await conn.execute(
            select(m.Instance.target_id, m.Instance.flavor, func.count())
            .where(m.Instance.state.in_(_HELD), m.Instance.target_id.in_(list(regions)))
            .group_by(m.Instance.target_id, m.Instance.flavor)
        ):
            by_flavor[str(tid)][flavor] = n
    for tid, (name, settings) in regions.items():
        merged = dict(settings)
        if policy is not None:
            extra = policy.target_settings(name)
            merged.update(extra)
            merged["prices"] = {**(settings.get("prices") or {}), **(extra.get("prices") or {})}
        spend.add_metric([name], spend_per_hour(merged, by_flavor[tid]))
    return [spend]
