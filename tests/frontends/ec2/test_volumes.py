"""Volumes and snapshots through real boto3: create, attach, detach, delete, snapshots,
filters, paging, DryRun, tenant isolation and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.frontends.ec2.conftest import ZONE, Server, Tenant, client
from tests.frontends.ec2.test_instances import FAST, error_of


def _launch(server: Server, ec2: Any) -> str:
    run = ec2.run_instances(
        ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1
    )
    rid: str = run["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[rid], WaiterConfig=FAST)
    return rid


def _volume_ids(ec2: Any, **kwargs: Any) -> set[str]:
    return {v["VolumeId"] for v in ec2.describe_volumes(**kwargs)["Volumes"]}


def test_volume_lifecycle_and_filters(server: Server, ec2: Any) -> None:
    rid = _launch(server, ec2)
    vol = ec2.create_volume(
        AvailabilityZone=ZONE,
        Size=2,
        VolumeType="gp3",
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "db"}]}],
    )
    vid = vol["VolumeId"]
    assert (vol["Size"], vol["State"], vol["AvailabilityZone"]) == (2, "available", ZONE)
    assert vol["Tags"] == [{"Key": "role", "Value": "db"}]
    other = ec2.create_volume(AvailabilityZone=ZONE, Size=5)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=FAST)

    att = ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdf")
    assert (att["VolumeId"], att["InstanceId"], att["Device"]) == (vid, rid, "/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig=FAST)
    (got,) = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert got["State"] == "in-use"
    assert got["Attachments"][0]["InstanceId"] == rid
    assert got["Attachments"][0]["Device"] == "/dev/sdf"

    for flt, want in (
        ({"Name": "status", "Values": ["in-use"]}, {vid}),
        ({"Name": "size", "Values": ["5"]}, {other}),
        ({"Name": "availability-zone", "Values": [ZONE]}, {vid, other}),
        ({"Name": "attachment.instance-id", "Values": [rid]}, {vid}),
        ({"Name": "attachment.device", "Values": ["/dev/sdf"]}, {vid}),
        ({"Name": "volume-id", "Values": [other]}, {other}),
        ({"Name": "tag:role", "Values": ["db"]}, {vid}),
        ({"Name": "status", "Values": ["deleting"]}, set()),
    ):
        assert _volume_ids(ec2, Filters=[flt]) == want, flt
    page = ec2.describe_volumes(MaxResults=5)
    assert len(page["Volumes"]) == 2 and "NextToken" not in page

    with pytest.raises(ClientError) as exc:
        ec2.delete_volume(VolumeId=vid)
    assert error_of(exc) == ("VolumeInUse", 400)
    det = ec2.detach_volume(VolumeId=vid, InstanceId=rid, Force=True)
    assert det["VolumeId"] == vid
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=FAST)
    with pytest.raises(ClientError) as exc:
        ec2.detach_volume(VolumeId=vid)
    assert error_of(exc) == ("IncorrectState", 400)
    ec2.delete_volume(VolumeId=vid)  # its disk is on the instance's host: deleted there first
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[vid], WaiterConfig=FAST)
    assert _volume_ids(ec2) == {other}


def test_snapshots(ec2: Any, alice: Tenant) -> None:
    vid = ec2.create_volume(AvailabilityZone=ZONE, Size=3)["VolumeId"]
    snap = ec2.create_snapshot(
        VolumeId=vid,
        Description="nightly",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]}],
    )
    sid = snap["SnapshotId"]
    assert (snap["VolumeId"], snap["VolumeSize"], snap["OwnerId"]) == (vid, 3, alice.user_id)
    assert snap["Tags"] == [{"Key": "k", "Value": "v"}]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig=FAST)
    for kwargs in (
        {"OwnerIds": ["self"]},
        {"OwnerIds": [alice.user_id]},
        {"SnapshotIds": [sid]},
        {"Filters": [{"Name": "volume-id", "Values": [vid]}]},
        {"Filters": [{"Name": "status", "Values": ["completed"]}]},
        {"Filters": [{"Name": "tag:k", "Values": ["v"]}]},
        {"Filters": [{"Name": "description", "Values": ["nightly"]}]},
        {"Filters": [{"Name": "owner-id", "Values": ["self"]}]},
    ):
        found = ec2.describe_snapshots(**kwargs)["Snapshots"]
        assert [s["SnapshotId"] for s in found] == [sid], kwargs
    assert ec2.describe_snapshots(OwnerIds=["amazon"])["Snapshots"] == []
    copy = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=sid)
    assert (copy["Size"], copy["SnapshotId"]) == (3, sid)
    ec2.delete_snapshot(SnapshotId=sid)
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_dry_run_changes_nothing(server: Server, ec2: Any) -> None:
    rid = _launch(server, ec2)
    vid = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    for call in (
        lambda: ec2.create_volume(AvailabilityZone=ZONE, Size=1, DryRun=True),
        lambda: ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdg", DryRun=True),
        lambda: ec2.delete_volume(VolumeId=vid, DryRun=True),
        lambda: ec2.create_snapshot(VolumeId=vid, DryRun=True),
        lambda: ec2.delete_snapshot(SnapshotId=sid, DryRun=True),
        lambda: ec2.describe_volumes(DryRun=True),
        lambda: ec2.describe_snapshots(DryRun=True),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("DryRunOperation", 412)
    ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdg")
    with pytest.raises(ClientError) as exc:
        ec2.detach_volume(VolumeId=vid, DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    (vol,) = ec2.describe_volumes()["Volumes"]
    assert vol["State"] == "in-use" and vol["Attachments"][0]["Device"] == "/dev/sdg"
    assert len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == 1


def test_another_tenant_gets_not_found(server: Server, ec2: Any, bob: Tenant) -> None:
    rid = _launch(server, ec2)
    vid = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    other = client(server, bob)
    assert other.describe_volumes()["Volumes"] == []
    assert other.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    bob_vol = other.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    cases: list[tuple[Any, str]] = [
        (lambda: other.describe_volumes(VolumeIds=[vid]), "InvalidVolume.NotFound"),
        (lambda: other.delete_volume(VolumeId=vid), "InvalidVolume.NotFound"),
        (lambda: other.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdf"),
         "InvalidVolume.NotFound"),
        (lambda: other.attach_volume(VolumeId=bob_vol, InstanceId=rid, Device="/dev/sdf"),
         "InvalidInstanceID.NotFound"),
        (lambda: other.create_snapshot(VolumeId=vid), "InvalidVolume.NotFound"),
        (lambda: other.describe_snapshots(SnapshotIds=[sid]), "InvalidSnapshot.NotFound"),
        (lambda: other.delete_snapshot(SnapshotId=sid), "InvalidSnapshot.NotFound"),
        (lambda: other.create_volume(AvailabilityZone=ZONE, SnapshotId=sid),
         "InvalidSnapshot.NotFound"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400), code
    assert _volume_ids(ec2) == {vid}


def test_bad_input_is_refused(server: Server, ec2: Any) -> None:
    rid = _launch(server, ec2)
    vid = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdf")
    spare = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    cases: list[tuple[Any, str]] = [
        (lambda: ec2.create_volume(AvailabilityZone="nowhere-1a", Size=1), "InvalidZone.NotFound"),
        (lambda: ec2.create_volume(AvailabilityZone=ZONE, Size=0), "InvalidParameterValue"),
        (lambda: ec2.create_volume(AvailabilityZone=ZONE), "MissingParameter"),
        (lambda: ec2.create_volume(AvailabilityZone=ZONE, Size=1, VolumeType="floppy"),
         "InvalidParameterValue"),
        (lambda: ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True),
         "UnsupportedOperation"),
        (lambda: ec2.attach_volume(VolumeId=spare, InstanceId=rid, Device="/dev/sdf"),
         "InvalidParameterValue"),
        (lambda: ec2.attach_volume(VolumeId=spare, InstanceId=rid, Device="sdz"),
         "InvalidParameterValue"),
        (lambda: ec2.attach_volume(VolumeId=vid, InstanceId=rid, Device="/dev/sdh"),
         "VolumeInUse"),
        (lambda: ec2.detach_volume(VolumeId=vid, InstanceId="i-0123456789abcdef0"),
         "InvalidAttachment.NotFound"),
        (lambda: ec2.describe_volumes(VolumeIds=["vol-zzz"]), "InvalidVolumeID.Malformed"),
        (lambda: ec2.describe_volumes(VolumeIds=["vol-0123456789abcdef0"]),
         "InvalidVolume.NotFound"),
        (lambda: ec2.describe_volumes(Filters=[{"Name": "colour", "Values": ["x"]}]),
         "InvalidParameterValue"),
        (lambda: ec2.describe_volumes(NextToken="%%%"), "InvalidNextToken"),
        (lambda: ec2.delete_snapshot(SnapshotId="snap-0123456789abcdef0"),
         "InvalidSnapshot.NotFound"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400), code
    assert _volume_ids(ec2) == {vid, spare}
    assert _volume_ids(ec2, Filters=[{"Name": "status", "Values": ["in-use"]}]) == {vid}
