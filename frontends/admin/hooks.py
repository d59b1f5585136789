"""The admin API's hook routes (add, list, show, enable, disable, remove, the log of runs) and
``GET /metrics``.

Decides the wire shape of hooks: a hook is a JSON object with ``name``, ``kind`` (script |
webhook), ``command`` (the script's path or the webhook's URL), ``events``, ``filters`` and
``timeout`` (seconds). ``/metrics`` answers in Prometheus' text format to any valid bearer
token, so a scraper needs only an ordinary user's token (with ``ttl_hours`` 0: no expiry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from broker import errors, metrics
from broker.service import hooks
from frontends.admin import views
from frontends.admin.app import body, caller_of, reply, rt_of


async def hook_add(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    unknown = set(data) - {"name", "kind", "command", "events", "filters", "timeout", "enabled"}
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise errors.InvalidRequest("'enabled' must be true or false", field="enabled")
    view = await hooks.add(
        rt_of(request),
        caller,
        name=views.text(data, "name"),
        kind=views.text(data, "kind"),
        command=views.text(data, "command"),
        events=data.get("events"),
        filters=data.get("filters"),
        timeout_s=data.get("timeout", 10.0),
        enabled=enabled,
    )
    return reply(view, 201)


async def hook_list(request: web.Request) -> web.Response:
    return reply(await hooks.describe(rt_of(request), await caller_of(request)))


async def hook_show(request: web.Request) -> web.Response:
    return reply(
        await hooks.get(rt_of(request), await caller_of(request), request.match_info["name"])
    )


async def hook_enable(request: web.Request) -> web.Response:
    enabled = request.match_info["verb"] == "enable"
    return reply(
        await hooks.set_enabled(
            rt_of(request), await caller_of(request), request.match_info["name"], enabled
        )
    )


async def hook_remove(request: web.Request) -> web.Response:
    await hooks.remove(rt_of(request), await caller_of(request), request.match_info["name"])
    return web.Response(status=204)


async def _runs(request: web.Request, name: str | None) -> web.Response:
    q = request.query
    limit = views.query_int(q, "limit")
    found = await hooks.runs(
        rt_of(request),
        await caller_of(request),
        name,
        status=q.get("status"),
        limit=50 if limit is None else limit,
    )
    return reply(found)


async def hook_runs(request: web.Request) -> web.Response:
    return await _runs(request, request.match_info["name"])


async def all_runs(request: web.Request) -> web.Response:
    return await _runs(request, None)


async def scrape(request: web.Request) -> web.Response:
    await caller_of(request)
    rt = rt_of(request)
    text = await metrics.install(rt).scrape(rt)
    return web.Response(body=text, headers={"Content-Type": metrics.CONTENT_TYPE})


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("POST", "/api/v1/hooks", hook_add),
    ("GET", "/api/v1/hooks", hook_list),
    ("GET", "/api/v1/hook-runs", all_runs),
    ("GET", "/api/v1/hooks/{name}", hook_show),
    ("DELETE", "/api/v1/hooks/{name}", hook_remove),
    ("POST", "/api/v1/hooks/{name}/{verb:enable|disable}", hook_enable),
    ("GET", "/api/v1/hooks/{name}/runs", hook_runs),
    ("GET", "/metrics", scrape),
)
