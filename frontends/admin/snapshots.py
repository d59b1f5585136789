"""The admin API's routes for an instance's VM snapshots (:mod:`broker.service.vmsnapshots`).

Decides the wire: ``POST /api/v1/instances/{id}/snapshots`` with ``{"name": ..,
"description": ..}`` takes one (201 and the snapshot), ``GET`` on the same path lists them
(oldest first), ``POST .../snapshots/{name}/revert`` reverts (200 and the snapshot) and
``DELETE .../snapshots/{name}`` deletes (204). Errors are the API's usual JSON: a bad name 400,
an instance or snapshot not found (or not the caller's) 404, a name taken or an instance not
settled on a target 409, a target whose driver keeps no snapshots 501.

These routes are registered before the app's ``POST /api/v1/instances/{id}/{verb}``, which
would otherwise take ``snapshots`` for an action's name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from broker import errors
from broker.service import vmsnapshots
from frontends.admin import views
from frontends.admin.app import body, caller_of, reply, rt_of

FIELDS = frozenset({"name", "description"})


async def snapshot_create(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    unknown = set(data) - FIELDS
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    view = await vmsnapshots.create(
        rt_of(request),
        caller,
        request.match_info["id"],
        views.text(data, "name"),
        views.text(data, "description", ""),
    )
    return reply(view, 201)


async def snapshot_list(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    return reply(await vmsnapshots.describe(rt_of(request), caller, request.match_info["id"]))


async def snapshot_revert(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    view = await vmsnapshots.revert(
        rt_of(request), caller, request.match_info["id"], request.match_info["name"]
    )
    return reply(view)


async def snapshot_delete(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    await vmsnapshots.delete(
        rt_of(request), caller, request.match_info["id"], request.match_info["name"]
    )
    return web.Response(status=204)


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("POST", "/api/v1/instances/{id}/snapshots", snapshot_create),
    ("GET", "/api/v1/instances/{id}/snapshots", snapshot_list),
    ("POST", "/api/v1/instances/{id}/snapshots/{name}/revert", snapshot_revert),
    ("DELETE", "/api/v1/instances/{id}/snapshots/{name}", snapshot_delete),
)
