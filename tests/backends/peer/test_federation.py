"""Federation between real cloudbroker processes on loopback: placement on a peer, the
lifecycle through the linking site, hop limits in a three-site chain, refused credentials, and
kill -9 of the peer mid-launch and while instances run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from backends.peer import wire
from backends.vmware import vcsim
from tests.backends.peer.conftest import Site, instances, states, wait_for

TAG = f"tag:{wire.TAG_ORIGIN_INSTANCE}"


def test_hops_from_tags_reads_the_marks_and_never_trusts_a_broken_one() -> None:
    assert wire.hops_from_tags({}) == (0, "")
    assert wire.hops_from_tags({wire.TAG_HOPS: "1", wire.TAG_ORIGIN_SITE: "a"}) == (1, "a")
    assert wire.hops_from_tags({wire.TAG_HOPS: "nonsense"}) == (1, "")
    assert wire.hops_from_tags({wire.TAG_HOPS: "-5"})[0] >= 1
    assert wire.hops_from_tags({wire.TAG_ORIGIN_SITE: "a"}) == (1, "a")
    tags = wire.launch_tags({"Name": "x", wire.TAG_HOPS: "0"}, instance_id="i-1", site="a", hops=0)
    assert {t["Key"]: t["Value"] for t in tags} == {
        "Name": "x",
        wire.TAG_ORIGIN_INSTANCE: "i-1",
        wire.TAG_ORIGIN_SITE: "a",
        wire.TAG_HOPS: "1",
    }
    assert wire.refuses_forward(1, 1, "", "b")
    assert wire.refuses_forward(0, 2, "b", "b")
    assert not wire.refuses_forward(0, 1, "c", "b")
    assert wire.client_token("a", "i-1") == wire.client_token("a", "i-1")
    assert len(wire.client_token("a" * 200, "i-0123456789abcdef0")) <= 64


def test_a_link_with_wrong_credentials_is_refused_with_the_peers_error(
    sites: Callable[..., Site],
) -> None:
    a, b = sites("a"), sites("b")
    bad = a.cli(
        "peer",
        "add",
        "site-b",
        "--url",
        b.ec2_url,
        "--admin-url",
        b.admin_url,
        "--access-key",
        "AKIANOSUCHKEY0000000",
        "--secret",
        "wrong",
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "AuthFailure" in bad.stderr, bad.stderr
    assert a.json("peer", "list") == []
    key = b.user("fed-a")
    wrong_secret = a.cli(
        "peer", "add", "site-b", "--url", b.ec2_url, "--admin-url", b.admin_url,
        "--access-key", key[0], "--secret", "not-the-secret", check=False,
    )  # fmt: skip
    assert wrong_secret.returncode == 1 and "AuthFailure" in wrong_secret.stderr


def test_full_site_places_on_its_peer_and_drives_the_lifecycle_there(
    sites: Callable[..., Site],
) -> None:
    a, b = sites("a"), sites("b")
    fed = b.user("fed-a")
    a.link(b, fed)
    (link,) = a.json("peer", "list")
    assert link["region"] == b.region and link["site"] == "site-a"
    a.cli("host", "disable", "local-simulated")  # site A is full
    a.burst_to("site-b")
    alice = a.ec2(a.user("alice"))
    got = alice.run_instances(ImageId=a.image(), InstanceType="t3.micro", MinCount=2, MaxCount=2)
    ids = sorted(i["InstanceId"] for i in got["Instances"])
    wait_for(lambda: set(states(alice, InstanceIds=ids).values()) == {"running"}, what="running")
    assert a.json("explain", ids[0])["target"] == "site-b"

    # B's own API, as A's federation user: the same instances, tagged with A's ids
    on_b = b.ec2(fed)
    remote = {_tag(i, wire.TAG_ORIGIN_INSTANCE): i for i in instances(on_b)}
    assert sorted(remote) == ids
    assert {i["State"]["Name"] for i in remote.values()} == {"running"}
    assert {_tag(i, wire.TAG_ORIGIN_SITE) for i in remote.values()} == {"site-a"}
    owner = b.json("user", "show", "fed-a")["id"]
    on_b_admin = b.json("instance", "list")["instances"]
    assert {i["owner_id"] for i in on_b_admin} == {owner}
    assert a.json("peer", "show", "site-b")["instances_by_state"] == {"running": 2}

    # stop / start / terminate through A act on B
    alice.stop_instances(InstanceIds=[ids[0]])
    wait_for(lambda: states(alice, InstanceIds=[ids[0]])[ids[0]] == "stopped", what="stop at A")
    ref = remote[ids[0]]["InstanceId"]
    assert states(on_b, InstanceIds=[ref])[ref] == "stopped"
    alice.start_instances(InstanceIds=[ids[0]])
    wait_for(lambda: states(alice, InstanceIds=[ids[0]])[ids[0]] == "running", what="start at A")
    assert states(on_b, InstanceIds=[ref])[ref] == "running"
    console = alice.get_console_output(InstanceId=ids[0])
    assert console["InstanceId"] == ids[0]

    refused = a.cli("peer", "remove", "site-b", check=False)
    assert refused.returncode == 1 and "still runs 2" in refused.stderr

    alice.terminate_instances(InstanceIds=ids)
    wait_for(
        lambda: set(states(alice, InstanceIds=ids).values()) == {"terminated"}, what="terminated"
    )
    wait_for(lambda: set(states(on_b).values()) <= {"terminated"}, what="terminated on B")
    a.cli("peer", "remove", "site-b")
    assert a.json("peer", "list") == []


def _tag(inst: dict[str, object], key: str) -> str:
    tags = inst.get("Tags") or []
    assert isinstance(tags, list)
    return next(str(t["Value"]) for t in tags if t["Key"] == key)


def test_a_three_site_chain_never_loops(sites: Callable[..., Site]) -> None:
    a, b, c = sites("a"), sites("b"), sites("c")
    # A -> B -> C -> A, each site forwarding everything to its next one when hops allow
    for here, there in ((a, b), (b, c), (c, a)):
        key = there.user(f"fed-{here.name}")
        here.link(there, key)
        here.burst_to(f"site-{there.name}", always=True)
    alice = a.ec2(a.user("alice"))
    (made,) = alice.run_instances(
        ImageId=a.image(), InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"]
    rid = made["InstanceId"]
    at_b = wait_for(lambda: b.json("instance", "list")["instances"], what="arrival at B")
    assert len(at_b) == 1
    explained = wait_for(
        lambda: b.json("explain", at_b[0]["id"]).get("considered"), what="B's placement"
    )
    assert "site-c" in explained and "hops" in explained["site-c"], explained
    assert at_b[0]["state"] == "pending"  # B may not run it locally, nor forward it
    time.sleep(3)  # several scheduler cycles on every site
    assert len(b.json("instance", "list")["instances"]) == 1
    assert c.json("instance", "list")["instances"] == []
    assert [i["id"] for i in a.json("instance", "list")["instances"]] == [rid]
    # a launch made at B goes one hop to C and stops there, never back to A
    bob = b.ec2(b.user("bob"))
    bob.run_instances(ImageId=b.image(), InstanceType="t3.micro", MinCount=1, MaxCount=1)
    at_c = wait_for(lambda: c.json("instance", "list")["instances"], what="arrival at C")
    explained = wait_for(
        lambda: c.json("explain", at_c[0]["id"]).get("considered"), what="C's placement"
    )
    assert "hops" in explained["site-a"], explained
    time.sleep(3)
    assert len(c.json("instance", "list")["instances"]) == 1
    assert [i["id"] for i in a.json("instance", "list")["instances"]] == [rid]


def test_kill_9_of_the_peer_mid_launch_and_while_running(
    sites: Callable[..., Site], tmp_path: Path
) -> None:
    # B runs its instances on a vSphere simulator, a process of its own: what B started there
    # outlives B's process, as VMs outlive a crashed broker on real hosts
    vcsim.build()  # from Debian's packages; a failed build fails the test
    sim = vcsim.start("esx", vms=1, log=tmp_path / "vcsim.log")
    try:
        a, b = sites("a"), sites("b")
        tiny = b.vsphere_host(sim.url, "ha-host_VM0")
        fed = b.user("fed-a")
        a.link(b, fed)
        a.cli("host", "disable", "local-simulated")
        a.burst_to("site-b", image=tiny)
        alice = a.ec2(a.user("alice"))
        image = a.image()

        # kill -9 mid-launch: B dies as A's launches reach it
        got = alice.run_instances(ImageId=image, InstanceType="t3.nano", MinCount=6, MaxCount=6)
        first = sorted(i["InstanceId"] for i in got["Instances"])
        wait_for(lambda: b.json("instance", "list")["instances"], every=0.05, what="launch on B")
        b.kill()
        wait_for(lambda: a.json("peer", "list")[0]["state"] == "error", what="B marked down")
        b.start()
        _reconciled(a, b, fed, first)
        assert {a.json("instance", "show", i)["state"] for i in first} == {"running"}

        # kill -9 while they run: unknown at A, never terminated; operations fail fast
        got = alice.run_instances(ImageId=image, InstanceType="t3.nano", MinCount=3, MaxCount=3)
        ids = sorted(i["InstanceId"] for i in got["Instances"])
        wait_for(lambda: set(states(alice, InstanceIds=ids).values()) == {"running"}, what="run")
        b.kill()
        wait_for(lambda: a.json("peer", "list")[0]["state"] == "error", what="B marked down")
        wait_for(
            lambda: {a.json("instance", "show", i)["state"] for i in ids} == {"unknown"},
            what="unknown at A",
        )
        started = time.monotonic()
        with pytest.raises(ClientError) as refused:
            alice.stop_instances(InstanceIds=[ids[0]])
        assert time.monotonic() - started < 5
        assert "unknown" in str(refused.value)
        b.start()
        _reconciled(a, b, fed, first + ids)
        # nothing lost: every instance still runs, at A as at B and on the simulator
        assert {a.json("instance", "show", i)["state"] for i in first + ids} == {"running"}
        assert set(states(alice, InstanceIds=first + ids).values()) == {"running"}
    finally:
        sim.stop()


def _reconciled(a: Site, b: Site, fed: tuple[str, str], ids: list[str]) -> None:
    """After B returns: B holds exactly one instance per id of A (none duplicated, none
    missing) and A shows, for each, the state B shows, never a guess."""
    wait_for(lambda: a.json("peer", "list")[0]["state"] == "enabled", what="B back")

    def agree() -> bool:
        on_b = {
            _tag(i, wire.TAG_ORIGIN_INSTANCE): i["State"]["Name"] for i in instances(b.ec2(fed))
        }
        at_a = {i: a.json("instance", "show", i)["state"] for i in ids}
        if any(s in ("pending", "prolog", "boot", "unknown") for s in at_a.values()):
            return False
        shown = {"running": "running", "failed": "terminated", "done": "terminated"}
        return sorted(on_b) == sorted(ids) and all(shown.get(at_a[i]) == on_b[i] for i in ids)

    wait_for(agree, timeout=120, every=0.5, what="A agrees with B")
    seen = [_tag(i, wire.TAG_ORIGIN_INSTANCE) for i in instances(b.ec2(fed))]
    assert sorted(seen) == sorted(ids), seen
