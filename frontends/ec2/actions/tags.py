"""The tag actions (create, delete, describe) and the EC2 words for taggable resource kinds.

The service stores a resource's kind in the broker's words (``security_group``, ``address``,
``network``); EC2 clients say ``security-group``, ``elastic-ip``, ``subnet``. :data:`EC2_TYPE`
is the one table between them. :func:`creation_tags` reads ``TagSpecification.N`` for the
actions that create one resource, refusing a resource type that action does not create.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from broker.service import tags as svc
from frontends.ec2 import render as r
from frontends.ec2.errors import invalid, missing
from frontends.ec2.filters import TAG_FIELDS, collect
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element

#: broker resource kind -> EC2 resource type
EC2_TYPE: Final = MappingProxyType(
    {
        "instance": "instance",
        "image": "image",
        "volume": "volume",
        "snapshot": "snapshot",
        "security_group": "security-group",
        "key_pair": "key-pair",
        "address": "elastic-ip",
        "network": "subnet",
        "vpc": "vpc",
    }
)
#: EC2 resource type -> broker resource kind
KIND: Final = MappingProxyType({v: k for k, v in EC2_TYPE.items()})


def creation_tags(params: Params, ec2_type: str) -> dict[str, str]:
    """The tags ``TagSpecification.N`` asks for on the one resource (of ``ec2_type``) created."""
    out: dict[str, str] = {}
    for kind, found in params.tag_specifications():
        if kind != ec2_type:
            raise invalid("TagSpecification.ResourceType", kind, f"use {ec2_type}")
        out.update(found)
    return out


def post_filter(extra: Mapping[str, Sequence[str]], facts: Mapping[str, str]) -> bool:
    """True when every filter held in ``extra`` accepts the item's value in ``facts``."""
    return all(facts[name] in wanted for name, wanted in extra.items())


def _tag_pairs(params: Params, *, values_required: bool) -> dict[str, str | None]:
    """``Tag.N.Key`` / ``Tag.N.Value``; a missing Value is "" (create) or None (delete)."""
    out: dict[str, str | None] = {}
    for number, fields in params.members("Tag"):
        unknown = set(fields) - {"Key", "Value"}
        if unknown:
            raise invalid("parameter name", f"Tag.{number}.{sorted(unknown)[0]}", "not known")
        key = fields.get("Key")
        if not key:
            raise missing(f"Tag.{number}.Key")
        value = fields.get("Value")
        out[key] = "" if value is None and values_required else value
    return out


def _resource_ids(params: Params) -> list[str]:
    found = params.listing("ResourceId")
    if not found:
        raise missing("ResourceId.1")
    return found


async def create_tags(call: Call, out: Element) -> None:
    rids = _resource_ids(call.params)
    pairs = _tag_pairs(call.params, values_required=True)
    if not pairs:
        raise missing("Tag.1.Key")
    tags = {k: v or "" for k, v in pairs.items()}
    for rid in rids:
        svc.kind_of(rid)
    svc.check_tags(tags)
    call.check_dry_run()
    await svc.create(call.rt, call.caller, rids, tags)
    r.return_true(out)


async def delete_tags(call: Call, out: Element) -> None:
    rids = _resource_ids(call.params)
    pairs = _tag_pairs(call.params, values_required=False)
    for rid in rids:
        svc.kind_of(rid)
    for key in pairs:
        svc.check_key(key)
    call.check_dry_run()
    await svc.delete(call.rt, call.caller, rids, pairs or None)
    r.return_true(out)


def tag_query(params: Params) -> svc.TagQuery | None:
    """The service query for DescribeTags' filters, or None when nothing can match."""
    got = collect(params.filters(), TAG_FIELDS)
    for tag in got.tags:  # tag:K=V here means key K with value V
        got.narrow("keys", (tag.key,))
        if tag.values is not None:
            got.narrow("values", tag.values)
    if "resource_types" in got.fields:
        kinds = tuple(KIND[t] for t in got.fields["resource_types"] if t in KIND)
        got.fields["resource_types"] = kinds
        got.empty = got.empty or not kinds
    if got.empty:
        return None
    f = got.fields
    return svc.TagQuery(
        resource_ids=f.get("resource_ids", ()),
        resource_types=f.get("resource_types", ()),
        keys=f.get("keys", ()),
        values=f.get("values", ()),
    )


async def describe_tags(call: Call, out: Element) -> None:
    size, token = call.params.page(low=5, high=1000)
    query = tag_query(call.params)
    call.check_dry_run()
    box = r.node(out, "tagSet")
    if query is None:
        return
    page = await svc.describe(call.rt, call.caller, query, limit=size, token=token or None)
    for tag in page.items:
        it = r.item(box)
        r.text(it, "resourceId", tag.resource_id)
        r.text(it, "resourceType", EC2_TYPE.get(tag.resource_type, tag.resource_type))
        r.text(it, "key", tag.key)
        r.text(it, "value", tag.value)
    r.opt(out, "nextToken", page.next_token)


ACTIONS: Final[dict[str, Handler]] = {
    "CreateTags": create_tags,
    "DeleteTags": delete_tags,
    "DescribeTags": describe_tags,
}
