"""The security group actions: create, delete, describe, and authorize/revoke rules.

Rules arrive as ``IpPermissions.N`` (IpProtocol, FromPort, ToPort, ``IpRanges.M.CidrIp``,
``Ipv6Ranges.M.CidrIpv6``, ``UserIdGroupPairs.M.GroupId``/``GroupName``, each range with an
optional Description) or in the legacy flat form euca2ools and old SDKs send (IpProtocol,
FromPort, ToPort, CidrIp, SourceSecurityGroupName). Stored rules are shown grouped back into
EC2's permissions: one per protocol and port range, listing its ranges and groups.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Final

from broker.errors import NotFound, Unsupported
from broker.service import security_groups as svc
from broker.service.common import check_ids
from frontends.ec2 import render as r
from frontends.ec2.actions.regions import vpc_id
from frontends.ec2.actions.tags import creation_tags, post_filter
from frontends.ec2.errors import WireError, combination, invalid, missing
from frontends.ec2.filters import SECURITY_GROUP_FIELDS, collect
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element

_PERMISSION_FIELDS: Final = frozenset({"IpProtocol", "FromPort", "ToPort"})
_LEGACY: Final = (
    "IpProtocol",
    "FromPort",
    "ToPort",
    "CidrIp",
    "SourceSecurityGroupName",
    "SourceSecurityGroupOwnerId",
)


# --- reading rules -------------------------------------------------------------------------------


def _port(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    text = value.strip()
    if not text.lstrip("-").isdigit() or len(text) > 6 or not -1 <= int(text) <= 65535:
        raise invalid(name, value, "it must be a port number (-1 to 65535)")
    return int(text)


def _nested(fields: Mapping[str, str], head: str, where: str) -> list[dict[str, str]]:
    """``Head.M.Sub`` entries of one permission's fields, grouped by M in order."""
    groups: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        first, _, rest = key.partition(".")
        if first != head:
            continue
        number, _, sub = rest.partition(".")
        if not number.isdigit() or number.startswith("0") or not sub:
            raise invalid("parameter name", f"{where}.{key}", "it is not known")
        groups.setdefault(int(number), {})[sub] = value
    return [groups[n] for n in sorted(groups)]


def _permission(fields: Mapping[str, str], where: str) -> svc.IpPermission:
    for key in fields:
        head = key.partition(".")[0]
        if key not in _PERMISSION_FIELDS and head not in (
            "IpRanges",
            "Ipv6Ranges",
            "UserIdGroupPairs",
            "Groups",
            "PrefixListIds",
        ):
            raise invalid("parameter name", f"{where}.{key}", "it is not known")
    if _nested(fields, "PrefixListIds", where):
        raise Unsupported("Prefix lists are not supported in security group rules.")
    protocol = fields.get("IpProtocol")
    if not protocol:
        raise missing(f"{where}.IpProtocol")
    ranges: list[svc.IpRange] = []
    for head, inner in (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6")):
        for n, entry in enumerate(_nested(fields, head, where), 1):
            cidr = entry.get(inner)
            if not cidr:
                raise missing(f"{where}.{head}.{n}.{inner}")
            ranges.append(svc.IpRange(cidr, entry.get("Description", "")))
    refs: list[svc.GroupRef] = []
    for head in ("UserIdGroupPairs", "Groups"):
        for n, entry in enumerate(_nested(fields, head, where), 1):
            gid = entry.get("GroupId") or None
            name = entry.get("GroupName") or None
            if gid is None and name is None:
                raise missing(f"{where}.{head}.{n}.GroupId")
            if gid is not None:
                check_ids("security_group", [gid], "security_group")
                name = None
            refs.append(svc.GroupRef(gid, name, entry.get("Description", "")))
    return svc.IpPermission(
        protocol,
        _port(fields.get("FromPort"), f"{where}.FromPort"),
        _port(fields.get("ToPort"), f"{where}.ToPort"),
        tuple(ranges),
        tuple(refs),
    )


def _legacy(params: Params) -> svc.IpPermission | None:
    if not any(name in params for name in _LEGACY):
        return None
    protocol = params.text("IpProtocol") or "-1"
    cidr = params.text("CidrIp")
    source = params.text("SourceSecurityGroupName")
    if cidr is None and source is None:
        raise missing("CidrIp")
    ranges = (svc.IpRange(cidr),) if cidr else ()
    groups = (svc.GroupRef(group_name=source),) if source else ()
    return svc.IpPermission(
        protocol,
        _port(params.text("FromPort"), "FromPort"),
        _port(params.text("ToPort"), "ToPort"),
        ranges,
        groups,
    )


def permissions(params: Params) -> list[svc.IpPermission]:
    """Every permission of the request, in either form (not both at once)."""
    found = [
        _permission(fields, f"IpPermissions.{n}") for n, fields in params.members("IpPermissions")
    ]
    flat = _legacy(params)
    if flat is not None:
        if found:
            raise combination("Give IpPermissions or the flat IpProtocol/CidrIp form, not both.")
        found.append(flat)
    for perm in found:
        svc.normalize_protocol(perm.protocol)
    return found


def _target(params: Params) -> tuple[str | None, str | None]:
    gid = params.text("GroupId") or None
    name = params.text("GroupName") or None
    if gid is None and name is None:
        raise missing("GroupId")
    if gid is not None:
        check_ids("security_group", [gid], "security_group")
        name = None
    return gid, name


# --- rendering -----------------------------------------------------------------------------------


def _ipv6(cidr: str) -> bool:
    return ":" in cidr


def _render_rules(
    parent: Element,
    tag: str,
    rules: Sequence[svc.RuleView],
    owner: str,
    names: Mapping[str, str],
) -> None:
    grouped: dict[tuple[Any, ...], list[svc.RuleView]] = {}
    for rule in rules:
        grouped.setdefault((rule.protocol, rule.from_port, rule.to_port), []).append(rule)
    box = r.node(parent, tag)
    for (protocol, low, high), members in grouped.items():
        it = r.item(box)
        r.text(it, "ipProtocol", protocol)
        if low is not None:
            r.text(it, "fromPort", low)
            r.text(it, "toPort", high)
        pairs = r.node(it, "groups")
        for rule in members:
            if rule.source_group_id:
                p = r.item(pairs)
                r.text(p, "userId", owner)
                r.text(p, "groupId", rule.source_group_id)
                r.opt(p, "groupName", names.get(rule.source_group_id))
                r.opt(p, "description", rule.description)
        for box_tag, inner, v6 in (("ipRanges", "cidrIp", False), ("ipv6Ranges", "cidrIpv6", True)):
            ranges = r.node(it, box_tag)
            for rule in members:
                if rule.cidr and _ipv6(rule.cidr) == v6:
                    p = r.item(ranges)
                    r.text(p, inner, rule.cidr)
                    r.opt(p, "description", rule.description)
        r.node(it, "prefixListIds")


def _render_group(
    call: Call, box: Element, group: svc.SecurityGroupView, names: Mapping[str, str]
) -> None:
    it = r.item(box)
    r.text(it, "ownerId", group.owner_id)
    r.text(it, "groupId", group.id)
    r.text(it, "groupName", group.name)
    r.text(it, "groupDescription", group.description)
    r.text(it, "vpcId", vpc_id(call.rt.config.broker.region))
    _render_rules(it, "ipPermissions", group.ingress, group.owner_id, names)
    _render_rules(it, "ipPermissionsEgress", group.egress, group.owner_id, names)
    r.tag_set(it, group.tags)


def _render_rule_set(out: Element, owner: str, rules: Sequence[svc.RuleView]) -> None:
    box = r.node(out, "securityGroupRuleSet")
    for rule in rules:
        it = r.item(box)
        r.text(it, "securityGroupRuleId", rule.id)
        r.text(it, "groupId", rule.group_id)
        r.text(it, "groupOwnerId", owner)
        r.text(it, "isEgress", rule.egress)
        r.text(it, "ipProtocol", rule.protocol)
        r.text(it, "fromPort", -1 if rule.from_port is None else rule.from_port)
        r.text(it, "toPort", -1 if rule.to_port is None else rule.to_port)
        if rule.cidr:
            r.text(it, "cidrIpv6" if _ipv6(rule.cidr) else "cidrIpv4", rule.cidr)
        if rule.source_group_id:
            ref = r.node(it, "referencedGroupInfo")
            r.text(ref, "groupId", rule.source_group_id)
            r.text(ref, "userId", owner)
        r.opt(it, "description", rule.description)


# --- handlers ------------------------------------------------------------------------------------


async def create_security_group(call: Call, out: Element) -> None:
    params = call.params
    name = params.required("GroupName")
    description = params.required("GroupDescription")
    svc.check_name(name)
    vpc = params.text("VpcId")
    if vpc is not None and vpc != vpc_id(call.rt.config.broker.region):
        raise NotFound(f"The vpc ID '{vpc[:64]}' does not exist", resource="vpc", field=vpc)
    tags = creation_tags(params, "security-group")
    call.check_dry_run()
    group = await svc.create(call.rt, call.caller, name, description, tags=tags)
    r.return_true(out)
    r.text(out, "groupId", group.id)
    r.tag_set(out, group.tags)


async def delete_security_group(call: Call, out: Element) -> None:
    gid, name = _target(call.params)
    if call.dry_run:
        flt = svc.SecurityGroupFilter(ids=(gid,) if gid else (), names=(name,) if name else ())
        await svc.describe(call.rt, call.caller, flt)
        call.check_dry_run()
    await svc.delete(call.rt, call.caller, gid, name=name)
    r.return_true(out)


def _page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("sg-"):
        raise WireError("InvalidNextToken", "The pagination token is not valid.")
    return raw


async def describe_security_groups(call: Call, out: Element) -> None:
    params = call.params
    ids = tuple(check_ids("security_group", params.listing("GroupId"), "security_group"))
    names = tuple(params.listing("GroupName"))
    size, token = params.page(low=5, high=1000, ids=bool(ids or names))
    after = _page_token(token)
    got = collect(params.filters(), SECURITY_GROUP_FIELDS, extra=frozenset({"vpc-id", "owner-id"}))
    call.check_dry_run()
    f = got.fields
    flt = svc.SecurityGroupFilter(
        ids=ids,
        names=names,
        group_ids=f.get("group_ids", ()),
        group_names=f.get("group_names", ()),
        descriptions=f.get("descriptions", ()),
        tags=tuple(got.tags),
    )
    groups = await svc.describe(call.rt, call.caller, flt)
    box = r.node(out, "securityGroupInfo")
    if got.empty:
        return
    vid = vpc_id(call.rt.config.broker.region)
    shown = [
        g
        for g in sorted(groups, key=lambda g: g.id)
        if post_filter(got.extra, {"vpc-id": vid, "owner-id": g.owner_id})
        and (after is None or g.id > after)
    ]
    more = size is not None and len(shown) > size
    shown = shown[:size] if size is not None else shown
    names_by_id = {g.id: g.name for g in groups}
    sources = {x.source_group_id for g in shown for x in (*g.ingress, *g.egress)}
    if any(s and s not in names_by_id for s in sources):
        names_by_id.update({g.id: g.name for g in await svc.describe(call.rt, call.caller)})
    for group in shown:
        _render_group(call, box, group, names_by_id)
    if more:
        r.text(out, "nextToken", base64.urlsafe_b64encode(shown[-1].id.encode()).decode())


async def _authorize(call: Call, out: Element, *, egress: bool) -> None:
    gid, name = _target(call.params)
    perms = permissions(call.params)
    if not perms:
        raise missing("IpPermissions")
    if call.dry_run:
        flt = svc.SecurityGroupFilter(ids=(gid,) if gid else (), names=(name,) if name else ())
        await svc.describe(call.rt, call.caller, flt)
        call.check_dry_run()
    rules = await svc.authorize_rules(
        call.rt, call.caller, gid, perms, egress=egress, group_name=name
    )
    r.return_true(out)
    _render_rule_set(out, call.caller.user_id, rules)


async def _revoke(call: Call, out: Element, *, egress: bool) -> None:
    gid, name = _target(call.params)
    perms = permissions(call.params)
    rule_ids = check_ids(
        "security_group_rule", call.params.listing("SecurityGroupRuleId"), "security_group_rule"
    )
    if not perms and not rule_ids:
        raise missing("IpPermissions")
    if call.dry_run:
        flt = svc.SecurityGroupFilter(ids=(gid,) if gid else (), names=(name,) if name else ())
        await svc.describe(call.rt, call.caller, flt)
        call.check_dry_run()
    await svc.revoke_rules(
        call.rt, call.caller, gid, perms, egress=egress, group_name=name, rule_ids=rule_ids
    )
    r.return_true(out)


async def authorize_ingress(call: Call, out: Element) -> None:
    await _authorize(call, out, egress=False)


async def authorize_egress(call: Call, out: Element) -> None:
    await _authorize(call, out, egress=True)


async def revoke_ingress(call: Call, out: Element) -> None:
    await _revoke(call, out, egress=False)


async def revoke_egress(call: Call, out: Element) -> None:
    await _revoke(call, out, egress=True)


ACTIONS: Final[dict[str, Handler]] = {
    "CreateSecurityGroup": create_security_group,
    "DeleteSecurityGroup": delete_security_group,
    "DescribeSecurityGroups": describe_security_groups,
    "AuthorizeSecurityGroupIngress": authorize_ingress,
    "AuthorizeSecurityGroupEgress": authorize_egress,
    "RevokeSecurityGroupIngress": revoke_ingress,
    "RevokeSecurityGroupEgress": revoke_egress,
}
