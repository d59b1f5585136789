"""Tags through real boto3: create, delete (by key, by key and value, all), describe with
filters and paging, tag filters on every Describe, DryRun, tenant isolation and bad input."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lxml import etree  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import delete, insert, select

from broker import ids
from broker import model as m
from broker.auth import Caller
from broker.errors import NotFound
from broker.service import keypairs as keypair_svc
from broker.service import security_groups as sg_svc
from broker.states import State
from frontends.ec2.actions import addresses, keypairs, security_groups, tags, volumes
from tests.fakes import FakeBackend
from tests.frontends.ec2.conftest import ZONE, Server, Tenant, client
from tests.frontends.ec2.test_instances import error_of
from tests.frontends.ec2.test_protocol import RECORDS, _replay
from tests.frontends.ec2.test_volumes import _launch


def _tags(ec2: Any, **kwargs: Any) -> set[tuple[str, str, str, str]]:
    return {
        (t["ResourceId"], t["ResourceType"], t["Key"], t["Value"])
        for t in ec2.describe_tags(**kwargs)["Tags"]
    }


def _resources(server: Server, ec2: Any) -> dict[str, str]:
    """One resource of every kind the caller can own, by EC2 resource type."""
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    return {
        "instance": _launch(server, ec2),
        "volume": vol,
        "snapshot": ec2.create_snapshot(VolumeId=vol)["SnapshotId"],
        "security-group": ec2.create_security_group(GroupName="g", Description="d")["GroupId"],
        "key-pair": ec2.create_key_pair(KeyName="k")["KeyPairId"],
        "elastic-ip": ec2.allocate_address(Domain="vpc")["AllocationId"],
    }


def test_tags_on_every_kind_and_every_describe(server: Server, ec2: Any) -> None:
    res = _resources(server, ec2)
    ec2.create_tags(
        Resources=list(res.values()),
        Tags=[{"Key": "team", "Value": "x"}, {"Key": "Empty", "Value": ""}],
    )
    assert _tags(ec2) == {
        (rid, kind, key, value)
        for kind, rid in res.items()
        for key, value in (("team", "x"), ("Empty", ""))
    }
    for kind, rid in res.items():
        got = _tags(ec2, Filters=[{"Name": "resource-type", "Values": [kind]}])
        assert {t[0] for t in got} == {rid}, kind
    assert len(_tags(ec2, Filters=[{"Name": "key", "Values": ["team"]}])) == 6
    assert len(_tags(ec2, Filters=[{"Name": "value", "Values": [""]}])) == 6
    assert len(_tags(ec2, Filters=[{"Name": "resource-id", "Values": [res["volume"]]}])) == 2
    assert len(_tags(ec2, Filters=[{"Name": "tag:team", "Values": ["x"]}])) == 6
    assert _tags(ec2, Filters=[{"Name": "resource-type", "Values": ["vpn-gateway"]}]) == set()

    team = [{"Name": "tag:team", "Values": ["x"]}]
    none = [{"Name": "tag:team", "Values": ["y"]}]
    describes = {
        "instance": lambda f: {
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=f)["Reservations"]
            for i in r["Instances"]
        },
        "volume": lambda f: {v["VolumeId"] for v in ec2.describe_volumes(Filters=f)["Volumes"]},
        "snapshot": lambda f: {
            s["SnapshotId"]
            for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=f)["Snapshots"]
        },
        "security-group": lambda f: {
            g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]
        },
        "key-pair": lambda f: {
            k["KeyPairId"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]
        },
        "elastic-ip": lambda f: {
            a["AllocationId"] for a in ec2.describe_addresses(Filters=f)["Addresses"]
        },
    }
    for kind, describe in describes.items():
        assert describe(team) == {res[kind]}, kind
        assert describe(none) == set(), kind

    ec2.delete_tags(Resources=[res["volume"]], Tags=[{"Key": "team", "Value": "wrong"}])
    assert len(_tags(ec2, Filters=[{"Name": "resource-id", "Values": [res["volume"]]}])) == 2
    ec2.delete_tags(Resources=[res["volume"]], Tags=[{"Key": "team", "Value": "x"}])
    ec2.delete_tags(Resources=[res["snapshot"]], Tags=[{"Key": "team"}])
    ec2.delete_tags(Resources=[res["instance"]])
    assert len(_tags(ec2, Filters=[{"Name": "key", "Values": ["team"]}])) == 3
    assert _tags(ec2, Filters=[{"Name": "resource-id", "Values": [res["instance"]]}]) == set()


def test_paging_and_unicode(server: Server, ec2: Any) -> None:
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    ec2.create_tags(
        Resources=[gid], Tags=[{"Key": f"k{n:02d}", "Value": "värde ☃"} for n in range(12)]
    )
    seen: list[str] = []
    kwargs: dict[str, Any] = {"MaxResults": 5}
    while True:
        page = ec2.describe_tags(**kwargs)
        assert len(page["Tags"]) <= 5
        seen += [t["Key"] for t in page["Tags"]]
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert seen == [f"k{n:02d}" for n in range(12)]
    assert {t["Value"] for t in ec2.describe_tags()["Tags"]} == {"värde ☃"}


def test_dry_run_changes_nothing(ec2: Any) -> None:
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    ec2.create_tags(Resources=[gid], Tags=[{"Key": "a", "Value": "1"}])
    for call in (
        lambda: ec2.create_tags(Resources=[gid], Tags=[{"Key": "b", "Value": "2"}], DryRun=True),
        lambda: ec2.delete_tags(Resources=[gid], DryRun=True),
        lambda: ec2.describe_tags(DryRun=True),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("DryRunOperation", 412)
    assert _tags(ec2) == {(gid, "security-group", "a", "1")}


def test_another_tenant_gets_not_found(server: Server, ec2: Any, bob: Tenant) -> None:
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[gid, vol], Tags=[{"Key": "a", "Value": "1"}])
    other = client(server, bob)
    assert _tags(other) == set()
    for rid, code in ((gid, "InvalidGroup.NotFound"), (vol, "InvalidVolume.NotFound")):
        for call in (
            lambda rid=rid: other.create_tags(Resources=[rid], Tags=[{"Key": "b", "Value": "2"}]),
            lambda rid=rid: other.delete_tags(Resources=[rid]),
        ):
            with pytest.raises(ClientError) as exc:
                call()
            assert error_of(exc) == (code, 400)
    assert len(_tags(ec2)) == 2


def test_bad_input_changes_nothing(ec2: Any) -> None:
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    ec2.create_tags(Resources=[gid], Tags=[{"Key": f"k{n}", "Value": ""} for n in range(49)])
    cases: list[tuple[Any, str]] = [
        (lambda: ec2.create_tags(Resources=[gid], Tags=[{"Key": "x", "Value": "1"},
                                                        {"Key": "y", "Value": "2"}]),
         "TagLimitExceeded"),
        (lambda: ec2.create_tags(Resources=[gid], Tags=[{"Key": "aws:x", "Value": "1"}]),
         "InvalidParameterValue"),
        (lambda: ec2.create_tags(Resources=[gid], Tags=[{"Key": "x" * 129, "Value": "1"}]),
         "InvalidParameterValue"),
        (lambda: ec2.create_tags(Resources=["bogus-123"], Tags=[{"Key": "x", "Value": "1"}]),
         "InvalidID"),
        (lambda: ec2.create_tags(Resources=[gid, "vol-0123456789abcdef0"],
                                 Tags=[{"Key": "x", "Value": "1"}]),
         "InvalidVolume.NotFound"),
        (lambda: ec2.create_tags(Resources=[gid], Tags=[]), "MissingParameter"),
        (lambda: ec2.describe_tags(Filters=[{"Name": "colour", "Values": ["x"]}]),
         "InvalidParameterValue"),
        (lambda: ec2.describe_tags(NextToken="!!"), "InvalidNextToken"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400), code
    assert len(_tags(ec2)) == 49


# --- captured euca2ools / boto3 traffic for these actions --------------------------------------

#: resources the captured requests name by moto's ids, made for the "wire" user before replaying
_WIRE_INSTANCES = ("i-e7a2ff7acff11fedb", "i-430d11c2c12b46e48", "i-ebda3d5e78d24d7b7")
_WIRE_VOLUMES = ("vol-9e6dfc13b2a7a485d", "vol-76e732bf6c35f62bf", "vol-9239b22adf8893d0c")
_WIRE_GROUP = "sg-41b41ab9d2ea135f1"
_WIRE_ADDRESS = "127.115.25.17"
_WIRE_ZONE = "us-east-1a"
_FAMILIES = frozenset(
    set(keypairs.ACTIONS) | set(security_groups.ACTIONS) | set(volumes.ACTIONS)
    | set(addresses.ACTIONS) | set(tags.ACTIONS)
)  # fmt: skip
#: (client, action, index among that client's records of the action) -> expected (status, code)
_NOT_OK = {("euca2ools", "DetachVolume", 1): (400, "IncorrectState")}  # detached by the first


async def _seed_wire(server: Server) -> None:
    rt = server.rt
    async with rt.engine.begin() as conn:
        row = (
            await conn.execute(
                select(m.User.id, m.User.group_id, m.User.name).where(m.User.name == "wire")
            )
        ).one()
        caller = Caller(user_id=row[0], name=row[2], group_id=row[1])
        if await conn.scalar(select(m.Cluster.id).where(m.Cluster.name == _WIRE_ZONE)) is None:
            await conn.execute(insert(m.Cluster).values(id=ids.new_id("cluster"), name=_WIRE_ZONE))
        host = await conn.scalar(select(m.Target.id).where(m.Target.name == "h1"))
        for n, rid in enumerate(_WIRE_INSTANCES):
            if await conn.scalar(select(m.Instance.id).where(m.Instance.id == rid)) is None:
                await conn.execute(
                    insert(m.Instance).values(
                        id=rid,
                        owner_id=caller.user_id,
                        group_id=caller.group_id,
                        reservation_id=ids.new_id("reservation"),
                        image_id=server.image_id,
                        flavor="t3.micro",
                        vcpus=1,
                        memory_mb=512,
                        state="poweroff",
                        zone=_WIRE_ZONE,
                        private_ip=f"10.99.0.{n + 10}",
                        target_id=host,
                        backend_ref=rid,
                    )
                )
        for vid in _WIRE_VOLUMES:
            await conn.execute(delete(m.Volume).where(m.Volume.id == vid))
            await conn.execute(
                insert(m.Volume).values(
                    id=vid,
                    owner_id=caller.user_id,
                    group_id=caller.group_id,
                    size_gb=1,
                    zone=_WIRE_ZONE,
                    state="available",
                )
            )
        if await conn.scalar(select(m.SecurityGroup.id).where(m.SecurityGroup.id == _WIRE_GROUP)):
            await conn.execute(
                delete(m.SecurityGroupRule).where(m.SecurityGroupRule.group_id == _WIRE_GROUP)
            )
        else:
            await conn.execute(
                insert(m.SecurityGroup).values(
                    id=_WIRE_GROUP, owner_id=caller.user_id, name="captured", description="d"
                )
            )
        await conn.execute(delete(m.Address).where(m.Address.owner_id == caller.user_id))
        await conn.execute(
            insert(m.Address).values(
                id=ids.new_id("address"), owner_id=caller.user_id, public_ip=_WIRE_ADDRESS
            )
        )
    assert rt.backends is not None and host is not None
    backend = await rt.backends.get(host)
    assert isinstance(backend, FakeBackend)
    backend.domains.update(dict.fromkeys(_WIRE_INSTANCES, State.POWEROFF))
    for name in ("boto-key", "boto-imported", "mykey", "importedkey"):
        await keypair_svc.delete(rt, caller, name)
    for group in ("boto-sg", "g1"):
        with contextlib.suppress(NotFound):
            await sg_svc.delete(rt, caller, name=group)


async def _volumes_settled(server: Server) -> None:
    """Wait until the scheduler has carried out every attach and detach asked for."""
    for _ in range(200):
        async with server.rt.engine.connect() as conn:
            busy = await conn.scalar(
                select(m.Volume.id).where(m.Volume.attach_state.in_(("attaching", "detaching")))
            )
        if busy is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("volume work was not carried out")


def test_captured_requests_for_these_actions_succeed(server: Server) -> None:
    server.run(_seed_wire(server))
    seen: dict[tuple[str, str], int] = {}
    replayed = 0
    for rec in RECORDS:
        if rec["action"] not in _FAMILIES:
            continue
        key = (rec["client"], rec["action"])
        index = seen.get(key, 0)
        seen[key] = index + 1
        reply = _replay(server, rec)
        status, code = _NOT_OK.get((*key, index), (200, ""))
        assert (reply.status, reply.code) == (status, code), (rec["id"], reply.body[:400])
        if rec["action"] in ("AttachVolume", "DetachVolume"):
            server.run(_volumes_settled(server))
        if status == 200:
            version = dict(rec["params"])["Version"]
            root = etree.fromstring(reply.body)
            assert root.tag == f"{{http://ec2.amazonaws.com/doc/{version}/}}{rec['action']}Response"
        replayed += 1
    assert replayed >= 35
