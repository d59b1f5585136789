"""``GET events``: server-sent events for instance changes, as the caller may see them.

The stream tails the event log by id. For each batch of new lifecycle events it asks the
instance service (with the caller) for the instances concerned, so an instance the caller may
not see is never mentioned, and sends one ``instance`` event per visible instance with its
current state and placement. A reconnecting browser resumes from ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web
from sqlalchemy import func, select

from broker import model as m
from broker.runtime import Runtime
from broker.service import instances
from broker.service.instances import InstanceFilter, InstanceView
from frontends.web import data
from frontends.web.base import STOPPING, caller_of, rt_of

POLL = 0.5
KEEPALIVE = 15.0
BATCH = 200


def payload(view: InstanceView, log: list[dict[str, str]]) -> str:
    return json.dumps(
        {
            "events": log,
            "id": view.id,
            "state": view.state.value,
            "where": data.where_label(view),
            "target": view.target_name or "",
            "flavor": view.flavor,
            "image": view.image_id,
            "private_ip": view.private_ip or "",
            "public_ip": view.public_ip or "",
            "name": view.tags.get("Name", ""),
        }
    )


async def newest(rt: Runtime) -> int:
    """The id of the newest event: a page rendered now passes it on, so its stream starts
    exactly where the page's data ends and no change in between is missed."""
    async with rt.reader.connect() as conn:
        return int(await conn.scalar(select(func.coalesce(func.max(m.Event.id), 0))) or 0)


async def events(request: web.Request) -> web.StreamResponse:
    rt = rt_of(request)
    caller_of(request)
    top = await newest(rt)
    last = top
    for given in (request.headers.get("Last-Event-ID", ""), request.query.get("after", "")):
        if given.isdigit() and len(given) < 20 and int(given) <= top:
            last = int(given)
            break
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        await _tail(request, response, last)
    return response


async def _tail(request: web.Request, response: web.StreamResponse, last: int) -> None:
    rt, caller = rt_of(request), caller_of(request)
    stopping = request.app[STOPPING]
    await response.write(b"retry: 2000\n\n")
    idle = 0.0
    while not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        stmt = (
            select(
                m.Event.id,
                m.Event.resource_id,
                m.Event.at,
                m.Event.actor,
                m.Event.from_state,
                m.Event.to_state,
                m.Event.message,
            )
            .where(m.Event.id > last, m.Event.kind == "transition")
            .order_by(m.Event.id)
            .limit(BATCH)
        )
        async with rt.reader.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        if rows:
            last = int(rows[-1][0])
            logs: dict[str, list[dict[str, str]]] = {}
            for eid, rid, at, actor, old, new, message in rows:
                if str(rid).startswith("i-"):
                    logs.setdefault(rid, []).append(
                        {
                            "id": str(eid),
                            "at": at.strftime("%H:%M:%S"),
                            "actor": actor,
                            "from": old,
                            "to": new,
                            "message": message,
                        }
                    )
            rids = tuple(logs)
            seen = []
            if rids:
                flt = InstanceFilter(ids=rids)
                page = await instances.describe(rt, caller, flt, limit=len(rids))
                seen = page.items
            chunk = "".join(
                f"id: {last}\nevent: instance\ndata: {payload(v, logs[v.id])}\n\n" for v in seen
            )
            await response.write((chunk or f"id: {last}\n: nothing for you\n\n").encode())
            idle = 0.0
            continue
        idle += POLL
        if idle >= KEEPALIVE:
            await response.write(b": keepalive\n\n")
            idle = 0.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), POLL)
