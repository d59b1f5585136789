"""The admin API's routes that import an OVF package as an image (see broker.service.ovfimport).

Decides the wire: ``POST /api/v1/images/import-ovf`` with ``{"name", "target", "descriptor"
(the OVF's XML as text), "visibility", "description"}`` registers the image pending and answers
201 with it, the target and the files to upload; ``PUT /api/v1/images/{id}/ovf/{href}`` streams
one of them (past the app's body limit, as an image upload does); ``POST
/api/v1/images/{id}/ovf/import`` imports the package on the target and answers with the image,
available. Operators only; errors are the API's usual JSON (a target that cannot import: 501).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from broker import errors
from broker.service import ovfimport
from frontends.admin import views
from frontends.admin.app import body, caller_of, reply, rt_of

FIELDS = frozenset({"name", "target", "descriptor", "visibility", "description"})


async def ovf_begin(request: web.Request) -> web.Response:
    caller, data = await caller_of(request), await body(request)
    unknown = set(data) - FIELDS
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    view = await ovfimport.begin(
        rt_of(request),
        caller,
        name=views.text(data, "name"),
        target=views.text(data, "target"),
        descriptor=views.text(data, "descriptor"),
        visibility=views.text(data, "visibility", "private"),
        description=views.text(data, "description", ""),
    )
    return reply(view, 201)


async def ovf_file(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    got = await ovfimport.receive(
        rt_of(request),
        caller,
        request.match_info["id"],
        request.match_info["href"],
        request.content.iter_chunked(1 << 20),
    )
    return reply(got)


async def ovf_import(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    return reply(await ovfimport.finish(rt_of(request), caller, request.match_info["id"]))


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("POST", "/api/v1/images/import-ovf", ovf_begin),
    ("PUT", "/api/v1/images/{id}/ovf/{href}", ovf_file),
    ("POST", "/api/v1/images/{id}/ovf/import", ovf_import),
)
