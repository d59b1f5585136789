"""Where operators and users reach placement: the EC2 tags, the admin API and the CLI.

- ``cloudbroker:requirements`` and ``cloudbroker:rank`` on a RunInstances' TagSpecifications,
  through boto3 against a real broker with two hosts: the instance lands where the expression
  says; a malformed expression is an EC2 400 naming the problem, and nothing is created.
- ``/api/v1/policy``, ``/policy/history`` and ``/policy/test`` over real HTTP (both databases):
  set, show, history, test (writes nothing), and bad input (400 with a clear message, nothing
  changed; 403 for a user who is not an operator).
- ``cloudbroker policy show|test|history`` (and ``set``) against a real ``serve`` process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import func, select

from broker import model as m
from broker.auth import SYSTEM
from broker.client import AdminClient
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.service import images, instances, networks, users
from broker.service.instances import LaunchRequest
from broker.states import State
from frontends.ec2.app import create_app as ec2_app
from tests.broker.test_serve import Server as Serve
from tests.broker.test_serve import cli, cli_json, server  # noqa: F401  (a real serve)
from tests.conftest import make_user
from tests.frontends.admin.conftest import admin_api, call
from tests.frontends.ec2.conftest import REGION, ZONE, Server, Tenant, client, new_tenant
from tests.harness import add_fake_host, fake_cloud, in_thread, listen, running_loops, use_backend

REQUIREMENTS_TAG = "cloudbroker:requirements"
RANK_TAG = "cloudbroker:rank"
BAD_EXPRESSION = "FREE_CPU >= & 2"

# --- through EC2: the requirements and rank tags ---------------------------------------------


async def _start_two_hosts(tmp: Path, ready: threading.Event, holder: dict[str, Any]) -> None:
    """A broker with hosts h1 (16 CPUs) and h2 (32 CPUs), the EC2 frontend, and its loops."""
    rt, image_id = await fake_cloud(tmp, REGION, ZONE, {"h1": (16, 65536), "h2": (32, 65536)})
    net = await networks.create(rt, SYSTEM, name="big", cidr="10.30.0.0/20", zone=ZONE)
    runner, endpoint = await listen(ec2_app(rt))
    holder["server"] = Server(asyncio.get_running_loop(), rt, endpoint, endpoint, image_id, net.id)
    holder["stop"] = stop = asyncio.Event()
    try:
        async with running_loops(rt):
            ready.set()
            await stop.wait()
    finally:
        await runner.cleanup()
        await rt.aclose()


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ec2-two-hosts")
    for holder in in_thread(lambda ready, h: _start_two_hosts(tmp, ready, h), "ec2-two-hosts"):
        yield holder["server"]


def run_tagged(ec2: Any, image: str, tags: dict[str, str]) -> str:
    got = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    return str(got["Instances"][0]["InstanceId"])


def wait_running(ec2: Any, rid: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        (res,) = ec2.describe_instances(InstanceIds=[rid])["Reservations"]
        inst: dict[str, Any] = res["Instances"][0]
        if inst["State"]["Name"] == "running" or time.monotonic() > deadline:
            assert inst["State"]["Name"] == "running", inst["State"]
            return inst


def landed_on(srv: Server, rid: str) -> str | None:
    return srv.run(instances.get(srv.rt, SYSTEM, rid)).target_name


def owned(srv: Server, tenant: Tenant) -> int:
    async def go() -> int:
        async with srv.rt.engine.connect() as conn:
            stmt = select(func.count()).where(m.Instance.owner_id == tenant.user_id)
            return int(await conn.scalar(stmt) or 0)

    return srv.run(go())


def test_requirements_tag_sends_the_instance_to_the_one_host_that_passes(
    two_hosts: Server,
) -> None:
    srv = two_hosts
    tenant = new_tenant(srv, "req")
    ec2 = client(srv, tenant)
    # packing prefers the fuller host; each expression passes exactly one host
    for want in ("h1", "h2", "h1"):
        rid = run_tagged(ec2, srv.image_id, {"Name": "w", REQUIREMENTS_TAG: f'NAME = "{want}"'})
        inst = wait_running(ec2, rid)
        assert landed_on(srv, rid) == want
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", ())}
        assert tags == {"Name": "w"}  # the placement tags steer; they are not kept as tags
    rid = run_tagged(ec2, srv.image_id, {REQUIREMENTS_TAG: 'TOTAL_CPU > 16 & HYPERVISOR = "kv*"'})
    wait_running(ec2, rid)
    assert landed_on(srv, rid) == "h2"


def test_rank_tag_decides_between_hosts_that_both_pass(two_hosts: Server) -> None:
    srv = two_hosts
    ec2 = client(srv, new_tenant(srv, "rank"))
    big = run_tagged(ec2, srv.image_id, {RANK_TAG: "TOTAL_CPU"})
    small = run_tagged(ec2, srv.image_id, {RANK_TAG: "-TOTAL_CPU"})
    wait_running(ec2, big)
    wait_running(ec2, small)
    assert (landed_on(srv, big), landed_on(srv, small)) == ("h2", "h1")


def test_requirements_no_host_passes_waits_pending_with_the_reason(two_hosts: Server) -> None:
    srv = two_hosts
    ec2 = client(srv, new_tenant(srv, "none"))
    rid = run_tagged(ec2, srv.image_id, {REQUIREMENTS_TAG: 'NAME = "h3"'})
    deadline = time.monotonic() + 30
    while True:
        view = srv.run(instances.get(srv.rt, SYSTEM, rid))
        if view.state_reason or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert view.state is State.PENDING and view.target_name is None
    assert "requirements" in view.state_reason, view.state_reason
    ec2.terminate_instances(InstanceIds=[rid])


@pytest.mark.parametrize(
    ("key", "text", "said"),
    [
        (REQUIREMENTS_TAG, BAD_EXPRESSION, "position"),
        (REQUIREMENTS_TAG, 'NAME = "h1" &', "position"),
        (REQUIREMENTS_TAG, "FREE_CPU + 2", "condition"),  # a number is not a requirement
        (RANK_TAG, 'NAME = "h1"', "number"),  # a condition is not a rank
        (RANK_TAG, "FREE_CPU *", "position"),
    ],
)
def test_a_malformed_expression_is_an_ec2_400_and_creates_nothing(
    two_hosts: Server, key: str, text: str, said: str
) -> None:
    srv = two_hosts
    tenant = new_tenant(srv, "bad")
    ec2 = client(srv, tenant)
    with pytest.raises(ClientError) as caught:
        run_tagged(ec2, srv.image_id, {"Name": "x", key: text})
    err = caught.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["Error"]["Code"] == "InvalidParameterValue", err["Error"]
    message = err["Error"]["Message"]
    field = key.removeprefix("cloudbroker:")
    assert message.startswith(f"the {field} expression is invalid: "), message
    assert said in message.lower(), message
    assert ec2.describe_instances()["Reservations"] == []
    assert owned(srv, tenant) == 0


# --- the admin API -----------------------------------------------------------------------------

HOLD_ALL = {"placement": {"requirements": 'NAME = "nowhere"'}}
OPEN = {"placement": {"preset": "striping", "rank": "FREE_CPU"}}


async def host_and_pending(rt: Runtime) -> tuple[str, str]:
    """A fake host h1 and one pending instance of alice's; returns (host id, instance id)."""
    use_backend(rt)
    host = await add_fake_host(rt, cpu=8)
    await Monitor(rt).cycle()
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(img.id, "t3.micro"))
    return host.id, inst.id


async def test_admin_policy_set_show_history_and_test(rt: Runtime) -> None:
    _, rid = await host_and_pending(rt)
    async with admin_api(rt) as api:
        status, shown = await call(api, "GET", "/api/v1/policy")
        assert status == 200 and shown == {"version": None, "document": None}
        status, hist = await call(api, "GET", "/api/v1/policy/history")
        assert status == 200 and hist == []

        # no policy in force: the defaults place the pending instance on h1
        status, tested = await call(api, "POST", "/api/v1/policy/test", json={})
        assert status == 200, tested
        assert tested["pending"] == 1 and tested["by_target"] == {"h1": 1}
        assert tested["decisions"][0]["instance"] == rid
        assert tested["decisions"][0]["target"] == "h1"

        # a candidate is tested without being stored
        status, tested = await call(api, "POST", "/api/v1/policy/test", json={"document": HOLD_ALL})
        assert status == 200 and tested["by_target"] == {"(waits)": 1}, tested
        assert "requirements" in tested["decisions"][0]["reason"]
        assert (await call(api, "GET", "/api/v1/policy/history"))[1] == []

        body = {"document": HOLD_ALL, "comment": "hold everything"}
        status, v1 = await call(api, "PUT", "/api/v1/policy", json=body)
        assert status == 201, v1
        assert (v1["version"], v1["author"], v1["comment"]) == (1, "operator", "hold everything")
        assert v1["document"]["placement"]["requirements"] == 'NAME = "nowhere"'
        assert v1["document"]["default"] == {"trigger": "no_local_fit"}  # defaults spelled out
        status, v2 = await call(api, "PUT", "/api/v1/policy", json={"document": OPEN})
        assert status == 201 and v2["version"] == 2 and v2["comment"] == ""

        status, shown = await call(api, "GET", "/api/v1/policy")
        assert status == 200 and shown["version"] == 2
        assert shown["document"]["placement"]["preset"] == "striping"
        status, hist = await call(api, "GET", "/api/v1/policy/history")
        assert status == 200 and [h["version"] for h in hist] == [2, 1]
        assert [h["author"] for h in hist] == ["operator", "operator"]
        status, hist = await call(api, "GET", "/api/v1/policy/history?limit=1")
        assert status == 200 and [h["version"] for h in hist] == [2]

        # without a document, test uses the policy in force (now OPEN, then HOLD_ALL again)
        status, tested = await call(api, "POST", "/api/v1/policy/test")
        assert status == 200 and tested["by_target"] == {"h1": 1}
        await call(api, "PUT", "/api/v1/policy", json={"document": HOLD_ALL})
        status, tested = await call(api, "POST", "/api/v1/policy/test", json={})
        assert status == 200 and tested["by_target"] == {"(waits)": 1}

    # test wrote nothing: the instance is still pending, unplaced
    view = await instances.get(rt, SYSTEM, rid)
    assert view.state is State.PENDING and view.target_name is None


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        ({"document": {"placement": {"requirements": BAD_EXPRESSION}}}, "placement.requirements"),
        ({"document": {"placement": {"rank": 'NAME = "h1"'}}}, "placement.rank"),
        ({"document": {"placement": {"preset": "random"}}}, "placement.preset"),
        ({"document": {"targets": [{"name": "x", "max_instances": -1}]}}, "targets"),
        ({"document": {"bogus": 1}}, "bogus"),
        ({"document": ["not", "an", "object"]}, "document"),
        ({"document": "placement"}, "document"),
    ],
)
async def test_admin_policy_bad_input_is_400_and_changes_nothing(
    sqlite_rt: Runtime, payload: dict[str, Any], said: str
) -> None:
    rt = sqlite_rt
    _, rid = await host_and_pending(rt)
    async with admin_api(rt) as api:
        status, v1 = await call(api, "PUT", "/api/v1/policy", json={"document": OPEN})
        assert status == 201
        status, err = await call(api, "PUT", "/api/v1/policy", json=payload)
        assert status == 400, err
        assert err["error"]["code"] == "InvalidRequest" and said in err["error"]["message"], err
        status, err = await call(api, "POST", "/api/v1/policy/test", json=payload)
        assert status == 400 and said in err["error"]["message"], err
        assert (await call(api, "GET", "/api/v1/policy"))[1] == v1
        status, hist = await call(api, "GET", "/api/v1/policy/history")
        assert [h["version"] for h in hist] == [1]
    assert (await instances.get(rt, SYSTEM, rid)).state is State.PENDING


async def test_admin_policy_expression_error_says_where(sqlite_rt: Runtime) -> None:
    async with admin_api(sqlite_rt) as api:
        doc = {"document": {"placement": {"requirements": BAD_EXPRESSION}}}
        status, err = await call(api, "PUT", "/api/v1/policy", json=doc)
        assert status == 400
        assert err["error"]["message"] == (
            "placement.requirements: expected a value, found '&' at position 12"
        )
        assert (await call(api, "GET", "/api/v1/policy"))[1]["version"] is None


async def test_admin_policy_routes_refuse_bad_bodies_and_non_operators(
    sqlite_rt: Runtime,
) -> None:
    rt = sqlite_rt
    await make_user(rt, "mallory")
    token = await users.issue_token(rt, SYSTEM, "mallory")
    async with admin_api(rt) as api:
        for raw in (b"{not json", b"[1, 2]"):
            status, err = await call(
                api, "PUT", "/api/v1/policy", data=raw, headers={"Content-Type": "application/json"}
            )
            assert status == 400 and err["error"]["code"] == "InvalidRequest", err
        status, err = await call(api, "GET", "/api/v1/policy/history?limit=abc")
        assert status == 400, err
        for method, path, body in (
            ("GET", "/api/v1/policy", None),
            ("PUT", "/api/v1/policy", {"document": OPEN}),
            ("GET", "/api/v1/policy/history", None),
            ("POST", "/api/v1/policy/test", {}),
        ):
            status, err = await call(api, method, path, token=token, json=body)
            assert status == 403, (method, path, err)
        assert (await call(api, "GET", "/api/v1/policy"))[1]["version"] is None


# --- the CLI against a real serve -------------------------------------------------------------


def wait_for(cfg: Path, rid: str, what: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = cli_json(cfg, "instance", "show", rid)
        assert isinstance(view, dict)
        if what(view) or time.monotonic() > deadline:
            assert what(view), view
            return view
        time.sleep(0.2)


def test_cli_policy_show_test_history(server: Serve, tmp_path: Path) -> None:  # noqa: F811
    cfg = server.cfg
    assert cli_json(cfg, "policy", "show") == {"version": None, "document": None}
    assert cli_json(cfg, "policy", "history") == []
    hold = tmp_path / "hold.toml"
    hold.write_text("[placement]\nrequirements = 'NAME = \"nowhere\"'\n")
    opened = tmp_path / "open.json"
    opened.write_text(json.dumps({"placement": {"preset": "striping"}}))
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[placement]\nrequirements = '{BAD_EXPRESSION}'\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("[placement\n")

    made = cli_json(cfg, "policy", "set", str(hold), "--comment", "hold all")
    assert isinstance(made, dict) and made["version"] == 1 and made["author"] == "operator"
    saved = json.loads((cfg.parent / "data" / "operator.json").read_text())
    admin = AdminClient(saved["url"], saved["token"])
    (inst,) = admin.call(
        "POST", "/api/v1/instances", {"image": image_of(cfg), "flavor": "t3.micro"}
    )
    rid = inst["id"]
    held = wait_for(cfg, rid, lambda v: v["state_reason"])
    assert held["state"] == "pending" and "requirements" in held["state_reason"], held

    # test: the policy in force keeps it waiting; the candidate would place it; nothing stored
    now = cli_json(cfg, "policy", "test")
    assert isinstance(now, dict) and now["pending"] == 1 and now["by_target"] == {"(waits)": 1}
    would = cli_json(cfg, "policy", "test", str(opened))
    assert isinstance(would, dict) and would["by_target"] == {"local-simulated": 1}
    assert would["decisions"][0]["instance"] == rid
    text = cli(cfg, "policy", "test", str(opened)).stdout
    assert rid in text and "local-simulated" in text
    history = cli_json(cfg, "policy", "history")
    assert isinstance(history, list) and [h["version"] for h in history] == [1]
    assert cli_json(cfg, "instance", "show", rid)["state"] == "pending"  # type: ignore[index]

    # bad input: one line on stderr saying what and where, exit 1, nothing changed
    for args in (("set", str(bad)), ("test", str(bad))):
        got = cli(cfg, "policy", *args, check=False)
        assert got.returncode == 1, got
        assert got.stderr.startswith("error: ") and got.stderr.count("\n") == 1, got.stderr
        assert "placement.requirements" in got.stderr and "position 12" in got.stderr
    got = cli(cfg, "policy", "set", str(broken), check=False)
    assert got.returncode == 1 and str(broken) in got.stderr, got.stderr
    got = cli(cfg, "policy", "test", str(tmp_path / "missing.toml"), check=False)
    assert got.returncode != 0
    shown = cli_json(cfg, "policy", "show")
    assert isinstance(shown, dict) and shown["version"] == 1

    # set takes effect without a restart; history lists both, newest first, with who and why
    cli(cfg, "policy", "set", str(opened), "--comment", "open up")
    wait_for(cfg, rid, lambda v: v["state"] == "running")
    history = cli_json(cfg, "policy", "history")
    assert isinstance(history, list)
    assert [(h["version"], h["comment"]) for h in history] == [(2, "open up"), (1, "hold all")]
    table = cli(cfg, "policy", "history").stdout
    assert "open up" in table and "operator" in table
    shown = cli_json(cfg, "policy", "show")
    assert isinstance(shown, dict) and shown["document"]["placement"]["preset"] == "striping"


def image_of(cfg: Path) -> str:
    listed = cli_json(cfg, "image", "list")
    assert isinstance(listed, list) and listed
    return str(listed[0]["id"])
