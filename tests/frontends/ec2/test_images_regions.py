"""Images, regions, zones, account attributes, VPCs, subnets and interfaces through boto3."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.frontends.ec2.conftest import REGION, ZONE, Server, Tenant, client
from tests.frontends.ec2.test_instances import FAST, error_of, launch


def image_ids(ec2: Any, **kwargs: Any) -> set[str]:
    return {i["ImageId"] for i in ec2.describe_images(**kwargs)["Images"]}


def test_images_register_share_and_deregister(
    server: Server, alice: Tenant, bob: Tenant, ec2: Any
) -> None:
    theirs = client(server, bob)
    assert server.image_id in image_ids(ec2)
    assert image_ids(ec2, Owners=["self"]) == set()
    assert image_ids(ec2, Owners=["amazon"]) == set()
    mine = ec2.register_image(
        Name="my-img", ImageLocation="/images/my.qcow2", Description="d", Architecture="x86_64"
    )["ImageId"]
    (img,) = ec2.describe_images(ImageIds=[mine])["Images"]
    assert img["Name"] == "my-img" and img["OwnerId"] == alice.user_id
    assert img["State"] == "available" and img["Public"] is False
    assert image_ids(ec2, Owners=["self"]) == {mine}
    assert image_ids(ec2, Filters=[{"Name": "name", "Values": ["my-img"]}]) == {mine}
    assert image_ids(ec2, Filters=[{"Name": "is-public", "Values": ["true"]}]) >= {server.image_id}
    assert mine not in image_ids(ec2, Filters=[{"Name": "is-public", "Values": ["true"]}])
    with pytest.raises(ClientError) as exc:
        ec2.describe_images(Filters=[{"Name": "bogus", "Values": ["x"]}])
    assert error_of(exc) == ("InvalidParameterValue", 400)
    with pytest.raises(ClientError) as exc:
        ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])
    assert error_of(exc) == ("InvalidAMIID.NotFound", 400)

    assert mine not in image_ids(theirs)
    with pytest.raises(ClientError) as exc:
        theirs.deregister_image(ImageId=mine)
    assert error_of(exc) == ("InvalidAMIID.NotFound", 400)
    ec2.modify_image_attribute(ImageId=mine, LaunchPermission={"Add": [{"UserId": bob.user_id}]})
    perms = ec2.describe_image_attribute(ImageId=mine, Attribute="launchPermission")
    assert perms["LaunchPermissions"] == [{"UserId": bob.user_id}]
    assert mine in image_ids(theirs, ExecutableUsers=["self"])
    with pytest.raises(ClientError) as exc:
        theirs.deregister_image(ImageId=mine)
    assert error_of(exc) == ("UnauthorizedOperation", 403)
    ec2.modify_image_attribute(ImageId=mine, LaunchPermission={"Remove": [{"UserId": bob.user_id}]})
    assert mine not in image_ids(theirs)

    with pytest.raises(ClientError) as exc:
        ec2.deregister_image(ImageId=mine, DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    assert ec2.deregister_image(ImageId=mine)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert image_ids(ec2, Owners=["self"]) == set()
    with pytest.raises(ClientError) as exc:
        ec2.register_image(Name="no-location")
    assert error_of(exc) == ("MissingParameter", 400)
    with pytest.raises(ClientError) as exc:
        ec2.register_image(Name="dry", ImageLocation="/x", DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    assert image_ids(ec2, Owners=["self"]) == set()


def test_create_image_from_a_stopped_instance(server: Server, ec2: Any) -> None:
    (inst,) = launch(ec2, server)
    rid = inst["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=FAST)
    with pytest.raises(ClientError) as exc:
        ec2.create_image(InstanceId=rid, Name="snap")
    assert error_of(exc) == ("IncorrectInstanceState", 400)
    ec2.stop_instances(InstanceIds=[rid])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[rid], WaiterConfig=FAST)
    new = ec2.create_image(InstanceId=rid, Name="snap")["ImageId"]
    assert image_ids(ec2, Owners=["self"]) == {new}
    ec2.terminate_instances(InstanceIds=[rid])


def test_regions_zones_account_vpcs_subnets(server: Server, ec2: Any) -> None:
    regions = ec2.describe_regions()["Regions"]
    assert [r["RegionName"] for r in regions] == [REGION]
    assert ec2.describe_regions(RegionNames=["us-east-1"])["Regions"] == []
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert ZONE in {z["ZoneName"] for z in zones}
    assert all(z["State"] == "available" and z["RegionName"] == REGION for z in zones)
    attrs = ec2.describe_account_attributes()["AccountAttributes"]
    names = {a["AttributeName"]: a["AttributeValues"] for a in attrs}
    (vpc,) = ec2.describe_vpcs()["Vpcs"]
    assert vpc["IsDefault"] and names["default-vpc"] == [{"AttributeValue": vpc["VpcId"]}]
    subnets = {s["SubnetId"]: s for s in ec2.describe_subnets()["Subnets"]}
    assert server.big_subnet in subnets
    assert subnets[server.big_subnet]["CidrBlock"] == "10.20.0.0/20"
    assert subnets[server.big_subnet]["VpcId"] == vpc["VpcId"]
    defaults = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
    assert [s["CidrBlock"] for s in defaults["Subnets"]] == ["10.11.0.0/24"]
    with pytest.raises(ClientError) as exc:
        ec2.describe_subnets(SubnetIds=["subnet-0123456789abcdef0"])
    assert error_of(exc) == ("InvalidSubnetID.NotFound", 400)
    with pytest.raises(ClientError) as exc:
        ec2.describe_vpcs(Filters=[{"Name": "bogus", "Values": ["x"]}])
    assert error_of(exc) == ("InvalidParameterValue", 400)


def test_network_interfaces_come_from_instances(server: Server, bob: Tenant, ec2: Any) -> None:
    (inst,) = launch(ec2, server, SubnetId=server.big_subnet)
    rid = inst["InstanceId"]
    nics = ec2.describe_network_interfaces()["NetworkInterfaces"]
    assert len(nics) == 1
    nic = nics[0]
    assert nic["Attachment"]["InstanceId"] == rid
    assert nic["SubnetId"] == server.big_subnet
    assert nic["PrivateIpAddress"] == inst["PrivateIpAddress"]
    by_id = ec2.describe_network_interfaces(NetworkInterfaceIds=[nic["NetworkInterfaceId"]])
    assert len(by_id["NetworkInterfaces"]) == 1
    filtered = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [rid]}]
    )
    assert len(filtered["NetworkInterfaces"]) == 1
    assert client(server, bob).describe_network_interfaces()["NetworkInterfaces"] == []
    with pytest.raises(ClientError) as exc:
        client(server, bob).describe_network_interfaces(
            NetworkInterfaceIds=[nic["NetworkInterfaceId"]]
        )
    assert error_of(exc) == ("InvalidNetworkInterfaceID.NotFound", 400)
    ec2.terminate_instances(InstanceIds=[rid])


def test_instance_types(ec2: Any) -> None:
    types = ec2.describe_instance_types(InstanceTypes=["t3.micro"])["InstanceTypes"]
    assert types[0]["VCpuInfo"]["DefaultVCpus"] == 2
    assert types[0]["MemoryInfo"]["SizeInMiB"] == 1024
    pages = list(
        ec2.get_paginator("describe_instance_types").paginate(PaginationConfig={"PageSize": 5})
    )
    names = [t["InstanceType"] for p in pages for t in p["InstanceTypes"]]
    assert len(pages) >= 3 and len(names) == len(set(names)) >= 11
    with pytest.raises(ClientError) as exc:
        ec2.describe_instance_types(InstanceTypes=["x9.huge"])
    assert error_of(exc) == ("InvalidParameterValue", 400)
