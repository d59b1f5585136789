"""The Elastic IP actions: allocate, associate, disassociate, release and describe.

Every address is a VPC address (``domain`` vpc); ``Domain=standard`` (EC2-Classic) is refused
as unsupported. An address is named by AllocationId or, as euca2ools does, by PublicIp.
Network interfaces cannot be named as targets: addresses go to instances.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from broker.errors import Unsupported
from broker.service import addresses as svc
from broker.service.common import check_ids
from frontends.ec2 import render as r
from frontends.ec2.actions.tags import creation_tags, post_filter
from frontends.ec2.errors import invalid, missing
from frontends.ec2.filters import ADDRESS_FIELDS, collect
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element

DOMAIN: Final = "vpc"


def _public_ip(value: str, name: str = "PublicIp") -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise invalid(name, value, "it is not an IP address") from None


def _which(params: Params) -> tuple[str | None, str | None]:
    """(allocation id, public address) naming one address; the id wins when both are given."""
    aid = params.text("AllocationId") or None
    ip = params.text("PublicIp") or None
    if aid is None and ip is None:
        raise missing("AllocationId")
    if aid is not None:
        check_ids("address", [aid], "address")
        return aid, None
    assert ip is not None
    return None, _public_ip(ip)


async def _exists(call: Call, aid: str | None, ip: str | None) -> None:
    await svc.describe(
        call.rt,
        call.caller,
        svc.AddressFilter(ids=(aid,) if aid else (), public_ips=(ip,) if ip else ()),
    )


async def allocate_address(call: Call, out: Element) -> None:
    domain = call.params.text("Domain") or DOMAIN
    if domain == "standard":
        raise Unsupported("EC2-Classic addresses are not supported; use Domain=vpc.")
    if domain != DOMAIN:
        raise invalid("Domain", domain, "use vpc")
    if call.params.text("Address") or call.params.text("PublicIpv4Pool"):
        raise Unsupported("Choosing the address or its pool is not supported.")
    tags = creation_tags(call.params, "elastic-ip")
    call.check_dry_run()
    addr = await svc.allocate(call.rt, call.caller, tags=tags)
    r.text(out, "publicIp", addr.public_ip)
    r.text(out, "domain", DOMAIN)
    r.text(out, "allocationId", addr.id)
    r.text(out, "networkBorderGroup", call.rt.config.broker.region)
    r.tag_set(out, addr.tags)


async def associate_address(call: Call, out: Element) -> None:
    params = call.params
    aid, ip = _which(params)
    if params.text("NetworkInterfaceId") or params.text("PrivateIpAddress"):
        raise Unsupported("Addresses are associated with instances, not network interfaces.")
    instance_id = params.required("InstanceId")
    check_ids("instance", [instance_id], "instance")
    again = params.boolean("AllowReassociation")
    if call.dry_run:
        await _exists(call, aid, ip)
        call.check_dry_run()
    assoc = await svc.associate(
        call.rt,
        call.caller,
        instance_id,
        allocation_id=aid,
        public_ip=ip,
        allow_reassociation=again,
    )
    r.return_true(out)
    r.text(out, "associationId", assoc)


async def disassociate_address(call: Call, out: Element) -> None:
    params = call.params
    assoc = params.text("AssociationId") or None
    ip = params.text("PublicIp") or None
    if assoc is None and ip is None:
        raise missing("AssociationId")
    if assoc is not None:
        check_ids("association", [assoc], "association")
        ip = None
    else:
        assert ip is not None
        ip = _public_ip(ip)
    if call.dry_run:
        if ip is not None:
            await _exists(call, None, ip)
        call.check_dry_run()
    await svc.disassociate(call.rt, call.caller, association_id=assoc, public_ip=ip)
    r.return_true(out)


async def release_address(call: Call, out: Element) -> None:
    aid, ip = _which(call.params)
    if call.dry_run:
        await _exists(call, aid, ip)
        call.check_dry_run()
    await svc.release(call.rt, call.caller, allocation_id=aid, public_ip=ip)
    r.return_true(out)


async def describe_addresses(call: Call, out: Element) -> None:
    params = call.params
    aids = tuple(check_ids("address", params.listing("AllocationId"), "address"))
    ips = tuple(_public_ip(ip, "PublicIp.N") for ip in params.listing("PublicIp"))
    got = collect(
        params.filters(),
        ADDRESS_FIELDS,
        extra=frozenset({"allocation-id", "public-ip", "domain", "private-ip-address"}),
    )
    call.check_dry_run()
    f = got.fields
    found = await svc.describe(
        call.rt,
        call.caller,
        svc.AddressFilter(
            ids=aids,
            public_ips=ips,
            instance_ids=f.get("instance_ids", ()),
            association_ids=f.get("association_ids", ()),
            tags=tuple(got.tags),
        ),
    )
    box = r.node(out, "addressesSet")
    if got.empty:
        return
    for addr in found:
        facts = {
            "allocation-id": addr.id,
            "public-ip": addr.public_ip,
            "domain": DOMAIN,
            "private-ip-address": addr.private_ip or "",
        }
        if not post_filter(got.extra, facts):
            continue
        it = r.item(box)
        r.text(it, "publicIp", addr.public_ip)
        r.text(it, "allocationId", addr.id)
        r.text(it, "domain", DOMAIN)
        r.opt(it, "instanceId", addr.instance_id)
        r.opt(it, "associationId", addr.association_id)
        r.opt(it, "privateIpAddress", addr.private_ip if addr.instance_id else None)
        r.text(it, "networkBorderGroup", call.rt.config.broker.region)
        r.tag_set(it, addr.tags)


ACTIONS: Final[dict[str, Handler]] = {
    "AllocateAddress": allocate_address,
    "AssociateAddress": associate_address,
    "DisassociateAddress": disassociate_address,
    "ReleaseAddress": release_address,
    "DescribeAddresses": describe_addresses,
}
