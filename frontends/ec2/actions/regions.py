"""Decides what the broker shows as EC2's geography and account: one region, a zone per
cluster, one default VPC, a subnet per network, and network interfaces from instances.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Final

from broker.errors import NotFound
from broker.service import instances as svc
from broker.service import networks, targets
from broker.service.common import check_ids
from broker.states import State
from frontends.ec2 import render as r
from frontends.ec2.errors import invalid
from frontends.ec2.lookups import zone_names
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element

VPC_CIDR: Final = "10.0.0.0/8"


def vpc_id(region: str) -> str:
    """The one default VPC's id, stable per region."""
    return "vpc-0" + hashlib.sha256(region.encode()).hexdigest()[:16]


def default_zone(call: Call) -> str:
    return f"{call.rt.config.broker.region}a"


def zone_of(region: str, inst: svc.InstanceView) -> str:
    """The zone asked for at launch, else the cluster it runs in, else the region's first."""
    return inst.zone or (inst.target_zone if inst.target_id else None) or f"{region}a"


def _filters(params: Params, known: frozenset[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in params.filters():
        if name not in known:
            raise invalid("Filter", name, "the filter name is not supported")
        out[name] = values
    return out


async def describe_regions(call: Call, out: Element) -> None:
    region = call.rt.config.broker.region
    wanted = call.params.listing("RegionName")
    flt = _filters(call.params, frozenset({"region-name", "endpoint"}))
    call.check_dry_run()
    names = set(wanted) | set(flt.get("region-name", ()))
    box = r.node(out, "regionInfo")
    listed = [(region, call.host or call.rt.listeners.get("ec2", ""))]
    for peer in await targets.describe(call.rt, call.caller, kind="peer"):
        # a linked peer cluster is a region of its own, reached at its own endpoint
        listed.append(
            (str(peer.settings.get("region") or peer.name), str(peer.settings.get("url", "")))
        )
    for name, endpoint in listed:
        if names and name not in names:
            continue
        it = r.item(box)
        r.text(it, "regionName", name)
        r.text(it, "regionEndpoint", endpoint)
        r.text(it, "optInStatus", "opt-in-not-required")


async def describe_availability_zones(call: Call, out: Element) -> None:
    wanted = set(call.params.listing("ZoneName"))
    flt = _filters(call.params, frozenset({"zone-name", "state", "region-name"}))
    call.check_dry_run()
    region = call.rt.config.broker.region
    box = r.node(out, "availabilityZoneInfo")
    for name in await zone_names(call.rt):
        if (wanted and name not in wanted) or ("zone-name" in flt and name not in flt["zone-name"]):
            continue
        if ("state" in flt and "available" not in flt["state"]) or (
            "region-name" in flt and region not in flt["region-name"]
        ):
            continue
        it = r.item(box)
        r.text(it, "zoneName", name)
        r.text(it, "zoneState", "available")
        r.text(it, "regionName", region)
        r.text(it, "zoneId", name)
        r.text(it, "zoneType", "availability-zone")
        r.text(it, "optInStatus", "opt-in-not-required")
        r.node(it, "messageSet")


async def describe_account_attributes(call: Call, out: Element) -> None:
    wanted = set(call.params.listing("AttributeName"))
    call.check_dry_run()
    attributes = (
        ("supported-platforms", ["VPC"]),
        ("default-vpc", [vpc_id(call.rt.config.broker.region)]),
        ("max-instances", [str(svc.MAX_COUNT)]),
        ("max-elastic-ips", ["5"]),
        ("vpc-max-security-groups-per-interface", ["5"]),
    )
    box = r.node(out, "accountAttributeSet")
    for name, vals in attributes:
        if wanted and name not in wanted:
            continue
        it = r.item(box)
        r.text(it, "attributeName", name)
        r.values(it, "attributeValueSet", vals, "attributeValue")


async def describe_vpcs(call: Call, out: Element) -> None:
    vid = vpc_id(call.rt.config.broker.region)
    wanted = set(call.params.listing("VpcId"))
    flt = _filters(call.params, frozenset({"vpc-id", "is-default", "state", "cidr"}))
    call.check_dry_run()
    missing = wanted - {vid}
    if missing:
        raise NotFound(f"The vpc ID '{sorted(missing)[0]}' does not exist", resource="vpc")
    box = r.node(out, "vpcSet")
    checks = {"vpc-id": vid, "is-default": "true", "state": "available", "cidr": VPC_CIDR}
    if any(checks[k] not in v for k, v in flt.items()):
        return
    it = r.item(box)
    r.text(it, "vpcId", vid)
    r.text(it, "ownerId", call.caller.user_id)
    r.text(it, "state", "available")
    r.text(it, "cidrBlock", VPC_CIDR)
    r.text(it, "dhcpOptionsId", "default")
    r.text(it, "instanceTenancy", "default")
    r.text(it, "isDefault", True)


def _free(net: networks.NetworkView) -> int:
    first = int(ipaddress.ip_address(net.range_start))
    last = int(ipaddress.ip_address(net.range_end))
    return max(0, last - first + 1 - net.leased)


async def describe_subnets(call: Call, out: Element) -> None:
    wanted = check_ids("network", call.params.listing("SubnetId"), "subnet")
    flt = _filters(
        call.params,
        frozenset({"subnet-id", "vpc-id", "availability-zone", "default-for-az", "state"}),
    )
    call.check_dry_run()
    found = await networks.describe(call.rt, call.caller, wanted)
    missing = set(wanted) - {n.id for n in found}
    if missing:
        raise NotFound(f"The subnet ID '{sorted(missing)[0]}' does not exist", resource="subnet")
    vid = vpc_id(call.rt.config.broker.region)
    box = r.node(out, "subnetSet")
    for net in found:
        zone = net.zone or default_zone(call)
        facts = {
            "subnet-id": net.id,
            "vpc-id": vid,
            "availability-zone": zone,
            "default-for-az": "true" if net.is_default else "false",
            "state": net.state,
        }
        if any(facts[k] not in v for k, v in flt.items()):
            continue
        it = r.item(box)
        r.text(it, "subnetId", net.id)
        r.text(it, "subnetArn", f"arn:cloudbroker:ec2:subnet/{net.id}")
        r.text(it, "state", net.state)
        r.text(it, "vpcId", vid)
        r.text(it, "cidrBlock", net.cidr)
        r.text(it, "availableIpAddressCount", _free(net))
        r.text(it, "availabilityZone", zone)
        r.text(it, "defaultForAz", net.is_default)
        r.text(it, "mapPublicIpOnLaunch", False)
        r.text(it, "ownerId", call.caller.user_id)
        r.tag_set(it, {"Name": net.name})


async def describe_network_interfaces(call: Call, out: Element) -> None:
    wanted = set(check_ids("interface", call.params.listing("NetworkInterfaceId"), "interface"))
    flt = _filters(
        call.params,
        frozenset(
            {"network-interface-id", "attachment.instance-id", "subnet-id", "private-ip-address"}
        ),
    )
    call.check_dry_run()
    instance_ids = tuple(flt.get("attachment.instance-id", ()))
    vid = vpc_id(call.rt.config.broker.region)
    box = r.node(out, "networkInterfaceSet")
    seen: set[str] = set()
    token: str | None = None
    while True:
        page = await svc.describe(
            call.rt, call.caller, svc.InstanceFilter(ids=instance_ids), token=token
        )
        for inst in page.items:
            if inst.state is State.DONE:
                continue
            for nic in inst.interfaces:
                facts = {
                    "network-interface-id": nic.id,
                    "attachment.instance-id": inst.id,
                    "subnet-id": nic.network_id,
                    "private-ip-address": nic.ip or "",
                }
                if (wanted and nic.id not in wanted) or any(
                    facts[k] not in v for k, v in flt.items()
                ):
                    continue
                seen.add(nic.id)
                _interface(box, zone_of(call.rt.config.broker.region, inst), inst, nic, vid)
        token = page.next_token
        if token is None:
            break
    missing = wanted - seen
    if missing:
        raise NotFound(
            f"The networkInterface ID '{sorted(missing)[0]}' does not exist", resource="interface"
        )


def _interface(
    box: Element, zone: str, inst: svc.InstanceView, nic: svc.InterfaceView, vid: str
) -> None:
    it = r.item(box)
    r.text(it, "networkInterfaceId", nic.id)
    r.text(it, "subnetId", nic.network_id)
    r.text(it, "vpcId", vid)
    r.text(it, "availabilityZone", zone)
    r.text(it, "description", "")
    r.text(it, "ownerId", inst.owner_id)
    r.text(it, "requesterManaged", False)
    r.text(it, "status", "in-use")
    r.text(it, "macAddress", nic.mac)
    r.opt(it, "privateIpAddress", nic.ip)
    r.text(it, "sourceDestCheck", True)
    r.text(it, "interfaceType", "interface")
    groups = r.node(it, "groupSet")
    for gid, name in inst.security_groups:
        g = r.item(groups)
        r.text(g, "groupId", gid)
        r.text(g, "groupName", name)
    att = r.node(it, "attachment")
    r.text(att, "attachmentId", "eni-attach-" + nic.id.removeprefix("eni-"))
    r.text(att, "instanceId", inst.id)
    r.text(att, "instanceOwnerId", inst.owner_id)
    r.text(att, "deviceIndex", nic.device_index)
    r.text(att, "status", "attached")
    r.text(att, "attachTime", r.timestamp(inst.created_at))
    r.text(att, "deleteOnTermination", True)
    addrs = r.node(it, "privateIpAddressesSet")
    if nic.ip:
        a = r.item(addrs)
        r.text(a, "privateIpAddress", nic.ip)
        r.text(a, "primary", True)


ACTIONS: Final[dict[str, Handler]] = {
    "DescribeRegions": describe_regions,
    "DescribeAvailabilityZones": describe_availability_zones,
    "DescribeAccountAttributes": describe_account_attributes,
    "DescribeVpcs": describe_vpcs,
    "DescribeSubnets": describe_subnets,
    "DescribeNetworkInterfaces": describe_network_interfaces,
}
