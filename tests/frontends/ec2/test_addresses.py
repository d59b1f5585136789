"""Elastic IPs through real boto3: allocate, associate (by id and by address), reassociate,
disassociate, release, filters, DryRun, tenant isolation and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.frontends.ec2.conftest import Server, Tenant, client, signed
from tests.frontends.ec2.test_instances import error_of
from tests.frontends.ec2.test_volumes import _launch


def _ips(ec2: Any, **kwargs: Any) -> set[str]:
    return {a["PublicIp"] for a in ec2.describe_addresses(**kwargs)["Addresses"]}


def test_address_lifecycle_and_filters(server: Server, ec2: Any) -> None:
    rid = _launch(server, ec2)
    other_rid = _launch(server, ec2)
    a = ec2.allocate_address(
        Domain="vpc",
        TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": "k", "Value": "v"}]}],
    )
    b = ec2.allocate_address()
    assert a["Domain"] == "vpc" and a["AllocationId"].startswith("eipalloc-")
    assoc = ec2.associate_address(AllocationId=a["AllocationId"], InstanceId=rid)
    assert assoc["AssociationId"].startswith("eipassoc-")
    (got,) = ec2.describe_addresses(AllocationIds=[a["AllocationId"]])["Addresses"]
    assert (got["InstanceId"], got["AssociationId"]) == (rid, assoc["AssociationId"])
    assert got["Tags"] == [{"Key": "k", "Value": "v"}]
    assert got["PrivateIpAddress"]
    inst = ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"][0]
    assert inst["PublicIpAddress"] == a["PublicIp"]

    for flt, want in (
        ({"Name": "allocation-id", "Values": [b["AllocationId"]]}, {b["PublicIp"]}),
        ({"Name": "public-ip", "Values": [a["PublicIp"]]}, {a["PublicIp"]}),
        ({"Name": "instance-id", "Values": [rid]}, {a["PublicIp"]}),
        ({"Name": "association-id", "Values": [assoc["AssociationId"]]}, {a["PublicIp"]}),
        ({"Name": "domain", "Values": ["vpc"]}, {a["PublicIp"], b["PublicIp"]}),
        ({"Name": "domain", "Values": ["standard"]}, set()),
        ({"Name": "tag:k", "Values": ["v"]}, {a["PublicIp"]}),
    ):
        assert _ips(ec2, Filters=[flt]) == want, flt
    assert _ips(ec2, PublicIps=[b["PublicIp"]]) == {b["PublicIp"]}

    with pytest.raises(ClientError) as exc:
        ec2.associate_address(AllocationId=a["AllocationId"], InstanceId=other_rid)
    assert error_of(exc) == ("Resource.AlreadyAssociated", 400)
    moved = ec2.associate_address(
        AllocationId=a["AllocationId"], InstanceId=other_rid, AllowReassociation=True
    )
    with pytest.raises(ClientError) as exc:
        ec2.release_address(AllocationId=a["AllocationId"])
    assert error_of(exc) == ("InvalidIPAddress.InUse", 400)
    ec2.disassociate_address(AssociationId=moved["AssociationId"])
    ec2.release_address(AllocationId=a["AllocationId"])
    # the euca2ools way: everything by public address
    ec2.associate_address(PublicIp=b["PublicIp"], InstanceId=rid)
    ec2.disassociate_address(PublicIp=b["PublicIp"])
    ec2.release_address(PublicIp=b["PublicIp"])
    assert _ips(ec2) == set()


def test_dry_run_changes_nothing(server: Server, ec2: Any) -> None:
    rid = _launch(server, ec2)
    a = ec2.allocate_address(Domain="vpc")
    for call in (
        lambda: ec2.allocate_address(Domain="vpc", DryRun=True),
        lambda: ec2.associate_address(AllocationId=a["AllocationId"], InstanceId=rid, DryRun=True),
        lambda: ec2.release_address(AllocationId=a["AllocationId"], DryRun=True),
        lambda: ec2.describe_addresses(DryRun=True),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("DryRunOperation", 412)
    assoc = ec2.associate_address(AllocationId=a["AllocationId"], InstanceId=rid)
    with pytest.raises(ClientError) as exc:
        ec2.disassociate_address(AssociationId=assoc["AssociationId"], DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    (got,) = ec2.describe_addresses()["Addresses"]
    assert got["InstanceId"] == rid


def test_another_tenant_gets_not_found(server: Server, ec2: Any, bob: Tenant) -> None:
    rid = _launch(server, ec2)
    a = ec2.allocate_address(Domain="vpc")
    assoc = ec2.associate_address(AllocationId=a["AllocationId"], InstanceId=rid)
    other = client(server, bob)
    mine = other.allocate_address(Domain="vpc")
    assert _ips(other) == {mine["PublicIp"]}
    cases: list[tuple[Any, str]] = [
        (lambda: other.describe_addresses(AllocationIds=[a["AllocationId"]]),
         "InvalidAllocationID.NotFound"),
        (lambda: other.describe_addresses(PublicIps=[a["PublicIp"]]), "InvalidAddress.NotFound"),
        (lambda: other.release_address(AllocationId=a["AllocationId"]),
         "InvalidAllocationID.NotFound"),
        (lambda: other.release_address(PublicIp=a["PublicIp"]), "InvalidAddress.NotFound"),
        (lambda: other.disassociate_address(AssociationId=assoc["AssociationId"]),
         "InvalidAssociationID.NotFound"),
        (lambda: other.associate_address(AllocationId=mine["AllocationId"], InstanceId=rid),
         "InvalidInstanceID.NotFound"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400), code
    (got,) = ec2.describe_addresses()["Addresses"]
    assert got["AssociationId"] == assoc["AssociationId"]


def test_bad_input_and_the_limit(server: Server, ec2: Any, alice: Tenant) -> None:
    cases: list[tuple[Any, str]] = [
        (lambda: ec2.allocate_address(Domain="standard"), "UnsupportedOperation"),
        (lambda: ec2.associate_address(AllocationId="eipalloc-0123456789abcdef0",
                                       InstanceId="i-0123456789abcdef0"),
         "InvalidAllocationID.NotFound"),
        (lambda: ec2.associate_address(PublicIp="not-an-ip", InstanceId="i-0123456789abcdef0"),
         "InvalidParameterValue"),
        (lambda: ec2.release_address(AllocationId="eipalloc-xyz"),
         "InvalidAllocationID.Malformed"),
        (lambda: ec2.describe_addresses(Filters=[{"Name": "colour", "Values": ["x"]}]),
         "InvalidParameterValue"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400), code
    missing = signed(server, alice, {"Action": "ReleaseAddress", "Version": "2016-11-15"})
    assert (missing.status, missing.code) == (400, "MissingParameter")
    assert _ips(ec2) == set()
    for _ in range(5):
        ec2.allocate_address(Domain="vpc")
    with pytest.raises(ClientError) as exc:
        ec2.allocate_address(Domain="vpc")
    assert error_of(exc) == ("AddressLimitExceeded", 400)
    assert len(_ips(ec2)) == 5
