"""What every page handler shares: typed app keys, the signed-in caller, forms, and rendering.

Templates are Jinja2 with autoescaping on for every file, so whatever a user typed (a tag
value, a name, a policy comment) reaches the page as text. Every URL a page shows comes from
the router (``url('instance', id=...)``), so the app works mounted under any prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import select
from yarl import URL

from broker import errors
from broker import model as m
from broker.auth import Caller
from broker.runtime import Runtime
from frontends.web.session import COOKIE, Session, Sessions, Throttle

HERE = Path(__file__).parent
RUNTIME = web.AppKey("web_runtime", Runtime)
SESSIONS = web.AppKey("web_sessions", Sessions)
THROTTLE = web.AppKey("web_throttle", Throttle)
TEMPLATES = web.AppKey("web_templates", jinja2.Environment)
STOPPING = web.AppKey("web_stopping", asyncio.Event)
SESSION = web.RequestKey("web_session", Session)
MAX_FIELD = 64 * 1024


class NeedSignIn(errors.Unauthenticated):
    """Raised by a page that needs a session; GET pages answer it with the sign-in form."""


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


async def current_caller(rt: Runtime, caller: Caller) -> Caller | None:
    """The session's caller as the database has it now (None once disabled or deleted), so a
    role change or a disabled user takes effect on the next page, not when the session ends."""
    stmt = select(m.User.name, m.User.group_id, m.User.role).where(
        m.User.id == caller.user_id, m.User.enabled.is_(True)
    )
    async with rt.reader.connect() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return Caller(caller.user_id, row[0], row[1], row[2])


def rt_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def session_of(request: web.Request) -> Session:
    found = request.get(SESSION)
    if not isinstance(found, Session):
        raise NeedSignIn("sign in first")
    return found


def caller_of(request: web.Request) -> Caller:
    return session_of(request).caller


def url(
    request: web.Request, route: str, query: Mapping[str, str] | None = None, /, **parts: str
) -> URL:
    """The path of the named route of this app, under whatever prefix it is mounted."""
    found = request.app.router[route].url_for(**parts)
    return found.with_query(query) if query else found


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    env = request.app[TEMPLATES]
    session = request.get(SESSION)

    def link(route: str, /, **parts: str) -> str:
        return str(url(request, route, None, **parts))

    def static(filename: str) -> str:
        return str(request.app.router["static"].url_for(filename=filename))

    body = env.get_template(template).render(
        url=link,
        static=static,
        session=session if isinstance(session, Session) else None,
        path=request.path_qs,
        **context,
    )
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


async def form_of(request: web.Request) -> MultiDictProxy[str | bytes | Any]:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise errors.InvalidRequest("send the page's form")
    return await request.post()


def field(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"'{key}' must be text", field=key)
    if len(value) > MAX_FIELD:
        raise errors.InvalidRequest(f"'{key}' is limited to {MAX_FIELD} characters", field=key)
    return value


def redirect(location: URL | str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location=str(location))


def set_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path=str(url(request, "dashboard")),
    )
