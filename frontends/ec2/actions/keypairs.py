"""The key pair actions: create (the private key is in this one answer only), import,
describe and delete.

``PublicKeyMaterial`` arrives base64-encoded (boto3 and euca2ools encode the OpenSSH line);
a value that is not base64 is taken as the OpenSSH line itself, as EC2 accepts both.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from broker.errors import NotFound, Unsupported
from broker.service import keypairs as svc
from broker.service.common import check_ids
from frontends.ec2 import render as r
from frontends.ec2.actions.tags import creation_tags, post_filter
from frontends.ec2.errors import invalid, missing
from frontends.ec2.filters import KEY_PAIR_FIELDS, collect
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element


def _name(params: Params) -> str:
    name = params.required("KeyName")
    svc.check_name(name)
    return name


def _key_type(params: Params) -> str:
    kind = params.text("KeyType") or "rsa"
    if kind not in svc.KEY_TYPES:
        raise invalid("KeyType", kind, f"use one of {', '.join(svc.KEY_TYPES)}")
    key_format = params.text("KeyFormat") or "pem"
    if key_format != "pem":
        if key_format == "ppk":
            raise Unsupported("Key pairs in PuTTY's ppk format are not supported; use pem.")
        raise invalid("KeyFormat", key_format, "use pem")
    return kind


def _material(params: Params) -> bytes:
    raw = params.required("PublicKeyMaterial")
    if len(raw) > 2 * svc.MAX_MATERIAL:
        raise invalid("PublicKeyMaterial", "<data>", "it is too long")
    text = raw.strip()
    if text.startswith(("ssh-rsa ", "ssh-ed25519 ")):
        return text.encode()
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise invalid("PublicKeyMaterial", "<data>", "it is not valid base64") from None


def _identity(out: Element, kp: svc.KeyPairView) -> None:
    r.text(out, "keyPairId", kp.id)
    r.text(out, "keyName", kp.name)
    r.text(out, "keyFingerprint", kp.fingerprint)


async def create_key_pair(call: Call, out: Element) -> None:
    name = _name(call.params)
    kind = _key_type(call.params)
    tags = creation_tags(call.params, "key-pair")
    call.check_dry_run()
    created = await svc.create(call.rt, call.caller, name, key_type=kind, tags=tags)
    kp = created.key_pair
    r.text(out, "keyName", kp.name)
    r.text(out, "keyFingerprint", kp.fingerprint)
    r.text(out, "keyMaterial", created.private_key)
    r.text(out, "keyPairId", kp.id)
    r.tag_set(out, kp.tags)


async def import_key_pair(call: Call, out: Element) -> None:
    name = _name(call.params)
    material = _material(call.params)
    svc.parse_public_key(material)
    tags = creation_tags(call.params, "key-pair")
    call.check_dry_run()
    kp = await svc.import_key(call.rt, call.caller, name, material, tags=tags)
    _identity(out, kp)
    r.tag_set(out, kp.tags)


async def describe_key_pairs(call: Call, out: Element) -> None:
    params = call.params
    names = tuple(params.listing("KeyName"))
    kids = tuple(check_ids("key_pair", params.listing("KeyPairId"), "key_pair"))
    with_public = params.boolean("IncludePublicKey")
    got = collect(params.filters(), KEY_PAIR_FIELDS, extra=frozenset({"key-pair-id"}))
    call.check_dry_run()
    box = r.node(out, "keySet")
    found = await svc.describe(
        call.rt,
        call.caller,
        svc.KeyPairFilter(
            names=names,
            ids=kids,
            key_names=got.fields.get("key_names", ()),
            fingerprints=got.fields.get("fingerprints", ()),
            key_types=got.fields.get("key_types", ()),
            tags=tuple(got.tags),
        ),
    )
    if got.empty:
        return
    for kp in found:
        if not post_filter(got.extra, {"key-pair-id": kp.id}):
            continue
        it = r.item(box)
        _identity(it, kp)
        r.text(it, "keyType", kp.key_type)
        r.tag_set(it, kp.tags)
        if with_public:
            r.text(it, "publicKey", kp.public_key)
        r.text(it, "createTime", r.timestamp(kp.created_at))


async def delete_key_pair(call: Call, out: Element) -> None:
    params = call.params
    name = params.text("KeyName") or None
    kid = params.text("KeyPairId") or None
    if name is None and kid is None:
        raise missing("KeyName")
    if name is not None:
        kid = None  # both given: the name wins, as in EC2
        svc.check_name(name)
    if kid is not None:
        check_ids("key_pair", [kid], "key_pair")
    call.check_dry_run()
    if name is not None:
        await svc.delete(call.rt, call.caller, name)
    elif not await svc.delete(call.rt, call.caller, key_pair_id=kid):
        raise NotFound(f"The key pair '{kid}' does not exist", resource="key_pair", field=kid or "")
    r.return_true(out)
    r.opt(out, "keyPairId", kid)


ACTIONS: Final[dict[str, Handler]] = {
    "CreateKeyPair": create_key_pair,
    "ImportKeyPair": import_key_pair,
    "DescribeKeyPairs": describe_key_pairs,
    "DeleteKeyPair": delete_key_pair,
}
