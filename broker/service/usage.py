"""Usage reports and showback over the accounting records, with who may see what.

Decides the reports' periods, scopes and shapes. A period is ``[from, to)``; a usage record
(one clock hour) counts wholly in the period its hour starts in. Dates are ``YYYY-MM-DD`` or ISO
8601 times (``2026-11-24T08:00``, ``...Z``, ``...+01:00``), read as UTC when they name no zone;
months are ``YYYY-MM``. Without ``from`` a usage report starts at the first of this month;
without ``to`` it ends at the end of the current hour.

Scopes: a user sees only their own usage; a group admin their group's (a user of it too);
an admin everything. Naming a user or a group the caller may not see is answered exactly as an
unknown one (NotFound), as :func:`broker.auth.authorize` does; a plain user asking for their own
group is Forbidden. Showback (a row per group per month, cost split local/burst/peer) is for
group admins (their group) and admins. Reports only read: bad input changes nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from broker import accounting
from broker import model as m
from broker.auth import Caller, Ownership, authorize, require_admin
from broker.errors import Forbidden, InvalidRequest, NotFound
from broker.model import utcnow
from broker.runtime import Runtime

KINDS = ("local", "burst", "peer")
MAX_ROWS = 10_000
MAX_MONTHS = 120
MAX_TEXT = 64

USAGE_COLUMNS = (
    "instance_id",
    "owner",
    "group",
    "flavor",
    "target",
    "target_kind",
    "hours",
    "vcpu_hours",
    "gib_hours",
    "cost",
)
SHOWBACK_COLUMNS = (
    "month",
    "group",
    "instances",
    "hours",
    "vcpu_hours",
    "gib_hours",
    "cost_local",
    "cost_burst",
    "cost_peer",
    "cost",
)


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow:
    """What one instance used on one target over the period."""

    instance_id: str
    owner: str
    group: str
    flavor: str
    target: str
    target_kind: str
    hours: float
    vcpu_hours: float
    gib_hours: float
    cost: float


@dataclasses.dataclass(frozen=True, slots=True)
class Totals:
    hours: float
    vcpu_hours: float
    gib_hours: float
    cost: float
    cost_by_kind: Mapping[str, float]


@dataclasses.dataclass(frozen=True, slots=True)
class UsageReport:
    subject: str  # "user NAME", "group NAME" or "all"
    start: dt.datetime
    end: dt.datetime
    rows: tuple[UsageRow, ...]
    totals: Totals
    truncated: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ShowbackRow:
    month: str
    group: str
    instances: int
    hours: float
    vcpu_hours: float
    gib_hours: float
    cost_local: float
    cost_burst: float
    cost_peer: float
    cost: float


# --- input ------------------------------------------------------------------------------------


def parse_time(value: str, what: str) -> dt.datetime:
    """A date or ISO time as an aware UTC datetime, or InvalidRequest naming ``what``."""
    text = value.strip()
    if not text or len(text) > MAX_TEXT:
        raise InvalidRequest(f"--{what} must be a date (YYYY-MM-DD) or an ISO time", field=what)
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        at = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"--{what} '{text[:MAX_TEXT]}' is not a date (YYYY-MM-DD) or an ISO time", field=what
        ) from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def parse_month(value: str, what: str = "month") -> dt.datetime:
    """``YYYY-MM`` as the first instant of that month, UTC."""
    text = value.strip()
    try:
        year, month = text.split("-")
        if len(year) != 4 or len(month) != 2:
            raise ValueError(text)
        return dt.datetime(int(year), int(month), 1, tzinfo=dt.UTC)
    except ValueError:
        raise InvalidRequest(
            f"--{what} '{text[:MAX_TEXT]}' is not a month (YYYY-MM)", field=what
        ) from None


def next_month(at: dt.datetime) -> dt.datetime:
    return at.replace(year=at.year + (at.month == 12), month=at.month % 12 + 1)


def period(start: str | None, end: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """``[from, to)`` from the caller's strings, with this report's defaults."""
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    lo = parse_time(start, "from") if start else month
    hi = parse_time(end, "to") if end else accounting.hour_of(now) + accounting.HOUR
    if lo >= hi:
        raise InvalidRequest(f"--from ({_iso(lo)}) must be before --to ({_iso(hi)})", field="from")
    return lo, hi


def _iso(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_TEXT:
        raise InvalidRequest(f"--{what} must be a name of 1 to {MAX_TEXT} characters", field=what)
    return value


# --- scope ------------------------------------------------------------------------------------


async def _user(conn: AsyncConnection, caller: Caller, name: str) -> tuple[str, str, str]:
    row = (
        await conn.execute(
            select(m.User.id, m.User.name, m.User.group_id).where(
                (m.User.name == name) | (m.User.id == name)
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"the user '{name}' does not exist", resource="user", field=name)
    authorize(caller, Ownership(row[0], row[2]), change=False, what="user", rid=name)
    return row[0], row[1], row[2]


async def _group(conn: AsyncConnection, caller: Caller, name: str) -> tuple[str, str]:
    row = (
        await conn.execute(
            select(m.Group.id, m.Group.name).where((m.Group.name == name) | (m.Group.id == name))
        )
    ).first()
    if row is None or not (caller.is_admin or row[0] == caller.group_id):
        raise NotFound(f"the group '{name}' does not exist", resource="group", field=name)
    if not caller.is_admin and caller.role != "groupadmin":
        raise Forbidden(f"only the group admins of '{row[1]}' may see its usage")
    return row[0], row[1]


async def _scope(
    conn: AsyncConnection, caller: Caller, user: str | None, group: str | None
) -> tuple[str, list[ColumnElement[bool]]]:
    """(what the report is about, the conditions on usage records) for the caller."""
    if user is not None and group is not None:
        raise InvalidRequest("give a user or a group, not both", field="user")
    if user is not None:
        uid, uname, _gid = await _user(conn, caller, user)
        return f"user {uname}", [m.UsageRecord.owner_id == uid]
    if group is not None:
        gid, gname = await _group(conn, caller, group)
        return f"group {gname}", [m.UsageRecord.group_id == gid]
    if caller.is_admin:
        return "all", []
    if caller.role == "groupadmin":
        own = await conn.scalar(select(m.Group.name).where(m.Group.id == caller.group_id))
        return f"group {own or caller.group_id}", [m.UsageRecord.group_id == caller.group_id]
    return f"user {caller.name}", [m.UsageRecord.owner_id == caller.user_id]


# --- reports ----------------------------------------------------------------------------------


async def usage_report(
    rt: Runtime,
    caller: Caller,
    *,
    user: str | None = None,
    group: str | None = None,
    start: str | None = None,
    end: str | None = None,
    now: dt.datetime | None = None,
) -> UsageReport:
    """Usage per instance and target over ``[start, end)``, with totals by target kind."""
    user, group = _name(user, "user"), _name(group, "group")
    lo, hi = period(start, end, now or utcnow())
    r = m.UsageRecord
    async with rt.reader.connect() as conn:
        subject, conds = await _scope(conn, caller, user, group)
        conds = [*conds, r.hour >= lo, r.hour < hi]
        keys = (r.instance_id, r.owner_id, r.group_id, r.flavor, r.target_id, r.target_kind)
        rows = (
            await conn.execute(
                select(*keys, *_sums())
                .where(*conds)
                .group_by(*keys)
                .order_by(r.instance_id, r.target_id)
                .limit(MAX_ROWS + 1)
            )
        ).all()
        by_kind = {
            kind: tuple(sums)
            for kind, *sums in await conn.execute(
                select(r.target_kind, *_sums()).where(*conds).group_by(r.target_kind)
            )
        }
        names = await _names(conn, rows)
    out = tuple(
        UsageRow(
            instance_id=rid,
            owner=names["users"].get(owner, owner),
            group=names["groups"].get(gid, gid),
            flavor=flavor,
            target=names["targets"].get(tid, tid),
            target_kind=kind,
            **_amounts(seconds, vcpu_s, mib_s, cost),
        )
        for rid, owner, gid, flavor, tid, kind, seconds, vcpu_s, mib_s, cost in rows[:MAX_ROWS]
    )
    return UsageReport(subject, lo, hi, out, _totals(by_kind), len(rows) > MAX_ROWS)


def _sums() -> tuple[Any, ...]:
    r = m.UsageRecord
    return (
        func.coalesce(func.sum(r.seconds), 0),
        func.coalesce(func.sum(r.seconds * r.vcpus), 0),
        func.coalesce(func.sum(r.seconds * r.memory_mb), 0),
        func.coalesce(func.sum(r.cost), 0.0),
    )


def _amounts(seconds: Any, vcpu_s: Any, mib_s: Any, cost: Any) -> dict[str, float]:
    return {
        "hours": round(float(seconds) / 3600, 6),
        "vcpu_hours": round(float(vcpu_s) / 3600, 6),
        "gib_hours": round(float(mib_s) / 1024 / 3600, 6),
        "cost": round(float(cost), 6),
    }


def _totals(by_kind: Mapping[str, tuple[Any, ...]]) -> Totals:
    zero = (0, 0, 0, 0.0)
    amounts = {k: _amounts(*by_kind.get(k, zero)) for k in {*KINDS, *by_kind}}
    every = _amounts(*(sum(float(v[i]) for v in by_kind.values()) for i in range(4)))
    return Totals(
        hours=every["hours"],
        vcpu_hours=every["vcpu_hours"],
        gib_hours=every["gib_hours"],
        cost=every["cost"],
        cost_by_kind={k: a["cost"] for k, a in sorted(amounts.items())},
    )


async def _names(conn: AsyncConnection, rows: Sequence[Any]) -> dict[str, dict[str, str]]:
    async def lookup(col_id: Any, col_name: Any, wanted: Iterable[str]) -> dict[str, str]:
        ids = sorted({w for w in wanted if w})
        if not ids:
            return {}
        found = await conn.execute(select(col_id, col_name).where(col_id.in_(ids)))
        return {str(i): str(n) for i, n in found}

    return {
        "users": await lookup(m.User.id, m.User.name, (r[1] for r in rows)),
        "groups": await lookup(m.Group.id, m.Group.name, (r[2] for r in rows)),
        "targets": await lookup(m.Target.id, m.Target.name, (r[4] for r in rows)),
    }


async def showback(
    rt: Runtime,
    caller: Caller,
    *,
    month: str | None = None,
    start: str | None = None,
    end: str | None = None,
    group: str | None = None,
    now: dt.datetime | None = None,
) -> list[ShowbackRow]:
    """A row per group per month (``month``, or ``start``..``end`` inclusive), by target kind."""
    if not caller.is_admin and caller.role != "groupadmin":
        raise Forbidden("showback is for group admins and admins; see your own usage instead")
    group = _name(group, "group")
    first, last = _months(month, start, end, now or utcnow())
    r = m.UsageRecord
    out: list[ShowbackRow] = []
    async with rt.reader.connect() as conn:
        if group is not None:
            gid, _ = await _group(conn, caller, group)
            conds = [r.group_id == gid]
        else:
            conds = [] if caller.is_admin else [r.group_id == caller.group_id]
        groups = {i: n for i, n in await conn.execute(select(m.Group.id, m.Group.name))}
        at = first
        while at <= last:
            after = next_month(at)
            sums: dict[str, dict[str, tuple[Any, ...]]] = {}
            counts: dict[str, int] = {}
            where = [*conds, r.hour >= at, r.hour < after]
            for gid, kind, *values in await conn.execute(
                select(r.group_id, r.target_kind, *_sums())
                .where(*where)
                .group_by(r.group_id, r.target_kind)
            ):
                sums.setdefault(gid, {})[kind] = tuple(values)
            for gid, n in await conn.execute(
                select(r.group_id, func.count(func.distinct(r.instance_id)))
                .where(*where)
                .group_by(r.group_id)
            ):
                counts[gid] = int(n)
            label = f"{at.year:04d}-{at.month:02d}"
            for gid in sorted(sums, key=lambda g: groups.get(g, g)):
                t = _totals(sums[gid])
                out.append(
                    ShowbackRow(
                        month=label,
                        group=groups.get(gid, gid),
                        instances=counts.get(gid, 0),
                        hours=t.hours,
                        vcpu_hours=t.vcpu_hours,
                        gib_hours=t.gib_hours,
                        cost_local=t.cost_by_kind.get("local", 0.0),
                        cost_burst=t.cost_by_kind.get("burst", 0.0),
                        cost_peer=t.cost_by_kind.get("peer", 0.0),
                        cost=t.cost,
                    )
                )
            at = after
    return out


def _months(
    month: str | None, start: str | None, end: str | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    if month is not None and (start is not None or end is not None):
        raise InvalidRequest("give --month, or --from and --to, not both", field="month")
    if month is not None:
        at = parse_month(month)
        return at, at
    this = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first = parse_month(start, "from") if start else this
    last = parse_month(end, "to") if end else max(first, this)
    if first > last:
        raise InvalidRequest(f"--from ({start}) must not be after --to ({end})", field="from")
    if (last.year - first.year) * 12 + last.month - first.month >= MAX_MONTHS:
        raise InvalidRequest(f"a showback spans at most {MAX_MONTHS} months", field="to")
    return first, last


async def recompute(rt: Runtime, caller: Caller, since: str | None = None) -> int:
    """Run an accounting pass now (admins), from ``since`` (default: the newest hour)."""
    require_admin(caller)
    start = parse_time(since, "since") if since else None
    return await accounting.account(rt, utcnow(), since=start)


# --- rendering --------------------------------------------------------------------------------


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as CSV with a header line (numbers as they are, no thousands separators)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula is quoted with a leading '."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
