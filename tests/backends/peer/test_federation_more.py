"""Federation seen from more sides, between real cloudbroker processes on loopback: an
instance on the peer through the linking site's OCCI endpoint, the regions a site lists, its
console output and addresses, and the operator's ``peer test`` and ``peer remove --force``."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.peer import wire
from tests.backends.peer.conftest import Site, instances, states, wait_for

INFRA = "http://schemas.ogf.org/occi/infrastructure#"
OS_SCHEME = "http://schemas.cloudbroker.org/occi/templates/os#"
RES_SCHEME = "http://schemas.cloudbroker.org/occi/templates/resource#"
ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Any
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def occi(
    site: Site,
    key: tuple[str, str],
    method: str,
    path: str,
    body: str | None = None,
    accept: str = "text/plain",
) -> Reply:
    """One raw HTTP request to ``site``'s OCCI endpoint, as the user whose key is ``key``."""
    token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
    req = urllib.request.Request(site.occi_url + path, method=method)
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Accept", accept)
    data = None
    if body is not None:
        req.add_header("Content-Type", "text/plain")
        data = body.encode()
    try:
        with urllib.request.urlopen(req, data, timeout=60) as resp:
            return Reply(resp.status, resp.headers, resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read().decode())


def occi_attribute(site: Site, key: tuple[str, str], rid: str, name: str) -> str:
    got = occi(site, key, "GET", f"/compute/{rid}", accept="application/occi+json")
    assert got.status == 200, got.text
    return str(got.json()["attributes"][name])


def occi_state(site: Site, key: tuple[str, str], rid: str) -> str:
    return occi_attribute(site, key, rid, "occi.compute.state")


def _tag(inst: dict[str, Any], key: str) -> str:
    return next(str(t["Value"]) for t in inst.get("Tags") or [] if t["Key"] == key)


def on_peer(b: Site, fed: tuple[str, str]) -> dict[str, dict[str, Any]]:
    """A's instance id -> the instance B's own API shows A's federation user."""
    return {_tag(i, wire.TAG_ORIGIN_INSTANCE): i for i in instances(b.ec2(fed))}


def linked(sites: Callable[..., Site]) -> tuple[Site, Site, tuple[str, str]]:
    """Sites A and B, A full and linked to B as B's user ``fed-a``, bursting there."""
    a, b = sites("a"), sites("b")
    fed = b.user("fed-a")
    a.link(b, fed)
    a.cli("host", "disable", "local-simulated")
    a.burst_to("site-b")
    return a, b, fed


def test_an_instance_on_the_peer_is_listed_and_stopped_through_occi(
    sites: Callable[..., Site],
) -> None:
    a, b, fed = linked(sites)
    key = a.user("alice")
    body = (
        f'Category: compute; scheme="{INFRA}"; class="kind"\n'
        f'Category: {a.image()}; scheme="{OS_SCHEME}"; class="mixin"\n'
        f'Category: t3.micro; scheme="{RES_SCHEME}"; class="mixin"\n'
        'X-OCCI-Attribute: occi.core.title="via-occi"\n'
    )
    made = occi(a, key, "POST", "/compute/", body)
    assert made.status == 201, made.text
    location = made.headers["Location"]
    rid = location.rsplit("/", 1)[1]
    wait_for(lambda: occi_state(a, key, rid) == "active", what="active through A's OCCI")
    assert a.json("explain", rid)["target"] == "site-b"
    # OCCI's active covers booting too: wait until A's monitor has seen it running on B
    wait_for(
        lambda: "site-b" in occi_attribute(a, key, rid, "occi.compute.state.message"),
        what="A's monitor sees it running on site-b",
    )

    # it runs on B, as an instance of A's federation user carrying A's id
    remote = on_peer(b, fed)
    assert list(remote) == [rid]
    ref = remote[rid]["InstanceId"]
    assert ref != rid and remote[rid]["State"]["Name"] == "running"

    # A's OCCI collection lists it; its rendering says active, on the peer
    listed = occi(a, key, "GET", "/compute/", accept="text/uri-list")
    assert listed.status == 200, listed.text
    assert location in listed.text.split()
    doc = occi(a, key, "GET", location, accept="application/occi+json").json()
    assert doc["id"] == rid and doc["kind"] == INFRA + "compute"
    assert doc["attributes"]["occi.compute.state"] == "active"
    assert "site-b" in doc["attributes"]["occi.compute.state.message"]
    assert ACTION + "stop" in doc["actions"]
    (nic,) = doc["links"]
    assert nic["attributes"]["occi.networkinterface.address"] == remote[rid]["PrivateIpAddress"]
    # another user of A sees nothing of it
    other = a.user("mallory")
    assert location not in occi(a, other, "GET", "/compute/", accept="text/uri-list").text
    assert occi(a, other, "GET", location).status in (403, 404)

    # OCCI stop through A stops it on B; boto3 against A sees it stopped
    stop = occi(
        a, key, "POST", f"{location}?action=stop",
        f'Category: stop; scheme="{ACTION}"; class="action"\n',
    )  # fmt: skip
    assert stop.status == 200, stop.text
    alice = a.ec2(key)
    wait_for(lambda: states(alice, InstanceIds=[rid])[rid] == "stopped", what="stopped at A")
    assert states(b.ec2(fed), InstanceIds=[ref])[ref] == "stopped"
    assert occi_state(a, key, rid) == "inactive"


def test_describe_regions_lists_this_site_and_its_linked_peers(
    sites: Callable[..., Site],
) -> None:
    a, b, c = sites("a"), sites("b"), sites("c")
    alice = a.ec2(a.user("alice"))

    def regions(**kw: Any) -> dict[str, str]:
        got = alice.describe_regions(**kw)["Regions"]
        return {r["RegionName"]: r["Endpoint"] for r in got}

    alone = regions()
    assert list(alone) == ["a-1"]
    assert alone["a-1"].endswith(f"127.0.0.1:{a.ec2_port}")
    a.link(b, b.user("fed-a"))
    a.link(c, c.user("fed-a"))
    both = regions()
    assert sorted(both) == ["a-1", "b-1", "c-1"]  # each peer under the region it names
    assert both["b-1"].endswith(f"127.0.0.1:{b.ec2_port}")
    assert both["c-1"].endswith(f"127.0.0.1:{c.ec2_port}")
    assert list(regions(RegionNames=["c-1"])) == ["c-1"]
    named = regions(Filters=[{"Name": "region-name", "Values": ["a-1", "b-1"]}])
    assert sorted(named) == ["a-1", "b-1"]
    # a link is one-way: B lists only itself
    bob = b.ec2(b.user("bob"))
    assert [r["RegionName"] for r in bob.describe_regions()["Regions"]] == ["b-1"]

    a.cli("peer", "remove", "site-b")
    assert sorted(regions()) == ["a-1", "c-1"]
    a.cli("peer", "remove", "site-c")
    assert list(regions()) == ["a-1"]


def test_console_output_and_address_come_from_the_peer(sites: Callable[..., Site]) -> None:
    a, b, fed = linked(sites)
    # B already runs one instance of its own, so B's next address is not the first one of
    # the range: one that A picked itself would differ from B's
    bob = b.ec2(b.user("bob"))
    (own,) = bob.run_instances(ImageId=b.image(), InstanceType="t3.micro", MinCount=1, MaxCount=1)[
        "Instances"
    ]
    wait_for(lambda: states(bob)[own["InstanceId"]] == "running", what="bob's instance")
    alice = a.ec2(a.user("alice"))
    (made,) = alice.run_instances(
        ImageId=a.image(), InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"]
    rid = made["InstanceId"]
    wait_for(lambda: states(alice, InstanceIds=[rid])[rid] == "running", what="running at A")
    remote = on_peer(b, fed)[rid]
    ref = remote["InstanceId"]

    # the address: what B gave it, as A reports it
    b_ip = remote["PrivateIpAddress"]
    assert b_ip and b_ip != instances(bob, InstanceIds=[own["InstanceId"]])[0]["PrivateIpAddress"]
    (at_a,) = instances(alice, InstanceIds=[rid])
    assert at_a["PrivateIpAddress"] == b_ip
    assert [n["PrivateIpAddress"] for n in at_a["NetworkInterfaces"]] == [b_ip]

    # the console: B's simulated host prints to the domain's console file, as a booting VM
    # would; B's API shows it, and A shows the same text, read from B
    text = f"Booting {ref}\nlogin: marker-{secrets.token_hex(8)}\n"
    console = b.dir / "data" / "hosts" / "local-simulated" / "instances" / ref / "console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_text(text)
    # (botocore decodes the base64 both sites send)
    through_b = b.ec2(fed).get_console_output(InstanceId=ref)
    assert through_b["Output"] == text
    through_a = alice.get_console_output(InstanceId=rid)
    assert through_a["InstanceId"] == rid
    assert through_a["Output"] == through_b["Output"]


def test_peer_test_reports_a_reachable_peer_and_fails_for_a_dead_one(
    sites: Callable[..., Site],
) -> None:
    a, b = sites("a"), sites("b")
    a.link(b, b.user("fed-a"))
    wait_for(lambda: a.json("peer", "show", "site-b")["last_seen_at"], what="a first probe")
    report = a.json("peer", "test", "site-b")
    assert report["peer"] == "site-b" and report["reachable"] is True
    assert report["region"] == "b-1" and report["monitor_state"] == "enabled"
    assert report["advertised_cpu"] == 16 and report["advertised_memory_mb"] == 32 * 1024
    text = a.cli("peer", "test", "site-b")
    assert "reachable: True" in text.stdout and "region: b-1" in text.stdout

    not_peer = a.cli("peer", "test", "local-simulated", check=False)
    assert not_peer.returncode == 1 and "not a peer" in not_peer.stderr
    missing = a.cli("peer", "test", "site-zz", check=False)
    assert missing.returncode != 0 and "site-zz" in missing.stderr

    b.kill()
    dead = a.cli("--json", "peer", "test", "site-b", "--timeout", "2", check=False)
    assert dead.returncode == 1, dead.stderr
    down = json.loads(dead.stdout)
    assert down["reachable"] is False and down["error"]
    wait_for(lambda: a.json("peer", "list")[0]["state"] == "error", what="B marked down")
    b.start()
    wait_for(lambda: a.json("peer", "list")[0]["state"] == "enabled", what="B back")
    back = a.cli("--json", "peer", "test", "site-b", check=False)
    assert back.returncode == 0 and json.loads(back.stdout)["reachable"] is True


def test_peer_remove_force_asks_then_leaves_the_instances_to_the_peer(
    sites: Callable[..., Site],
) -> None:
    a, b, fed = linked(sites)
    alice = a.ec2(a.user("alice"))
    got = alice.run_instances(ImageId=a.image(), InstanceType="t3.micro", MinCount=2, MaxCount=2)
    ids = sorted(i["InstanceId"] for i in got["Instances"])
    wait_for(lambda: set(states(alice, InstanceIds=ids).values()) == {"running"}, what="running")

    refused = a.cli("peer", "remove", "site-b", check=False)
    assert refused.returncode == 1 and "still runs 2" in refused.stderr
    # --force shows what will be left and asks; "no" removes nothing
    declined = a.cli("peer", "remove", "site-b", "--force", input="n\n", check=False)
    assert declined.returncode == 1, declined.stdout
    assert "left running on peer site-b" in declined.stdout
    assert all(i in declined.stdout for i in ids)
    assert "Remove peer site-b and leave these 2 instance(s) on it?" in declined.stderr
    assert "nothing removed" in declined.stderr
    assert [p["name"] for p in a.json("peer", "list")] == ["site-b"]
    assert set(states(alice, InstanceIds=ids).values()) == {"running"}
    # no answer at all (stdin closed) removes nothing either
    closed = a.cli("peer", "remove", "site-b", "--force", check=False)
    assert closed.returncode != 0
    assert [p["name"] for p in a.json("peer", "list")] == ["site-b"]

    done = a.cli("--json", "peer", "remove", "site-b", "--force", input="y\n")
    assert json.loads(done.stdout) == {"removed": "site-b", "left_on_peer": ids}
    assert a.json("peer", "list") == []
    # A let them go (failed, "left on site-b"); B still runs them for A's federation user
    for rid in ids:
        shown = a.json("instance", "show", rid)
        assert shown["state"] == "failed" and "left on site-b" in shown["state_reason"]
    remote = on_peer(b, fed)
    assert sorted(remote) == ids
    assert {i["State"]["Name"] for i in remote.values()} == {"running"}
    assert [r["RegionName"] for r in alice.describe_regions()["Regions"]] == ["a-1"]
