"""Kept DescribeInstances answers: served again only while nothing was committed since, each
with its own request id, per caller, and never past a change made by another process."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest

from broker.auth import Caller
from broker.config import from_mapping
from broker.errors import ConfigError
from frontends.ec2.replies import Replies
from tests.frontends.ec2.conftest import Server, Tenant, client, new_tenant, signed

ALICE = Caller("u-a", "alice", "g-a")
BOB = Caller("u-b", "bob", "g-b")


def _body(request_id: str) -> bytes:
    return f"<R><requestId>{request_id}</requestId><x>1</x></R>".encode()


def test_a_kept_answer_is_served_at_its_version_only_with_the_new_request_id() -> None:
    kept = Replies(size=8)
    key = kept.key(ALICE, "h", {"Action": "DescribeInstances", "InstanceId.1": "i-1"})
    kept.keep(key, (1, 5), _body("first"), "first")
    assert kept.get(key, (1, 5), "second") == _body("second")
    assert kept.get(key, (1, 6), "third") is None  # something was committed since
    assert kept.get(key, (2, 5), "third") is None  # another read connection counts anew


def test_the_key_is_the_caller_and_the_question_not_the_signature() -> None:
    kept = Replies()
    asked = {"Action": "DescribeInstances", "InstanceId.1": "i-1"}
    one = kept.key(ALICE, "h", {**asked, "X-Amz-Signature": "aa", "X-Amz-Date": "d1"})
    two = kept.key(ALICE, "h", {**asked, "X-Amz-Signature": "bb", "X-Amz-Date": "d2"})
    assert one == two == kept.key(ALICE, "h", asked)  # signed in a header: nothing to leave out
    assert kept.key(BOB, "h", asked) != kept.key(ALICE, "h", asked)
    assert kept.key(ALICE, "h", {**asked, "InstanceId.1": "i-2"}) != kept.key(ALICE, "h", asked)
    assert kept.key(ALICE, "other", asked) != kept.key(ALICE, "h", asked)


def test_an_answer_without_its_request_id_once_is_not_kept_and_the_cache_is_bounded() -> None:
    kept = Replies(size=2)
    key = kept.key(ALICE, "h", {"Action": "DescribeInstances"})
    kept.keep(key, (1, 1), b"<R>no id here</R>", "rid")
    kept.keep(key, (1, 1), b"<R>rid rid</R>", "rid")
    assert len(kept) == 0
    for n in range(5):
        kept.keep(kept.key(ALICE, "h", {"N": str(n)}), (1, 1), _body(f"r{n}"), f"r{n}")
    assert len(kept) == 2


def _describe(server: Server, tenant: Tenant, rid: str) -> tuple[str, str]:
    reply = signed(
        server,
        tenant,
        {"Action": "DescribeInstances", "Version": "2016-11-15", "InstanceId.1": rid},
    )
    assert reply.status == 200, reply.body
    text = reply.body.decode()
    request_id = re.search(r"<requestId>([^<]+)</requestId>", text)
    assert request_id is not None
    return request_id.group(1), text.replace(request_id.group(1), "")


def test_describe_again_reads_the_same_with_a_new_id_and_sees_a_change_from_elsewhere(
    server: Server, alice: Tenant
) -> None:
    ec2: Any = client(server, alice)
    rid = ec2.run_instances(
        ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(
        InstanceIds=[rid], WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    id1, first = _describe(server, alice, rid)
    id2, second = _describe(server, alice, rid)
    assert id1 != id2 and first == second and "<name>running</name>" in first

    # another connection (as another process would) changes the row behind the server's back
    with sqlite3.connect(server.rt.config.database_url.split("///", 1)[1]) as db:
        db.execute("UPDATE instances SET state_reason = 'changed elsewhere' WHERE id = ?", (rid,))
    _, third = _describe(server, alice, rid)
    assert "<reason>changed elsewhere</reason>" in third

    ec2.stop_instances(InstanceIds=[rid])
    _, fourth = _describe(server, alice, rid)
    assert "<name>running</name>" not in fourth


def test_another_tenant_never_gets_a_kept_answer(server: Server, alice: Tenant) -> None:
    ec2: Any = client(server, alice)
    rid = ec2.run_instances(
        ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    _describe(server, alice, rid)
    _describe(server, alice, rid)
    mallory = new_tenant(server, "m")
    reply = signed(
        server,
        mallory,
        {"Action": "DescribeInstances", "Version": "2016-11-15", "InstanceId.1": rid},
    )
    assert reply.status == 400 and reply.code == "InvalidInstanceID.NotFound"


def test_kept_answers_is_a_size_and_zero_keeps_none() -> None:
    with pytest.raises(ConfigError, match="kept_answers"):
        from_mapping({"broker": {"kept_answers": -1}}, env={})
    cfg = from_mapping({"broker": {"kept_answers": 0}}, env={})
    kept = Replies(cfg.broker.kept_answers)
    key = kept.key(ALICE, "h", {"Action": "DescribeInstances"})
    kept.keep(key, (1, 1), _body("rid"), "rid")
    assert len(kept) == 0 and kept.get(key, (1, 1), "x") is None
