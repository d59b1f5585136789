"""The admin API's accounting routes: usage reports, showback, and an accounting pass on demand.

Decides only the wire: query parameters in (``user``, ``group``, ``from``, ``to``, ``month``,
``format=csv``), the report as JSON or CSV out. What a caller may see is the service's
(:mod:`broker.service.usage`); errors become statuses in :mod:`frontends.admin.app`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from broker.errors import InvalidRequest
from broker.service import usage
from frontends.admin.app import body, caller_of, reply, rt_of

FORMATS = ("json", "csv")


def _format(q: Mapping[str, str]) -> str:
    fmt = q.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}", field="format")
    return fmt


def _csv(text: str, name: str) -> web.Response:
    return web.Response(
        text=text,
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


async def usage_report(request: web.Request) -> web.Response:
    q = request.query
    fmt = _format(q)
    report = await usage.usage_report(
        rt_of(request),
        await caller_of(request),
        user=q.get("user"),
        group=q.get("group"),
        start=q.get("from"),
        end=q.get("to"),
    )
    if fmt == "csv":
        rows = [dataclasses.asdict(r) for r in report.rows]
        return _csv(usage.csv_text(rows, usage.USAGE_COLUMNS), "usage")
    return reply(report)


async def showback_report(request: web.Request) -> web.Response:
    q = request.query
    fmt = _format(q)
    rows = await usage.showback(
        rt_of(request),
        await caller_of(request),
        month=q.get("month"),
        start=q.get("from"),
        end=q.get("to"),
        group=q.get("group"),
    )
    if fmt == "csv":
        plain = [dataclasses.asdict(r) for r in rows]
        return _csv(usage.csv_text(plain, usage.SHOWBACK_COLUMNS), "showback")
    return reply({"rows": rows})


async def accounting_pass(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    since: Any = data.get("since")
    if since is not None and not isinstance(since, str):
        raise InvalidRequest("'since' must be a date or an ISO time", field="since")
    written = await usage.recompute(rt_of(request), caller, since)
    return reply({"records": written})


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/api/v1/usage", usage_report),
    ("GET", "/api/v1/showback", showback_report),
    ("POST", "/api/v1/accounting", accounting_pass),
)
