"""Bad input, authentication, version and the cross-frontend case over raw HTTP."""

from __future__ import annotations

import asyncio
import json

import boto3
from botocore.config import Config

from broker.auth import SYSTEM
from broker.service import instances, users
from tests.frontends.occi.conftest import (
    INFRA,
    REGION,
    Client,
    Server,
    Tenant,
    compute_body,
    create_compute,
)

KIND = f'Category: compute; scheme="{INFRA}"; class="kind"\n'


async def count(server: Server, tenant: Tenant) -> int:
    caller = await server.call(users.get_user(server.rt, SYSTEM, tenant.name))
    from broker.auth import Caller

    who = Caller(caller.id, caller.name, caller.group_id, caller.role)
    page = await server.call(instances.describe(server.rt, who))
    return len(page.items)


async def test_bad_input_creates_nothing(occi: Client, server: Server, alice: Tenant) -> None:
    cases = [
        ("Category: compute; class=kind\n", 400),  # no scheme
        ("Category compute\n", 400),  # malformed line
        (compute_body(server) + "X-OCCI-Attribute: occi.compute.cores=\n", 400),
        (compute_body(server) + 'X-OCCI-Attribute: occi.compute.cores="two"\n', 400),
        (compute_body(server) + "X-OCCI-Attribute: occi.compute.nope=1\n", 400),
        (compute_body(server).replace("schemas.ogf.org", "example.org"), 400),  # unknown scheme
        (compute_body(server) + 'X-OCCI-Attribute: occi.compute.state="active"\n', 400),
        (
            KIND
            + 'Category: t3.micro; scheme="http://schemas.cloudbroker.org/occi/templates/resource#"; class="mixin"\n',  # noqa: E501
            400,
        ),
        (compute_body(server, ""), 400),  # no size at all
        (compute_body(server) + "X-OCCI-Attribute: occi.compute.cores=64\n", 400),
    ]
    for body, status in cases:
        reply = await occi.post("/compute/", body)
        assert reply.status == status, (body, reply.status, reply.text)
        assert len(reply.text) < 600
    broken = json.dumps({"kind": INFRA + "compute", "mixins": "not-a-list"})
    reply = await occi.post("/compute/", broken, content_type="application/occi+json")
    assert reply.status == 400 and "GFD.225" in reply.text
    notjson = await occi.post("/compute/", "{", content_type="application/occi+json")
    assert notjson.status == 400
    huge = await occi.post("/compute/", "X" * (1024 * 1024 + 10))
    assert huge.status == 413
    long_header = await occi.request(
        "POST", "/compute/", headers={"Category": "x" * 9000}, content_type="text/occi"
    )
    assert long_header.status == 400
    wrong_kind = await occi.post("/storage/", compute_body(server))
    assert wrong_kind.status == 400
    assert await count(server, alice) == 0


async def test_authentication(
    occi: Client, server: Server, alice: Tenant, bob_client: Client
) -> None:
    assert (await occi.get("/compute/", auth=False)).status == 401
    no_auth = await occi.get("/-/", auth=False)
    assert no_auth.status == 401 and no_auth.headers["WWW-Authenticate"].startswith("Basic")
    bad = Client(server, occi.session, "Basic " + "Zm9vOmJhcg==")
    assert (await bad.get("/compute/")).status == 401
    assert (await bad.get("/compute/", headers={"X-Auth-Token": "cbt_nope"})).status == 401
    token = await server.call(users.issue_token(server.rt, SYSTEM, alice.name))
    by_token = Client(server, occi.session, None)
    location = await create_compute(occi)
    listing = await by_token.get(
        "/compute/", headers={"X-Auth-Token": token}, accept="text/uri-list"
    )
    assert listing.status == 200 and location in listing.text
    assert (await bob_client.get(location)).status == 404
    assert location not in (await bob_client.get("/compute/")).text
    stop = await bob_client.post(
        f"{location}?action=stop",
        'Category: stop; scheme="http://schemas.ogf.org/occi/infrastructure/compute/action#"; class="action"\n',  # noqa: E501
    )
    assert stop.status == 404
    assert (await bob_client.delete(location)).status == 404


async def test_version_and_methods(occi: Client) -> None:
    newer = await occi.get("/-/", headers={"User-Agent": "rOCCI-cli OCCI/1.3"})
    assert newer.status == 501
    same = await occi.get("/-/", headers={"User-Agent": "client OCCI/1.2"})
    assert same.status == 200 and same.headers["Server"] == "cloudbroker OCCI/1.2"
    assert (await occi.request("PUT", "/compute/")).status == 405
    assert (await occi.get("/nowhere/")).status == 404


async def test_ec2_launch_occi_stop_boto3_sees_stopped(
    occi: Client, server: Server, alice: Tenant
) -> None:
    ec2 = boto3.session.Session().client(
        "ec2",
        region_name=REGION,
        endpoint_url=server.ec2,
        aws_access_key_id=alice.access_key,
        aws_secret_access_key=alice.secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    loop = asyncio.get_running_loop()
    run = await loop.run_in_executor(
        None,
        lambda: ec2.run_instances(
            ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1
        ),
    )
    rid = run["Instances"][0]["InstanceId"]
    waiter = {"Delay": 0.2, "MaxAttempts": 150}
    await loop.run_in_executor(
        None,
        lambda: ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=waiter),
    )
    location = f"/compute/{rid}"
    assert location in (await occi.get("/compute/", accept="text/uri-list")).text
    stop = await occi.post(
        f"{location}?action=stop",
        'Category: stop; scheme="http://schemas.ogf.org/occi/infrastructure/compute/action#"; class="action"\n',  # noqa: E501
    )
    assert stop.status == 200, stop.text
    await loop.run_in_executor(
        None,
        lambda: ec2.get_waiter("instance_stopped").wait(InstanceIds=[rid], WaiterConfig=waiter),
    )
    got = await loop.run_in_executor(None, lambda: ec2.describe_instances(InstanceIds=[rid]))
    assert got["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopped"
    # and the other way round: launched through OCCI, visible to boto3 under the same id
    made = (await create_compute(occi)).rsplit("/", 1)[1]
    seen = await loop.run_in_executor(None, lambda: ec2.describe_instances(InstanceIds=[made]))
    assert seen["Reservations"][0]["Instances"][0]["InstanceId"] == made
