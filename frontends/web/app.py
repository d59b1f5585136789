"""The operations center's aiohttp application, meant to be mounted under the admin listener.

``create_app(rt)`` builds a sub-application (the admin app mounts it at ``/ui/``). Its
middleware loads the session from the signed cookie, checks the CSRF token of every POST but
the sign-in form, and turns the broker's error tree into pages: a missing resource is a 404
page, a bad value a 400 page, a GET without a session goes to the sign-in form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from broker import errors
from broker.runtime import Runtime
from frontends.web import pages, policy, stream
from frontends.web.base import (
    HERE,
    RUNTIME,
    SESSION,
    SESSIONS,
    STOPPING,
    TEMPLATES,
    THROTTLE,
    NeedSignIn,
    current_caller,
    environment,
    field,
    redirect,
    render,
    url,
)
from frontends.web.session import COOKIE, Sessions, Throttle

MAX_BODY = 256 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS: tuple[tuple[type[errors.BrokerError], int, str], ...] = (
    (errors.NotFound, 404, "Not found"),
    (errors.InvalidState, 409, "Not now"),
    (errors.AlreadyExists, 409, "Already exists"),
    (errors.InvalidRequest, 400, "Bad request"),
    (errors.ConfigError, 400, "Bad request"),
    (errors.Unauthenticated, 401, "Sign in"),
    (errors.Forbidden, 403, "Not allowed"),
    (errors.QuotaExceeded, 403, "Quota exceeded"),
    (errors.NoCapacity, 503, "No capacity"),
    (errors.Unsupported, 501, "Not supported"),
    (errors.BackendError, 502, "Backend error"),
)

ROUTES: tuple[tuple[str, str, Handler, str], ...] = (
    ("GET", "/", pages.dashboard, "dashboard"),
    ("GET", "/dashboard/live", pages.dashboard_live, "dashboard_live"),
    ("GET", "/login", pages.login_form, "login"),
    ("POST", "/login", pages.login_post, "login_post"),
    ("POST", "/logout", pages.logout, "logout"),
    ("GET", "/instances", pages.instance_list, "instances"),
    ("GET", "/instances/{id}", pages.instance_page, "instance"),
    ("POST", "/instances/{id}/{verb}", pages.instance_action, "instance_action"),
    ("GET", "/targets", pages.target_list, "targets"),
    ("POST", "/targets/{name}/{verb}", pages.target_action, "target_action"),
    ("GET", "/images", pages.image_list, "images"),
    ("GET", "/networks", pages.network_list, "networks"),
    ("GET", "/volumes", pages.volume_list, "volumes"),
    ("GET", "/users", pages.user_list, "users"),
    ("GET", "/policy", policy.policy_page, "policy"),
    ("POST", "/policy", policy.policy_post, "policy_post"),
    ("GET", "/events", stream.events, "events"),
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
}


def _error_page(request: web.Request, exc: errors.BrokerError) -> web.StreamResponse:
    if isinstance(exc, NeedSignIn | errors.Unauthenticated) and request.method == "GET":
        if request.match_info.route.name == "events":
            return web.Response(status=401, text="sign in first")
        raise redirect(url(request, "login"))
    for cls, status, title in STATUS:
        if isinstance(exc, cls):
            return render(request, "error.html", status=status, title=title, message=exc.message)
    return render(request, "error.html", status=500, title="Error", message=exc.message)


async def _check_csrf(request: web.Request) -> None:
    if request.method != "POST":
        return
    origin = request.headers.get("Origin")
    if origin is not None and URL(origin).authority != request.host:
        raise errors.Forbidden("the form was sent from another site")
    if request.match_info.route.name == "login_post":
        return
    session = request.get(SESSION)
    if session is None:
        raise NeedSignIn("sign in first")
    form = await request.post()
    if not request.app[SESSIONS].csrf_ok(session, field(form, "csrf") or None):
        raise errors.Forbidden("the form is stale or did not come from this site; reload it")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    session = sessions.lookup(request.cookies.get(COOKIE))
    if session is not None:
        now = await current_caller(request.app[RUNTIME], session.caller)
        session = sessions.refresh(session, now)
    if session is not None:
        request[SESSION] = session
    try:
        await _check_csrf(request)
        response = await handler(request)
    except errors.BrokerError as exc:
        response = _error_page(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = "Not found" if exc.status == 404 else exc.reason
        response = render(request, "error.html", status=exc.status, title=title, message=exc.reason)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


async def _on_shutdown(app: web.Application) -> None:
    app[STOPPING].set()


def create_app(rt: Runtime) -> web.Application:
    """The web interface as an app to mount (``admin.add_subapp("/ui/", create_app(rt))``)."""
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    app[RUNTIME] = rt
    app[SESSIONS] = Sessions()
    app[THROTTLE] = Throttle()
    app[TEMPLATES] = environment()
    app[STOPPING] = asyncio.Event()
    for method, path, handler, name in ROUTES:
        app.router.add_route(method, path, handler, name=name)
    app.router.add_static("/static/", HERE / "static", name="static", append_version=True)
    app.on_shutdown.append(_on_shutdown)
    return app
