"""Tenant isolation across every door: EC2 (boto3), OCCI (raw HTTP) and the admin API (B's token).

User A owns an instance (with a key pair, a security group, an attached volume, a tag and an
associated address), a snapshot and a private image. User B, in another group, owns an instance,
a volume and an address of their own, and tries every action on each of A's resources through
each protocol: every try is refused in that protocol's own way (EC2 ``*.NotFound`` or
UnauthorizedOperation, OCCI 404/403, admin API 404/403), and the database rows before and after
are the same. Then sharing (an image shared with B's group or with B, and a public one) and
roles (a group admin acts on their group's instances only; an admin sees everything).

One broker runs in a background thread (the OCCI test server: OCCI and EC2 listeners, reused
from tests/frontends/occi/conftest.py) with an admin listener added on its loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import ClientError
from sqlalchemy import func, select

from broker import model as m
from broker.auth import SYSTEM, Caller
from broker.service import groups, images, users
from frontends.admin.app import create_app as create_admin_app
from tests.frontends.ec2.conftest import client as ec2_client
from tests.frontends.occi.conftest import (
    INFRA,
    Client,
    Server,
    Tenant,
    compute_body,
    new_tenant,
    server,
)

__all__ = ["server"]

ZONE = "cloudbroker-1a"
ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
SA = "http://schemas.ogf.org/occi/infrastructure/storage/action#"
USER_MIXIN = 'Category: {term}; scheme="http://example.org/tags#"; class="mixin"; location="/mixin/{term}/"\n'  # noqa: E501
EC2_REFUSALS = ("UnauthorizedOperation",)
TABLES = (
    m.Group,
    m.User,
    m.AccessKey,
    m.Quota,
    m.Instance,
    m.InstanceSecurityGroup,
    m.NetworkInterface,
    m.Lease,
    m.Volume,
    m.Snapshot,
    m.KeyPair,
    m.SecurityGroup,
    m.SecurityGroupRule,
    m.Address,
    m.Image,
    m.LaunchPermission,
    m.Tag,
)
VOLATILE = {"updated_at"}  # the monitor's bookkeeping, not a change anyone asked for


@pytest.fixture(scope="module")
def admin_url(server: Server) -> Iterator[str]:
    """An admin listener on the test server's runtime and loop."""

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(create_admin_app(server.rt), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return runner, f"http://{host}:{port}"

    runner, url = server.run(start())
    try:
        yield url
    finally:
        server.run(runner.cleanup())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def caller_of(server: Server, tenant: Tenant) -> Caller:
    view = server.run(users.get_user(server.rt, SYSTEM, tenant.name))
    return Caller(view.id, view.name, view.group_id, view.role)


def token_of(server: Server, tenant: Tenant) -> str:
    return server.run(users.issue_token(server.rt, SYSTEM, tenant.name))


def ec2(server: Server, tenant: Tenant) -> Any:
    return ec2_client(server, tenant, endpoint=server.ec2)  # type: ignore[arg-type]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.1)


def run_instance(cli: Any, image: str, **kw: Any) -> str:
    made = cli.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, **kw)
    rid: str = made["Instances"][0]["InstanceId"]
    wait_for(
        f"{rid} running",
        lambda: (
            cli.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"][0]["State"][
                "Name"
            ]
            == "running"
        ),
    )
    return rid


async def db_rows(server: Server, ids: list[str]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with server.rt.engine.connect() as conn:
            for table in TABLES:
                cols = [c for c in table.__table__.columns if c.name not in VOLATILE]
                rows = (await conn.execute(select(*cols))).all()
                out[table.__tablename__] = sorted(map(tuple, rows), key=repr)
            out["events"] = await conn.scalar(
                select(func.count()).select_from(m.Event).where(m.Event.resource_id.in_(ids))
            )
        return out

    return await server.call(go())


class World:
    """A's resources, B's own resources, and a client for each of them on each protocol."""

    def __init__(self, server: Server, http: aiohttp.ClientSession, admin_url: str) -> None:
        self.server = server
        self.admin_url = admin_url
        self.a = new_tenant(server, "a")
        self.b = new_tenant(server, "b")
        self.a_ec2, self.b_ec2 = ec2(server, self.a), ec2(server, self.b)
        self.b_occi = Client(server, http, self.b.basic)
        self.b_token = token_of(server, self.b)
        self.http = http
        a = self.a_ec2
        self.key = f"key-{uuid.uuid4().hex[:6]}"
        self.key_id = a.create_key_pair(KeyName=self.key)["KeyPairId"]
        self.sg = a.create_security_group(GroupName="web", Description="a's")["GroupId"]
        a.authorize_security_group_ingress(
            GroupId=self.sg, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="10.0.0.0/8"
        )
        self.rid = run_instance(a, server.image_id, KeyName=self.key, SecurityGroupIds=[self.sg])
        a.create_tags(Resources=[self.rid], Tags=[{"Key": "owner", "Value": "a"}])
        self.vol = a.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
        a.attach_volume(VolumeId=self.vol, InstanceId=self.rid, Device="/dev/sdf")
        wait_for("attach", lambda: self._volume(self.vol)["State"] == "in-use")
        wait_for(
            "attached",
            lambda: self._volume(self.vol)["Attachments"][0]["State"] == "attached",
        )
        self.snap = a.create_snapshot(VolumeId=self.vol)["SnapshotId"]
        wait_for(
            "snapshot",
            lambda: (
                a.describe_snapshots(SnapshotIds=[self.snap])["Snapshots"][0]["State"]
                == "completed"
            ),
        )
        addr = a.allocate_address(Domain="vpc")
        self.alloc, self.ip = addr["AllocationId"], addr["PublicIp"]
        self.assoc = a.associate_address(AllocationId=self.alloc, InstanceId=self.rid)[
            "AssociationId"
        ]
        self.ami = server.run(
            images.register(
                server.rt,
                caller_of(server, self.a),
                images.ImageSpec(name="a-private", kind="kernel", kernel="/k"),
            )
        ).id
        nics = a.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.rid]}]
        )["NetworkInterfaces"]
        self.eni = nics[0]["NetworkInterfaceId"]
        b = self.b_ec2
        self.b_rid = run_instance(b, server.image_id)
        self.b_vol = b.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
        self.b_alloc = b.allocate_address(Domain="vpc")["AllocationId"]
        wait_for("b's volume", lambda: self._volume(self.b_vol, b)["State"] == "available")

    def _volume(self, vid: str, cli: Any = None) -> Any:
        return (cli or self.a_ec2).describe_volumes(VolumeIds=[vid])["Volumes"][0]

    @property
    def a_ids(self) -> list[str]:
        return [self.rid, self.vol, self.snap, self.key_id, self.sg, self.alloc, self.ami]

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.b_token}"}
        async with self.http.request(
            method, self.admin_url + path, json=body, headers=headers
        ) as resp:
            data = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, data


@pytest.fixture
def world(server: Server, http: aiohttp.ClientSession, admin_url: str) -> World:
    return World(server, http, admin_url)


def ec2_attempts(w: World) -> list[tuple[str, Callable[[], Any]]]:
    b = w.b_ec2
    tag = [{"Key": "owner", "Value": "b"}]
    rule = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "10.0.0.0/8"}
    return [
        # the instance
        ("DescribeInstances", lambda: b.describe_instances(InstanceIds=[w.rid])),
        ("DescribeInstanceStatus", lambda: b.describe_instance_status(InstanceIds=[w.rid])),
        ("StopInstances", lambda: b.stop_instances(InstanceIds=[w.rid])),
        ("StopInstances force", lambda: b.stop_instances(InstanceIds=[w.rid], Force=True)),
        ("StartInstances", lambda: b.start_instances(InstanceIds=[w.rid])),
        ("RebootInstances", lambda: b.reboot_instances(InstanceIds=[w.rid])),
        ("TerminateInstances", lambda: b.terminate_instances(InstanceIds=[w.rid])),
        ("Terminate mixed", lambda: b.terminate_instances(InstanceIds=[w.b_rid, w.rid])),
        ("GetConsoleOutput", lambda: b.get_console_output(InstanceId=w.rid)),
        (
            "DescribeInstanceAttribute",
            lambda: b.describe_instance_attribute(InstanceId=w.rid, Attribute="userData"),
        ),
        (
            "ModifyInstanceAttribute",
            lambda: b.modify_instance_attribute(InstanceId=w.rid, UserData={"Value": b"x"}),
        ),
        ("CreateImage", lambda: b.create_image(InstanceId=w.rid, Name="stolen")),
        ("CreateTags instance", lambda: b.create_tags(Resources=[w.rid], Tags=tag)),
        ("DeleteTags instance", lambda: b.delete_tags(Resources=[w.rid], Tags=[{"Key": "owner"}])),
        # the volume
        ("DescribeVolumes", lambda: b.describe_volumes(VolumeIds=[w.vol])),
        ("DetachVolume", lambda: b.detach_volume(VolumeId=w.vol)),
        ("DetachVolume forced", lambda: b.detach_volume(VolumeId=w.vol, Force=True)),
        (
            "AttachVolume theirs to mine",
            lambda: b.attach_volume(VolumeId=w.vol, InstanceId=w.b_rid, Device="/dev/sdg"),
        ),
        (
            "AttachVolume mine to theirs",
            lambda: b.attach_volume(VolumeId=w.b_vol, InstanceId=w.rid, Device="/dev/sdg"),
        ),
        ("DeleteVolume", lambda: b.delete_volume(VolumeId=w.vol)),
        ("CreateSnapshot", lambda: b.create_snapshot(VolumeId=w.vol)),
        ("CreateTags volume", lambda: b.create_tags(Resources=[w.vol], Tags=tag)),
        # the snapshot
        ("DescribeSnapshots", lambda: b.describe_snapshots(SnapshotIds=[w.snap])),
        ("DeleteSnapshot", lambda: b.delete_snapshot(SnapshotId=w.snap)),
        (
            "CreateVolume from snapshot",
            lambda: b.create_volume(AvailabilityZone=ZONE, SnapshotId=w.snap),
        ),
        # the key pair
        ("DescribeKeyPairs by name", lambda: b.describe_key_pairs(KeyNames=[w.key])),
        ("DescribeKeyPairs by id", lambda: b.describe_key_pairs(KeyPairIds=[w.key_id])),
        ("DeleteKeyPair by id", lambda: b.delete_key_pair(KeyPairId=w.key_id)),
        ("RunInstances with key", lambda: run_no_wait(b, w.server.image_id, KeyName=w.key)),
        # the security group
        ("DescribeSecurityGroups", lambda: b.describe_security_groups(GroupIds=[w.sg])),
        ("DeleteSecurityGroup", lambda: b.delete_security_group(GroupId=w.sg)),
        (
            "AuthorizeIngress",
            lambda: b.authorize_security_group_ingress(GroupId=w.sg, IpPermissions=[ip(rule)]),
        ),
        (
            "RevokeIngress",
            lambda: b.revoke_security_group_ingress(GroupId=w.sg, IpPermissions=[ip(rule)]),
        ),
        (
            "AuthorizeEgress",
            lambda: b.authorize_security_group_egress(GroupId=w.sg, IpPermissions=[ip(rule)]),
        ),
        (
            "RevokeEgress",
            lambda: b.revoke_security_group_egress(GroupId=w.sg, IpPermissions=[ip(rule)]),
        ),
        (
            "RunInstances with group",
            lambda: run_no_wait(b, w.server.image_id, SecurityGroupIds=[w.sg]),
        ),
        ("CreateTags group", lambda: b.create_tags(Resources=[w.sg], Tags=tag)),
        # the address
        ("DescribeAddresses by id", lambda: b.describe_addresses(AllocationIds=[w.alloc])),
        ("DescribeAddresses by ip", lambda: b.describe_addresses(PublicIps=[w.ip])),
        ("ReleaseAddress", lambda: b.release_address(AllocationId=w.alloc)),
        ("DisassociateAddress", lambda: b.disassociate_address(AssociationId=w.assoc)),
        (
            "AssociateAddress theirs to mine",
            lambda: b.associate_address(
                AllocationId=w.alloc, InstanceId=w.b_rid, AllowReassociation=True
            ),
        ),
        (
            "AssociateAddress mine to theirs",
            lambda: b.associate_address(AllocationId=w.b_alloc, InstanceId=w.rid),
        ),
        # the private image
        ("DescribeImages", lambda: b.describe_images(ImageIds=[w.ami])),
        (
            "DescribeImageAttribute",
            lambda: b.describe_image_attribute(ImageId=w.ami, Attribute="launchPermission"),
        ),
        (
            "ModifyImageAttribute",
            lambda: b.modify_image_attribute(
                ImageId=w.ami, LaunchPermission={"Add": [{"UserId": w.b.user_id}]}
            ),
        ),
        ("DeregisterImage", lambda: b.deregister_image(ImageId=w.ami)),
        ("RunInstances from image", lambda: run_no_wait(b, w.ami)),
        ("CreateTags image", lambda: b.create_tags(Resources=[w.ami], Tags=tag)),
        # the network interface of the instance
        (
            "DescribeNetworkInterfaces",
            lambda: b.describe_network_interfaces(NetworkInterfaceIds=[w.eni]),
        ),
    ]


def ip(rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "IpProtocol": rule["IpProtocol"],
        "FromPort": rule["FromPort"],
        "ToPort": rule["ToPort"],
        "IpRanges": [{"CidrIp": rule["CidrIp"]}],
    }


def run_no_wait(cli: Any, image: str, **kw: Any) -> Any:
    return cli.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, **kw)


def assert_ec2_refused(name: str, attempt: Callable[[], Any]) -> str:
    try:
        answer = attempt()
    except ClientError as exc:
        code: str = exc.response["Error"]["Code"]
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        assert code.endswith(".NotFound") or code in EC2_REFUSALS, (name, code)
        assert status < 500, (name, code, status)
        return code
    raise AssertionError(f"{name} was allowed: {answer}")


async def test_b_is_refused_everything_on_a_through_every_frontend(world: World) -> None:
    w = world
    before = await db_rows(w.server, w.a_ids)
    codes = {name: assert_ec2_refused(name, attempt) for name, attempt in ec2_attempts(w)}
    assert codes["DescribeInstances"] == "InvalidInstanceID.NotFound"
    assert codes["DescribeImages"] == "InvalidAMIID.NotFound"
    assert codes["DeleteVolume"] == "InvalidVolume.NotFound"
    # listing and filtering shows B nothing of A's
    b = w.b_ec2
    seen = str(b.describe_instances()) + str(b.describe_volumes()) + str(b.describe_snapshots())
    seen += str(b.describe_key_pairs()) + str(b.describe_security_groups())
    seen += str(b.describe_addresses()) + str(b.describe_images()) + str(b.describe_tags())
    seen += str(b.describe_network_interfaces())
    seen += str(b.describe_images(Owners=[w.a.user_id]))
    seen += str(b.describe_images(ExecutableUsers=[w.a.user_id]))
    seen += str(b.describe_instances(Filters=[{"Name": "instance-id", "Values": [w.rid]}]))
    seen += str(b.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [w.rid]}]))
    for rid in (*w.a_ids, w.ip, w.key, w.eni):
        assert rid not in seen, rid
    harmless = b.delete_key_pair(KeyName=w.key)  # B's own namespace: deletes nothing of A's
    assert harmless["ResponseMetadata"]["HTTPStatusCode"] == 200

    await occi_attempts(w)
    await admin_attempts(w)
    assert await db_rows(w.server, w.a_ids) == before
    # and A still has everything, working
    a = w.a_ec2
    assert a.describe_instances(InstanceIds=[w.rid])["Reservations"]
    assert a.describe_key_pairs(KeyNames=[w.key])["KeyPairs"]
    assert a.describe_images(ImageIds=[w.ami])["Images"]


async def occi_attempts(w: World) -> None:
    occi = w.b_occi
    compute, storage = f"/compute/{w.rid}", f"/storage/{w.vol}"
    b_compute, b_storage = f"/compute/{w.b_rid}", f"/storage/{w.b_vol}"
    stop = f'Category: stop; scheme="{ACTION}"; class="action"\n'
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("GET compute", lambda: occi.get(compute)),
        ("GET compute json", lambda: occi.get(compute, accept="application/occi+json")),
        ("stop", lambda: occi.post(f"{compute}?action=stop", stop)),
        (
            "restart",
            lambda: occi.post(f"{compute}?action=restart", stop.replace("stop", "restart")),
        ),
        ("update", lambda: occi.post(compute, 'X-OCCI-Attribute: occi.core.title="mine"\n')),
        ("DELETE compute", lambda: occi.delete(compute)),
        ("GET storage", lambda: occi.get(storage)),
        (
            "online",
            lambda: occi.post(
                f"{storage}?action=online", f'Category: online; scheme="{SA}"; class="action"\n'
            ),
        ),
        (
            "update storage",
            lambda: occi.post(storage, 'X-OCCI-Attribute: occi.core.title="mine"\n'),
        ),
        ("DELETE storage", lambda: occi.delete(storage)),
        ("GET storagelink", lambda: occi.get(f"/link/storagelink/{w.vol}")),
        ("DELETE storagelink", lambda: occi.delete(f"/link/storagelink/{w.vol}")),
        ("GET nic", lambda: occi.get(f"/link/networkinterface/{w.eni}")),
        (
            "link their storage to mine",
            lambda: occi.post("/link/storagelink/", link_body(b_compute, storage)),
        ),
        (
            "link my storage to theirs",
            lambda: occi.post("/link/storagelink/", link_body(compute, b_storage)),
        ),
        (
            "create with their storage",
            lambda: occi.post(
                "/compute/",
                compute_body(
                    w.server,
                    "t3.micro",
                    f'Link: <{storage}>; rel="{INFRA}storage"; category="{INFRA}storagelink"',
                ),
            ),
        ),
    ]
    for name, attempt in attempts:
        reply = await attempt()
        assert reply.status in (403, 404), (name, reply.status, reply.text)
        assert reply.text.strip() and len(reply.text) < 600, name
    # PUT to an id one may not see is answered exactly as for an id that does not exist
    missing = "/compute/i-0123456789abcdef0"
    put = await occi.put(compute, compute_body(w.server))
    put_missing = await occi.put(missing, compute_body(w.server))
    assert (put.status, put.text.replace(w.rid, "ID")) == (
        put_missing.status,
        put_missing.text.replace("i-0123456789abcdef0", "ID"),
    )
    missing_ami = "ami-0123456789abcdef0"
    theirs, nothing = [
        await occi.post(
            "/compute/",
            compute_body(w.server).replace(f"Category: {w.server.image_id};", f"Category: {ami};"),
        )
        for ami in (w.ami, missing_ami)
    ]  # creating from an image one may not see is answered as from no image at all
    assert theirs.status in (400, 404)
    assert (theirs.status, theirs.text.replace(w.ami, "ID")) == (
        nothing.status,
        nothing.text.replace(missing_ami, "ID"),
    )
    nic = await occi.delete(f"/link/networkinterface/{w.eni}")
    nic_missing = await occi.delete("/link/networkinterface/eni-0123456789abcdef0")
    assert nic.status in (403, 404, 501) and nic.status == nic_missing.status
    term = f"m{uuid.uuid4().hex[:8]}"
    assert (await occi.post("/-/", USER_MIXIN.format(term=term))).status == 200
    tagged = await occi.post(f"/mixin/{term}/", f"X-OCCI-Location: {compute}\n")
    assert tagged.status in (403, 404), tagged.text
    assert compute not in (await occi.get(f"/mixin/{term}/", accept="text/uri-list")).text
    for listing in ("/compute/", "/storage/", "/link/storagelink/", "/link/networkinterface/"):
        text = (await occi.get(listing, accept="text/uri-list")).text
        assert w.rid not in text and w.vol not in text and w.eni not in text, listing
    assert w.ami not in (await occi.get("/-/")).text


def link_body(source: str, target: str) -> str:
    return (
        f'Category: storagelink; scheme="{INFRA}"; class="kind"\n'
        f'X-OCCI-Attribute: occi.core.source="{source}"\n'
        f'X-OCCI-Attribute: occi.core.target="{target}"\n'
    )


async def admin_attempts(w: World) -> None:
    rid, ami, a = w.rid, w.ami, w.a.name
    attempts = [
        ("GET", f"/api/v1/instances/{rid}", None),
        ("POST", f"/api/v1/instances/{rid}/stop", {}),
        ("POST", f"/api/v1/instances/{rid}/terminate", {"force": True}),
        ("POST", f"/api/v1/instances/{rid}/reboot", {}),
        ("GET", f"/api/v1/instances/{rid}/explain", None),
        ("GET", f"/api/v1/instances/{rid}/events", None),
        ("GET", f"/api/v1/instances/{rid}/console", None),
        ("GET", f"/api/v1/images/{ami}", None),
        ("DELETE", f"/api/v1/images/{ami}", None),
        ("POST", "/api/v1/instances", {"image": ami, "flavor": "t3.micro"}),
        ("GET", f"/api/v1/users/{a}", None),
        ("DELETE", f"/api/v1/users/{a}", None),
        ("POST", f"/api/v1/users/{a}/disable", None),
        ("POST", f"/api/v1/users/{a}/token", {}),
        ("PUT", f"/api/v1/users/{a}/group", {"group": w.b.name}),
        ("PUT", f"/api/v1/users/{a}/role", {"role": "user"}),
        ("GET", f"/api/v1/groups/{a}", None),
        ("DELETE", f"/api/v1/groups/{a}", None),
        ("GET", f"/api/v1/quotas?subject={a}", None),
        ("PUT", f"/api/v1/quotas/{a}", {"instances": 0}),
        ("DELETE", f"/api/v1/quotas/{a}/instances", None),
    ]
    for method, path, body in attempts:
        status, answer = await w.admin(method, path, body)
        assert status in (403, 404), (method, path, status, answer)
        assert answer["error"]["code"] in ("NotFound", "Forbidden"), answer
    status, listed = await w.admin("GET", "/api/v1/instances")
    assert status == 200 and rid not in str(listed)
    status, listed = await w.admin("GET", f"/api/v1/instances?owner={w.a.user_id}")
    assert status == 200 and listed["instances"] == []
    status, listed = await w.admin("GET", "/api/v1/images")
    assert status == 200 and ami not in str(listed)
    status, listed = await w.admin("GET", "/api/v1/users")
    assert [u["name"] for u in listed] == [w.b.name]


async def test_occi_os_tpl_of_an_invisible_image_is_not_found(world: World) -> None:
    """GET on the os_tpl collection of A's private image must answer B as for no image at all.

    Fails today: the registry holds every image's os_tpl mixin, so B gets 200 (empty) for A's
    image and 404 for a missing one, and learns which image ids exist (fix: frontends/occi/
    mixins.py mixin_get checks the image's visibility; see the tenancy report).
    """
    mine = await world.b_occi.get(f"/mixin/os_tpl/{world.ami}/")
    missing = await world.b_occi.get("/mixin/os_tpl/ami-0123456789abcdef0/")
    assert missing.status == 404
    assert (mine.status, mine.text.replace(world.ami, "ID")) == (
        missing.status,
        missing.text.replace("ami-0123456789abcdef0", "ID"),
    )


def test_an_image_shared_with_my_group_is_executable_by_self(server: Server) -> None:
    """DescribeImages ExecutableUsers=self lists images shared with the caller's group.

    Fails today: broker/service/images.py describe() matches launch permissions granted to the
    caller's user id only, not to their group (see the tenancy report for the fix).
    """
    a, b = new_tenant(server, "a"), new_tenant(server, "b")
    ami = server.run(
        images.register(
            server.rt,
            caller_of(server, a),
            images.ImageSpec(name="shared", kind="kernel", kernel="/k"),
        )
    ).id
    b_group = caller_of(server, b).group_id
    ec2(server, a).modify_image_attribute(
        ImageId=ami, LaunchPermission={"Add": [{"Group": b_group}]}
    )
    found = ec2(server, b).describe_images(ExecutableUsers=["self"])["Images"]
    assert ami in [i["ImageId"] for i in found]


async def test_sharing_an_image_with_a_group_a_user_and_everyone(
    server: Server, http: aiohttp.ClientSession, admin_url: str
) -> None:
    a, b, c = (new_tenant(server, p) for p in ("a", "b", "c"))
    a_ec2, b_ec2, c_ec2 = ec2(server, a), ec2(server, b), ec2(server, c)
    b_group = caller_of(server, b).group_id
    ami = server.run(
        images.register(
            server.rt,
            caller_of(server, a),
            images.ImageSpec(name="shared", kind="kernel", kernel="/k"),
        )
    ).id
    assert_ec2_refused("before sharing", lambda: run_no_wait(b_ec2, ami))
    a_ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": b_group}]})
    perms = a_ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    assert perms["LaunchPermissions"] == [{"Group": b_group}]
    assert [i["ImageId"] for i in b_ec2.describe_images(ImageIds=[ami])["Images"]] == [ami]
    rid = run_instance(b_ec2, ami)
    assert rid.startswith("i-")
    # B may launch from it, not change or remove it, on EC2 and on the admin API
    for name, attempt in (
        (
            "ModifyImageAttribute",
            lambda: b_ec2.modify_image_attribute(
                ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]}
            ),
        ),
        ("DeregisterImage", lambda: b_ec2.deregister_image(ImageId=ami)),
        (
            "DescribeImageAttribute",
            lambda: b_ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission"),
        ),
    ):
        assert assert_ec2_refused(name, attempt) == "UnauthorizedOperation"
    b_token = token_of(server, b)
    headers = {"Authorization": f"Bearer {b_token}"}
    async with http.delete(f"{admin_url}/api/v1/images/{ami}", headers=headers) as resp:
        assert resp.status == 403
    async with http.get(f"{admin_url}/api/v1/images/{ami}", headers=headers) as resp:
        assert resp.status == 200
    # C is in neither: still refused; then shared with C alone by user id
    assert_ec2_refused("C before", lambda: run_no_wait(c_ec2, ami))
    a_ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": c.user_id}]})
    assert run_instance(c_ec2, ami).startswith("i-")
    # revoking the group's permission takes it away from B again
    a_ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Remove": [{"Group": b_group}]})
    assert_ec2_refused("B after revoke", lambda: run_no_wait(b_ec2, ami))
    # a public image is launchable by anyone, and changeable by its owner only
    d = new_tenant(server, "d")
    a_ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
    assert run_instance(ec2(server, d), ami).startswith("i-")
    assert run_instance(b_ec2, ami).startswith("i-")
    assert (
        assert_ec2_refused(
            "public deregister", lambda: ec2(server, d).deregister_image(ImageId=ami)
        )
        == "UnauthorizedOperation"
    )
    # a public image an operator registered: every tenant launches it over OCCI too
    occi = Client(server, http, d.basic)
    reply = await occi.post("/compute/", compute_body(server))
    assert reply.status == 201, reply.text


async def test_roles_group_admin_and_admin(
    server: Server, http: aiohttp.ClientSession, admin_url: str
) -> None:
    team = f"team{uuid.uuid4().hex[:6]}"
    server.run(groups.create_group(server.rt, SYSTEM, team))
    u, g, v = (new_tenant(server, p) for p in ("u", "g", "v"))
    for t in (u, g):
        server.run(groups.set_user_group(server.rt, SYSTEM, t.name, team))
    server.run(groups.set_user_role(server.rt, SYSTEM, g.name, "groupadmin"))
    u_rid = run_instance(ec2(server, u), server.image_id)
    v_rid = run_instance(ec2(server, v), server.image_id)
    boss = ec2(server, g)
    seen = {
        i["InstanceId"] for r in boss.describe_instances()["Reservations"] for i in r["Instances"]
    }
    assert u_rid in seen and v_rid not in seen
    assert_ec2_refused("other group's", lambda: boss.stop_instances(InstanceIds=[v_rid]))
    assert_ec2_refused("other group's", lambda: boss.describe_instances(InstanceIds=[v_rid]))
    boss.stop_instances(InstanceIds=[u_rid])
    wait_for(
        "stopped by the group admin",
        lambda: (
            ec2(server, u).describe_instances(InstanceIds=[u_rid])["Reservations"][0]["Instances"][
                0
            ]["State"]["Name"]
            == "stopped"
        ),
    )
    # the same over the admin API and OCCI
    headers = {"Authorization": f"Bearer {token_of(server, g)}"}
    async with http.get(f"{admin_url}/api/v1/instances", headers=headers) as resp:
        listed = {i["id"] for i in (await resp.json())["instances"]}
    assert u_rid in listed and v_rid not in listed
    async with http.get(f"{admin_url}/api/v1/instances/{v_rid}", headers=headers) as resp:
        assert resp.status == 404
    g_occi = Client(server, http, g.basic)
    assert (await g_occi.get(f"/compute/{u_rid}")).status == 200
    assert (await g_occi.get(f"/compute/{v_rid}")).status == 404
    # a plain member of the team sees only their own
    u_seen = str(ec2(server, u).describe_instances())
    w_tenant = new_tenant(server, "w")
    server.run(groups.set_user_group(server.rt, SYSTEM, w_tenant.name, team))
    w_rid = run_instance(ec2(server, w_tenant), server.image_id)
    assert w_rid not in str(ec2(server, u).describe_instances()) and u_rid in u_seen
    # an admin sees and acts on everything
    root = new_tenant(server, "root", role="admin")
    everything = str(ec2(server, root).describe_instances())
    assert u_rid in everything and v_rid in everything and w_rid in everything
    ec2(server, root).reboot_instances(InstanceIds=[v_rid])


QUOTA_CASES = [
    ("instances", "InstanceLimitExceeded"),
    ("volumes", "VolumeLimitExceeded"),
    ("volume_gb", "VolumeLimitExceeded"),
    ("addresses", "AddressLimitExceeded"),
]


@pytest.mark.parametrize(("resource", "code"), QUOTA_CASES)
def test_quota_errors_carry_ec2_codes(server: Server, resource: str, code: str) -> None:
    """An exceeded quota is refused with EC2's own limit code, and nothing is made.

    The volumes, volume_gb and addresses cases fail today: only instances are admitted against
    quotas (broker/service/volumes.py and addresses.py never call quotas.admit; see the report).
    """
    from broker.service import quotas

    t = new_tenant(server, "q")
    server.run(quotas.set_quota(server.rt, SYSTEM, t.name, resource, 0))
    cli = ec2(server, t)
    attempt = {
        "instances": lambda: run_no_wait(cli, server.image_id),
        "volumes": lambda: cli.create_volume(AvailabilityZone=ZONE, Size=1),
        "volume_gb": lambda: cli.create_volume(AvailabilityZone=ZONE, Size=1),
        "addresses": lambda: cli.allocate_address(Domain="vpc"),
    }[resource]
    try:
        attempt()
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == code
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    else:
        raise AssertionError(f"{resource} was allowed over its quota of 0")
    used = {q.resource: q.used for q in server.run(quotas.show(server.rt, SYSTEM, t.name))}
    assert used[resource] == 0


def test_image_quota_is_enforced(server: Server) -> None:
    """Fails today: broker/service/images.py register() never calls quotas.admit."""
    from broker.errors import QuotaExceeded
    from broker.service import quotas

    t = new_tenant(server, "q")
    server.run(quotas.set_quota(server.rt, SYSTEM, t.name, "images", 0))
    spec = images.ImageSpec(name="one-too-many", kind="kernel", kernel="/k")
    with pytest.raises(QuotaExceeded):
        server.run(images.register(server.rt, caller_of(server, t), spec))


async def test_quota_exceeded_is_403_with_a_reason_on_occi(
    server: Server, http: aiohttp.ClientSession
) -> None:
    from broker.service import quotas

    t = new_tenant(server, "q")
    await server.call(quotas.set_quota(server.rt, SYSTEM, t.name, "instances", 0))
    reply = await Client(server, http, t.basic).post("/compute/", compute_body(server))
    assert reply.status == 403 and "quota" in reply.text and len(reply.text) < 600


async def test_expired_and_tampered_tokens_on_occi(
    server: Server, http: aiohttp.ClientSession
) -> None:
    import datetime as dt

    t = new_tenant(server, "tok")
    good = server.run(users.issue_token(server.rt, SYSTEM, t.name))
    expired = server.run(users.issue_token(server.rt, SYSTEM, t.name, ttl=dt.timedelta(seconds=-1)))
    occi = Client(server, http, None)
    ok = await occi.get("/compute/", headers={"X-Auth-Token": good})
    assert ok.status == 200
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for token in (expired, tampered, good + "x", good.upper(), "x" * 600):
        reply = await occi.get("/compute/", headers={"X-Auth-Token": token})
        assert reply.status == 401, token
        assert reply.headers["WWW-Authenticate"].startswith("Basic")
    # a tampered Basic secret, too
    bad = Tenant(t.user_id, t.name, t.access_key, t.secret_key[:-1] + "!")
    assert (await Client(server, http, bad.basic).get("/compute/")).status == 401
    await asyncio.sleep(0)
