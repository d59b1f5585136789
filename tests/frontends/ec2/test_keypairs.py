"""Key pairs through real boto3: create (private key once), import, describe, delete, filters,
DryRun, tenant isolation, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from broker.service.keypairs import imported_fingerprint
from tests.frontends.ec2.conftest import Server, Tenant, client, signed
from tests.frontends.ec2.test_instances import error_of


def _names(ec2: Any, **kwargs: Any) -> list[str]:
    return [k["KeyName"] for k in ec2.describe_key_pairs(**kwargs)["KeyPairs"]]


def test_create_describe_delete(ec2: Any) -> None:
    made = ec2.create_key_pair(
        KeyName="k1",
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "env", "Value": "t"}]}],
    )
    assert made["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert made["KeyPairId"].startswith("key-")
    assert len(made["KeyFingerprint"].split(":")) == 20
    assert made["Tags"] == [{"Key": "env", "Value": "t"}]
    ed = ec2.create_key_pair(KeyName="k2", KeyType="ed25519")
    assert "OPENSSH PRIVATE KEY" in ed["KeyMaterial"]

    (got,) = ec2.describe_key_pairs(KeyNames=["k1"], IncludePublicKey=True)["KeyPairs"]
    assert got["KeyPairId"] == made["KeyPairId"]
    assert got["KeyType"] == "rsa" and got["PublicKey"].startswith("ssh-rsa ")
    assert "KeyMaterial" not in got and got["CreateTime"].tzinfo is not None
    assert _names(ec2) == ["k1", "k2"]
    assert _names(ec2, KeyPairIds=[ed["KeyPairId"]]) == ["k2"]
    assert _names(ec2, Filters=[{"Name": "key-name", "Values": ["k2"]}]) == ["k2"]
    assert _names(ec2, Filters=[{"Name": "tag:env", "Values": ["t"]}]) == ["k1"]
    assert _names(ec2, Filters=[{"Name": "tag-key", "Values": ["env"]}]) == ["k1"]
    fp = made["KeyFingerprint"]
    assert _names(ec2, Filters=[{"Name": "fingerprint", "Values": [fp]}]) == ["k1"]
    pid = {"Name": "key-pair-id", "Values": [ed["KeyPairId"]]}
    assert _names(ec2, Filters=[pid]) == ["k2"]

    ec2.delete_key_pair(KeyName="k1")
    ec2.delete_key_pair(KeyName="k1")  # deleting a name that is gone succeeds, as in EC2
    ec2.delete_key_pair(KeyPairId=ed["KeyPairId"])
    assert _names(ec2) == []


def test_import_rsa_and_ed25519(ec2: Any) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    line = rsa_key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b" me@host"
    got = ec2.import_key_pair(KeyName="imp", PublicKeyMaterial=line)
    assert got["KeyFingerprint"] == imported_fingerprint(rsa_key)
    ed_key = ed25519.Ed25519PrivateKey.generate().public_key()
    ed_line = ed_key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    got = ec2.import_key_pair(
        KeyName="imp-ed",
        PublicKeyMaterial=ed_line,
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "a", "Value": "b"}]}],
    )
    assert got["KeyFingerprint"] == imported_fingerprint(ed_key)
    assert got["Tags"] == [{"Key": "a", "Value": "b"}]
    (kp,) = ec2.describe_key_pairs(KeyNames=["imp-ed"])["KeyPairs"]
    assert kp["KeyType"] == "ed25519"


def test_dry_run_changes_nothing(ec2: Any) -> None:
    for call in (
        lambda: ec2.create_key_pair(KeyName="dry", DryRun=True),
        lambda: ec2.describe_key_pairs(DryRun=True),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("DryRunOperation", 412)
    assert _names(ec2) == []
    ec2.create_key_pair(KeyName="dry")
    with pytest.raises(ClientError) as exc:
        ec2.delete_key_pair(KeyName="dry", DryRun=True)
    assert error_of(exc) == ("DryRunOperation", 412)
    assert _names(ec2) == ["dry"]


def test_another_tenant_cannot_see_or_delete(server: Server, ec2: Any, bob: Tenant) -> None:
    made = ec2.create_key_pair(KeyName="mine")
    other = client(server, bob)
    assert _names(other) == []
    with pytest.raises(ClientError) as exc:
        other.describe_key_pairs(KeyNames=["mine"])
    assert error_of(exc) == ("InvalidKeyPair.NotFound", 400)
    with pytest.raises(ClientError) as exc:
        other.describe_key_pairs(KeyPairIds=[made["KeyPairId"]])
    assert error_of(exc) == ("InvalidKeyPair.NotFound", 400)
    with pytest.raises(ClientError) as exc:
        other.delete_key_pair(KeyPairId=made["KeyPairId"])
    assert error_of(exc) == ("InvalidKeyPair.NotFound", 400)
    other.delete_key_pair(KeyName="mine")  # succeeds, deletes nothing of alice's
    assert _names(ec2) == ["mine"]
    other.create_key_pair(KeyName="mine")  # names are per owner


def test_bad_input_is_refused(ec2: Any) -> None:
    ec2.create_key_pair(KeyName="dup")
    cases: list[tuple[Any, str]] = [
        (lambda: ec2.create_key_pair(KeyName="dup"), "InvalidKeyPair.Duplicate"),
        (lambda: ec2.create_key_pair(KeyName="x", KeyType="dsa"), "InvalidParameterValue"),
        (lambda: ec2.create_key_pair(KeyName="bad\tname"), "InvalidParameterValue"),
        (lambda: ec2.import_key_pair(KeyName="i", PublicKeyMaterial=b"ssh-rsa AAAA"),
         "InvalidKey.Format"),
        (lambda: ec2.import_key_pair(KeyName="i", PublicKeyMaterial=b"hello"),
         "InvalidKey.Format"),
        (lambda: ec2.describe_key_pairs(KeyNames=["nope"]), "InvalidKeyPair.NotFound"),
        (lambda: ec2.describe_key_pairs(Filters=[{"Name": "color", "Values": ["x"]}]),
         "InvalidParameterValue"),
        (lambda: ec2.describe_key_pairs(KeyPairIds=["nope"]), "InvalidKeyPair.Format"),
        (lambda: ec2.create_key_pair(
            KeyName="t",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}],
        ), "InvalidParameterValue"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (code, 400)
    assert _names(ec2) == ["dup"]


def test_import_accepts_the_raw_line_and_refuses_bad_base64(server: Server, alice: Tenant) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    base = {"Action": "ImportKeyPair", "Version": "2016-11-15", "KeyName": "raw"}
    assert signed(server, alice, {**base, "PublicKeyMaterial": line}).status == 200
    bad = signed(server, alice, {**base, "KeyName": "b", "PublicKeyMaterial": "%%%"})
    assert (bad.status, bad.code) == (400, "InvalidParameterValue")
    missing = signed(server, alice, {**base, "KeyName": "m"})
    assert (missing.status, missing.code) == (400, "MissingParameter")
