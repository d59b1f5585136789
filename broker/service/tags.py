"""Tags: which resources a caller may tag, the limits on tags, and EC2's create/delete semantics.

A tag is a key and a value on one resource of any taggable kind (instance, image, volume,
snapshot, security group, address, key pair, network). The kind follows from the id's prefix
(:mod:`broker.ids`). Only the resource's owner (or an admin, or a group admin for resources of
their group) may tag it; a resource the caller may not see is reported as not found, and a public
image someone else owns is Forbidden. Limits are EC2's: 50 tags per resource, keys of 1 to 128
characters, values of at most 256, and no ``aws:`` prefix.

``resource_type`` is stored in the broker's words (the keys of :data:`broker.ids.PREFIXES`:
``security_group``, ``key_pair``, ``address``, ``network``...); the EC2 frontend maps them to
its own (``security-group``, ``key-pair``, ``elastic-ip``, ``subnet``).

The other service modules use :func:`check_tags` and :func:`insert_tags` to accept tags when a
resource is created (EC2's TagSpecification).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import InvalidRequest, NotFound, QuotaExceeded
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service.common import Page, check_limit, check_values, split_page

MAX_TAGS = 50
MAX_KEY = 128
MAX_VALUE = 256
MAX_RESOURCES = 1000

#: The kinds of resource that can carry tags, in the order their prefixes are tried.
TAGGABLE: tuple[str, ...] = (
    "instance",
    "image",
    "volume",
    "snapshot",
    "security_group",
    "address",
    "key_pair",
    "network",
    "vpc",
)


@dataclasses.dataclass(frozen=True, slots=True)
class TagView:
    resource_id: str
    resource_type: str
    key: str
    value: str


@dataclasses.dataclass(frozen=True, slots=True)
class TagQuery:
    """DescribeTags filters: resource-id, resource-type, key, value (each any of its values)."""

    resource_ids: tuple[str, ...] = ()
    resource_types: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()


def check_key(key: str) -> None:
    if not 0 < len(key) <= MAX_KEY:
        raise InvalidRequest(
            f"a tag key must be 1 to {MAX_KEY} characters", resource="tag", field="Tag.Key"
        )
    if key.lower().startswith("aws:"):
        raise InvalidRequest(
            "tag keys starting with 'aws:' are reserved", resource="tag", field="Tag.Key"
        )


def check_tags(tags: Mapping[str, str]) -> None:
    """Raise unless ``tags`` are at most 50 valid keys with valid values."""
    if len(tags) > MAX_TAGS:
        raise QuotaExceeded(f"at most {MAX_TAGS} tags per resource", resource="tag", field="Tag")
    for key, value in tags.items():
        check_key(key)
        if len(value) > MAX_VALUE:
            raise InvalidRequest(
                f"a tag value must be at most {MAX_VALUE} characters",
                resource="tag",
                field="Tag.Value",
            )


async def insert_tags(
    conn: AsyncConnection, owner_id: str, rid: str, resource_type: str, tags: Mapping[str, str]
) -> None:
    """Add ``tags`` to a resource created in this transaction (already checked)."""
    if tags:
        await conn.execute(
            insert(m.Tag),
            [
                {
                    "resource_id": rid,
                    "key": k,
                    "value": v,
                    "owner_id": owner_id,
                    "resource_type": resource_type,
                }
                for k, v in tags.items()
            ],
        )


def kind_of(rid: str) -> str:
    """The taggable kind an id names, or InvalidRequest when it names none."""
    for kind in TAGGABLE:
        if ids.is_valid(kind, rid):
            return kind
    raise InvalidRequest(f"invalid resource id '{rid[:64]}'", resource="tag", field="ResourceId")


#: kind -> id, owner, then group and visibility where the table has them.
_OWNER_COLUMNS: dict[str, tuple[Any, ...]] = {
    "instance": (m.Instance.id, m.Instance.owner_id, m.Instance.group_id),
    "image": (m.Image.id, m.Image.owner_id, m.Image.group_id, m.Image.visibility),
    "volume": (m.Volume.id, m.Volume.owner_id, m.Volume.group_id),
    "snapshot": (m.Snapshot.id, m.Snapshot.owner_id),
    "security_group": (m.SecurityGroup.id, m.SecurityGroup.owner_id),
    "address": (m.Address.id, m.Address.owner_id),
    "key_pair": (m.KeyPair.id, m.KeyPair.owner_id),
    "network": (m.Network.id, m.Network.owner_id),
}


async def _owners(conn: AsyncConnection, caller: Caller, rids: Sequence[str]) -> dict[str, str]:
    """resource id -> tag owner, after checking the caller may change every resource."""
    by_kind: dict[str, list[str]] = {}
    for rid in rids:
        by_kind.setdefault(kind_of(rid), []).append(rid)
    out: dict[str, str] = {}
    for kind, members in by_kind.items():
        if kind == "vpc":  # the broker has no VPCs of its own yet
            raise NotFound(
                f"the vpc '{members[0]}' does not exist", resource="vpc", field=members[0]
            )
        cols = _OWNER_COLUMNS[kind]
        stmt = select(*cols).where(cols[0].in_(members))
        if kind == "image":
            stmt = stmt.where(m.Image.state != "deregistered")
        rows = {r[0]: tuple(r) for r in await conn.execute(stmt)}
        grants: dict[str, frozenset[str]] = {}
        if kind == "image" and rows:
            perms = await conn.execute(
                select(m.LaunchPermission.image_id, m.LaunchPermission.grantee).where(
                    m.LaunchPermission.image_id.in_(list(rows))
                )
            )
            for image_id, grantee in perms:
                grants[image_id] = grants.get(image_id, frozenset()) | {grantee}
        for rid in members:
            row = rows.get(rid)
            if row is None:
                raise NotFound(f"the {kind} '{rid}' does not exist", resource=kind, field=rid)
            owner = row[1]
            group = row[2] if len(row) > 2 else None
            visibility = row[3] if len(row) > 3 else "private"
            if kind == "network" and owner is None:
                visibility = "public"  # shared networks: everyone sees them, admins change them
            res = Ownership(owner, group, visibility, grants.get(rid, frozenset()))
            authorize(caller, res, change=True, what=kind, rid=rid)
            out[rid] = owner or caller.user_id
    return out


def _check_resources(resource_ids: Sequence[str]) -> list[str]:
    if not resource_ids:
        raise InvalidRequest(
            "at least one resource id is needed", resource="tag", field="ResourceId"
        )
    if len(resource_ids) > MAX_RESOURCES:
        raise InvalidRequest(
            f"at most {MAX_RESOURCES} resources at once", resource="tag", field="ResourceId"
        )
    return list(dict.fromkeys(resource_ids))


async def create(
    rt: Runtime, caller: Caller, resource_ids: Sequence[str], tags: Mapping[str, str]
) -> None:
    """Add or overwrite ``tags`` on every resource: all of them change, or none does."""
    rids = _check_resources(resource_ids)
    if not tags:
        raise InvalidRequest("at least one tag is needed", resource="tag", field="Tag")
    check_tags(tags)
    async with rt.engine.begin() as conn:
        owners = await _owners(conn, caller, rids)
        existing: dict[str, set[str]] = {}
        rows = await conn.execute(
            select(m.Tag.resource_id, m.Tag.key).where(m.Tag.resource_id.in_(rids))
        )
        for rid, key in rows:
            existing.setdefault(rid, set()).add(key)
        for rid in rids:
            if len(existing.get(rid, set()) | set(tags)) > MAX_TAGS:
                raise QuotaExceeded(
                    f"the resource '{rid}' would have more than {MAX_TAGS} tags",
                    resource="tag",
                    field=rid,
                )
        await conn.execute(
            sql_delete(m.Tag).where(m.Tag.resource_id.in_(rids), m.Tag.key.in_(list(tags)))
        )
        for rid in rids:
            await insert_tags(conn, owners[rid], rid, kind_of(rid), tags)
        await record(
            conn, [audit(rid, caller.name, "tags created", keys=sorted(tags)) for rid in rids]
        )


async def delete(
    rt: Runtime,
    caller: Caller,
    resource_ids: Sequence[str],
    tags: Mapping[str, str | None] | None = None,
) -> None:
    """Remove tags with EC2's rules.

    ``tags`` None removes every tag of the resources; a key mapped to None removes that key
    whatever its value; a key mapped to a string (even "") removes it only when the value is
    exactly that string. Removing a tag that is not there is not an error.
    """
    rids = _check_resources(resource_ids)
    if tags is not None:
        if not tags:
            raise InvalidRequest("at least one tag is needed", resource="tag", field="Tag")
        if len(tags) > MAX_TAGS:
            raise InvalidRequest(f"at most {MAX_TAGS} tags at once", resource="tag", field="Tag")
        for key in tags:
            check_key(key)
    async with rt.engine.begin() as conn:
        await _owners(conn, caller, rids)
        stmt = sql_delete(m.Tag).where(m.Tag.resource_id.in_(rids))
        if tags is not None:
            stmt = stmt.where(
                or_(
                    *[
                        m.Tag.key == k if v is None else and_(m.Tag.key == k, m.Tag.value == v)
                        for k, v in tags.items()
                    ]
                )
            )
        await conn.execute(stmt)
        keys = sorted(tags) if tags is not None else None
        await record(conn, [audit(rid, caller.name, "tags deleted", keys=keys) for rid in rids])


def _encode(rid: str, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([rid, key]).encode()).decode().rstrip("=")


def _decode(token: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    bad = InvalidRequest("the pagination token is not valid", field="NextToken")
    if len(token) > 1024:
        raise bad
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw)):
        raise bad
    return raw[0], raw[1]


async def describe(
    rt: Runtime,
    caller: Caller,
    query: TagQuery = TagQuery(),
    *,
    limit: int | None = None,
    token: str | None = None,
) -> Page[TagView]:
    """One page of the tags on the caller's resources, ordered by resource id then key."""
    size = check_limit(limit)
    after = _decode(token)
    for name in ("resource_ids", "resource_types", "keys", "values"):
        check_values(name, getattr(query, name))
    conds: list[Any] = []
    if not caller.is_admin:
        conds.append(m.Tag.owner_id == caller.user_id)
    pairs = (
        (m.Tag.resource_id, query.resource_ids),
        (m.Tag.resource_type, query.resource_types),
        (m.Tag.key, query.keys),
        (m.Tag.value, query.values),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    if after is not None:
        conds.append(
            or_(
                m.Tag.resource_id > after[0],
                and_(m.Tag.resource_id == after[0], m.Tag.key > after[1]),
            )
        )
    stmt = (
        select(m.Tag.resource_id, m.Tag.resource_type, m.Tag.key, m.Tag.value)
        .where(*conds)
        .order_by(m.Tag.resource_id, m.Tag.key)
        .limit(size + 1)
    )
    async with rt.engine.connect() as conn:
        rows, more = split_page(list((await conn.execute(stmt)).all()), size)
    items = [TagView(*r) for r in rows]
    last = items[-1] if items else None
    return Page(items, _encode(last.resource_id, last.key) if more and last else None)


async def drop_tags(conn: AsyncConnection, rids: Sequence[str]) -> None:
    """Remove every tag of resources deleted in this transaction."""
    if rids:
        await conn.execute(sql_delete(m.Tag).where(m.Tag.resource_id.in_(rids)))
