"""Hooks end to end: scripts and a webhook (a real aiohttp server on loopback) fire on instance
state changes, targets going down and up, bursts and budgets, with the right payloads; hooks
that hang or fail are timed out and logged while launches go on; bad hooks change nothing.

Real parts: the libvirt test driver as the host, the real scheduler and monitor, the EC2
backend against moto's server for bursting, real subprocesses and HTTP for the hooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select

from backends.libvirt.local import simulated_node_file
from broker import model as m
from broker.auth import SYSTEM
from broker.errors import AlreadyExists, Forbidden, InvalidRequest, NotFound
from broker.events import EventRecord, record
from broker.hooks import (
    EventRow,
    HookRunner,
    HookSettings,
    HookSpec,
    TargetInfo,
    budget_events,
    classify,
)
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import hooks, images, instances, policies, targets
from broker.service.instances import LaunchRequest
from broker.snapshots import snapshot_targets
from broker.states import State
from tests.broker.test_burst_e2e import burst_world
from tests.conftest import make_user

FAST = HookSettings(concurrency=3, poll_interval=0.02, output_limit=2048)


@dataclasses.dataclass
class Receiver:
    """A webhook endpoint on loopback: /ok records, /slow never answers in time, /fail is 500."""

    url: str
    got: list[tuple[dict[str, str], dict[str, Any]]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got: list[tuple[dict[str, str], dict[str, Any]]] = []
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.json()))
        return web.Response(text="thanks")

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="receiver broke")

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/slow", slow)
    app.router.add_post("/fail", fail)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Receiver(str(server.make_url("")).rstrip("/"), got)
    finally:
        release.set()
        await server.close()


@pytest.fixture
async def runner(rt: Runtime) -> AsyncIterator[HookRunner]:
    hr = HookRunner(rt, FAST)
    await hr.start()
    task = asyncio.create_task(hr.run())
    try:
        yield hr
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def script(tmp: Path, name: str, body: str) -> str:
    path = tmp / f"{name}.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def runs(rt: Runtime, name: str) -> list[hooks.HookRunView]:
    return await hooks.runs(rt, SYSTEM, name, limit=1000)


async def has_runs(rt: Runtime, name: str, n: int) -> bool:
    return len(await runs(rt, name)) >= n


async def local_host(rt: Runtime, tmp: Path, name: str = "local") -> str:
    await targets.add(
        rt,
        SYSTEM,
        name=name,
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{simulated_node_file(tmp)}"},
        simulated=True,
    )
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    return image.id


async def test_scripts_and_webhooks_fire_on_instance_states_and_bad_hooks_never_block(
    rt: Runtime, runner: HookRunner, receiver: Receiver, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    image_id = await local_host(rt, tmp_path)
    on_running = {"to_state": "running"}
    record_sh = script(
        tmp_path,
        "record",
        f'cat > "{out}/$CLOUDBROKER_RESOURCE_ID.json"\n'
        f'env > "{out}/$CLOUDBROKER_RESOURCE_ID.env"\n'
        'echo "recorded $CLOUDBROKER_EVENT"\n',
    )
    hang_sh = script(
        tmp_path,
        "hang",
        f'sleep 60 &\necho $$ $! >> "{out}/hang.pids"\nwait\necho never\n',
    )
    fail_sh = script(tmp_path, "fail", "echo boom >&2\nexit 3\n")
    for name, kind, command, flt, timeout in (
        ("record", "script", record_sh, on_running, 10.0),
        ("hang", "script", hang_sh, {"to_state": "prolog"}, 1.0),
        ("fail", "script", fail_sh, on_running, 5.0),
        ("web", "webhook", f"{receiver.url}/ok", None, 5.0),
        ("slowweb", "webhook", f"{receiver.url}/slow", on_running, 0.3),
        ("failweb", "webhook", f"{receiver.url}/fail", on_running, 5.0),
    ):
        await hooks.add(
            rt,
            SYSTEM,
            name=name,
            kind=kind,
            command=command,
            events=["instance.state"],
            filters=flt,
            timeout_s=timeout,
        )
    assert rt.policy_factory is not None
    sched, monitor = Scheduler(rt, rt.policy_factory(), rt.policy_factory), Monitor(rt)
    alice = await make_user(rt, "alice")
    made = await instances.launch(rt, alice, LaunchRequest(image_id, "t3.micro", 3, 3))
    ids = {i.id for i in made}
    for _ in range(3):
        await monitor.cycle()
        await sched.cycle()
        await sched.drain()
    # the launches went on whatever the hooks do
    views = [await instances.get(rt, alice, i) for i in ids]
    assert all(v.state is State.RUNNING for v in views), [v.state_reason for v in views]

    for name in ("record", "hang", "fail", "slowweb", "failweb"):
        await eventually(lambda name=name: has_runs(rt, name, 3), f"3 runs of {name}")  # type: ignore[misc]
    record_runs = await runs(rt, "record")
    assert {(r.status, r.exit_code) for r in record_runs} == {("ok", 0)}
    assert all(r.output == "recorded instance.state\n" for r in record_runs)
    for rid in ids:
        payload = json.loads((out / f"{rid}.json").read_text())
        assert payload["event"] == "instance.state" and payload["hook"] == "record"
        assert payload["resource_id"] == rid and payload["to_state"] == "running"
        assert payload["target"]["name"] == "local" and payload["target"]["kind"] == "host"
        env = dict(
            line.split("=", 1) for line in (out / f"{rid}.env").read_text().splitlines() if line
        )
        assert env["CLOUDBROKER_TO_STATE"] == "running" and env["CLOUDBROKER_TARGET"] == "local"
        assert env["CLOUDBROKER_EVENT_ID"] == str(payload["event_id"])
        assert not any("DATABASE" in k or "TEST_PG" in k for k in env)  # not the broker's env
    hang_runs = await runs(rt, "hang")
    assert {r.status for r in hang_runs} == {"timeout"} and "never" not in hang_runs[0].output
    assert "killed after 1 s" in hang_runs[0].output
    for pid in (int(p) for p in (out / "hang.pids").read_text().split()):
        await eventually(lambda pid=pid: gone(pid), f"hang script {pid} killed")  # type: ignore[misc]
    fail_runs = await runs(rt, "fail")
    assert {(r.status, r.exit_code) for r in fail_runs} == {("failed", 3)}
    assert fail_runs[0].output == "boom\n"
    assert {r.status for r in await runs(rt, "slowweb")} == {"timeout"}
    failweb = await runs(rt, "failweb")
    assert {(r.status, r.exit_code, r.output) for r in failweb} == {
        ("failed", 500, "receiver broke")
    }

    await eventually(lambda: has_runs(rt, "web", 6), "every transition posted")
    assert {r.status for r in await runs(rt, "web")} == {"ok"}
    seen = {(p["resource_id"], p["from_state"], p["to_state"]) for _, p in receiver.got}
    for rid in ids:
        assert (rid, "pending", "prolog") in seen and (rid, "prolog", "running") in seen
    headers, payload = receiver.got[0]
    assert headers["X-Cloudbroker-Event"] == "instance.state"
    assert headers["X-Cloudbroker-Hook"] == "web" and payload["hook"] == "web"
    assert headers["Content-Type"] == "application/json"
    await runner.drain()


async def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # killed, not reaped yet


async def test_targets_going_down_and_up_fire_their_hooks(
    rt: Runtime, runner: HookRunner, receiver: Receiver, tmp_path: Path
) -> None:
    node = tmp_path / "later.xml"
    await targets.add(
        rt,
        SYSTEM,
        name="flaky",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{node}"},
        simulated=True,
        validate=False,
    )
    await targets.add(
        rt,
        SYSTEM,
        name="far",
        kind="peer",
        driver="peer",
        settings={"url": "http://127.0.0.1:9", "site": "here", "connect_timeout": 1.0},
        secret={"access_key": "AKCBNOTHING", "secret_key": "nothing"},
        validate=False,
    )
    common = {"kind": "webhook", "command": f"{receiver.url}/ok"}
    await hooks.add(
        rt, SYSTEM, name="ops", events=["host.error", "peer.down", "host.recovered"], **common
    )
    await hooks.add(
        rt,
        SYSTEM,
        name="peers-only",
        events=["host.error"],
        filters={"target_kind": "peer"},
        **common,
    )
    await hooks.add(
        rt, SYSTEM, name="just-far", events=["peer.down"], filters={"target": ["far"]}, **common
    )
    await hooks.add(rt, SYSTEM, name="paused", events=["host.error"], enabled=False, **common)
    rt.config = dataclasses.replace(
        rt.config, monitor=dataclasses.replace(rt.config.monitor, misses=1, probe_timeout=5.0)
    )
    monitor = Monitor(rt)
    await monitor.cycle()
    await eventually(lambda: has_runs(rt, "ops", 2), "host.error and peer.down")
    node.write_text(simulated_node_file(tmp_path).read_text())
    await monitor.cycle()
    flaky = await targets.get(rt, SYSTEM, "flaky")
    assert flaky.state == "enabled", flaky.state_reason
    await eventually(lambda: has_runs(rt, "ops", 3), "host.recovered")
    await eventually(lambda: has_runs(rt, "just-far", 1), "peer.down for far")
    by_hook: dict[str, list[dict[str, Any]]] = {}
    for headers, payload in receiver.got:
        by_hook.setdefault(headers["X-Cloudbroker-Hook"], []).append(payload)
    ops = {(p["event"], p["target"]["name"], p["to_state"]) for p in by_hook["ops"]}
    assert ops == {
        ("host.error", "flaky", "error"),
        ("peer.down", "far", "error"),
        ("host.recovered", "flaky", "enabled"),
    }
    far = await targets.get(rt, SYSTEM, "far")
    assert by_hook["just-far"][0]["target"] == {"id": far.id, "name": "far", "kind": "peer"}
    await runner.drain()
    assert await runs(rt, "peers-only") == [] and await runs(rt, "paused") == []


async def test_burst_started_and_budget_reached(
    sqlite_rt: Runtime, moto_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    """Bursts to moto's regions fire burst.started; the scheduler's budget entries (made by
    :func:`budget_events` from its real decisions) fire budget.reached once per reaching."""
    rt = sqlite_rt
    image_id, document = await burst_world(rt, moto_url, tmp_path)
    await policies.set_policy(rt, SYSTEM, document, "burst east then west")
    common = {"kind": "webhook", "command": f"{receiver.url}/ok"}
    await hooks.add(rt, SYSTEM, name="bursts", events=["burst.started"], **common)
    await hooks.add(rt, SYSTEM, name="money", events=["budget.reached"], **common)
    hr = HookRunner(rt, FAST)
    await hr.start()
    assert rt.policy_factory is not None
    sched, monitor = Scheduler(rt, rt.policy_factory(), rt.policy_factory), Monitor(rt)
    alice = await make_user(rt, "alice")
    reported: set[str] = set()
    entries: list[EventRecord] = []
    made = []
    for _ in range(8):  # 2 local, 2 east (its limit), 2 west (its budget), 2 wait
        made += await instances.launch(rt, alice, LaunchRequest(image_id, "t3.micro"))
        for _ in range(3):
            await monitor.cycle()
            decisions = await sched.place()
            async with rt.engine.begin() as conn:
                snaps = await snapshot_targets(conn)
                new = budget_events(decisions, snaps, reported)
                await record(conn, new)
            entries += new
            await sched.dispatch()
            await sched.drain()
            await hr.step()
    await hr.drain()
    await hr.aclose()
    where = [(await instances.get(rt, alice, i.id)).target_name for i in made]
    assert where == ["local", "local", "east", "east", "west", "west", None, None]
    got = [(h["X-Cloudbroker-Hook"], p) for h, p in receiver.got]
    bursts = [p for h, p in got if h == "bursts"]
    assert sorted((p["resource_id"], p["target"]["name"]) for p in bursts) == sorted(
        zip([i.id for i in made[2:6]], ["east", "east", "west", "west"], strict=True)
    )
    assert all(p["target"]["kind"] == "region" and p["to_state"] == "prolog" for p in bursts)
    # reported once, although two instances wait on it cycle after cycle
    assert [(e.kind, e.resource_id, e.message[:22]) for e in entries] == [
        ("budget", (await targets.get(rt, SYSTEM, "west")).id, "budget of west reached")
    ]
    # (once the scheduler records these entries itself, each reaching fires twice here)
    money = [p for h, p in got if h == "money"]
    assert money and all(p["event"] == "budget.reached" for p in money)
    assert all(p["target"]["name"] == "west" for p in money)
    assert all("budget of west reached" in p["message"] for p in money)
    assert {r.status for r in await runs(rt, "money")} == {"ok"}


def row(eid: int, rid: str, kind: str, old: str = "", new: str = "", **kw: Any) -> EventRow:
    return EventRow(
        eid, dt.datetime.now(dt.UTC), rid, kind, "test", old, new, kw.pop("message", ""), kw
    )


def test_classify_names_each_kind_of_entry() -> None:
    host, region, peer = (
        TargetInfo("t-0aaaaaaaaaaaaaaaa", "h1", "host"),
        TargetInfo("t-0bbbbbbbbbbbbbbbb", "r1", "region"),
        TargetInfo("t-0cccccccccccccccc", "p1", "peer"),
    )
    targets_ = {t.id: t for t in (host, region, peer)}
    inst = "i-0123456789abcdef0"
    on_target = {inst: region.id}

    def names(r: EventRow) -> list[str]:
        return [e.name for e in classify(r, targets_, on_target)]

    assert names(row(1, inst, "transition", "pending", "prolog", target=region.id)) == [
        "instance.state",
        "burst.started",
    ]
    assert names(row(2, inst, "transition", "prolog", "running")) == ["instance.state"]
    budget_msg = "launch failed: the burst budget of r1 (0.25 USD/h) is spent"
    assert names(row(3, inst, "error", "prolog", "pending", message=budget_msg)) == [
        "instance.error",
        "budget.reached",
        "instance.state",
    ]
    assert names(row(4, inst, "error", "running", "running", message="stop failed")) == [
        "instance.error"
    ]
    assert names(row(5, host.id, "transition", "enabled", "error")) == ["host.error"]
    assert names(row(6, region.id, "transition", "draining", "error")) == ["region.error"]
    assert names(row(7, peer.id, "transition", "enabled", "error")) == ["peer.down"]
    assert names(row(8, peer.id, "transition", "error", "enabled")) == ["peer.up"]
    assert names(row(9, region.id, "budget", message="budget of r1 reached")) == ["budget.reached"]
    assert names(row(10, host.id, "audit", message="target added")) == []
    assert names(row(11, "i-0ffffffffffffffff", "transition", "a", "b")) == []  # unknown: gone


def test_filters_all_hold_and_any_value_of_one_does() -> None:
    t = TargetInfo("t-0aaaaaaaaaaaaaaaa", "h1", "host")
    ev = classify(row(1, t.id, "transition", "enabled", "error"), {t.id: t}, {})[0]

    def spec(**filters: tuple[str, ...]) -> HookSpec:
        return HookSpec("hook-1", "x", "script", "/bin/true", frozenset({"host.error"}), filters, 1)

    assert spec().matches(ev)
    assert spec(target=("h1",)).matches(ev) and spec(target=(t.id,)).matches(ev)
    assert spec(target=("other", "h1"), target_kind=("host",), to_state=("error",)).matches(ev)
    assert not spec(target=("h1",), target_kind=("peer",)).matches(ev)
    assert not spec(resource=("t-0ffffffffffffffff",)).matches(ev)
    assert not dataclasses.replace(spec(), events=frozenset({"peer.down"})).matches(ev)


async def test_the_runner_waits_for_an_id_committed_late(rt: Runtime, receiver: Receiver) -> None:
    """An id skipped at one read (its transaction had not committed) is read when it appears."""
    await hooks.add(
        rt,
        SYSTEM,
        name="all-hosts",
        kind="webhook",
        command=f"{receiver.url}/ok",
        events=["host.error"],
    )
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(m.Target).values(id="t-0aaaaaaaaaaaaaaaa", name="h1", kind="host", driver="x")
        )
    hr = HookRunner(rt, FAST)
    await hr.start()
    assert hr.cursor is not None
    first = hr.cursor + 1

    async def put(eid: int) -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(
                insert(m.Event).values(
                    id=eid,
                    resource_id="t-0aaaaaaaaaaaaaaaa",
                    kind="transition",
                    from_state="enabled",
                    to_state="error",
                    message=f"event {eid}",
                )
            )

    await put(first + 1)
    assert await hr.step() == 1
    await put(first)
    assert await hr.step() == 1
    assert await hr.step() == 0
    await hr.drain()
    await hr.aclose()
    assert sorted(p["event_id"] for _, p in receiver.got) == [first, first + 1]


async def test_bad_hooks_are_refused_and_change_nothing(rt: Runtime, tmp_path: Path) -> None:
    good = script(tmp_path, "good", "exit 0\n")
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    base: dict[str, Any] = {
        "name": "h",
        "kind": "script",
        "command": good,
        "events": ["instance.state"],
    }
    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": "bad name!"}, "invalid hook name"),
        ({"kind": "email"}, "kind must be one of"),
        ({"events": []}, "at least one event"),
        ({"events": ["instance.exploded"]}, "unknown event 'instance.exploded'"),
        ({"events": ["instance.state", 3]}, "unknown event '3'"),
        ({"timeout_s": -1}, "above 0"),
        ({"timeout_s": 0}, "above 0"),
        ({"timeout_s": 301}, "at most 300"),
        ({"timeout_s": float("nan")}, "above 0"),
        ({"timeout_s": "10"}, "number of seconds"),
        ({"filters": {"colour": "red"}}, "unknown filter 'colour'"),
        ({"filters": {"to_state": 3}}, "wants a string"),
        ({"filters": {"to_state": []}}, "wants a string"),
        ({"filters": ["to_state"]}, "must be an object"),
        ({"command": "relative/path.sh"}, "must be absolute"),
        ({"command": str(tmp_path / "missing.sh")}, "is not a file"),
        ({"command": str(plain)}, "is not executable"),
        ({"kind": "webhook", "command": "ftp://example.com/x"}, "scheme must be http"),
        ({"kind": "webhook", "command": "http://"}, "names no host"),
        ({"kind": "webhook", "command": "not a url"}, "not a webhook URL"),
        ({"kind": "webhook", "command": "http://h:99999/x"}, "not a webhook URL"),
        ({"kind": "webhook", "command": "http://u:p@h/x"}, "credentials"),
        ({"kind": "webhook", "command": "http://h/x#frag"}, "fragment"),
    ]
    async with rt.engine.connect() as conn:
        events_before = await conn.scalar(select(func.count()).select_from(m.Event))
    for change, message in bad:
        with pytest.raises(InvalidRequest, match=message):
            await hooks.add(rt, SYSTEM, **{**base, **change})
    assert await hooks.describe(rt, SYSTEM) == []
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Event)) == events_before
    made = await hooks.add(rt, SYSTEM, **base)
    assert made.events == ["instance.state"] and made.timeout_s == 10.0
    with pytest.raises(AlreadyExists):
        await hooks.add(rt, SYSTEM, **base)
    for call in (hooks.get, hooks.remove, hooks.runs):
        with pytest.raises(NotFound, match="'nosuch'"):
            await call(rt, SYSTEM, "nosuch")
    with pytest.raises(InvalidRequest, match="status"):
        await hooks.runs(rt, SYSTEM, "h", status="great")
    with pytest.raises(InvalidRequest, match="limit"):
        await hooks.runs(rt, SYSTEM, "h", limit=0)
    alice = await make_user(rt, "alice")
    for attempt in (
        hooks.add(rt, alice, **{**base, "name": "mine"}),
        hooks.describe(rt, alice),
        hooks.remove(rt, alice, "h"),
        hooks.runs(rt, alice),
    ):
        with pytest.raises(Forbidden):
            await attempt
    assert [h.name for h in await hooks.describe(rt, SYSTEM)] == ["h"]
    assert (await hooks.remove(rt, SYSTEM, made.id)).name == "h"
    assert await hooks.describe(rt, SYSTEM) == []
    assert os.access(good, os.X_OK)


async def test_with_no_hooks_the_runner_reads_only_event_ids(rt: Runtime) -> None:
    """No hook enabled: the runner moves past new events reading their ids alone (each launch
    and placement writes one; their messages and details are read only when a hook may run)."""
    hr = HookRunner(rt, FAST)
    await hr.start()
    assert hr.cursor is not None
    async with rt.engine.begin() as conn:
        await record(
            conn,
            [
                EventRecord(f"i-0{n:016x}", "transition", "test", "", "pending", "x")
                for n in range(5)
            ],
        )
    seen: list[str] = []

    def on_execute(*args: Any) -> None:
        seen.append(str(args[2]))

    engine = rt.reader.sync_engine
    sa_event.listen(engine, "before_cursor_execute", on_execute)
    try:
        assert await hr.step() == 5
        assert await hr.step() == 0
    finally:
        sa_event.remove(engine, "before_cursor_execute", on_execute)
    async with rt.engine.connect() as conn:
        assert hr.cursor == await conn.scalar(select(func.max(m.Event.id)))
    reads = [s for s in seen if "FROM events" in s]
    assert reads and all("events.detail" not in s and "events.message" not in s for s in reads)
    await hr.aclose()
