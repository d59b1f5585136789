"""More of the EC2 backend against moto's server as a real HTTP endpoint: reboot of a burst
instance (the backend alone and the whole broker path), the inventory's NextToken loop with a
small ``page_size``, and ``cloudbroker target add --kind ec2 --endpoint`` through a real
``serve`` whose admin API never gives the secret key back."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backends.ec2 import batching
from backends.ec2.backend import Ec2Backend
from broker import model as m
from broker.auth import SYSTEM
from broker.errors import NotFound
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.service import images, instances
from broker.service.instances import LaunchRequest
from broker.states import Action, State
from tests.backends.ec2.conftest import REGION, MakeBackend, add_region, ours, spec
from tests.backends.ec2.test_backend import burst_to, settle
from tests.broker.test_serve import Server as Serve
from tests.broker.test_serve import cli, cli_json, server  # noqa: F401  (a real serve)
from tests.conftest import make_user

# --- reboot ------------------------------------------------------------------------------------


async def test_reboot_of_a_burst_instance(
    make_backend: MakeBackend, raw: Any, ami: str, broker_id: str
) -> None:
    backend = make_backend(observe_reuse=0)
    s = spec(ami)
    placed = await backend.launch(s)
    before = {k: v for k, v in backend.calls.items()}
    seen = await backend.act(placed.ref, Action.REBOOT)
    assert seen is not None and seen.ref == placed.ref and seen.state is State.RUNNING
    assert backend.calls["RebootInstances"] - before.get("RebootInstances", 0) == 1
    assert backend.calls["RunInstances"] == before.get("RunInstances", 0)  # nothing relaunched
    (inst,) = ours(raw, broker_id)
    assert inst["InstanceId"] == placed.ref and inst["State"]["Name"] == "running"
    (seen,) = await backend.observe([placed.ref])
    assert seen.state is State.RUNNING and seen.instance_id == s.instance_id

    # an instance EC2 does not know: NotFound, the broker's error, not botocore's
    with pytest.raises(NotFound):
        await backend.act("i-0123456789abcdef0", Action.REBOOT)
    await backend.act(placed.ref, Action.TERMINATE)


async def test_broker_path_reboots_a_burst_instance(
    sqlite_rt: Runtime, moto_url: str, raw: Any, ami: str, broker_id: str
) -> None:
    rt = sqlite_rt
    region = (await add_region(rt, moto_url, broker_id)).id
    monitor = Monitor(rt)
    await monitor.cycle()
    image = await images.register(
        rt,
        SYSTEM,
        images.ImageSpec(
            name="web", location="ec2", visibility="public", mappings={f"ec2:{REGION}": ami}
        ),
    )
    policy = burst_to("aws-east", image.id, ami)
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(image.id, "t3.micro"))
    await settle(rt, monitor, policy)
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.RUNNING and view.target_name == "aws-east", view.state_reason
    (remote,) = ours(raw, broker_id)
    assert rt.backends is not None
    backend = await rt.backends.get(region)
    assert isinstance(backend, Ec2Backend)
    reboots = backend.calls["RebootInstances"]

    (change,) = await instances.act(rt, alice, [inst.id], Action.REBOOT)
    assert change.current is State.RUNNING
    await settle(rt, monitor, policy)
    assert backend.calls["RebootInstances"] - reboots == 1
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.RUNNING, view.state_reason
    (after,) = ours(raw, broker_id)  # the same EC2 instance, still running, none added
    assert after["InstanceId"] == remote["InstanceId"] and after["State"]["Name"] == "running"
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(m.Instance.intent, m.Instance.backend_ref).where(m.Instance.id == inst.id)
            )
        ).one()
        kinds = (
            await conn.scalars(
                select(m.Event.kind).where(m.Event.resource_id == inst.id, m.Event.kind == "error")
            )
        ).all()
    assert row == (None, remote["InstanceId"])  # carried out, nothing left to do
    assert kinds == []
    await instances.act(rt, alice, [inst.id], Action.TERMINATE)
    await settle(rt, monitor, policy)
    assert ours(raw, broker_id) == []


# --- the inventory, page by page ---------------------------------------------------------------


async def test_inventory_follows_next_token_across_pages(
    make_backend: MakeBackend, raw: Any, ami: str, broker_id: str
) -> None:
    # batch_max 1: each launch its own RunInstances, so its own reservation (EC2 pages by those)
    backend = make_backend(page_size=2, batch_max=1, observe_reuse=0)
    placed = [await backend.launch(spec(ami, n)) for n in range(5)]
    by_ref = {p.ref: p for p in placed}
    assert len(by_ref) == 5 and len(ours(raw, broker_id)) == 5
    page = raw.describe_instances(
        Filters=[{"Name": f"tag:{batching.TAG_BROKER}", "Values": [broker_id]}], MaxResults=2
    )
    assert page.get("NextToken"), "moto must page for this test to mean anything"

    before = backend.calls["DescribeInstances"]
    probed = await backend.probe()
    assert backend.calls["DescribeInstances"] - before == 3  # pages of 2, 2 and 1
    assert probed.running == 5
    seen = await backend.observe(list(by_ref))
    assert {o.ref for o in seen} == set(by_ref)
    assert all(o.state is State.RUNNING and o.reason.startswith("ec2:") for o in seen), seen

    # the same with one page for all: the loop, not the page size, made the difference
    whole = make_backend(observe_reuse=0)
    before = whole.calls["DescribeInstances"]
    assert (await whole.probe()).running == 5
    assert whole.calls["DescribeInstances"] - before == 1
    for p in placed:
        await backend.act(p.ref, Action.TERMINATE)


# --- target add through the CLI ---------------------------------------------------------------

SECRET = "cb-secret-" + uuid.uuid4().hex
ACCESS = "AKIDCLITEST" + uuid.uuid4().hex[:8].upper()


def admin_get(cfg: Path, path: str) -> tuple[int, str]:
    saved = json.loads((cfg.parent / "data" / "operator.json").read_text())
    req = urllib.request.Request(
        saved["url"].rstrip("/") + path, headers={"Authorization": f"Bearer {saved['token']}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read().decode()


def wait_target(cfg: Path, name: str, check: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = cli_json(cfg, "target", "show", name)
        assert isinstance(view, dict)
        if check(view) or time.monotonic() > deadline:
            assert check(view), view
            return view
        time.sleep(0.2)


def test_cli_target_add_ec2_with_endpoint_never_shows_the_secret(
    server: Serve,  # noqa: F811
    moto_url: str,
) -> None:
    cfg = server.cfg
    creds = ["--access-key", ACCESS, "--secret", SECRET]
    base = ["--kind", "ec2", "--region", REGION, "--endpoint", moto_url]
    made = cli(
        cfg, "--json", "target", "add", "aws-east", *base, *creds,
        "--max-instances", "3", "--price", "t3.micro=0.0104",
    )  # fmt: skip
    assert SECRET not in made.stdout + made.stderr
    view = json.loads(made.stdout)
    assert (view["name"], view["kind"], view["driver"]) == ("aws-east", "region", "ec2")
    assert view["settings"]["endpoint"] == moto_url and view["settings"]["region"] == REGION
    assert view["settings"]["max_instances"] == 3
    assert view["settings"]["prices"] == {"t3.micro": 0.0104}

    # the serve's monitor reaches moto at that endpoint: the region reports its capacity
    wait_target(cfg, "aws-east", lambda v: v["total_cpu"] == 3 * 8 and v["state"] == "enabled")

    # the admin API's own HTTP answers: the secret is in none of them
    status, listed = admin_get(cfg, "/api/v1/targets")
    assert status == 200 and "aws-east" in listed
    assert SECRET not in listed and "secret_key" not in listed
    (region,) = [t for t in json.loads(listed) if t["name"] == "aws-east"]
    assert region["settings"]["endpoint"] == moto_url
    status, one = admin_get(cfg, f"/api/v1/targets/{region['id']}")
    assert status == 200 and SECRET not in one
    status, regions = admin_get(cfg, "/api/v1/targets?kind=region")
    assert status == 200 and SECRET not in regions
    for args in (("target", "list"), ("target", "show", "aws-east"), ("--json", "target", "list")):
        out = cli(cfg, *args)
        assert SECRET not in out.stdout + out.stderr, args

    # an endpoint nothing answers at: refused in one line, nothing added, secret not echoed
    dead = ["--kind", "ec2", "--region", REGION, "--endpoint", "http://127.0.0.1:9"]
    got = cli(cfg, "target", "add", "aws-dead", *dead, *creds, check=False)
    assert got.returncode == 1 and got.stderr.startswith("error: "), got.stderr
    assert got.stderr.count("\n") == 1 and SECRET not in got.stdout + got.stderr
    bad = ["--kind", "ec2", "--region", REGION, "--endpoint", "ftp://127.0.0.1"]
    got = cli(cfg, "target", "add", "aws-ftp", *bad, *creds, check=False)
    assert got.returncode == 1 and "endpoint" in got.stderr, got.stderr
    names = {t["name"] for t in json.loads(admin_get(cfg, "/api/v1/targets")[1])}
    assert "aws-east" in names and not {"aws-dead", "aws-ftp"} & names

    # never logged either
    log = (cfg.parent / "serve.log").read_text()
    assert SECRET not in log
