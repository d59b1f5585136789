"""The admin API's aiohttp application: routes as a table, one error table, bearer tokens.

Every handler authenticates with a bearer token, calls one service function and renders its
frozen view as JSON. Errors come from :mod:`broker.errors` and become statuses here only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from broker import errors
from broker.auth import Caller
from broker.runtime import Runtime
from broker.service import (
    flavors,
    images,
    imagestore,
    instances,
    migrate,
    networks,
    policies,
    reservations,
    targets,
    unmanaged,
    users,
)
from broker.service.common import TagFilter
from broker.states import Action, State
from frontends.admin import capacity, views

RUNTIME = web.AppKey("runtime", Runtime)
MAX_BODY = 1024 * 1024

STATUS: tuple[tuple[type[errors.BrokerError], int, str], ...] = (
    (errors.NotFound, 404, "NotFound"),
    (errors.AlreadyExists, 409, "AlreadyExists"),
    (errors.InvalidState, 409, "InvalidState"),
    (errors.InvalidRequest, 400, "InvalidRequest"),
    (errors.ConfigError, 400, "InvalidRequest"),
    (errors.Unauthenticated, 401, "Unauthenticated"),
    (errors.Forbidden, 403, "Forbidden"),
    (errors.QuotaExceeded, 403, "QuotaExceeded"),
    (errors.NoCapacity, 503, "NoCapacity"),
    (errors.Unsupported, 501, "Unsupported"),
    (errors.BackendError, 502, "BackendError"),
)


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, frozenset, set)):
        return list(value)
    raise TypeError(f"cannot render {type(value).__name__}")


def reply(data: Any, status: int = 200) -> web.Response:
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=_default))


def error_reply(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.BrokerError as exc:
        for cls, status, code in STATUS:
            if isinstance(exc, cls):
                return error_reply(status, code, exc.message)
        return error_reply(500, "InternalError", exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_reply(exc.status, exc.reason.replace(" ", ""), exc.text or exc.reason)
        raise


async def caller_of(request: web.Request) -> Caller:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise errors.Unauthenticated("send 'Authorization: Bearer <token>'")
    caller = await request.app[RUNTIME].caller_for_token(token.strip())
    if caller is None:
        raise errors.Unauthenticated("the token is unknown or expired")
    return caller


async def body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.InvalidRequest("the body must be a JSON object")
    return data


def rt_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


# --- handlers ----------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    rt = rt_of(request)
    return reply({"status": "ok", "region": rt.config.broker.region, "listeners": rt.listeners})


async def root(request: web.Request) -> web.Response:
    """The admin listener's root is the web interface."""
    raise web.HTTPFound("/ui/")


async def whoami(request: web.Request) -> web.Response:
    return reply(await caller_of(request))


async def user_create(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    creds = await users.create_user(
        rt_of(request),
        caller,
        views.text(data, "name"),
        role=views.text(data, "role", "user"),
        group=views.opt_text(data, "group"),
        access_key=views.opt_text(data, "access_key"),
        secret_key=views.opt_text(data, "secret_key"),
    )
    return reply(
        {"user": creds.user, "access_key": creds.access_key, "secret_key": creds.secret_key}, 201
    )


async def user_list(request: web.Request) -> web.Response:
    return reply(await users.list_users(rt_of(request), await caller_of(request)))


async def user_show(request: web.Request) -> web.Response:
    return reply(
        await users.get_user(rt_of(request), await caller_of(request), request.match_info["name"])
    )


async def user_delete(request: web.Request) -> web.Response:
    await users.delete_user(rt_of(request), await caller_of(request), request.match_info["name"])
    return web.Response(status=204)


async def user_enable(request: web.Request) -> web.Response:
    enabled = request.match_info["verb"] == "enable"
    return reply(
        await users.set_enabled(
            rt_of(request), await caller_of(request), request.match_info["name"], enabled
        )
    )


async def user_token(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    hours = views.number(data, "ttl_hours", 12.0)
    ttl = None if hours == 0 else dt.timedelta(hours=hours)
    token = await users.issue_token(rt_of(request), caller, request.match_info["name"], ttl)
    return reply({"token": token}, 201)


async def target_add(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await targets.add(
        rt_of(request),
        caller,
        name=views.text(data, "name"),
        kind=views.text(data, "kind"),
        driver=views.text(data, "driver"),
        hypervisor=views.text(data, "hypervisor", ""),
        cluster=views.opt_text(data, "cluster"),
        settings=views.mapping(data, "settings"),
        secret=views.mapping(data, "secret"),
        simulated=views.flag(data, "simulated"),
    )
    return reply(views.target(view), 201)


async def target_list(request: web.Request) -> web.Response:
    kind = request.query.get("kind")
    found = await targets.describe(rt_of(request), await caller_of(request), kind=kind)
    return reply([views.target(t) for t in found])


async def target_show(request: web.Request) -> web.Response:
    view = await targets.get(rt_of(request), await caller_of(request), request.match_info["name"])
    return reply(views.target(view))


async def target_state(request: web.Request) -> web.Response:
    verb = request.match_info["verb"]
    state = {"enable": "enabled", "disable": "disabled", "drain": "draining"}[verb]
    view = await targets.set_state(
        rt_of(request), await caller_of(request), request.match_info["name"], state
    )
    return reply(views.target(view))


async def target_remove(request: web.Request) -> web.Response:
    force = request.query.get("force", "false")
    if force not in ("true", "false"):
        raise errors.InvalidRequest("force must be true or false", field="force")
    await targets.remove(
        rt_of(request), await caller_of(request), request.match_info["name"], force=force == "true"
    )
    return web.Response(status=204)


async def target_reservation(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await reservations.set_for_host(
        rt_of(request),
        caller,
        request.match_info["name"],
        cpu=views.amount(data, "cpu"),
        memory=views.amount(data, "memory"),
    )
    return reply(views.target(view))


async def target_costs(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await targets.set_costs(
        rt_of(request),
        caller,
        request.match_info["name"],
        cpu_cost=views.opt_number(data, "cpu_cost"),
        memory_cost=views.opt_number(data, "memory_cost"),
    )
    return reply(views.target(view))


async def unmanaged_list(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return reply(await unmanaged.describe(rt_of(request), await caller_of(request), name))


async def unmanaged_adopt(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    rid = await unmanaged.adopt(
        rt_of(request),
        caller,
        request.match_info["name"],
        request.match_info["ref"],
        user=views.text(data, "user"),
        flavor=views.text(data, "flavor"),
        image=views.text(data, "image"),
    )
    return reply(await instances.get(rt_of(request), caller, rid), 201)


async def unmanaged_terminate(request: web.Request) -> web.Response:
    await unmanaged.terminate(
        rt_of(request),
        await caller_of(request),
        request.match_info["name"],
        request.match_info["ref"],
    )
    return web.Response(status=204)


async def cluster_list(request: web.Request) -> web.Response:
    return reply(await reservations.describe_clusters(rt_of(request), await caller_of(request)))


async def cluster_show(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return reply(await reservations.get_cluster(rt_of(request), await caller_of(request), name))


async def cluster_reservation(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await reservations.set_for_cluster(
        rt_of(request),
        caller,
        request.match_info["name"],
        cpu=views.amount(data, "cpu"),
        memory=views.amount(data, "memory"),
    )
    return reply(view)


async def image_register(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    spec = images.ImageSpec(
        name=views.text(data, "name"),
        kind=views.text(data, "kind", "disk"),
        location=views.text(data, "location", ""),
        kernel=views.text(data, "kernel", ""),
        ramdisk=views.text(data, "ramdisk", ""),
        cmdline=views.text(data, "cmdline", ""),
        description=views.text(data, "description", ""),
        hypervisor=views.text(data, "hypervisor", ""),
        arch=views.text(data, "arch", "x86_64"),
        visibility=views.text(data, "visibility", "private"),
        checksum=views.text(data, "checksum", ""),
        mappings=views.mapping(data, "mappings"),
    )
    return reply(await images.register(rt_of(request), caller, spec), 201)


async def image_import(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    spec = images.ImageSpec(
        name=views.text(data, "name"),
        description=views.text(data, "description", ""),
        hypervisor=views.text(data, "hypervisor", ""),
        visibility=views.text(data, "visibility", "private"),
    )
    return reply(await imagestore.begin_import(rt_of(request), caller, spec), 201)


async def image_upload(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    view = await imagestore.receive(
        rt_of(request),
        caller,
        request.match_info["id"],
        request.content.iter_chunked(1 << 20),
        expected_size=request.content_length,
    )
    return reply(view)


async def image_list(request: web.Request) -> web.Response:
    page = await images.describe(rt_of(request), await caller_of(request))
    return reply(page.items)


async def image_show(request: web.Request) -> web.Response:
    return reply(
        await images.get(rt_of(request), await caller_of(request), request.match_info["id"])
    )


async def image_remove(request: web.Request) -> web.Response:
    await images.deregister(rt_of(request), await caller_of(request), request.match_info["id"])
    return web.Response(status=204)


async def flavor_list(request: web.Request) -> web.Response:
    await caller_of(request)
    return reply(await flavors.describe(rt_of(request)))


async def flavor_create(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    flavor = flavors.FlavorView(
        name=views.text(data, "name"),
        vcpus=int(views.number(data, "vcpus")),
        memory_mb=int(views.number(data, "memory_mb")),
        disk_gb=int(views.number(data, "disk_gb", 0)),
        arch=views.text(data, "arch", "x86_64"),
        price_per_hour=views.number(data, "price_per_hour", 0.0),
    )
    return reply(await flavors.create(rt_of(request), caller, flavor), 201)


async def network_list(request: web.Request) -> web.Response:
    return reply(await networks.describe(rt_of(request), await caller_of(request)))


async def network_create(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await networks.create(
        rt_of(request),
        caller,
        name=views.text(data, "name"),
        cidr=views.text(data, "cidr"),
        bridge=views.text(data, "bridge", ""),
        gateway=views.text(data, "gateway", ""),
        dns=views.text(data, "dns", ""),
        range_start=views.text(data, "range_start", ""),
        range_end=views.text(data, "range_end", ""),
        zone=views.text(data, "zone", ""),
        is_default=views.flag(data, "default"),
    )
    return reply(view, 201)


async def instance_list(request: web.Request) -> web.Response:
    q = request.query
    try:
        states = tuple(State(s) for s in q.getall("state", []))
    except ValueError:
        raise errors.InvalidRequest(f"unknown state; use one of {', '.join(State)}") from None
    flt = instances.InstanceFilter(
        states=states,
        owner_ids=tuple(q.getall("owner", [])),
        target_ids=tuple(q.getall("target", [])),
        tags=tuple(
            TagFilter(k, (v,)) for k, _, v in (t.partition("=") for t in q.getall("tag", []))
        ),
    )
    limit = views.query_int(q, "limit")
    page = await instances.describe(
        rt_of(request), await caller_of(request), flt, limit=limit, token=q.get("next")
    )
    return reply({"instances": page.items, "next": page.next_token})


async def instance_show(request: web.Request) -> web.Response:
    return reply(
        await instances.get(rt_of(request), await caller_of(request), request.match_info["id"])
    )


async def instance_action(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    try:
        action = Action(request.match_info["verb"])
    except ValueError:
        raise errors.InvalidRequest(f"unknown action '{request.match_info['verb']}'") from None
    if action is Action.LAUNCH:
        raise errors.InvalidRequest("launch through EC2 or OCCI, or POST /api/v1/instances")
    if action is Action.MIGRATE:
        view = await migrate.migrate(
            rt_of(request), caller, request.match_info["id"], views.text(data, "host")
        )
        return reply(view)
    changes = await instances.act(
        rt_of(request), caller, [request.match_info["id"]], action, force=views.flag(data, "force")
    )
    return reply(changes[0])


async def instance_launch(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    req = instances.LaunchRequest(
        image_id=views.text(data, "image"),
        flavor=views.text(data, "flavor"),
        min_count=int(views.number(data, "count", 1)),
        max_count=int(views.number(data, "count", 1)),
        key_name=views.opt_text(data, "key_name"),
        client_token=views.opt_text(data, "client_token"),
        user_data=views.text(data, "user_data", "").encode() or None,
        requirements=views.text(data, "requirements", ""),
        rank=views.text(data, "rank", ""),
    )
    return reply(await instances.launch(rt_of(request), caller, req), 201)


async def instance_explain(request: web.Request) -> web.Response:
    return reply(
        await views.explanation(rt_of(request), await caller_of(request), request.match_info["id"])
    )


async def instance_events(request: web.Request) -> web.Response:
    rt, caller = rt_of(request), await caller_of(request)
    return reply(await views.events(rt, caller, request.match_info["id"]))


async def instance_console(request: web.Request) -> web.Response:
    text, at = await instances.console(
        rt_of(request), await caller_of(request), request.match_info["id"]
    )
    return reply({"output": text, "at": at})


async def policy_show(request: web.Request) -> web.Response:
    found = await policies.current(rt_of(request), await caller_of(request))
    return reply(found if found is not None else {"version": None, "document": None})


async def policy_set(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    view = await policies.set_policy(
        rt_of(request), caller, data.get("document"), views.text(data, "comment", "")
    )
    return reply(view, 201)


async def policy_history(request: web.Request) -> web.Response:
    limit = views.query_int(request.query, "limit") or 50
    return reply(await policies.history(rt_of(request), await caller_of(request), limit))


async def policy_test(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    return reply(await policies.test_policy(rt_of(request), caller, data.get("document")))


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/", root),
    ("GET", "/api/v1/health", health),
    ("GET", "/api/v1/whoami", whoami),
    ("GET", "/api/v1/capacity", capacity.capacity),
    ("POST", "/api/v1/users", user_create),
    ("GET", "/api/v1/users", user_list),
    ("GET", "/api/v1/users/{name}", user_show),
    ("DELETE", "/api/v1/users/{name}", user_delete),
    ("POST", "/api/v1/users/{name}/{verb:enable|disable}", user_enable),
    ("POST", "/api/v1/users/{name}/token", user_token),
    ("POST", "/api/v1/targets", target_add),
    ("GET", "/api/v1/targets", target_list),
    ("GET", "/api/v1/targets/{name}", target_show),
    ("POST", "/api/v1/targets/{name}/{verb:enable|disable|drain}", target_state),
    ("DELETE", "/api/v1/targets/{name}", target_remove),
    ("PUT", "/api/v1/targets/{name}/reservation", target_reservation),
    ("PUT", "/api/v1/targets/{name}/costs", target_costs),
    ("GET", "/api/v1/targets/{name}/unmanaged", unmanaged_list),
    ("POST", "/api/v1/targets/{name}/unmanaged/{ref}/adopt", unmanaged_adopt),
    ("DELETE", "/api/v1/targets/{name}/unmanaged/{ref}", unmanaged_terminate),
    ("GET", "/api/v1/clusters", cluster_list),
    ("GET", "/api/v1/clusters/{name}", cluster_show),
    ("PUT", "/api/v1/clusters/{name}/reservation", cluster_reservation),
    ("POST", "/api/v1/images", image_register),
    ("GET", "/api/v1/images", image_list),
    ("POST", "/api/v1/images/import", image_import),
    ("PUT", "/api/v1/images/{id}/data", image_upload),
    ("GET", "/api/v1/images/{id}", image_show),
    ("DELETE", "/api/v1/images/{id}", image_remove),
    ("GET", "/api/v1/policy", policy_show),
    ("PUT", "/api/v1/policy", policy_set),
    ("GET", "/api/v1/policy/history", policy_history),
    ("POST", "/api/v1/policy/test", policy_test),
    ("GET", "/api/v1/flavors", flavor_list),
    ("POST", "/api/v1/flavors", flavor_create),
    ("GET", "/api/v1/networks", network_list),
    ("POST", "/api/v1/networks", network_create),
    ("GET", "/api/v1/instances", instance_list),
    ("POST", "/api/v1/instances", instance_launch),
    ("GET", "/api/v1/instances/{id}", instance_show),
    ("POST", "/api/v1/instances/{id}/{verb}", instance_action),
    ("GET", "/api/v1/instances/{id}/explain", instance_explain),
    ("GET", "/api/v1/instances/{id}/events", instance_events),
    ("GET", "/api/v1/instances/{id}/console", instance_console),
)


def create_app(rt: Runtime) -> web.Application:
    from broker import metrics
    from frontends.admin import (  # their handlers use this module's helpers
        hooks,
        ovfimport,
        snapshots,
        tenancy,
        usage,
    )
    from frontends.web.app import create_app as create_web_app

    app = web.Application(
        middlewares=[metrics.middleware(rt, "admin"), error_middleware], client_max_size=MAX_BODY
    )
    # uploads stream past client_max_size: only image_upload and ovfimport.ovf_file read
    # request.content themselves
    app[RUNTIME] = rt
    # snapshots first: ROUTES' POST /api/v1/instances/{id}/{verb} would match its POST
    routes = (*snapshots.ROUTES, *ROUTES, *ovfimport.ROUTES, *usage.ROUTES, *hooks.ROUTES,
              *tenancy.ROUTES)  # fmt: skip
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    app.add_subapp("/ui/", create_web_app(rt))
    return app
