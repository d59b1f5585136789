"""``cloudbroker usage`` and ``cloudbroker showback``: accounting reports over the admin API.

Decides what an operator or user types to read accounting: ``usage [--user U | --group G]
[--from --to] [--csv]`` (per instance and target, with totals by local, burst and peer) and
``showback [--month M | --from M --to M] [--group G] [--csv]`` (a row per group per month).
The broker checks dates, names and who may see what; ``--csv`` prints CSV for a spreadsheet,
``--json`` (before the command) the report as the API returns it.
"""

from __future__ import annotations

from typing import Any

import click

from broker.cli import Ctx, fail, pass_ctx, show
from broker.service.usage import SHOWBACK_COLUMNS, USAGE_COLUMNS, csv_text

TOTAL_COLUMNS = [
    "hours",
    "vcpu_hours",
    "gib_hours",
    "cost_local",
    "cost_burst",
    "cost_peer",
    "cost",
]


def _total_row(report: dict[str, Any]) -> dict[str, Any]:
    totals = report["totals"]
    by_kind = totals.get("cost_by_kind") or {}
    return {
        "hours": totals["hours"],
        "vcpu_hours": totals["vcpu_hours"],
        "gib_hours": totals["gib_hours"],
        **{f"cost_{k}": by_kind.get(k, 0.0) for k in ("local", "burst", "peer")},
        "cost": totals["cost"],
    }


@click.command()
@click.option("--user", default=None, help="one user's usage (yours without it)")
@click.option("--group", default=None, help="one group's usage (group admins: their own)")
@click.option("--from", "start", default=None, help="YYYY-MM-DD or ISO time (first of the month)")
@click.option("--to", "end", default=None, help="YYYY-MM-DD or ISO time, excluded (now)")
@click.option("--csv", "as_csv", is_flag=True, help="print the rows as CSV")
@pass_ctx
def usage(
    ctx: Ctx,
    user: str | None,
    group: str | None,
    start: str | None,
    end: str | None,
    as_csv: bool,
) -> None:
    """Usage per instance over [--from, --to): hours, vCPU-hours, GiB-hours and cost."""
    if user is not None and group is not None:
        fail("give --user or --group, not both")
    query = {"user": user, "group": group, "from": start, "to": end}
    report: dict[str, Any] = ctx.client().call("GET", "/api/v1/usage", query=query)
    if as_csv:
        click.echo(csv_text(report["rows"], USAGE_COLUMNS), nl=False)
        return
    if ctx.as_json:
        show(ctx, report)
        return
    title = f"usage of {report['subject']} from {report['start']} to {report['end']}"
    show(ctx, report["rows"], USAGE_COLUMNS, title=title)
    show(ctx, [_total_row(report)], TOTAL_COLUMNS, title="totals")
    if report.get("truncated"):
        click.echo("(only the first rows are listed; the totals count every row)", err=True)


@click.command()
@click.option("--month", default=None, help="YYYY-MM (this month without any period)")
@click.option("--from", "start", default=None, help="first month, YYYY-MM")
@click.option("--to", "end", default=None, help="last month, YYYY-MM (included)")
@click.option("--group", default=None, help="one group only")
@click.option("--csv", "as_csv", is_flag=True, help="print the rows as CSV")
@pass_ctx
def showback(
    ctx: Ctx,
    month: str | None,
    start: str | None,
    end: str | None,
    group: str | None,
    as_csv: bool,
) -> None:
    """What each group used per month, its cost split local, burst and peer."""
    if month is not None and (start is not None or end is not None):
        fail("give --month, or --from and --to, not both")
    query = {"month": month, "from": start, "to": end, "group": group}
    found: dict[str, Any] = ctx.client().call("GET", "/api/v1/showback", query=query)
    if as_csv:
        click.echo(csv_text(found["rows"], SHOWBACK_COLUMNS), nl=False)
        return
    show(ctx, found["rows"], SHOWBACK_COLUMNS, title="showback")
