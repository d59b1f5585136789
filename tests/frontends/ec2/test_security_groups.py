"""Security groups through real boto3: the default group, create/describe/delete, rules in
both forms, paging, DryRun, tenant isolation and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from frontends.ec2.actions.regions import vpc_id
from tests.frontends.ec2.conftest import REGION, Server, Tenant, client, new_tenant, signed
from tests.frontends.ec2.test_instances import error_of

SSH = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}


def _groups(ec2: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {g["GroupName"]: g for g in ec2.describe_security_groups(**kwargs)["SecurityGroups"]}


def test_default_group_and_lifecycle(ec2: Any, alice: Tenant) -> None:
    groups = _groups(ec2)
    assert set(groups) == {"default"}
    default = groups["default"]
    assert default["OwnerId"] == alice.user_id and default["VpcId"] == vpc_id(REGION)
    assert default["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"] == default["GroupId"]
    assert default["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]

    made = ec2.create_security_group(
        GroupName="web",
        Description="web servers",
        VpcId=vpc_id(REGION),
        TagSpecifications=[
            {"ResourceType": "security-group", "Tags": [{"Key": "tier", "Value": "front"}]}
        ],
    )
    gid = made["GroupId"]
    assert made["Tags"] == [{"Key": "tier", "Value": "front"}]
    ok = ec2.authorize_security_group_ingress(
        GroupId=gid,
        IpPermissions=[
            {**SSH, "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}]},
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 81,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
             "UserIdGroupPairs": [{"GroupId": default["GroupId"]}]},
        ],
    )  # fmt: skip
    assert ok["Return"] is True and len(ok["SecurityGroupRules"]) == 4
    assert {r["IsEgress"] for r in ok["SecurityGroupRules"]} == {False}
    ec2.authorize_security_group_egress(
        GroupId=gid, IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
                                     "IpRanges": [{"CidrIp": "10.1.0.0/16"}]}]
    )  # fmt: skip
    web = _groups(ec2, GroupIds=[gid])["web"]
    assert web["Description"] == "web servers" and web["Tags"][0]["Key"] == "tier"
    perms = {(p["IpProtocol"], p.get("FromPort")): p for p in web["IpPermissions"]}
    assert perms[("tcp", 22)]["IpRanges"] == [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}]
    http = perms[("tcp", 80)]
    assert http["ToPort"] == 81 and http["Ipv6Ranges"] == [{"CidrIpv6": "::/0"}]
    assert http["UserIdGroupPairs"][0]["GroupName"] == "default"
    assert len(web["IpPermissionsEgress"]) == 2

    for flt, want in (
        ({"Name": "group-name", "Values": ["web"]}, {"web"}),
        ({"Name": "group-id", "Values": [gid]}, {"web"}),
        ({"Name": "description", "Values": ["web servers"]}, {"web"}),
        ({"Name": "vpc-id", "Values": [vpc_id(REGION)]}, {"web", "default"}),
        ({"Name": "vpc-id", "Values": ["vpc-0000000000000000f"]}, set()),
        ({"Name": "tag:tier", "Values": ["front"]}, {"web"}),
    ):
        assert set(_groups(ec2, Filters=[flt])) == want, flt

    ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[SSH])
    ec2.revoke_security_group_egress(
        GroupId=gid, IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
                                     "IpRanges": [{"CidrIp": "10.1.0.0/16"}]}]
    )  # fmt: skip
    web = _groups(ec2, GroupNames=["web"])["web"]
    assert {p["FromPort"] for p in web["IpPermissions"]} == {80}
    assert len(web["IpPermissionsEgress"]) == 1
    ec2.delete_security_group(GroupName="web")
    assert set(_groups(ec2)) == {"default"}


def test_legacy_flat_form_and_paging(server: Server, alice: Tenant, ec2: Any) -> None:
    ec2.create_security_group(GroupName="flat", Description="d")
    body = {
        "Action": "AuthorizeSecurityGroupIngress",
        "Version": "2015-10-01",
        "GroupName": "flat",
        "IpProtocol": "tcp",
        "FromPort": "443",
        "ToPort": "443",
        "CidrIp": "192.168.0.0/16",
    }
    reply = signed(server, alice, body)
    assert reply.status == 200 and b"<return>true</return>" in reply.body
    (perm,) = _groups(ec2, GroupNames=["flat"])["flat"]["IpPermissions"]
    assert (perm["FromPort"], perm["IpRanges"]) == (443, [{"CidrIp": "192.168.0.0/16"}])
    assert signed(server, alice, {**body, "Action": "RevokeSecurityGroupIngress"}).status == 200
    for n in range(6):
        ec2.create_security_group(GroupName=f"p{n}", Description="d")
    seen: list[str] = []
    kwargs: dict[str, Any] = {"MaxResults": 5}
    while True:
        page = ec2.describe_security_groups(**kwargs)
        assert len(page["SecurityGroups"]) <= 5
        seen += [g["GroupName"] for g in page["SecurityGroups"]]
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert sorted(seen) == sorted(["default", "flat", *(f"p{n}" for n in range(6))])


def test_dry_run_changes_nothing(ec2: Any) -> None:
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    for call in (
        lambda: ec2.create_security_group(GroupName="g2", Description="d", DryRun=True),
        lambda: ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH], DryRun=True),
        lambda: ec2.revoke_security_group_egress(
            GroupId=gid, DryRun=True,
            IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]),
        lambda: ec2.delete_security_group(GroupId=gid, DryRun=True),
        lambda: ec2.describe_security_groups(DryRun=True),
    ):  # fmt: skip
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("DryRunOperation", 412)
    g = _groups(ec2)
    assert set(g) == {"default", "g"}
    assert g["g"]["IpPermissions"] == [] and len(g["g"]["IpPermissionsEgress"]) == 1


def test_another_tenant_gets_not_found(server: Server, ec2: Any, bob: Tenant) -> None:
    gid = ec2.create_security_group(GroupName="private", Description="d")["GroupId"]
    other = client(server, bob)
    assert set(_groups(other)) == {"default"}
    for call in (
        lambda: other.describe_security_groups(GroupIds=[gid]),
        lambda: other.describe_security_groups(GroupNames=["private"]),
        lambda: other.delete_security_group(GroupId=gid),
        lambda: other.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH]),
        lambda: other.revoke_security_group_ingress(GroupId=gid, IpPermissions=[SSH]),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("InvalidGroup.NotFound", 400)
    mine = other.create_security_group(GroupName="mine", Description="d")["GroupId"]
    with pytest.raises(ClientError) as exc:  # a source group of someone else's
        other.authorize_security_group_ingress(
            GroupId=mine,
            IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": gid}]}],
        )
    assert error_of(exc) == ("InvalidGroup.NotFound", 400)
    assert _groups(ec2, GroupIds=[gid])["private"]["IpPermissions"] == []


def test_bad_input_and_conflicts(ec2: Any, server: Server) -> None:
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH])
    default = _groups(ec2)["default"]["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=default,
        IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": gid}]}],
    )
    cases: list[tuple[Any, str]] = [
        (lambda: ec2.create_security_group(GroupName="g", Description="d"),
         "InvalidGroup.Duplicate"),
        (lambda: ec2.create_security_group(GroupName="v", Description="d", VpcId="vpc-0123abcd"),
         "InvalidVpcID.NotFound"),
        (lambda: ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH]),
         "InvalidPermission.Duplicate"),
        (lambda: ec2.revoke_security_group_ingress(
            GroupId=gid, IpPermissions=[{**SSH, "FromPort": 23, "ToPort": 23}]),
         "InvalidPermission.NotFound"),
        (lambda: ec2.authorize_security_group_ingress(
            GroupId=gid, IpPermissions=[{**SSH, "IpRanges": [{"CidrIp": "10.0.0.1"}]}]),
         "InvalidParameterValue"),
        (lambda: ec2.authorize_security_group_ingress(
            GroupId=gid, IpPermissions=[{**SSH, "IpProtocol": "bogus"}]),
         "InvalidParameterValue"),
        (lambda: ec2.authorize_security_group_ingress(
            GroupId=gid, IpPermissions=[{**SSH, "FromPort": 90, "ToPort": 80}]),
         "InvalidParameterValue"),
        (lambda: ec2.delete_security_group(GroupId=gid), "DependencyViolation"),
        (lambda: ec2.delete_security_group(GroupName="default"), "CannotDelete"),
        (lambda: ec2.delete_security_group(GroupId="sg-nothex"), "InvalidGroupId.Malformed"),
        (lambda: ec2.describe_security_groups(GroupIds=["sg-0123456789abcdef0"]),
         "InvalidGroup.NotFound"),
        (lambda: ec2.describe_security_groups(Filters=[{"Name": "ip-permission.cidr",
                                                        "Values": ["x"]}]),
         "InvalidParameterValue"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400), code
    body = {"Action": "CreateSecurityGroup", "Version": "2016-11-15", "GroupName": "nodesc"}
    t = new_tenant(server)
    reply = signed(server, t, body)
    assert (reply.status, reply.code) == (400, "MissingParameter")
    g = _groups(ec2)
    assert set(g) == {"default", "g"} and len(g["g"]["IpPermissions"]) == 1


def test_run_instances_without_groups_joins_the_default_group(server: Server, ec2: Any) -> None:
    run = ec2.run_instances(
        ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1
    )
    (inst,) = run["Instances"]
    default = _groups(ec2)["default"]["GroupId"]
    assert inst["SecurityGroups"] == [{"GroupId": default, "GroupName": "default"}]
    gid = ec2.create_security_group(GroupName="app", Description="d")["GroupId"]
    run = ec2.run_instances(
        ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        SecurityGroupIds=[gid],
    )  # fmt: skip
    assert run["Instances"][0]["SecurityGroups"] == [{"GroupId": gid, "GroupName": "app"}]
    with pytest.raises(ClientError) as exc:
        ec2.delete_security_group(GroupId=gid)
    assert error_of(exc) == ("DependencyViolation", 400)
