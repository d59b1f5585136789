"""Key pairs on both databases: create, import, describe, delete, fingerprints, isolation."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import func, select

from broker import model as m
from broker.errors import AlreadyExists, InvalidRequest, NotFound
from broker.runtime import Runtime
from broker.service import keypairs
from broker.service.common import TagFilter
from broker.service.keypairs import KeyPairFilter
from tests.conftest import Tenants

needs_tools = pytest.mark.skipif(
    not (shutil.which("ssh-keygen") and shutil.which("openssl")), reason="needs ssh-keygen, openssl"
)


def sh(cmd: str, stdin: bytes | None = None) -> str:
    out = subprocess.run(["sh", "-c", cmd], input=stdin, capture_output=True, check=True)
    return out.stdout.decode().strip()


def openssl_colons(output: str) -> str:
    return output.rsplit("= ", 1)[-1].strip()


def ssh_keygen(tmp: Path, kind: str) -> Path:
    key = tmp / f"id_{kind}"
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "me@example", "-f", str(key)],
        check=True,
    )
    return key


async def count(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(m.KeyPair)) or 0)


# --- fingerprints, cross-checked with openssl and ssh-keygen ----------------------------------


@needs_tools
def test_created_rsa_fingerprint_is_sha1_of_pkcs8_der(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    (tmp_path / "k.pem").write_bytes(pem)
    want = openssl_colons(
        sh(
            f"openssl pkcs8 -in {tmp_path / 'k.pem'} -inform PEM -outform DER -topk8 -nocrypt"
            " | openssl sha1 -c"
        )
    )
    got = keypairs.created_fingerprint(key)
    assert got == want and len(got) == 59


@needs_tools
def test_imported_rsa_fingerprint_is_md5_of_der_public_key(tmp_path: Path) -> None:
    key = ssh_keygen(tmp_path, "rsa")
    pub = key.with_suffix(".pub").read_text()
    want = openssl_colons(
        sh(
            f"ssh-keygen -e -m PKCS8 -f {key}.pub"
            " | openssl pkey -pubin -outform DER | openssl md5 -c"
        )
    )
    got = keypairs.imported_fingerprint(keypairs.parse_public_key(pub))  # type: ignore[arg-type]
    assert got == want and len(got) == 47
    # not what `ssh-keygen -l -E md5` prints (MD5 of the SSH blob): EC2 hashes the DER form
    legacy = sh(f"ssh-keygen -l -E md5 -f {key}.pub").split()[1].removeprefix("MD5:")
    assert got != legacy


@needs_tools
def test_ed25519_fingerprint_is_padded_base64_sha256(tmp_path: Path) -> None:
    key = ssh_keygen(tmp_path, "ed25519")
    pub = key.with_suffix(".pub").read_text()
    openssh = sh(f"ssh-keygen -l -f {key}.pub").split()[1].removeprefix("SHA256:")
    got = keypairs.imported_fingerprint(keypairs.parse_public_key(pub))  # type: ignore[arg-type]
    assert got == openssh + "="
    assert len(base64.b64decode(got)) == 32


# --- the service ---------------------------------------------------------------------------------


async def test_create_returns_private_key_once_and_stores_public(
    rt: Runtime, tenants: Tenants
) -> None:
    made = await keypairs.create(rt, tenants.alice, "web", tags={"env": "prod"})
    assert made.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    private = ser.load_pem_private_key(made.private_key.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    view = made.key_pair
    assert view.name == "web" and view.key_type == "rsa" and view.id.startswith("key-")
    assert view.fingerprint == keypairs.created_fingerprint(private)
    assert view.public_key.startswith("ssh-rsa ")
    assert view.tags == {"env": "prod"}
    async with rt.engine.connect() as conn:
        stored = (await conn.execute(select(m.KeyPair))).one()
        await conn.scalar(select(m.Event.id).where(m.Event.resource_id == view.id))
    assert "PRIVATE" not in " ".join(str(v) for v in stored)
    (again,) = await keypairs.describe(rt, tenants.alice, KeyPairFilter(names=("web",)))
    assert again == view


async def test_create_ed25519(rt: Runtime, tenants: Tenants) -> None:
    made = await keypairs.create(rt, tenants.alice, "ed", key_type="ed25519")
    private = ser.load_ssh_private_key(made.private_key.encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert made.key_pair.key_type == "ed25519"
    assert made.key_pair.fingerprint == keypairs.imported_fingerprint(private.public_key())


async def test_import_rsa_and_ed25519(rt: Runtime, tenants: Tenants) -> None:
    rsa_pub = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    )
    ed_key = ed25519.Ed25519PrivateKey.generate().public_key()
    ed_pub = ed_key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    a = await keypairs.import_key(rt, tenants.alice, "laptop", rsa_pub + b" me@laptop\n")
    b = await keypairs.import_key(rt, tenants.alice, "yubi", ed_pub.decode())
    assert (a.key_type, b.key_type) == ("rsa", "ed25519")
    assert a.public_key == rsa_pub.decode()  # stored without the comment
    assert b.fingerprint == keypairs.imported_fingerprint(ed_key)
    assert ":" in a.fingerprint and len(a.fingerprint) == 47


async def test_describe_filters(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    one = (await keypairs.create(rt, alice, "one", tags={"team": "a"})).key_pair
    two = (await keypairs.create(rt, alice, "two")).key_pair
    assert [k.name for k in await keypairs.describe(rt, alice)] == ["one", "two"]
    flt = KeyPairFilter(fingerprints=(two.fingerprint,))
    assert [k.id for k in await keypairs.describe(rt, alice, flt)] == [two.id]
    flt = KeyPairFilter(tags=(TagFilter("team", ("a",)),))
    assert [k.id for k in await keypairs.describe(rt, alice, flt)] == [one.id]
    assert await keypairs.describe(rt, alice, KeyPairFilter(key_names=("nope",))) == []
    flt = KeyPairFilter(ids=(one.id,))
    assert [k.name for k in await keypairs.describe(rt, alice, flt)] == ["one"]
    with pytest.raises(NotFound) as err:
        await keypairs.describe(rt, alice, KeyPairFilter(names=("one", "nope")))
    assert err.value.resource == "key_pair" and err.value.field == "nope"
    with pytest.raises(InvalidRequest):
        await keypairs.describe(rt, alice, KeyPairFilter(ids=("key-zz",)))


async def test_duplicate_name_is_already_exists(rt: Runtime, tenants: Tenants) -> None:
    await keypairs.create(rt, tenants.alice, "dup")
    with pytest.raises(AlreadyExists) as err:
        await keypairs.create(rt, tenants.alice, "dup")
    assert err.value.resource == "key_pair"
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    material = pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    with pytest.raises(AlreadyExists):
        await keypairs.import_key(rt, tenants.alice, "dup", material)
    await keypairs.create(rt, tenants.bob, "dup")  # names are per owner
    assert await count(rt) == 2


async def test_bad_input_creates_nothing(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    ecdsa = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    )
    small = (
        rsa.RSAPublicNumbers(65537, (1 << 511) | 12345)
        .public_key()
        .public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    )
    good = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    )
    bad_material: list[str | bytes] = [
        "",
        "ssh-rsa",
        "ssh-rsa AAAA!!!notbase64",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
        ecdsa,
        small,
        b'command="/bin/sh" ' + good,
        good + b"\n" + good,
        b"ssh-rsa " + b"A" * 20000,
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYI\n-----END PUBLIC KEY-----",
    ]
    for material in bad_material:
        with pytest.raises(InvalidRequest) as err:
            await keypairs.import_key(rt, alice, "k", material)
        assert err.value.field == "PublicKeyMaterial", material
    for name in ("", "x" * 256, "caf\u00e9", "tab\there"):
        with pytest.raises(InvalidRequest) as err:
            await keypairs.create(rt, alice, name)
        assert err.value.field == "KeyName"
        with pytest.raises(InvalidRequest):
            await keypairs.import_key(rt, alice, name, good)
    with pytest.raises(InvalidRequest):
        await keypairs.create(rt, alice, "k", key_type="dsa")
    with pytest.raises(InvalidRequest):
        await keypairs.create(rt, alice, "k", tags={"aws:x": "y"})
    assert await count(rt) == 0
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Tag)) == 0
    await keypairs.create(rt, alice, "x" * 255)


async def test_delete_is_idempotent(rt: Runtime, tenants: Tenants) -> None:
    alice = tenants.alice
    made = (await keypairs.create(rt, alice, "gone", tags={"a": "b"})).key_pair
    assert await keypairs.delete(rt, alice, "gone") is True
    assert await keypairs.delete(rt, alice, "gone") is False
    assert await keypairs.delete(rt, alice, "never") is False
    assert await keypairs.delete(rt, alice, key_pair_id=made.id) is False
    other = (await keypairs.create(rt, alice, "byid")).key_pair
    assert await keypairs.delete(rt, alice, key_pair_id=other.id) is True
    with pytest.raises(InvalidRequest):
        await keypairs.delete(rt, alice)
    with pytest.raises(InvalidRequest):
        await keypairs.delete(rt, alice, key_pair_id="key-nothex")
    assert await count(rt) == 0
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Tag)) == 0
        messages = (
            await conn.scalars(select(m.Event.message).where(m.Event.resource_id == made.id))
        ).all()
    assert list(messages) == ["key pair added", "key pair deleted"]


async def test_another_tenant_cannot_see_or_delete(rt: Runtime, tenants: Tenants) -> None:
    mine = (await keypairs.create(rt, tenants.alice, "secret")).key_pair
    assert await keypairs.describe(rt, tenants.bob) == []
    with pytest.raises(NotFound):
        await keypairs.describe(rt, tenants.bob, KeyPairFilter(ids=(mine.id,)))
    with pytest.raises(NotFound):
        await keypairs.describe(rt, tenants.bob, KeyPairFilter(names=("secret",)))
    assert await keypairs.delete(rt, tenants.bob, "secret") is False
    assert await keypairs.delete(rt, tenants.bob, key_pair_id=mine.id) is False
    assert [k.id for k in await keypairs.describe(rt, tenants.alice)] == [mine.id]
    assert [k.id for k in await keypairs.describe(rt, tenants.admin)] == [mine.id]
