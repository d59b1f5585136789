"""Sign-in, the dashboard, the resource lists and the instance page, with their actions.

Each handler calls the service functions the admin API calls, with the signed-in caller, so
what a page shows and what an action may do is decided by :func:`broker.auth.authorize`.
Actions that destroy (terminate, drain, disable) first answer with a confirmation form.
Lists are paged (:mod:`frontends.web.paging`): a search or filter reads on until a page is
full, so it sees every row the caller may see, never only the first thousand.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from broker import errors
from broker.auth import Caller
from broker.service import flavors, images, instances, networks, policies, targets, users, volumes
from broker.service.common import MAX_FILTER_VALUES, Page
from broker.service.instances import InstanceFilter, InstanceView
from broker.service.targets import TargetView
from broker.states import Action, State
from frontends.admin import capacity as capacity_doc
from frontends.admin.views import events as instance_events
from frontends.admin.views import explanation
from frontends.web import charts, data, paging, stream
from frontends.web.base import (
    SESSIONS,
    THROTTLE,
    caller_of,
    field,
    form_of,
    redirect,
    render,
    rt_of,
    set_cookie,
    url,
)
from frontends.web.session import COOKIE

INSTANCE_ACTIONS = ("start", "stop", "reboot", "terminate")
#: which buttons an instance row offers in each state (app.js holds the same table)
OFFERED: dict[str, tuple[str, ...]] = {
    "running": ("stop", "reboot", "terminate"),
    "boot": ("stop", "terminate"),
    "suspended": ("stop", "terminate"),
    "poweroff": ("start", "terminate"),
    "stopped": ("start", "terminate"),
    "done": (),
}
DESTRUCTIVE_INSTANCE = ("terminate",)
TARGET_ACTIONS = {"enable": "enabled", "disable": "disabled", "drain": "draining"}
DESTRUCTIVE_TARGET = ("disable", "drain")
MAX_QUERY = 200
NOT_PLACED = "(not placed)"
T = TypeVar("T")


def matches(q: str, *values: object) -> bool:
    """Case-insensitive substring search over the given values."""
    if not q:
        return True
    needle = q.lower()
    return any(needle in str(v).lower() for v in values if v is not None)


def query(request: web.Request, key: str) -> str:
    value = request.query.get(key, "").strip()
    if len(value) > MAX_QUERY:
        raise errors.InvalidRequest(f"'{key}' is limited to {MAX_QUERY} characters", field=key)
    return value


# --- sign-in ------------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", error="", access_key="")


async def _credential_caller(request: web.Request, form: Any) -> Caller | None:
    rt = rt_of(request)
    token = field(form, "token").strip()
    if token:
        return await rt.caller_for_token(token) if len(token) <= 512 else None
    key, secret = field(form, "access_key").strip(), field(form, "secret")
    if not key or not secret or len(key) > 128 or len(secret) > 512:
        return None
    found = await rt.caller_for_key(key)
    if found is None or not hmac.compare_digest(found[1].encode(), secret.encode()):
        return None
    return found[0]


async def login_post(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    throttle, client = request.app[THROTTLE], request.remote or ""
    if throttle.blocked(client):
        return render(
            request,
            "login.html",
            status=429,
            error="Too many failed sign-ins from here; wait a minute and try again.",
            access_key="",
        )
    caller = await _credential_caller(request, form)
    if caller is None:
        throttle.failed(client)
        return render(
            request,
            "login.html",
            status=401,
            error="The access key and secret (or the token) are not valid.",
            access_key=field(form, "access_key")[:128],
        )
    cookie, _ = request.app[SESSIONS].create(caller)
    response = redirect(url(request, "dashboard"))
    set_cookie(response, request, cookie)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].drop(request.cookies.get(COOKIE))
    response = redirect(url(request, "login"))
    response.del_cookie(COOKIE, path=str(url(request, "dashboard")))
    raise response


# --- dashboard ----------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    since = await stream.newest(rt_of(request))
    return render(request, "dashboard.html", since=since, **await _dashboard(request))


async def dashboard_live(request: web.Request) -> web.Response:
    """The dashboard's figures alone, which the page refetches when the event stream speaks."""
    return render(request, "_dashboard.html", **await _dashboard(request))


async def _dashboard(request: web.Request) -> dict[str, Any]:
    rt, caller = rt_of(request), caller_of(request)
    found = await targets.describe(rt, caller)
    hosts = [t for t in found if t.kind == "host"]
    history = await data.host_history(rt, [t.id for t in hosts])
    given = await data.allocated(rt)
    every = await _every_instance(request)
    by_state, by_where = data.counts(every)
    clusters: dict[str, list[Any]] = {}
    for host in hosts:
        series = history.get(host.id, [])
        clusters.setdefault(host.cluster or "(no cluster)", []).append(
            {
                "t": host,
                "cpu": charts.sparkline(
                    [s.used_cpu for s in series], host.total_cpu, label=f"{host.name} CPU"
                ),
                "mem": charts.sparkline(
                    [s.used_memory_mb for s in series],
                    host.total_memory_mb,
                    label=f"{host.name} memory",
                ),
                "last": series[-1] if series else None,
                "alloc": given.get(host.id, data.Allocated(0, 0)),
            }
        )
    spend: list[data.Spend] = []
    if caller.is_admin:
        current = await policies.current(rt, caller)
        spend = data.burst_spend(current, found, every, await flavors.describe(rt))
    free = await capacity_doc.document(rt, caller)
    return dict(
        clusters=clusters,
        by_state=by_state,
        by_where=by_where,
        total=len(every),
        spend=spend,
        remote=[t for t in found if t.kind != "host"],
        free=free,
        budget_bar=charts.bar,
    )


async def _every_instance(request: web.Request) -> list[InstanceView]:
    """All the caller's instances, read a service page at a time, for the dashboard's counts."""
    rt, caller = rt_of(request), caller_of(request)
    out: list[InstanceView] = []
    token: str | None = None
    while True:
        page = await instances.describe(rt, caller, limit=paging.BATCH, token=token)
        out.extend(page.items)
        if page.next_token is None:
            return out
        token = page.next_token


# --- instances ----------------------------------------------------------------------------------


def _instance_row(view: InstanceView) -> dict[str, Any]:
    return {"v": view, "where": data.where_label(view)}


def _by_id(item: Any) -> str:
    return str(item.id)


def _by_name(item: Any) -> str:
    return str(item.name)


def _places(found: Sequence[TargetView]) -> list[str]:
    """Every value of the "where" filter (what :func:`data.where_label` can say)."""
    remote = sorted(f"{t.kind} {t.name}" for t in found if t.kind != "host")
    return [NOT_PLACED, "local", *remote]


def _placed_on(found: Sequence[TargetView], where: str) -> tuple[str, ...]:
    """The targets "where" names, for the service to filter on (empty: Python filters)."""
    if where == "local":
        hosts = tuple(t.id for t in found if t.kind == "host")
        return hosts if len(hosts) <= MAX_FILTER_VALUES else ()
    return tuple(t.id for t in found if t.kind != "host" and f"{t.kind} {t.name}" == where)


def _instance_matches(q: str, where: str) -> Callable[[InstanceView], bool]:
    def keep(v: InstanceView) -> bool:
        return matches(
            q,
            v.id,
            v.hostname,
            v.image_id,
            v.flavor,
            v.private_ip,
            v.public_ip,
            v.target_name,
            *v.tags.keys(),
            *v.tags.values(),
        ) and (not where or data.where_label(v) == where)

    return keep


async def instance_list(request: web.Request) -> web.Response:
    rt, caller = rt_of(request), caller_of(request)
    q, state, where = query(request, "q"), query(request, "state"), query(request, "where")
    if state and state not in {s.value for s in State}:
        raise errors.InvalidRequest(f"unknown state '{state}'", field="state")
    at = paging.position(request)
    found = await targets.describe(rt, caller)
    wheres = _places(found)
    if where and where not in wheres:
        raise errors.InvalidRequest(f"unknown place '{where}'", field="where")
    on = _placed_on(found, where) if where else ()
    # SQL narrows every read (ASCII search text compares alike in SQL and Python); the same
    # test in Python then decides, so a page never shows a row the filters would not keep
    text = q if q.isascii() else ""
    flt = InstanceFilter(states=(State(state),) if state else (), target_ids=on, text=text)
    in_sql = bool(text or not q) and bool(on or not where)
    since = await stream.newest(rt)

    async def fetch(after: str | None, n: int) -> Page[InstanceView]:
        return await instances.describe(rt, caller, flt, limit=n, token=paging.token(after))

    keep = _instance_matches(q, where)
    window = await paging.fill(fetch, _by_id, keep, at, at.size + 1 if in_sql else paging.BATCH)
    filters = (("q", q), ("state", state), ("where", where))
    return render(
        request,
        "instances.html",
        since=since,
        rows=[_instance_row(v) for v in window.rows],
        pager=paging.pager(request, "instances", filters, at, window, _by_id),
        whole=at.after is None and not window.more,
        q=q,
        state_filter=state,
        where=where,
        states=[s.value for s in State],
        wheres=wheres,
        actions=INSTANCE_ACTIONS,
        offered=lambda state: OFFERED.get(state, ("terminate",)),
    )


async def instance_page(request: web.Request) -> web.Response:
    rt, caller = rt_of(request), caller_of(request)
    rid = request.match_info["id"]
    since = await stream.newest(rt)
    try:
        view = await instances.get(rt, caller, rid)
    except errors.InvalidRequest:
        raise errors.NotFound(f"the instance '{rid}' does not exist", resource="instance") from None
    why = await explanation(rt, caller, rid)
    log = await instance_events(rt, caller, rid)
    console, console_at = await instances.console(rt, caller, rid)
    return render(
        request,
        "instance.html",
        since=since,
        v=view,
        where=data.where_label(view),
        why=why,
        events=log,
        console=console,
        console_at=console_at,
        actions=INSTANCE_ACTIONS,
        offered=lambda state: OFFERED.get(state, ("terminate",)),
    )


async def instance_action(request: web.Request) -> web.StreamResponse:
    rt, caller = rt_of(request), caller_of(request)
    rid, verb = request.match_info["id"], request.match_info["verb"]
    if verb not in INSTANCE_ACTIONS:
        raise errors.InvalidRequest(f"unknown action '{verb}'", field="verb")
    form = await form_of(request)
    view = await instances.get(rt, caller, rid)
    if verb in DESTRUCTIVE_INSTANCE and field(form, "confirm") != "yes":
        return render(
            request,
            "confirm.html",
            what=f"{verb} the instance {view.id}",
            detail="The instance and its local disks are destroyed. This cannot be undone.",
            action=str(url(request, "instance_action", id=rid, verb=verb)),
            back=str(url(request, "instance", id=rid)),
        )
    await instances.act(rt, caller, [rid], Action(verb))
    back = field(form, "back")
    if back == "list":
        raise redirect(url(request, "instances"))
    raise redirect(url(request, "instance", id=rid))


# --- targets ------------------------------------------------------------------------------------


async def target_list(request: web.Request) -> web.Response:
    rt, caller = rt_of(request), caller_of(request)
    q, kind = query(request, "q"), query(request, "kind")
    if kind and kind not in ("host", "region", "peer"):
        raise errors.InvalidRequest(f"unknown kind '{kind}'", field="kind")
    at = paging.position(request)
    found = await targets.describe(rt, caller, kind=kind or None)

    def keep(t: TargetView) -> bool:
        return matches(q, t.name, t.cluster, t.driver, t.hypervisor, t.state, t.state_reason)

    window = await paging.fill(paging.listed(found, _by_name), _by_name, keep, at)
    pager = paging.pager(request, "targets", (("q", q), ("kind", kind)), at, window, _by_name)
    return render(
        request,
        "targets.html",
        rows=window.rows,
        pager=pager,
        q=q,
        kind=kind,
        admin=caller.is_admin,
    )


async def target_action(request: web.Request) -> web.StreamResponse:
    rt, caller = rt_of(request), caller_of(request)
    name, verb = request.match_info["name"], request.match_info["verb"]
    if verb not in TARGET_ACTIONS:
        raise errors.InvalidRequest(f"unknown action '{verb}'", field="verb")
    form = await form_of(request)
    target = await targets.get(rt, caller, name)
    if verb in DESTRUCTIVE_TARGET and field(form, "confirm") != "yes":
        return render(
            request,
            "confirm.html",
            what=f"{verb} the {target.kind} {target.name}",
            detail="No new instances will be placed there; running ones stay where they are.",
            action=str(url(request, "target_action", name=target.name, verb=verb)),
            back=str(url(request, "targets")),
        )
    await targets.set_state(rt, caller, name, TARGET_ACTIONS[verb])
    raise redirect(url(request, "targets"))


# --- the other lists ----------------------------------------------------------------------------


def _searching(q: str, *attrs: str) -> Callable[[Any], bool]:
    def keep(item: Any) -> bool:
        return matches(q, *(getattr(item, a) for a in attrs))

    return keep


async def _simple_list(
    request: web.Request,
    route: str,
    fetch: paging.Fetch[T],
    key: Callable[[T], str],
    *attrs: str,
) -> web.Response:
    """A list with only a search: the service reads, Python searches, a page at a time."""
    q, at = query(request, "q"), paging.position(request)
    window = await paging.fill(fetch, key, _searching(q, *attrs), at)
    pager = paging.pager(request, route, (("q", q),), at, window, key)
    return render(request, f"{route}.html", rows=window.rows, pager=pager, q=q)


async def image_list(request: web.Request) -> web.Response:
    rt, caller = rt_of(request), caller_of(request)

    async def fetch(after: str | None, n: int) -> Page[images.ImageView]:
        return await images.describe(rt, caller, limit=n, token=paging.token(after))

    attrs = ("id", "name", "description", "kind", "hypervisor", "state")
    return await _simple_list(request, "images", fetch, _by_id, *attrs)


async def network_list(request: web.Request) -> web.Response:
    found = await networks.describe(rt_of(request), caller_of(request))
    fetch = paging.listed(found, _by_name)
    attrs = ("id", "name", "cidr", "bridge", "zone")
    return await _simple_list(request, "networks", fetch, _by_name, *attrs)


async def volume_list(request: web.Request) -> web.Response:
    rt, caller = rt_of(request), caller_of(request)

    async def fetch(after: str | None, n: int) -> Page[volumes.VolumeView]:
        return await volumes.describe(rt, caller, limit=n, token=paging.token(after))

    attrs = ("id", "zone", "state", "instance_id")
    return await _simple_list(request, "volumes", fetch, _by_id, *attrs)


async def user_list(request: web.Request) -> web.Response:
    found = await users.list_users(rt_of(request), caller_of(request))
    fetch = paging.listed(found, _by_name)
    attrs = ("id", "name", "group", "role")
    return await _simple_list(request, "users", fetch, _by_name, *attrs)
