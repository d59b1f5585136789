"""Parsing, rendering and the error table, and replays of captured boto3/euca2ools traffic."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from broker import errors
from broker.states import State
from frontends.ec2 import render
from frontends.ec2.actions import ACTIONS
from frontends.ec2.errors import WireError, classify
from frontends.ec2.protocol import Params, decode_pairs, version_of
from frontends.ec2.signing import SignatureError
from frontends.ec2.states import BY_NAME, EC2_STATE
from tests.frontends.ec2.conftest import Server, send

AUTH_CODES = {
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "AuthFailure",
    "SignatureDoesNotMatch",
    "RequestExpired",
}


def _fixtures() -> Path:
    for candidate in (os.environ.get("EC2_WIRE_FIXTURES", ""), "/work/shared/fixtures/ec2-wire"):
        if candidate and (Path(candidate) / "boto3.json").is_file():
            return Path(candidate)
    raise FileNotFoundError("ec2-wire fixtures not found; set EC2_WIRE_FIXTURES")


RECORDS = [
    {**rec, "id": f"{client}-{n:02d}-{rec['action']}-{rec['signature_version']}"}
    for client in ("boto3", "euca2ools")
    for n, rec in enumerate(json.loads((_fixtures() / f"{client}.json").read_text()))
]


def _signed_at(rec: dict[str, Any]) -> dt.datetime:
    stamp = rec["signed_at"]
    if rec["signature_version"] == "v4":
        return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    value = dt.datetime.fromisoformat(stamp)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _replay(server: Server, rec: dict[str, Any], body: bytes | None = None) -> Any:
    server.replay_now = _signed_at(rec) + dt.timedelta(seconds=1)
    raw = rec["body"].encode("utf-8") if body is None else body
    headers = [(n, v) for n, v in rec["headers"]]
    return send(server.replay_endpoint, rec["method"], rec["path"], headers, raw)


@pytest.mark.parametrize("rec", RECORDS, ids=[r["id"] for r in RECORDS])
def test_captured_requests_authenticate_and_parse(server: Server, rec: dict[str, Any]) -> None:
    assert list(decode_pairs(rec["body"].encode("utf-8")).items()) == [
        (n, v) for n, v in rec["params"]
    ]
    reply = _replay(server, rec)
    assert reply.code not in AUTH_CODES, reply.body
    assert reply.status < 500, reply.body
    if rec["action"] in ACTIONS:
        assert reply.code != "InvalidAction"
        ns = "http://ec2.amazonaws.com/doc/" + dict(rec["params"])["Version"] + "/"
        if reply.status == 200:
            assert etree.fromstring(reply.body).tag == f"{{{ns}}}{rec['action']}Response"
    else:
        assert (reply.code, reply.status) == ("InvalidAction", 400)


@pytest.mark.parametrize("rec", RECORDS, ids=[r["id"] for r in RECORDS])
def test_tampered_copies_are_refused(server: Server, rec: dict[str, Any]) -> None:
    raw = rec["body"].encode("utf-8")
    tampered = raw.replace(rec["action"].encode(), rec["action"][:-1].encode() + b"X", 1)
    reply = _replay(server, rec, tampered)
    assert reply.code == "SignatureDoesNotMatch", reply.body
    assert reply.status == 403


def test_a_replay_outside_the_window_is_expired(server: Server) -> None:
    rec = RECORDS[0]
    server.replay_now = _signed_at(rec) + dt.timedelta(minutes=16)
    reply = send(
        server.replay_endpoint,
        rec["method"],
        rec["path"],
        [(n, v) for n, v in rec["headers"]],
        rec["body"].encode(),
    )
    assert (reply.code, reply.status) == ("RequestExpired", 400)


# --- parameters ------------------------------------------------------------------------------


def test_decoding_refuses_what_it_cannot_read() -> None:
    assert decode_pairs(b"A=1&B=a+b%20c&C=&D") == {"A": "1", "B": "a b c", "C": "", "D": ""}
    assert decode_pairs(b"K=%E2%82%AC") == {"K": "€"}
    assert decode_pairs("K=€&L=1".encode()) == {"K": "€", "L": "1"}  # nothing escaped
    for bad in (b"A=%ff", b"\xff=1", b"A=\xff", b"A=1&A=2", b"=1", b"x" * 300 + b"=1"):
        with pytest.raises(WireError) as exc:
            decode_pairs(bad)
        assert exc.value.code == "InvalidParameterValue"


def test_flattened_shapes() -> None:
    p = Params(
        {
            "InstanceId.2": "i-2",
            "InstanceId.1": "i-1",
            "InstanceId.10": "i-10",
            "Filter.1.Name": "tag:Name",
            "Filter.1.Value.1": "a",
            "Filter.1.Value.2": "b",
            "Filter.2.Name": "instance-type",
            "Filter.2.Value.1": "t3.nano",
            "TagSpecification.1.ResourceType": "instance",
            "TagSpecification.1.Tag.1.Key": "Name",
            "TagSpecification.1.Tag.1.Value": "web",
            "TagSpecification.1.Tag.2.Key": "empty",
            "BlockDeviceMapping.1.DeviceName": "/dev/sdb",
            "BlockDeviceMapping.1.Ebs.VolumeSize": "20",
            "MaxResults": "50",
            "DryRun": "true",
            "UserData": "aGk=",
        }
    )
    assert p.listing("InstanceId") == ["i-1", "i-2", "i-10"]
    assert p.filters() == [("tag:Name", ["a", "b"]), ("instance-type", ["t3.nano"])]
    assert p.tag_specifications() == [("instance", {"Name": "web", "empty": ""})]
    assert p.members("BlockDeviceMapping") == [
        (1, {"DeviceName": "/dev/sdb", "Ebs.VolumeSize": "20"})
    ]
    assert p.page() == (50, "")
    assert p.boolean("DryRun") is True
    assert p.base64("UserData") == b"hi"
    for params, call in (
        ({"InstanceId.0": "x"}, lambda q: q.listing("InstanceId")),
        ({"InstanceId.a": "x"}, lambda q: q.listing("InstanceId")),
        ({"Filter.1.Value.1": "x"}, lambda q: q.filters()),
        ({"Filter.1.Name": "x"}, lambda q: q.filters()),
        ({"MaxResults": "4"}, lambda q: q.page()),
        ({"MaxResults": "lots"}, lambda q: q.page()),
        ({"DryRun": "yes"}, lambda q: q.boolean("DryRun")),
        ({"UserData": "!!"}, lambda q: q.base64("UserData")),
        ({"TagSpecification.1.Tag.1.Key": "k"}, lambda q: q.tag_specifications()),
    ):
        with pytest.raises(WireError):
            call(Params(params))
    with pytest.raises(WireError) as exc:
        Params({"InstanceId.1": "i-1", "MaxResults": "5"}).page(ids=True)
    assert exc.value.code == "InvalidParameterCombination"
    with pytest.raises(WireError) as exc:
        Params({}).required("ImageId")
    assert exc.value.code == "MissingParameter"


def test_the_version_echoed_is_a_plain_date() -> None:
    """It goes into the reply's namespace as sent: nothing but ASCII YYYY-MM-DD passes."""
    assert version_of(Params({"Version": "2016-11-15"})) == "2016-11-15"
    assert version_of(Params({})) == "2016-11-15"
    for bad in ("2016-11-15\n", "\uff12\uff10\uff11\uff16-11-15", "2016-11-15x", "16-11-15"):
        with pytest.raises(WireError) as exc:
            version_of(Params({"Version": bad}))
        assert exc.value.code == "InvalidParameterValue"


# --- rendering, errors and states -----------------------------------------------------------


def test_envelope_and_times() -> None:
    root = render.envelope("DescribeInstancesResponse"[:-8], "2015-10-01", "req-1")
    render.text(root, "flag", True)
    render.text(root, "bad", "a\x00b<c>")
    doc = etree.fromstring(render.serialize(root))
    assert doc.tag == "{http://ec2.amazonaws.com/doc/2015-10-01/}DescribeInstancesResponse"
    assert [c.text for c in doc] == ["req-1", "true", "ab<c>"]
    when = dt.datetime(2026, 11, 25, 13, 48, 21, 177583, tzinfo=dt.UTC)
    assert render.timestamp(when) == "2026-11-25T13:48:21.177Z"
    err = etree.fromstring(render.error("InvalidAction", "no", "req-2"))
    assert err.findtext("Errors/Error/Code") == "InvalidAction"
    assert err.findtext("RequestID") == "req-2"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.NotFound("x", resource="instance"), 400, "InvalidInstanceID.NotFound"),
        (errors.NotFound("x", resource="image"), 400, "InvalidAMIID.NotFound"),
        (errors.NotFound("x", resource="key_pair"), 400, "InvalidKeyPair.NotFound"),
        (errors.NotFound("x", resource="security_group"), 400, "InvalidGroup.NotFound"),
        (
            errors.InvalidRequest("x", resource="instance", field="malformed"),
            400,
            "InvalidInstanceID.Malformed",
        ),
        (errors.InvalidState("x"), 400, "IncorrectInstanceState"),
        (errors.InvalidRequest("x"), 400, "InvalidParameterValue"),
        (errors.Forbidden("x"), 403, "UnauthorizedOperation"),
        (errors.Unauthenticated("x"), 401, "AuthFailure"),
        (SignatureError("x", code="RequestExpired"), 400, "RequestExpired"),
        (SignatureError("x", code="SignatureDoesNotMatch"), 403, "SignatureDoesNotMatch"),
        (errors.QuotaExceeded("x"), 400, "InstanceLimitExceeded"),
        (errors.NoCapacity("x"), 500, "InsufficientInstanceCapacity"),
        (errors.Unsupported("x"), 400, "UnsupportedOperation"),
        (errors.BackendUnavailable("x"), 503, "Unavailable"),
        (RuntimeError("secret stuff"), 500, "InternalError"),
    ],
)
def test_error_table(exc: BaseException, status: int, code: str) -> None:
    got = classify(exc)
    assert got[:2] == (status, code)
    assert "secret" not in got[2]


def test_state_table_covers_every_state() -> None:
    assert set(EC2_STATE) == set(State)
    assert EC2_STATE[State.RUNNING] == ("running", 16)
    assert EC2_STATE[State.POWEROFF] == ("stopped", 80)
    assert EC2_STATE[State.SHUTDOWN] == ("stopping", 64)
    assert EC2_STATE[State.EPILOG] == ("shutting-down", 32)
    assert EC2_STATE[State.DONE] == ("terminated", 48)
    assert State.PENDING in BY_NAME["pending"]
