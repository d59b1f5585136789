"""Security groups: names per owner, the lazy ``default`` group, and which rules are valid.

A group belongs to one owner and its name is unique for that owner. Every user gets a group named
``default`` the first time they describe groups (or launch, through :func:`ensure_default`): it
lets members of the group talk to each other and everything out, as EC2's default group does. A
new group allows all egress and no ingress.

An :class:`IpPermission` (EC2's IpPermissions) expands into one stored rule per CIDR or source
group; each rule gets an ``sgr-`` id. Protocols are ``tcp``, ``udp``, ``icmp``, ``icmpv6``,
``-1`` (all) or an IP protocol number 0-255 (6, 17, 1 and 58 are stored by name). TCP and UDP
need a port range within 0-65535; ICMP takes a type and a code, each -1 (any) to 255; other
protocols take no ports. Authorizing a rule that exists is AlreadyExists (EC2's
InvalidPermission.Duplicate, ``resource="permission"``); revoking one that does not is NotFound
(InvalidPermission.NotFound). A group is not deleted while a live instance or another group's
rule uses it, and ``default`` is never deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import AlreadyExists, InvalidRequest, InvalidState, NotFound
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service.common import TagFilter, check_ids, check_values, tag_conditions, tags_for
from broker.service.tags import check_tags, drop_tags, insert_tags

DEFAULT = "default"
MAX_NAME = 255
MAX_DESCRIPTION = 255
MAX_RULES = 60  # per group and direction, EC2's default
_NAMED = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", "all": "-1"}
_PORTED = ("tcp", "udp")
_ICMP = ("icmp", "icmpv6")


@dataclasses.dataclass(frozen=True, slots=True)
class IpRange:
    cidr: str
    description: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class GroupRef:
    """A source (or, for egress, destination) group, by id or by the caller's group name."""

    group_id: str | None = None
    group_name: str | None = None
    description: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class IpPermission:
    protocol: str
    from_port: int | None = None
    to_port: int | None = None
    ranges: tuple[IpRange, ...] = ()
    groups: tuple[GroupRef, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RuleView:
    id: str
    group_id: str
    egress: bool
    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: str | None
    source_group_id: str | None
    description: str


@dataclasses.dataclass(frozen=True, slots=True)
class SecurityGroupView:
    id: str
    owner_id: str
    name: str
    description: str
    created_at: dt.datetime
    ingress: tuple[RuleView, ...] = ()
    egress: tuple[RuleView, ...] = ()
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class SecurityGroupFilter:
    """``ids`` and ``names`` must all exist (GroupId.N, GroupName.N); the rest filter."""

    ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    group_ids: tuple[str, ...] = ()
    group_names: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()


_COLS = (
    m.SecurityGroup.id,
    m.SecurityGroup.owner_id,
    m.SecurityGroup.name,
    m.SecurityGroup.description,
    m.SecurityGroup.created_at,
)
_RULE_COLS = (
    m.SecurityGroupRule.id,
    m.SecurityGroupRule.group_id,
    m.SecurityGroupRule.egress,
    m.SecurityGroupRule.protocol,
    m.SecurityGroupRule.from_port,
    m.SecurityGroupRule.to_port,
    m.SecurityGroupRule.cidr,
    m.SecurityGroupRule.source_group_id,
    m.SecurityGroupRule.description,
)


def _text(value: str, limit: int, field: str, what: str) -> None:
    if len(value) > limit or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest(
            f"{what} must be at most {limit} printable ASCII characters",
            resource="security_group",
            field=field,
        )


def check_name(name: str) -> None:
    if not name:
        raise InvalidRequest(
            "a security group needs a name", resource="security_group", field="GroupName"
        )
    _text(name, MAX_NAME, "GroupName", "a security group name")
    if name.startswith("sg-"):
        raise InvalidRequest(
            "a security group name cannot start with 'sg-'",
            resource="security_group",
            field="GroupName",
        )


# --- creating groups ---------------------------------------------------------------------------


async def _insert_group(conn: AsyncConnection, caller: Caller, name: str, description: str) -> str:
    gid = ids.new_id("security_group")
    await conn.execute(
        insert(m.SecurityGroup).values(
            id=gid, owner_id=caller.user_id, name=name, description=description
        )
    )
    await conn.execute(
        insert(m.SecurityGroupRule).values(
            id=ids.new_id("security_group_rule"),
            group_id=gid,
            egress=True,
            protocol="-1",
            cidr="0.0.0.0/0",
        )
    )
    return gid


async def ensure_default(target: Runtime | AsyncConnection, caller: Caller) -> str:
    """The id of the caller's ``default`` group, created on first use.

    Given a connection, works inside the caller's transaction (launch); given the runtime, opens
    a transaction of its own only when the group is missing. The user's row is locked while the
    group is created, so two first requests at once make one group.
    """
    if not caller.user_id:
        raise InvalidRequest("the system caller has no security groups", field="GroupName")
    if isinstance(target, Runtime):
        async with target.engine.connect() as conn:
            found = await _default_id(conn, caller)
        if found is not None:
            return found
        async with target.engine.begin() as conn:
            return await ensure_default(conn, caller)
    await target.execute(
        select(m.User.id).where(m.User.id == caller.user_id).with_for_update(key_share=True)
    )
    found = await _default_id(target, caller)
    if found is not None:
        return found
    gid = await _insert_group(target, caller, DEFAULT, "default group")
    await target.execute(
        insert(m.SecurityGroupRule).values(
            id=ids.new_id("security_group_rule"),
            group_id=gid,
            egress=False,
            protocol="-1",
            source_group_id=gid,
        )
    )
    await record(target, [audit(gid, caller.name, "security group created", name=DEFAULT)])
    return gid


async def _default_id(conn: AsyncConnection, caller: Caller) -> str | None:
    return await conn.scalar(
        select(m.SecurityGroup.id).where(
            m.SecurityGroup.owner_id == caller.user_id, m.SecurityGroup.name == DEFAULT
        )
    )


async def create(
    rt: Runtime,
    caller: Caller,
    name: str,
    description: str = "",
    *,
    tags: Mapping[str, str] | None = None,
) -> SecurityGroupView:
    """A new group of the caller's, allowing all egress and no ingress."""
    check_name(name)
    _text(description, MAX_DESCRIPTION, "GroupDescription", "a description")
    if name == DEFAULT:
        raise InvalidRequest(
            "the name 'default' is reserved", resource="security_group", field="GroupName"
        )
    check_tags(tags or {})
    dup = AlreadyExists(
        f"the security group '{name}' already exists", resource="security_group", field="GroupName"
    )
    try:
        async with rt.engine.begin() as conn:
            taken = await conn.scalar(
                select(m.SecurityGroup.id).where(
                    m.SecurityGroup.owner_id == caller.user_id, m.SecurityGroup.name == name
                )
            )
            if taken is not None:
                raise dup
            gid = await _insert_group(conn, caller, name, description)
            await insert_tags(conn, caller.user_id, gid, "security_group", tags or {})
            await record(conn, [audit(gid, caller.name, "security group created", name=name)])
    except IntegrityError:
        raise dup from None
    return await get(rt, caller, gid)


# --- reading -------------------------------------------------------------------------------------


def _conditions(caller: Caller, flt: SecurityGroupFilter) -> list[Any]:
    for name in ("ids", "names", "group_ids", "group_names", "descriptions"):
        check_values(name, getattr(flt, name))
    check_ids("security_group", flt.ids, "security_group")
    conds: list[Any] = []
    if not caller.is_admin:
        conds.append(m.SecurityGroup.owner_id == caller.user_id)
    if flt.names:  # names are per owner, even for an admin
        conds.append(m.SecurityGroup.owner_id == caller.user_id)
    pairs = (
        (m.SecurityGroup.id, flt.ids),
        (m.SecurityGroup.name, flt.names),
        (m.SecurityGroup.id, flt.group_ids),
        (m.SecurityGroup.name, flt.group_names),
        (m.SecurityGroup.description, flt.descriptions),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    conds.extend(tag_conditions(m.SecurityGroup.id, flt.tags))
    return conds


async def describe(
    rt: Runtime, caller: Caller, flt: SecurityGroupFilter = SecurityGroupFilter()
) -> list[SecurityGroupView]:
    """The caller's groups matching ``flt`` with their rules; creates ``default`` if missing."""
    conds = _conditions(caller, flt)
    if caller.user_id:
        await ensure_default(rt, caller)
    stmt = select(*_COLS).where(*conds).order_by(m.SecurityGroup.name, m.SecurityGroup.id)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        gids = [r[0] for r in rows]
        tags = await tags_for(conn, gids)
        rules = await _rules_of(conn, gids)
    for name in flt.names:
        if name not in {r[2] for r in rows}:
            raise NotFound(
                f"the security group '{name}' does not exist", resource="security_group", field=name
            )
    for gid in flt.ids:
        if gid not in gids:
            raise NotFound(
                f"the security group '{gid}' does not exist", resource="security_group", field=gid
            )
    out = []
    for r in rows:
        mine = rules.get(r[0], [])
        out.append(
            SecurityGroupView(
                *r,
                ingress=tuple(x for x in mine if not x.egress),
                egress=tuple(x for x in mine if x.egress),
                tags=tags.get(r[0], {}),
            )
        )
    return out


async def _rules_of(conn: AsyncConnection, gids: Sequence[str]) -> dict[str, list[RuleView]]:
    out: dict[str, list[RuleView]] = {}
    if not gids:
        return out
    stmt = (
        select(*_RULE_COLS)
        .where(m.SecurityGroupRule.group_id.in_(gids))
        .order_by(m.SecurityGroupRule.id)
    )
    for r in await conn.execute(stmt):
        out.setdefault(r[1], []).append(RuleView(*r))
    return out


async def get(rt: Runtime, caller: Caller, group_id: str) -> SecurityGroupView:
    (view,) = await describe(rt, caller, SecurityGroupFilter(ids=(group_id,)))
    return view


async def _owned(
    conn: AsyncConnection, caller: Caller, group_id: str | None, name: str | None
) -> tuple[str, str, str]:
    """id, owner and name of a group the caller may change, by id or by the caller's name."""
    if group_id is not None:
        check_ids("security_group", [group_id], "security_group")
        stmt = select(m.SecurityGroup.id, m.SecurityGroup.owner_id, m.SecurityGroup.name).where(
            m.SecurityGroup.id == group_id
        )
    elif name is not None:
        stmt = select(m.SecurityGroup.id, m.SecurityGroup.owner_id, m.SecurityGroup.name).where(
            m.SecurityGroup.owner_id == caller.user_id, m.SecurityGroup.name == name
        )
    else:
        raise InvalidRequest(
            "give a security group id or name", resource="security_group", field="GroupId"
        )
    row = (await conn.execute(stmt.with_for_update())).first()
    rid = group_id or name or ""
    if row is None:
        raise NotFound(
            f"the security group '{rid}' does not exist", resource="security_group", field=rid
        )
    authorize(caller, Ownership(row[1], None), change=True, what="security_group", rid=rid)
    return row[0], row[1], row[2]


# --- deleting ------------------------------------------------------------------------------------


async def delete(
    rt: Runtime, caller: Caller, group_id: str | None = None, *, name: str | None = None
) -> None:
    """Delete a group no live instance and no other group's rule uses."""
    async with rt.engine.begin() as conn:
        gid, _owner, gname = await _owned(conn, caller, group_id, name)
        if gname == DEFAULT:
            raise InvalidRequest(
                "the default security group cannot be deleted",
                resource="security_group",
                field="default",
            )
        users = (
            await conn.scalars(
                select(m.Instance.id)
                .join(m.InstanceSecurityGroup, m.InstanceSecurityGroup.instance_id == m.Instance.id)
                .where(m.InstanceSecurityGroup.group_id == gid, m.Instance.state != "done")
                .limit(3)
            )
        ).all()
        if users:
            raise InvalidState(
                f"the security group '{gid}' is in use by instance(s) {', '.join(users)}",
                resource="security_group",
                state="in-use",
            )
        referrers = (
            await conn.scalars(
                select(m.SecurityGroupRule.group_id)
                .where(
                    m.SecurityGroupRule.source_group_id == gid,
                    m.SecurityGroupRule.group_id != gid,
                )
                .limit(3)
            )
        ).all()
        if referrers:
            raise InvalidState(
                f"the security group '{gid}' is referenced by the rules of group(s) "
                f"{', '.join(sorted(set(referrers)))}",
                resource="security_group",
                state="in-use",
            )
        await conn.execute(
            sql_delete(m.InstanceSecurityGroup).where(m.InstanceSecurityGroup.group_id == gid)
        )
        await conn.execute(
            sql_delete(m.SecurityGroupRule).where(m.SecurityGroupRule.group_id == gid)
        )
        await conn.execute(sql_delete(m.SecurityGroup).where(m.SecurityGroup.id == gid))
        await drop_tags(conn, [gid])
        await record(conn, [audit(gid, caller.name, "security group deleted", name=gname)])


# --- rules ---------------------------------------------------------------------------------------


def _bad(message: str, field: str = "IpPermissions") -> InvalidRequest:
    return InvalidRequest(message, resource="permission", field=field)


def normalize_protocol(protocol: str) -> str:
    p = protocol.strip().lower()
    p = _NAMED.get(p, p)
    if p in (*_PORTED, *_ICMP, "-1"):
        return p
    if p.isdigit() and 0 <= int(p) <= 255:
        return str(int(p))
    raise _bad(f"invalid protocol '{protocol[:16]}'", "IpProtocol")


def _ports(protocol: str, from_port: int | None, to_port: int | None) -> tuple[int | None, ...]:
    if protocol in _PORTED:
        if from_port is None or to_port is None:
            raise _bad(f"{protocol} rules need FromPort and ToPort", "FromPort")
        if not (0 <= from_port <= 65535 and 0 <= to_port <= 65535) or from_port > to_port:
            raise _bad("ports must be 0-65535 with FromPort <= ToPort", "FromPort")
        return from_port, to_port
    if protocol in _ICMP:
        icmp_type = -1 if from_port is None else from_port
        code = -1 if to_port is None else to_port
        if not (-1 <= icmp_type <= 255 and -1 <= code <= 255):
            raise _bad("ICMP type and code must be -1 to 255", "FromPort")
        if icmp_type == -1 and code != -1:
            raise _bad("an ICMP code needs an ICMP type", "ToPort")
        return icmp_type, code
    if from_port not in (None, -1) or to_port not in (None, -1):
        raise _bad(f"protocol '{protocol}' takes no ports", "FromPort")
    return None, None


def _cidr(value: str) -> str:
    if "/" not in value:
        raise _bad(f"'{value[:64]}' is not a CIDR block", "CidrIp")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError:
        raise _bad(f"'{value[:64]}' is not a valid CIDR block", "CidrIp") from None


@dataclasses.dataclass(frozen=True, slots=True)
class _Rule:
    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: str | None
    source_group_id: str | None
    description: str

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.protocol, self.from_port, self.to_port, self.cidr, self.source_group_id)


async def _expand(
    conn: AsyncConnection, caller: Caller, gid: str, perms: Sequence[IpPermission]
) -> list[_Rule]:
    if not perms:
        raise _bad("at least one permission is needed")
    rules: list[_Rule] = []
    for perm in perms:
        protocol = normalize_protocol(perm.protocol)
        lo, hi = _ports(protocol, perm.from_port, perm.to_port)
        if not perm.ranges and not perm.groups:
            raise _bad("a permission needs a CIDR block or a security group")
        for rng in perm.ranges:
            _text(rng.description, MAX_DESCRIPTION, "Description", "a rule description")
            rules.append(_Rule(protocol, lo, hi, _cidr(rng.cidr), None, rng.description))
        for ref in perm.groups:
            _text(ref.description, MAX_DESCRIPTION, "Description", "a rule description")
            src = (
                gid
                if ref.group_id == gid
                else (await _owned(conn, caller, ref.group_id, ref.group_name))[0]
            )
            rules.append(_Rule(protocol, lo, hi, None, src, ref.description))
    if len(rules) > MAX_RULES:
        raise _bad(f"at most {MAX_RULES} rules at once")
    return rules


async def _existing(conn: AsyncConnection, gid: str, egress: bool) -> dict[tuple[Any, ...], str]:
    rows = await conn.execute(
        select(
            m.SecurityGroupRule.protocol,
            m.SecurityGroupRule.from_port,
            m.SecurityGroupRule.to_port,
            m.SecurityGroupRule.cidr,
            m.SecurityGroupRule.source_group_id,
            m.SecurityGroupRule.id,
        ).where(m.SecurityGroupRule.group_id == gid, m.SecurityGroupRule.egress == egress)
    )
    return {tuple(r[:5]): r[5] for r in rows}


async def authorize_rules(
    rt: Runtime,
    caller: Caller,
    group_id: str | None,
    permissions: Sequence[IpPermission],
    *,
    egress: bool = False,
    group_name: str | None = None,
) -> list[RuleView]:
    """Add ingress (or egress) rules; all are added or, on any duplicate, none is."""
    async with rt.engine.begin() as conn:
        gid, _owner, _name = await _owned(conn, caller, group_id, group_name)
        rules = await _expand(conn, caller, gid, permissions)
        existing = await _existing(conn, gid, egress)
        seen: set[tuple[Any, ...]] = set()
        for rule in rules:
            if rule.key in existing or rule.key in seen:
                raise AlreadyExists(
                    f"the rule {_describe_rule(rule)} already exists in '{gid}'",
                    resource="permission",
                    field="duplicate",
                )
            seen.add(rule.key)
        if len(existing) + len(rules) > MAX_RULES:
            raise InvalidRequest(
                f"a group has at most {MAX_RULES} rules per direction",
                resource="permission",
                field="RulesPerSecurityGroupLimitExceeded",
            )
        views = [
            RuleView(
                ids.new_id("security_group_rule"),
                gid,
                egress,
                r.protocol,
                r.from_port,
                r.to_port,
                r.cidr,
                r.source_group_id,
                r.description,
            )
            for r in rules
        ]
        await conn.execute(insert(m.SecurityGroupRule), [dataclasses.asdict(v) for v in views])
        await record(
            conn,
            [
                audit(
                    gid,
                    caller.name,
                    f"{'egress' if egress else 'ingress'} authorized",
                    rules=[v.id for v in views],
                )
            ],
        )
    return views


def _describe_rule(rule: _Rule) -> str:
    ports = "" if rule.from_port is None else f" {rule.from_port}-{rule.to_port}"
    return f"{rule.protocol}{ports} {rule.cidr or rule.source_group_id}"


async def revoke_rules(
    rt: Runtime,
    caller: Caller,
    group_id: str | None,
    permissions: Sequence[IpPermission] = (),
    *,
    egress: bool = False,
    group_name: str | None = None,
    rule_ids: Sequence[str] = (),
) -> list[str]:
    """Remove rules matching ``permissions`` and the rules ``rule_ids``; all exist or none goes.

    Returns the ids of the removed rules.
    """
    if not permissions and not rule_ids:
        raise _bad("give permissions or security group rule ids")
    check_ids("security_group_rule", rule_ids, "security_group_rule")
    async with rt.engine.begin() as conn:
        gid, _owner, _name = await _owned(conn, caller, group_id, group_name)
        existing = await _existing(conn, gid, egress)
        gone: list[str] = []
        if permissions:
            for rule in await _expand(conn, caller, gid, permissions):
                found = existing.get(rule.key)
                if found is None:
                    raise NotFound(
                        f"the rule {_describe_rule(rule)} does not exist in '{gid}'",
                        resource="permission",
                        field="not_found",
                    )
                gone.append(found)
        by_id = set(existing.values())
        for rid in rule_ids:
            if rid not in by_id:
                raise NotFound(
                    f"the security group rule '{rid}' does not exist",
                    resource="security_group_rule",
                    field=rid,
                )
            gone.append(rid)
        gone = list(dict.fromkeys(gone))
        await conn.execute(
            sql_delete(m.SecurityGroupRule).where(
                m.SecurityGroupRule.group_id == gid, m.SecurityGroupRule.id.in_(gone)
            )
        )
        await record(
            conn,
            [
                audit(
                    gid,
                    caller.name,
                    f"{'egress' if egress else 'ingress'} revoked",
                    rules=gone,
                )
            ],
        )
    return gone
