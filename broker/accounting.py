"""Accounting: what each instance used in each clock hour, and what that cost.

Decides three things.

**What is billed.** Only time in *running*. That is EC2's rule (pending, stopping and
shutting-down are free) carried over to every target: *boot* and *prolog* (still starting),
*shutdown* (a stop in progress), *poweroff*, *stopped* and *suspended* (not running),
*epilog*, *done* and *failed* are not billed. A reboot keeps an instance *running*
(:data:`broker.states.ACTION_MOVES`), so it stays billed through it. *unknown* (its target
stopped answering) is not billed either: we bill what we saw running, never a guess.

**Where it ran.** An instance's target over time comes from its transitions: the scheduler's
``pending -> prolog`` event names the chosen target (``detail.target``), so an instance stopped,
saved off its host and placed again elsewhere is billed to each target for its own time. Before
any such event the instance's current ``target_id`` is used. When one clock hour holds time on
two targets, its one record (keyed by instance and hour) names the target with the most seconds
and sums the cost of both.

**What an hour costs** (:func:`rate`), by the target's kind:

- a local host (kind ``host``, shown as ``local``): OpenNebula's ``CPU_COST`` per vCPU-hour and
  ``MEMORY_COST`` per GiB-hour, the target's ``cpu_cost`` and ``memory_cost``, times the
  instance's vCPUs and memory; zero costs mean a free host;
- a public-cloud region (``region``, shown as ``burst``) and a peer cluster (``peer``, shown as
  ``peer``): the target's price table, ``settings["prices"]`` {instance type: per hour}, looked up
  by the instance type ``settings["flavor_map"]`` gives our flavor (else the flavor's own name),
  as the EC2 backend and the placement snapshots read it; else the target's
  ``settings["default_price"]``; else the flavor's ``price_per_hour`` (our list price). A peer
  that declares no prices is so charged at the flavor's price, what we would charge for it.

Cost of a record = per-hour rate x whole seconds / 3600, so a record can be checked by hand.

**When it is computed.** :func:`usage_hours` is pure: an instance's transitions in, its per-hour
records out, split at clock-hour boundaries, an interval still open counted up to ``now`` (and
recomputed by a later pass). :func:`account` recomputes, in batches, the instances with
transitions since a given time or billed now, from their whole history, and replaces their
records from that time's hour on with upserts; running it twice writes the same rows, on SQLite
and PostgreSQL alike. :func:`run_accounting` runs it every ``interval`` seconds; after a restart
its first pass starts from the newest accounted hour.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import model as m
from broker.errors import BrokerError
from broker.model import utcnow
from broker.runtime import Runtime
from broker.states import State

log = logging.getLogger(__name__)

#: The only billed state (see the module docstring).
BILLED: frozenset[str] = frozenset({State.RUNNING.value})
#: target kind in the model -> the kind a usage record shows.
KINDS: Mapping[str, str] = {"host": "local", "region": "burst", "peer": "peer"}
HOUR = dt.timedelta(hours=1)
DEFAULT_INTERVAL = 60.0
DEFAULT_BATCH = 200
#: how far before the previous pass a pass looks again, for events committed during it.
SLACK = dt.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One lifecycle move of an instance: when, into which state, and (if known) on which target."""

    at: dt.datetime
    to_state: str
    target_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceFacts:
    id: str
    owner_id: str
    group_id: str
    flavor: str
    vcpus: int
    memory_mb: int
    target_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """What one hour of an instance costs on one target, and how that target is shown."""

    kind: str  # local | burst | peer
    per_hour: float


@dataclasses.dataclass(frozen=True, slots=True)
class TargetPrices:
    """The part of a target that prices an hour."""

    id: str
    kind: str  # host | region | peer
    cpu_cost: float = 0.0
    memory_cost: float = 0.0
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """One usage record: an instance's use of one clock hour."""

    instance_id: str
    hour: dt.datetime
    owner_id: str
    group_id: str
    target_id: str
    target_kind: str
    flavor: str
    vcpus: int
    memory_mb: int
    seconds: int
    cost: float


def hour_of(at: dt.datetime) -> dt.datetime:
    """The start of the clock hour (UTC) that ``at`` falls in."""
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def rate(
    target: TargetPrices | None, flavor: str, vcpus: int, memory_mb: int, list_price: float
) -> Rate:
    """The per-hour rate of an instance on ``target`` (see the module docstring)."""
    if target is None:  # the target was removed: our list price, under no kind
        return Rate("", list_price)
    kind = KINDS.get(target.kind, target.kind)
    if target.kind == "host":
        return Rate(kind, target.cpu_cost * vcpus + target.memory_cost * memory_mb / 1024)
    settings = target.settings
    flavor_map = settings.get("flavor_map")
    itype = flavor
    if isinstance(flavor_map, Mapping):
        mapped = flavor_map.get(flavor)
        itype = str(mapped) if isinstance(mapped, str) and mapped != "*" else flavor
    prices = settings.get("prices")
    if isinstance(prices, Mapping) and itype in prices:
        return Rate(kind, _number(prices[itype], list_price))
    if "default_price" in settings:
        return Rate(kind, _number(settings["default_price"], list_price))
    return Rate(kind, list_price)


def _number(value: Any, fallback: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return fallback


def _intervals(
    inst: InstanceFacts, transitions: Sequence[Transition], now: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime, str | None]]:
    """(start, end, target) of every billed interval, an open one ending at ``now``."""
    out: list[tuple[dt.datetime, dt.datetime, str | None]] = []
    target = inst.target_id
    started: dt.datetime | None = None
    started_on: str | None = None
    for t in sorted(transitions, key=lambda t: t.at):  # stable: ties keep the log's order
        if t.at > now:
            break
        if t.target_id is not None:
            target = t.target_id
        if started is not None and t.to_state not in BILLED:
            out.append((started, t.at, started_on))
            started = None
        elif started is None and t.to_state in BILLED:
            started, started_on = t.at, target
    if started is not None:
        out.append((started, now, started_on))
    return out


def usage_hours(
    inst: InstanceFacts,
    transitions: Sequence[Transition],
    rates: Mapping[str | None, Rate],
    now: dt.datetime,
) -> list[Usage]:
    """The per-hour records of one instance from its transitions, up to ``now``.

    ``rates`` maps each target id the instance ran on (None: no target known) to its rate;
    a missing one counts as free under no kind.
    """
    seconds: dict[dt.datetime, dict[str | None, float]] = {}
    for start, end, target in _intervals(inst, transitions, now):
        cursor = start
        while cursor < end:
            hour = hour_of(cursor)
            stop = min(end, hour + HOUR)
            per = seconds.setdefault(hour, {})
            per[target] = per.get(target, 0.0) + (stop - cursor).total_seconds()
            cursor = stop
    out = []
    for hour in sorted(seconds):
        per_target = {t: round(s) for t, s in seconds[hour].items()}
        total = sum(per_target.values())
        if total <= 0:
            continue
        main = max(per_target, key=lambda t: per_target[t])
        cost = sum(rates.get(t, Rate("", 0.0)).per_hour * s / 3600 for t, s in per_target.items())
        out.append(
            Usage(
                instance_id=inst.id,
                hour=hour,
                owner_id=inst.owner_id,
                group_id=inst.group_id,
                target_id=main or "",
                target_kind=rates.get(main, Rate("", 0.0)).kind,
                flavor=inst.flavor,
                vcpus=inst.vcpus,
                memory_mb=inst.memory_mb,
                seconds=min(total, 3600),
                cost=round(cost, 6),
            )
        )
    return out


# --- the accounting pass -------------------------------------------------------------------


async def account(
    rt: Runtime,
    now: dt.datetime | None = None,
    *,
    since: dt.datetime | None = None,
    batch: int = DEFAULT_BATCH,
) -> int:
    """Recompute the usage records of every instance active since ``since``; the rows written.

    Active: a transition at or after ``since``, or billed now. Their records from ``since``'s
    hour on are replaced (upserted, and hours no longer used removed), so two passes over the
    same events write the same rows. ``since`` None: the newest accounted hour (everything when
    nothing was accounted yet).
    """
    now = now or utcnow()
    async with rt.engine.connect() as conn:
        if since is None:
            since = await conn.scalar(select(func.max(m.UsageRecord.hour)))
        start = hour_of(since) if since is not None else None
        active = select(m.Event.resource_id).where(m.Event.kind == "transition")
        if since is not None:
            active = active.where(m.Event.at >= since)
        rids = set((await conn.scalars(active.distinct())).all())
        rids.update(
            (await conn.scalars(select(m.Instance.id).where(m.Instance.state.in_(BILLED)))).all()
        )
    ordered = sorted(rids)
    written = 0
    for i in range(0, len(ordered), max(1, batch)):
        written += await _account_batch(rt, ordered[i : i + batch], start, now)
    return written


async def _account_batch(
    rt: Runtime, rids: Sequence[str], start: dt.datetime | None, now: dt.datetime
) -> int:
    async with rt.engine.begin() as conn:
        facts, list_prices = await _facts(conn, rids)
        history = await _transitions(conn, list(facts))
        targets = await _targets(
            conn,
            {t.target_id for ts in history.values() for t in ts}
            | {f.target_id for f in facts.values()},
        )
        rows: list[Usage] = []
        for rid, inst in facts.items():
            used = {inst.target_id} | {t.target_id for t in history.get(rid, ())}
            rates = {
                tid: rate(
                    targets.get(tid) if tid else None,
                    inst.flavor,
                    inst.vcpus,
                    inst.memory_mb,
                    list_prices.get(inst.flavor, 0.0),
                )
                for tid in used
            }
            found = usage_hours(inst, history.get(rid, ()), rates, now)
            rows.extend(u for u in found if start is None or u.hour >= start)
        await _replace(conn, list(facts), rows, start)
    return len(rows)


async def _facts(
    conn: AsyncConnection, rids: Sequence[str]
) -> tuple[dict[str, InstanceFacts], dict[str, float]]:
    rows = await conn.execute(
        select(
            m.Instance.id,
            m.Instance.owner_id,
            m.Instance.group_id,
            m.Instance.flavor,
            m.Instance.vcpus,
            m.Instance.memory_mb,
            m.Instance.target_id,
            m.Flavor.price_per_hour,
        )
        .outerjoin(m.Flavor, m.Flavor.name == m.Instance.flavor)
        .where(m.Instance.id.in_(rids))
    )
    facts: dict[str, InstanceFacts] = {}
    prices: dict[str, float] = {}
    for rid, owner, group, flavor, vcpus, mem, target, price in rows:
        facts[rid] = InstanceFacts(rid, owner, group, flavor, vcpus, mem, target)
        prices[flavor] = float(price or 0.0)
    return facts, prices


async def _transitions(conn: AsyncConnection, rids: Sequence[str]) -> dict[str, list[Transition]]:
    out: dict[str, list[Transition]] = {}
    if not rids:
        return out
    rows = await conn.execute(
        select(m.Event.resource_id, m.Event.at, m.Event.to_state, m.Event.detail)
        .where(m.Event.resource_id.in_(rids), m.Event.kind == "transition")
        .order_by(m.Event.resource_id, m.Event.at, m.Event.id)
    )
    for rid, at, to_state, detail in rows:
        target = (detail or {}).get("target") if isinstance(detail, dict) else None
        out.setdefault(rid, []).append(
            Transition(at, to_state, str(target) if isinstance(target, str) else None)
        )
    return out


async def _targets(
    conn: AsyncConnection, tids: Iterable[str | None]
) -> dict[str | None, TargetPrices]:
    wanted = sorted(t for t in set(tids) if t)
    if not wanted:
        return {}
    rows = await conn.execute(
        select(
            m.Target.id, m.Target.kind, m.Target.cpu_cost, m.Target.memory_cost, m.Target.settings
        ).where(m.Target.id.in_(wanted))
    )
    return {
        tid: TargetPrices(tid, kind, float(cpu or 0.0), float(mem or 0.0), settings or {})
        for tid, kind, cpu, mem, settings in rows
    }


async def _replace(
    conn: AsyncConnection, rids: Sequence[str], rows: Sequence[Usage], start: dt.datetime | None
) -> None:
    """Upsert ``rows`` and drop the instances' other records from ``start``'s hour on."""
    existing = select(m.UsageRecord.instance_id, m.UsageRecord.hour).where(
        m.UsageRecord.instance_id.in_(rids)
    )
    if start is not None:
        existing = existing.where(m.UsageRecord.hour >= start)
    keep = {(u.instance_id, u.hour) for u in rows}
    stale = [
        {"b_id": rid, "b_hour": hour}
        for rid, hour in await conn.execute(existing)
        if (rid, hour) not in keep
    ]
    if stale:
        await conn.execute(
            delete(m.UsageRecord).where(
                m.UsageRecord.instance_id == bindparam("b_id"),
                m.UsageRecord.hour == bindparam("b_hour"),
            ),
            stale,
        )
    if not rows:
        return
    values = [dataclasses.asdict(u) for u in rows]
    dialect = conn.dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(m.UsageRecord)
    elif dialect == "sqlite":
        stmt = sqlite.insert(m.UsageRecord)
    else:  # pragma: no cover - the two databases we run on
        raise BrokerError(f"accounting does not support the {dialect} database")
    updated = {c: stmt.excluded[c] for c in values[0] if c not in ("instance_id", "hour")}
    stmt = stmt.on_conflict_do_update(index_elements=["instance_id", "hour"], set_=updated)
    await conn.execute(stmt, values)


async def run_accounting(
    rt: Runtime, interval: float = DEFAULT_INTERVAL, batch: int = DEFAULT_BATCH
) -> None:
    """Account every ``interval`` seconds until cancelled; a failed pass is logged and retried."""
    since: dt.datetime | None = None
    while True:
        now = utcnow()
        try:
            written = await account(rt, now, since=since, batch=batch)
        except Exception:  # one bad pass must not end accounting (cancellation passes)
            log.exception("the accounting pass failed; it is retried in %s s", interval)
        else:
            since = now - SLACK
            log.debug("accounting: %d usage records written", written)
        await asyncio.sleep(interval)
