"""Usage reports and showback: totals by target kind, who may see what (user, group admin,
admin), bad input refused with nothing changed, CSV, and the admin API routes and CLI commands
over real HTTP."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from sqlalchemy import func, insert, select

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.cli import Ctx, Group
from broker.errors import Forbidden, InvalidRequest, NotFound
from broker.runtime import Runtime
from broker.service import usage, users
from broker.usagecli import showback as showback_cmd
from broker.usagecli import usage as usage_cmd
from frontends.admin.app import RUNTIME, error_middleware
from frontends.admin.usage import ROUTES

DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
FROM, TO = "2026-03-02", "2026-03-03"


@dataclasses.dataclass
class World:
    admin: Caller
    alice: Caller  # group admin of "team"
    carol: Caller  # a user of "team"
    bob: Caller  # a user of his own group "bob"


async def person(rt: Runtime, name: str, role: str = "user", group: str | None = None) -> Caller:
    made = await users.create_user(rt, SYSTEM, name, role=role, group=group)
    return Caller(made.user.id, made.user.name, made.user.group_id, made.user.role)


def record(rid: str, who: Caller, hour: dt.datetime, **kw: Any) -> dict[str, Any]:
    return {
        "instance_id": rid,
        "hour": hour,
        "owner_id": who.user_id,
        "group_id": who.group_id,
        **kw,
    }


@pytest.fixture
async def world(rt: Runtime) -> World:
    w = World(
        await person(rt, "root", "admin"),
        await person(rt, "alice", "groupadmin", "team"),
        await person(rt, "carol", "user", "team"),
        await person(rt, "bob"),
    )
    rows = [
        # carol: two full hours on a local host, 2 vCPUs, 2 GiB, 0.5 an hour
        *(
            record(
                "i-c1",
                w.carol,
                DAY + dt.timedelta(hours=h),
                target_id="t-local",
                target_kind="local",
                flavor="m1.small",
                vcpus=2,
                memory_mb=2048,
                seconds=3600,
                cost=0.5,
            )
            for h in (8, 9)
        ),
        # alice: half an hour burst to EC2, 2 vCPUs, 1 GiB
        record(
            "i-a1",
            w.alice,
            DAY + dt.timedelta(hours=8),
            target_id="t-east",
            target_kind="burst",
            flavor="t3.micro",
            vcpus=2,
            memory_mb=1024,
            seconds=1800,
            cost=0.0052,
        ),
        # bob: one hour on a peer in February and one on the day
        *(
            record(
                "i-b1",
                w.bob,
                hour,
                target_id="t-peer",
                target_kind="peer",
                flavor="t3.nano",
                vcpus=1,
                memory_mb=512,
                seconds=3600,
                cost=0.1,
            )
            for hour in (DAY - dt.timedelta(days=1, hours=1), DAY + dt.timedelta(hours=8))
        ),
    ]
    async with rt.engine.begin() as conn:
        await conn.execute(insert(m.UsageRecord), rows)
    return w


async def count(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(m.UsageRecord)) or 0)


async def test_totals_by_kind_for_an_admin(rt: Runtime, world: World) -> None:
    got = await usage.usage_report(rt, world.admin, start=FROM, end=TO)
    assert got.subject == "all" and [r.instance_id for r in got.rows] == ["i-a1", "i-b1", "i-c1"]
    # hours 0.5 + 1 + 2; vCPU-hours 2x0.5 + 1x1 + 2x2; GiB-hours 1x0.5 + 0.5x1 + 2x2
    t = got.totals
    assert (t.hours, t.vcpu_hours, t.gib_hours) == (3.5, 6.0, 5.0)
    assert t.cost_by_kind == {"burst": 0.0052, "local": 1.0, "peer": 0.1}
    assert t.cost == pytest.approx(1.1052)
    carol = next(r for r in got.rows if r.instance_id == "i-c1")
    assert (carol.owner, carol.group, carol.target_kind, carol.hours, carol.cost) == (
        "carol",
        "team",
        "local",
        2.0,
        1.0,
    )
    whole = await usage.usage_report(rt, world.admin, start="2026-02-01", end="2026-04-01")
    assert whole.totals.cost_by_kind["peer"] == 0.2
    # an hour counts in the period its start falls in: [08:30, 09:30) holds carol's 09:00 only
    part = await usage.usage_report(
        rt, world.admin, user="carol", start="2026-03-02T08:30:00Z", end="2026-03-02T09:30"
    )
    assert part.totals.hours == 1.0 and part.subject == "user carol"


async def test_each_caller_sees_their_own_scope(rt: Runtime, world: World) -> None:
    async def seen(caller: Caller, **kw: Any) -> list[str]:
        got = await usage.usage_report(rt, caller, start=FROM, end=TO, **kw)
        return [r.instance_id for r in got.rows]

    assert await seen(world.carol) == ["i-c1"]
    assert await seen(world.carol, user="carol") == ["i-c1"]
    assert await seen(world.bob) == ["i-b1"]
    assert await seen(world.alice) == ["i-a1", "i-c1"]  # her group
    assert await seen(world.alice, user="carol") == ["i-c1"]
    assert await seen(world.alice, group="team") == ["i-a1", "i-c1"]
    assert await seen(world.admin, group="bob") == ["i-b1"]
    for caller, kw in (
        (world.carol, {"user": "alice"}),
        (world.carol, {"user": "bob"}),
        (world.alice, {"user": "bob"}),
        (world.alice, {"group": "bob"}),
        (world.bob, {"group": "team"}),
    ):
        with pytest.raises(NotFound):  # exactly as if the user or group did not exist
            await seen(caller, **kw)
    with pytest.raises(Forbidden, match="group admins"):
        await seen(world.carol, group="team")


async def test_bad_input_is_refused_and_changes_nothing(rt: Runtime, world: World) -> None:
    before = await count(rt)
    for kw, error in (
        ({"start": TO, "end": FROM}, InvalidRequest),
        ({"start": FROM, "end": FROM}, InvalidRequest),
        ({"start": "2026-13-01"}, InvalidRequest),
        ({"start": "yesterday"}, InvalidRequest),
        ({"end": "2026-03-02T25:00"}, InvalidRequest),
        ({"start": "x" * 500}, InvalidRequest),
        ({"user": "nobody"}, NotFound),
        ({"group": "nogroup"}, NotFound),
        ({"user": "carol", "group": "team"}, InvalidRequest),
        ({"user": ""}, InvalidRequest),
    ):
        with pytest.raises(error):
            await usage.usage_report(rt, world.admin, **kw)
    with pytest.raises(InvalidRequest, match="before"):
        await usage.usage_report(rt, world.admin, start=TO, end=FROM)
    for kw in (
        {"month": "2026-3"},
        {"month": "March"},
        {"month": "2026-13"},
        {"start": "2026-04", "end": "2026-03"},
        {"month": "2026-03", "start": "2026-03"},
        {"start": "2000-01", "end": "2030-01"},
    ):
        with pytest.raises(InvalidRequest):
            await usage.showback(rt, world.admin, **kw)
    with pytest.raises(NotFound):
        await usage.showback(rt, world.admin, month="2026-03", group="nogroup")
    assert await count(rt) == before


async def test_showback_per_group_per_month(rt: Runtime, world: World) -> None:
    rows = await usage.showback(rt, world.admin, start="2026-02", end="2026-03")
    got = [
        (r.month, r.group, r.instances, r.hours, r.cost_local, r.cost_burst, r.cost_peer, r.cost)
        for r in rows
    ]
    assert got == [
        ("2026-02", "bob", 1, 1.0, 0.0, 0.0, 0.1, 0.1),
        ("2026-03", "bob", 1, 1.0, 0.0, 0.0, 0.1, 0.1),
        ("2026-03", "team", 2, 2.5, 1.0, 0.0052, 0.0, 1.0052),
    ]
    mine = await usage.showback(rt, world.alice, month="2026-03")
    assert [(r.group, r.cost) for r in mine] == [("team", 1.0052)]
    assert await usage.showback(rt, world.admin, month="2026-01") == []
    with pytest.raises(Forbidden):
        await usage.showback(rt, world.carol, month="2026-03")
    with pytest.raises(NotFound):
        await usage.showback(rt, world.alice, month="2026-03", group="bob")


def test_csv_has_a_header_and_defuses_formulas() -> None:
    text = usage.csv_text(
        [{"owner": "=cmd()", "hours": 1.5, "cost": None}], ("owner", "hours", "cost")
    )
    assert list(csv.reader(io.StringIO(text))) == [
        ["owner", "hours", "cost"],
        ["'=cmd()", "1.5", ""],
    ]


# --- over HTTP: the admin API routes and the CLI commands ---------------------------------------


@pytest.fixture
async def api(sqlite_rt: Runtime) -> AsyncIterator[tuple[TestServer, Runtime]]:
    app = web.Application(middlewares=[error_middleware])
    app[RUNTIME] = sqlite_rt
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, sqlite_rt
    await server.close()


async def get(
    server: TestServer, token: str, method: str, path: str, **kw: Any
) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        ClientSession(headers=headers) as s,
        s.request(method, server.make_url(path), **kw) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, resp.content_type, await resp.json()
        return resp.status, resp.content_type, await resp.text()


async def test_the_api_and_the_cli(api: tuple[TestServer, Runtime]) -> None:
    server, rt = api
    w = World(
        await person(rt, "root", "admin"),
        await person(rt, "alice", "groupadmin", "team"),
        await person(rt, "carol", "user", "team"),
        await person(rt, "bob"),
    )
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(m.UsageRecord),
            [
                record(
                    "i-c1",
                    w.carol,
                    DAY + dt.timedelta(hours=8),
                    target_id="t-local",
                    target_kind="local",
                    flavor="m1.small",
                    vcpus=2,
                    memory_mb=2048,
                    seconds=3600,
                    cost=0.5,
                )
            ],
        )
    tokens = {n: await users.issue_token(rt, SYSTEM, n) for n in ("root", "carol", "bob")}
    q = {"from": FROM, "to": TO}
    status, _, body = await get(server, tokens["carol"], "GET", "/api/v1/usage", params=q)
    assert status == 200 and body["totals"]["cost_by_kind"]["local"] == 0.5
    assert body["rows"][0]["instance_id"] == "i-c1" and body["start"] == "2026-03-02T00:00:00Z"
    status, _, body = await get(server, tokens["bob"], "GET", "/api/v1/usage", params=q)
    assert status == 200 and body["rows"] == []
    status, _, body = await get(
        server, tokens["bob"], "GET", "/api/v1/usage", params={**q, "user": "carol"}
    )
    assert status == 404 and body["error"]["code"] == "NotFound"
    status, _, body = await get(
        server, tokens["root"], "GET", "/api/v1/usage", params={"from": TO, "to": FROM}
    )
    assert status == 400 and "before" in body["error"]["message"]
    status, ctype, text = await get(
        server, tokens["root"], "GET", "/api/v1/usage", params={**q, "format": "csv"}
    )
    assert status == 200 and ctype == "text/csv"
    assert text.splitlines()[1].startswith("i-c1,carol,team,m1.small,t-local,local,1.0,2.0,2.0,")
    status, _, body = await get(server, tokens["carol"], "GET", "/api/v1/showback")
    assert status == 403
    status, _, body = await get(
        server, tokens["root"], "GET", "/api/v1/showback", params={"month": "2026-03"}
    )
    assert status == 200 and [r["group"] for r in body["rows"]] == ["team"]
    status, _, body = await get(server, tokens["carol"], "POST", "/api/v1/accounting")
    assert status == 403
    status, _, body = await get(
        server, tokens["root"], "POST", "/api/v1/accounting", json={"since": "not a date"}
    )
    assert status == 400
    status, _, body = await get(server, tokens["root"], "POST", "/api/v1/accounting", json={})
    assert status == 200 and body == {"records": 0}

    url = str(server.make_url("/")).rstrip("/")

    root = Group(commands={"usage": usage_cmd, "showback": showback_cmd})  # as `cloudbroker`

    def cli(name: str, token: str, *args: str, as_json: bool = False) -> Any:
        return CliRunner().invoke(root, [name, *args], obj=Ctx(None, url, token, as_json))

    done = await asyncio.to_thread(
        cli, "usage", tokens["carol"], "--from", FROM, "--to", TO, "--csv"
    )
    assert done.exit_code == 0, done.output
    assert list(csv.reader(io.StringIO(done.output)))[1][:2] == ["i-c1", "carol"]
    done = await asyncio.to_thread(cli, "usage", tokens["carol"], "--from", TO, "--to", FROM)
    assert done.exit_code == 1 and "must be before" in done.output
    done = await asyncio.to_thread(cli, "usage", tokens["root"], "--user", "nobody")
    assert done.exit_code == 1 and "does not exist" in done.output
    done = await asyncio.to_thread(
        cli, "showback", tokens["root"], "--month", "2026-03", as_json=True
    )
    assert done.exit_code == 0, done.output
    assert '"cost_local": 0.5' in done.output
    done = await asyncio.to_thread(cli, "usage", tokens["root"], "--from", FROM, "--to", TO)
    assert done.exit_code == 0, done.output
    assert "usage of all" in done.output and "totals" in done.output and "i-c1" in done.output
    done = await asyncio.to_thread(cli, "showback", tokens["carol"])
    assert done.exit_code == 1 and "showback is for group admins" in done.output
