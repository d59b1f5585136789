"""The admin API's tenancy routes: groups, a user's group and role, and quotas.

Decides only the wire. Groups: ``POST/GET /api/v1/groups``, ``GET/DELETE /api/v1/groups/{name}``.
A user's group and role: ``PUT /api/v1/users/{name}/group`` with ``{"group": NAME}`` and
``PUT /api/v1/users/{name}/role`` with ``{"role": ROLE}``. Quotas: ``GET /api/v1/quotas``
(``?subject=`` a user, a group, or ``group:NAME``; default the caller), ``PUT
/api/v1/quotas/{subject}`` with ``{resource: limit or null, ...}`` (null lifts a limit) and
``DELETE /api/v1/quotas/{subject}/{resource}``. A PUT is checked whole before any limit is set,
so a bad value in it changes nothing. Who may do what is the services' decision.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.auth import require_admin
from broker.errors import InvalidRequest
from broker.service import groups, quotas
from frontends.admin import views
from frontends.admin.app import body, caller_of, reply, rt_of

MAX_QUOTAS = len(quotas.RESOURCES)


async def group_create(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await groups.create_group(rt_of(request), caller, views.text(data, "name"))
    return reply(view, 201)


async def group_list(request: web.Request) -> web.Response:
    return reply(await groups.list_groups(rt_of(request), await caller_of(request)))


async def group_show(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return reply(await groups.get_group(rt_of(request), await caller_of(request), name))


async def group_delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await groups.delete_group(rt_of(request), await caller_of(request), name)
    return web.Response(status=204)


async def user_group(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await groups.set_user_group(
        rt_of(request), caller, request.match_info["name"], views.text(data, "group")
    )
    return reply(view)


async def user_role(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await groups.set_user_role(
        rt_of(request), caller, request.match_info["name"], views.text(data, "role")
    )
    return reply(view)


async def quota_show(request: web.Request) -> web.Response:
    subject = request.query.get("subject") or None
    return reply(await quotas.show(rt_of(request), await caller_of(request), subject))


def _limits(data: dict[str, Any]) -> dict[str, float | None]:
    """Every ``resource: limit`` of a PUT body, checked before any is applied."""
    if not data:
        raise InvalidRequest(f"give at least one of {', '.join(quotas.RESOURCES)}")
    out: dict[str, float | None] = {}
    for resource in data:
        if resource not in quotas.RESOURCES:
            raise InvalidRequest(
                f"unknown quota '{str(resource)[:32]}'; use one of {', '.join(quotas.RESOURCES)}",
                field="resource",
            )
        limit = views.opt_number(data, resource)
        if limit is not None and (not math.isfinite(limit) or not 0 <= limit <= quotas.MAX_LIMIT):
            raise InvalidRequest(
                f"the '{resource}' quota must be between 0 and {quotas.MAX_LIMIT}", field=resource
            )
        if limit is not None and resource != "spend_per_hour" and limit != int(limit):
            raise InvalidRequest(f"the '{resource}' quota must be a whole number", field=resource)
        out[resource] = limit
    return out


async def quota_set(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    rt, subject = rt_of(request), request.match_info["subject"]
    require_admin(caller)
    limits = _limits(data)
    await quotas.show(rt, caller, subject)  # an unknown subject is refused before any change
    for resource, limit in limits.items():
        await quotas.set_quota(rt, caller, subject, resource, limit)
    return reply(await quotas.show(rt, caller, subject))


async def quota_lift(request: web.Request) -> web.Response:
    caller, rt = await caller_of(request), rt_of(request)
    subject = request.match_info["subject"]
    await quotas.set_quota(rt, caller, subject, request.match_info["resource"], None)
    return reply(await quotas.show(rt, caller, subject))


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("POST", "/api/v1/groups", group_create),
    ("GET", "/api/v1/groups", group_list),
    ("GET", "/api/v1/groups/{name}", group_show),
    ("DELETE", "/api/v1/groups/{name}", group_delete),
    ("PUT", "/api/v1/users/{name}/group", user_group),
    ("PUT", "/api/v1/users/{name}/role", user_role),
    ("GET", "/api/v1/quotas", quota_show),
    ("PUT", "/api/v1/quotas/{subject}", quota_set),
    ("DELETE", "/api/v1/quotas/{subject}/{resource}", quota_lift),
)
