"""Key pairs: generating and importing SSH keys, and the fingerprints EC2 shows for them.

Only the public key is stored (OpenSSH format, without a comment); a generated private key is
returned once and forgotten. Fingerprints are computed as EC2 computes them, which differs by how
the key arrived (EC2 API reference KeyPairInfo.keyFingerprint, and the user guide's "verify the
fingerprint" commands, which match what AWS returns):

- created RSA: SHA-1 of the DER PKCS#8 private key, colon-separated hex
  (``openssl pkcs8 -topk8 -nocrypt -outform DER | openssl sha1 -c``);
- imported RSA: MD5 of the DER SubjectPublicKeyInfo, colon-separated hex
  (``openssl pkey -pubout -outform DER | openssl md5 -c``). The API reference's prose names
  RFC 4716 section 4 (what ``ssh-keygen -l -E md5`` prints), but AWS returns the DER form;
- ED25519, created or imported: base64 (padded, no ``SHA256:`` prefix) of the SHA-256 of the
  OpenSSH public key blob, i.e. ``ssh-keygen -l`` without its prefix, with the ``=`` kept.

Names are 1 to 255 printable ASCII characters and unique per owner. Deleting a name that does
not exist succeeds, as in EC2.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import delete as sql_delete
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import AlreadyExists, InvalidRequest, NotFound
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service.common import TagFilter, check_ids, check_values, tag_conditions, tags_for
from broker.service.tags import check_tags, drop_tags, insert_tags

KEY_TYPES = ("rsa", "ed25519")
RSA_BITS = 2048
MIN_RSA_BITS, MAX_RSA_BITS = 1024, 16384
MAX_MATERIAL = 16 * 1024
MAX_NAME = 255


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPairView:
    id: str
    owner_id: str
    name: str
    fingerprint: str
    key_type: str
    public_key: str
    created_at: dt.datetime
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class CreatedKeyPair:
    """A freshly generated key pair: the private key is in this answer and nowhere else."""

    key_pair: KeyPairView
    private_key: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPairFilter:
    """``names`` and ``ids`` must all exist (EC2's KeyName.N, KeyPairId.N); the rest filter."""

    names: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    key_names: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    key_types: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()


_COLS = (
    m.KeyPair.id,
    m.KeyPair.owner_id,
    m.KeyPair.name,
    m.KeyPair.fingerprint,
    m.KeyPair.key_type,
    m.KeyPair.public_key,
    m.KeyPair.created_at,
)


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def _ssh_blob(openssh: bytes) -> bytes:
    return base64.b64decode(openssh.split()[1])


def created_fingerprint(private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The fingerprint EC2 shows for a key pair it generated."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return imported_fingerprint(private_key.public_key())
    der = private_key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return _colon_hex(hashlib.sha1(der, usedforsecurity=False).digest())


def imported_fingerprint(public_key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The fingerprint EC2 shows for an imported public key."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        blob = _ssh_blob(public_key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH))
        return base64.b64encode(hashlib.sha256(blob).digest()).decode()
    der = public_key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return _colon_hex(hashlib.md5(der, usedforsecurity=False).digest())


def _openssh(public_key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    return public_key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()


def check_name(name: str) -> None:
    if not 0 < len(name) <= MAX_NAME or not all(" " <= c <= "~" for c in name):
        raise InvalidRequest(
            f"a key pair name must be 1 to {MAX_NAME} printable ASCII characters",
            resource="key_pair",
            field="KeyName",
        )


def parse_public_key(material: str | bytes) -> rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    """An ``ssh-rsa`` or ``ssh-ed25519`` key in OpenSSH format (one line, comment allowed)."""

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(
            f"the key material is not valid: {why}", resource="key_pair", field="PublicKeyMaterial"
        )

    raw = material.encode() if isinstance(material, str) else material
    if len(raw) > MAX_MATERIAL:
        raise bad(f"it is longer than {MAX_MATERIAL} bytes")
    lines = [line for line in raw.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise bad("expected one line in OpenSSH format")
    line = lines[0].strip()
    if not line.startswith((b"ssh-rsa ", b"ssh-ed25519 ")):
        raise bad("only ssh-rsa and ssh-ed25519 keys in OpenSSH format are accepted")
    try:
        key = ser.load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm):
        raise bad("it cannot be parsed as an OpenSSH public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise bad(f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise bad("only ssh-rsa and ssh-ed25519 keys are accepted")


async def _insert(
    rt: Runtime,
    caller: Caller,
    name: str,
    fingerprint: str,
    public_key: str,
    key_type: str,
    tags: Mapping[str, str],
) -> str:
    kid = ids.new_id("key_pair")
    dup = AlreadyExists(
        f"the key pair '{name}' already exists", resource="key_pair", field="KeyName"
    )
    try:
        async with rt.engine.begin() as conn:
            taken = await conn.scalar(
                select(m.KeyPair.id).where(
                    m.KeyPair.owner_id == caller.user_id, m.KeyPair.name == name
                )
            )
            if taken is not None:
                raise dup
            await conn.execute(
                insert(m.KeyPair).values(
                    id=kid,
                    owner_id=caller.user_id,
                    name=name,
                    fingerprint=fingerprint,
                    public_key=public_key,
                    key_type=key_type,
                )
            )
            await insert_tags(conn, caller.user_id, kid, "key_pair", tags)
            await record(conn, [audit(kid, caller.name, "key pair added", name=name)])
    except IntegrityError:
        raise dup from None
    return kid


async def create(
    rt: Runtime,
    caller: Caller,
    name: str,
    *,
    key_type: str = "rsa",
    tags: Mapping[str, str] | None = None,
) -> CreatedKeyPair:
    """Generate a key pair (RSA 2048 or ED25519); the private key is returned this once.

    RSA private keys come as PEM in the traditional ``BEGIN RSA PRIVATE KEY`` form, as EC2
    gives them; ED25519 private keys in OpenSSH's own format.
    """
    check_name(name)
    check_tags(tags or {})
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pem = private.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
        )
    elif key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    else:
        raise InvalidRequest(
            f"the key type must be one of {', '.join(KEY_TYPES)}",
            resource="key_pair",
            field="KeyType",
        )
    fingerprint = created_fingerprint(private)
    kid = await _insert(
        rt, caller, name, fingerprint, _openssh(private.public_key()), key_type, tags or {}
    )
    return CreatedKeyPair(await _get(rt, caller, kid), pem.decode())


async def import_key(
    rt: Runtime,
    caller: Caller,
    name: str,
    material: str | bytes,
    *,
    tags: Mapping[str, str] | None = None,
) -> KeyPairView:
    """Store the public key ``material`` (OpenSSH format) under ``name``."""
    check_name(name)
    check_tags(tags or {})
    key = parse_public_key(material)
    key_type = "ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "rsa"
    kid = await _insert(
        rt, caller, name, imported_fingerprint(key), _openssh(key), key_type, tags or {}
    )
    return await _get(rt, caller, kid)


async def _get(rt: Runtime, caller: Caller, kid: str) -> KeyPairView:
    (view,) = await describe(rt, caller, KeyPairFilter(ids=(kid,)))
    return view


def _conditions(caller: Caller, flt: KeyPairFilter) -> list[Any]:
    for name in ("names", "ids", "key_names", "fingerprints", "key_types"):
        check_values(name, getattr(flt, name))
    check_ids("key_pair", flt.ids, "key_pair")
    conds: list[Any] = []
    if not caller.is_admin:
        conds.append(m.KeyPair.owner_id == caller.user_id)
    pairs = (
        (m.KeyPair.name, flt.names),
        (m.KeyPair.id, flt.ids),
        (m.KeyPair.name, flt.key_names),
        (m.KeyPair.fingerprint, flt.fingerprints),
        (m.KeyPair.key_type, flt.key_types),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    conds.extend(tag_conditions(m.KeyPair.id, flt.tags))
    return conds


async def describe(
    rt: Runtime, caller: Caller, flt: KeyPairFilter = KeyPairFilter()
) -> list[KeyPairView]:
    """The caller's key pairs matching ``flt``, by name; a missing named one is NotFound."""
    stmt = select(*_COLS).where(*_conditions(caller, flt)).order_by(m.KeyPair.name, m.KeyPair.id)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        tags = await tags_for(conn, [r[0] for r in rows])
    names = {r[2] for r in rows}
    found = {r[0] for r in rows}
    for name in flt.names:
        if name not in names:
            raise NotFound(f"the key pair '{name}' does not exist", resource="key_pair", field=name)
    for kid in flt.ids:
        if kid not in found:
            raise NotFound(f"the key pair '{kid}' does not exist", resource="key_pair", field=kid)
    return [KeyPairView(*r, tags=tags.get(r[0], {})) for r in rows]


async def _find(
    conn: AsyncConnection, caller: Caller, name: str | None, key_pair_id: str | None
) -> str | None:
    if key_pair_id is not None:
        check_ids("key_pair", [key_pair_id], "key_pair")
        row = (
            await conn.execute(
                select(m.KeyPair.id, m.KeyPair.owner_id).where(m.KeyPair.id == key_pair_id)
            )
        ).first()
        if row is None:
            return None
        try:
            authorize(caller, Ownership(row[1], None), change=True, what="key_pair", rid=row[0])
        except NotFound:
            return None
        return str(row[0])
    assert name is not None
    check_name(name)
    return await conn.scalar(
        select(m.KeyPair.id).where(m.KeyPair.owner_id == caller.user_id, m.KeyPair.name == name)
    )


async def delete(
    rt: Runtime, caller: Caller, name: str | None = None, *, key_pair_id: str | None = None
) -> bool:
    """Delete the caller's key pair by name or id; True when one was there (EC2 succeeds anyway).

    Instances launched with the key keep their ``key_name``; their guests keep the key.
    """
    if (name is None) == (key_pair_id is None):
        raise InvalidRequest(
            "give either a key pair name or a key pair id", resource="key_pair", field="KeyName"
        )
    async with rt.engine.begin() as conn:
        kid = await _find(conn, caller, name, key_pair_id)
        if kid is None:
            return False
        await conn.execute(sql_delete(m.KeyPair).where(m.KeyPair.id == kid))
        await drop_tags(conn, [kid])
        await record(conn, [audit(kid, caller.name, "key pair deleted")])
    return True
