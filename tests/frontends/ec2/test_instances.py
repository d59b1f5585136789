"""Instances through real boto3 clients against the real app: lifecycle, filters, paging,
DryRun, idempotency, tenant isolation and bad input."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.frontends.ec2.conftest import (
    ZONE,
    Server,
    Tenant,
    add_key_pair,
    client,
    send,
    signed,
)

FAST = {"Delay": 0.2, "MaxAttempts": 150}


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    resp: Any = exc.value.response
    return resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"]


def ids_of(reservations: list[dict[str, Any]]) -> set[str]:
    return {i["InstanceId"] for r in reservations for i in r["Instances"]}


def describe_ids(ec2: Any, **kwargs: Any) -> set[str]:
    return ids_of(ec2.describe_instances(**kwargs)["Reservations"])


def test_lifecycle_with_waiters(server: Server, alice: Tenant, ec2: Any) -> None:
    run = ec2.run_instances(
        ImageId=server.image_id,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        UserData="#!/bin/sh\necho hi\n",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web server"}]}
        ],
    )
    (inst,) = run["Instances"]
    rid = inst["InstanceId"]
    assert inst["State"] == {"Code": 0, "Name": "pending"}
    assert run["OwnerId"] == alice.user_id
    assert inst["Tags"] == [{"Key": "Name", "Value": "web server"}]
    assert inst["PrivateIpAddress"].startswith("10.11.0.")
    ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=FAST)
    (got,) = ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"]
    assert got["State"]["Name"] == "running"
    assert got["Placement"]["AvailabilityZone"] == ZONE
    assert got["LaunchTime"].tzinfo is not None

    attr = ec2.describe_instance_attribute(InstanceId=rid, Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]) == b"#!/bin/sh\necho hi\n"
    with pytest.raises(ClientError) as exc:
        ec2.modify_instance_attribute(InstanceId=rid, InstanceType={"Value": "t3.small"})
    assert error_of(exc) == ("IncorrectInstanceState", 400)

    out = ec2.get_console_output(InstanceId=rid)
    assert out["InstanceId"] == rid and "console of" in out["Output"]

    stopped = ec2.stop_instances(InstanceIds=[rid])["StoppingInstances"][0]
    assert stopped["PreviousState"]["Name"] == "running"
    assert stopped["CurrentState"]["Name"] == "stopping"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[rid], WaiterConfig=FAST)

    ec2.modify_instance_attribute(InstanceId=rid, InstanceType={"Value": "t3.small"})
    ec2.modify_instance_attribute(InstanceId=rid, UserData={"Value": b"new data"})
    attr = ec2.describe_instance_attribute(InstanceId=rid, Attribute="instanceType")
    assert attr["InstanceType"]["Value"] == "t3.small"
    attr = ec2.describe_instance_attribute(InstanceId=rid, Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]) == b"new data"

    ec2.start_instances(InstanceIds=[rid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=FAST)
    ec2.reboot_instances(InstanceIds=[rid])
    status = ec2.describe_instance_status(InstanceIds=[rid])["InstanceStatuses"]
    assert status[0]["InstanceStatus"]["Status"] == "ok"

    term = ec2.terminate_instances(InstanceIds=[rid])["TerminatingInstances"][0]
    assert term["CurrentState"]["Name"] in ("shutting-down", "terminated")
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[rid], WaiterConfig=FAST)
    assert ec2.describe_instance_status(InstanceIds=[rid])["InstanceStatuses"] == []
    everything = ec2.describe_instance_status(InstanceIds=[rid], IncludeAllInstances=True)
    assert everything["InstanceStatuses"][0]["InstanceState"]["Name"] == "terminated"


def launch(ec2: Any, server: Server, **kwargs: Any) -> list[dict[str, Any]]:
    args: dict[str, Any] = {
        "ImageId": server.image_id,
        "InstanceType": "t3.nano",
        "MinCount": 1,
        "MaxCount": 1,
    }
    args.update(kwargs)
    return list(ec2.run_instances(**args)["Instances"])


def test_every_instance_filter(server: Server, alice: Tenant, ec2: Any) -> None:
    add_key_pair(server, alice, "mykey")
    web = launch(
        ec2,
        server,
        MinCount=2,
        MaxCount=2,
        KeyName="mykey",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "role", "Value": "web"}]}],
    )
    db = launch(
        ec2,
        server,
        InstanceType="t3.small",
        Placement={"AvailabilityZone": ZONE},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "db", "Value": "x"}]}],
    )
    web_ids = {i["InstanceId"] for i in web}
    db_id = db[0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[*web_ids, db_id], WaiterConfig=FAST)

    def having(name: str, *values: str) -> set[str]:
        return describe_ids(ec2, Filters=[{"Name": name, "Values": list(values)}])

    assert having("instance-id", db_id) == {db_id}
    assert having("instance-state-name", "running") == web_ids | {db_id}
    assert having("instance-state-name", "stopped") == set()
    assert having("instance-type", "t3.small") == {db_id}
    assert having("image-id", server.image_id) == web_ids | {db_id}
    assert having("availability-zone", ZONE) == web_ids | {db_id}
    assert having("availability-zone", "elsewhere-1a") == set()
    res = ec2.describe_instances(InstanceIds=sorted(web_ids))["Reservations"]
    assert len(res) == 1 and len(res[0]["Instances"]) == 2
    assert having("reservation-id", res[0]["ReservationId"]) == web_ids
    assert having("key-name", "mykey") == web_ids
    assert having("private-ip-address", db[0]["PrivateIpAddress"]) == {db_id}
    assert having("tag:role", "web") == web_ids
    assert having("tag:role", "db") == set()
    assert having("tag-key", "db") == {db_id}
    both = describe_ids(
        ec2,
        Filters=[
            {"Name": "instance-type", "Values": ["t3.nano", "t3.small"]},
            {"Name": "tag-key", "Values": ["role"]},
        ],
    )
    assert both == web_ids
    assert (
        describe_ids(ec2, InstanceIds=[db_id], Filters=[{"Name": "tag-key", "Values": ["role"]}])
        == set()
    )
    with pytest.raises(ClientError) as exc:
        having("no-such-filter", "x")
    assert error_of(exc) == ("InvalidParameterValue", 400)
    with pytest.raises(ClientError) as exc:
        having("tag:role", "w*")
    assert error_of(exc) == ("UnsupportedOperation", 400)
    ec2.terminate_instances(InstanceIds=[*web_ids, db_id])


def test_a_thousand_instances_page_by_page(server: Server, alice: Tenant, ec2: Any) -> None:
    run = ec2.run_instances(
        ImageId=server.image_id,
        InstanceType="t3.nano",
        MinCount=1000,
        MaxCount=1000,
        SubnetId=server.big_subnet,
    )
    launched = {i["InstanceId"] for i in run["Instances"]}
    assert len(launched) == 1000
    pages = list(
        ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 100})
    )
    assert len(pages) == 10
    seen = [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
    assert len(seen) == 1000 and set(seen) == launched
    assert {r["ReservationId"] for p in pages for r in p["Reservations"]} == {run["ReservationId"]}
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(InstanceIds=[seen[0]], MaxResults=5)
    assert error_of(exc) == ("InvalidParameterCombination", 400)
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(MaxResults=4)
    assert error_of(exc) == ("InvalidParameterValue", 400)
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(MaxResults=5, NextToken="%%%not-a-token")
    assert error_of(exc)[1] == 400
    done = ec2.terminate_instances(InstanceIds=sorted(launched))["TerminatingInstances"]
    assert len(done) == 1000


def test_dry_run_changes_nothing(server: Server, alice: Tenant, bob: Tenant, ec2: Any) -> None:
    with pytest.raises(ClientError) as exc:
        launch(ec2, server, DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    assert describe_ids(ec2) == set()
    with pytest.raises(ClientError) as exc:
        launch(ec2, server, InstanceType="no.such", DryRun=True)
    assert error_of(exc) == ("InvalidParameterValue", 400)
    (inst,) = launch(ec2, server)
    rid = inst["InstanceId"]
    for call in (ec2.terminate_instances, ec2.stop_instances, ec2.reboot_instances):
        with pytest.raises(ClientError) as exc:
            call(InstanceIds=[rid], DryRun=True)
        assert error_of(exc) == ("DryRunOperation", 412)
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    with pytest.raises(ClientError) as exc:
        client(server, bob).terminate_instances(InstanceIds=[rid], DryRun=True)
    assert error_of(exc) == ("InvalidInstanceID.NotFound", 400)
    (got,) = ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"]
    assert got["State"]["Name"] in ("pending", "running")
    ec2.terminate_instances(InstanceIds=[rid])


def test_client_token_makes_retries_idempotent(server: Server, ec2: Any) -> None:
    first = launch(ec2, server, MinCount=1, MaxCount=3, ClientToken="retry-token-1")
    again = launch(ec2, server, MinCount=1, MaxCount=3, ClientToken="retry-token-1")
    assert {i["InstanceId"] for i in first} == {i["InstanceId"] for i in again}
    assert all(i["ClientToken"] == "retry-token-1" for i in again)
    assert len(describe_ids(ec2)) == 3
    other = launch(ec2, server, ClientToken="retry-token-2")
    assert len(describe_ids(ec2)) == 4
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in first + other])


def test_another_tenant_sees_nothing(server: Server, alice: Tenant, bob: Tenant, ec2: Any) -> None:
    (inst,) = launch(ec2, server)
    rid = inst["InstanceId"]
    theirs = client(server, bob)
    assert theirs.describe_instances()["Reservations"] == []
    assert describe_ids(theirs, Filters=[{"Name": "instance-id", "Values": [rid]}]) == set()
    calls = (
        lambda: theirs.describe_instances(InstanceIds=[rid]),
        lambda: theirs.describe_instance_status(InstanceIds=[rid]),
        lambda: theirs.terminate_instances(InstanceIds=[rid]),
        lambda: theirs.stop_instances(InstanceIds=[rid]),
        lambda: theirs.start_instances(InstanceIds=[rid]),
        lambda: theirs.reboot_instances(InstanceIds=[rid]),
        lambda: theirs.get_console_output(InstanceId=rid),
        lambda: theirs.describe_instance_attribute(InstanceId=rid, Attribute="userData"),
        lambda: theirs.modify_instance_attribute(InstanceId=rid, InstanceType={"Value": "t3.nano"}),
        lambda: theirs.create_image(InstanceId=rid, Name="stolen"),
    )
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("InvalidInstanceID.NotFound", 400)
    assert describe_ids(ec2, InstanceIds=[rid]) == {rid}
    ec2.terminate_instances(InstanceIds=[rid])


def test_bad_input_is_a_clear_client_error(server: Server, alice: Tenant, ec2: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ImageId": "ami-nothex"}, "InvalidAMIID.Malformed"),
        ({"ImageId": "ami-0123456789abcdef0"}, "InvalidAMIID.NotFound"),
        ({"InstanceType": "x9.huge"}, "InvalidParameterValue"),
        ({"MaxCount": 1001}, "InvalidParameterValue"),
        ({"MinCount": 3, "MaxCount": 2}, "InvalidParameterValue"),
        ({"KeyName": "nope"}, "InvalidKeyPair.NotFound"),
        ({"SecurityGroupIds": ["sg-bad"]}, "InvalidGroupId.Malformed"),
        ({"SecurityGroups": ["nope"]}, "InvalidGroup.NotFound"),
        ({"SubnetId": "subnet-xyz"}, "InvalidSubnetID.Malformed"),
        ({"SubnetId": "subnet-0123456789abcdef0"}, "InvalidSubnetID.NotFound"),
        ({"Placement": {"AvailabilityZone": "mars-1a"}}, "InvalidParameterValue"),
        ({"PrivateIpAddress": "192.168.1.1"}, "InvalidParameterValue"),
        ({"UserData": "x" * 20000}, "InvalidParameterValue"),
        (
            {"BlockDeviceMappings": [{"DeviceName": "/dev/sdb", "Ebs": {"VolumeSize": 10}}]},
            "UnsupportedOperation",
        ),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as exc:
            launch(ec2, server, **kwargs)
        assert error_of(exc) == (code, 400), kwargs
    for rid, code in (
        ("i-xyz", "InvalidInstanceID.Malformed"),
        ("i-0123456789abcdef0", "InvalidInstanceID.NotFound"),
    ):
        with pytest.raises(ClientError) as exc:
            ec2.terminate_instances(InstanceIds=[rid])
        assert error_of(exc) == (code, 400)
    with pytest.raises(ClientError) as exc:
        ec2.describe_instance_attribute(InstanceId="i-0123456789abcdef0", Attribute="bogus")
    assert error_of(exc) == ("InvalidParameterValue", 400)

    base = {"Action": "RunInstances", "Version": "2016-11-15", "ImageId": server.image_id}
    raw_cases: list[tuple[bytes | dict[str, str], str, int]] = [
        ({**base, "MinCount": "1"}, "MissingParameter", 400),
        ({**base, "InstanceType": "t3.nano", "MinCount": "1"}, "MissingParameter", 400),
        (
            {**base, "InstanceType": "t3.nano", "MinCount": "one", "MaxCount": "1"},
            "InvalidParameterValue",
            400,
        ),
        (
            {
                **base,
                "InstanceType": "t3.nano",
                "MinCount": "1",
                "MaxCount": "1",
                "UserData": "!!!",
            },
            "InvalidParameterValue",
            400,
        ),
        (
            {
                **base,
                "InstanceType": "t3.nano",
                "MinCount": "1",
                "MaxCount": "1",
                "SecurityGroupId.x": "sg-01234567",
            },
            "InvalidParameterValue",
            400,
        ),
        (b"Action=RunInstances&Version=2016-11-15&ImageId=%ff%fe", "InvalidParameterValue", 400),
        (b"Action=RunInstances&Version=2016-11-15&Image\xff=1", "InvalidParameterValue", 400),
        (b"Action=RunInstances&Action=RunInstances", "InvalidParameterValue", 400),
        (b"Action=RunInstances&" + b"x" * (1024 * 1024), "RequestEntityTooLarge", 413),
        (b"&".join(b"P%d=1" % n for n in range(6000)), "InvalidParameterValue", 400),
        ({"Action": "LaunchRockets", "Version": "2016-11-15"}, "InvalidAction", 400),
        ({"Version": "2016-11-15"}, "MissingAction", 400),
        ({"Action": "DescribeInstances", "Version": "yesterday"}, "InvalidParameterValue", 400),
    ]
    for body, code, status in raw_cases:
        reply = signed(server, alice, body)
        assert (reply.code, reply.status) == (code, status), body if len(body) < 500 else code
    reply = signed(server, alice, {"Action": "DescribeInstances"}, content_type="application/json")
    assert (reply.code, reply.status) == ("InvalidParameterValue", 400)
    reply = signed(server, alice, {"Action": "DescribeInstances"}, content_type=FORM_LATIN1)
    assert (reply.code, reply.status) == ("InvalidParameterValue", 400)
    assert describe_ids(ec2) == set()


FORM_LATIN1 = "application/x-www-form-urlencoded; charset=iso-8859-1"


def test_signatures_and_clock(server: Server, alice: Tenant) -> None:
    with pytest.raises(ClientError) as exc:
        client(server, alice, secret="wrong-secret-000").describe_instances()
    assert error_of(exc) == ("SignatureDoesNotMatch", 403)
    stranger = Tenant("u-x", "x", "AKCBUNKNOWNKEY000000", "whatever-secret")
    with pytest.raises(ClientError) as exc:
        client(server, stranger).describe_instances()
    assert error_of(exc) == ("AuthFailure", 401)
    server.replay_now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16)
    with pytest.raises(ClientError) as exc:
        client(server, alice, endpoint=server.replay_endpoint).run_instances(
            ImageId=server.image_id, InstanceType="t3.nano", MinCount=1, MaxCount=1
        )
    assert error_of(exc) == ("RequestExpired", 400)
    server.replay_now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=14)
    assert (
        client(server, alice, endpoint=server.replay_endpoint).describe_instances()["Reservations"]
        == []
    )
    unsigned = signed(server, alice, {"Action": "DescribeInstances"})
    assert unsigned.status == 200
    reply = send(
        server.endpoint,
        "POST",
        "/",
        [
            ("Host", "x"),
            ("Content-Length", "24"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"Action=DescribeInstances",
    )
    assert (reply.code, reply.status) == ("MissingAuthenticationToken", 401)
    assert client(server, alice).describe_instances()["Reservations"] == []
