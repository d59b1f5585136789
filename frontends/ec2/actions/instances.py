"""The instance actions: run, describe, status, stop/start/reboot/terminate, console,
attributes and instance types. Each handler parses, calls one service function, renders.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from broker.errors import InvalidRequest, NotFound, Unsupported
from broker.federation import hops_from_tags
from broker.service import flavors
from broker.service import images as image_svc
from broker.service import instances as svc
from broker.service import security_groups as sg_svc
from broker.service.common import Page, check_ids, decode_token, encode_token
from broker.states import Action, State
from frontends.ec2 import render as r
from frontends.ec2.actions.regions import vpc_id, zone_of
from frontends.ec2.errors import invalid, missing
from frontends.ec2.filters import INSTANCE_FIELDS, collect
from frontends.ec2.lookups import default_group
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element
from frontends.ec2.states import BY_NAME, ec2_state

REQUIREMENTS_TAG: Final = "cloudbroker:requirements"
RANK_TAG: Final = "cloudbroker:rank"
_TAG_TYPES: Final = frozenset({"instance", "volume", "network-interface"})


# --- rendering -----------------------------------------------------------------------------------


def _state(parent: Element, tag: str, state: State) -> None:
    name, code = ec2_state(state)
    box = r.node(parent, tag)
    r.text(box, "code", code)
    r.text(box, "name", name)


def _group_set(groups: Sequence[tuple[str, str]]) -> str:
    items = "".join(
        f"<item>{r.markup('groupId', gid)}{r.markup('groupName', name)}</item>"
        for gid, name in groups
    )
    return f"<groupSet>{items}</groupSet>"


def render_instance(call: Call, box: Element, inst: svc.InstanceView) -> None:
    """Append ``inst``'s ``<item>``, rendered anew only when it reads differently than before."""
    region = call.rt.config.broker.region
    build = functools.partial(_instance_item, region, inst)
    if call.fragments is None:
        box.append(build())
    else:
        call.fragments.append(box, inst.id, (region, inst), build)


def _instance_item(region: str, inst: svc.InstanceView) -> Element:
    return r.parsed(_instance_markup(region, inst))


def _instance_markup(region: str, inst: svc.InstanceView) -> str:
    """An instance's ``<item>`` as text (see :func:`frontends.ec2.render.markup`)."""
    m = r.markup
    vpc = vpc_id(region)
    name, code = ec2_state(inst.state)
    groups = _group_set(inst.security_groups)
    out = [
        "<item>",
        m("instanceId", inst.id),
        m("imageId", inst.image_id),
        f"<instanceState><code>{code}</code><name>{name}</name></instanceState>",
        m("privateDnsName", inst.hostname),
        "<dnsName></dnsName>",
        m("reason", inst.state_reason),
        m("keyName", inst.key_name) if inst.key_name else "",
        m("amiLaunchIndex", inst.launch_index),
        "<productCodes/>",
        m("instanceType", inst.flavor),
        m("launchTime", r.timestamp(inst.launched_at or inst.created_at)),
        "<placement>",
        m("availabilityZone", zone_of(region, inst)),
        "<groupName></groupName><tenancy>default</tenancy></placement>",
        "<monitoring><state>disabled</state></monitoring>",
    ]
    if inst.interfaces:
        out += [m("subnetId", inst.interfaces[0].network_id), m("vpcId", vpc)]
    if inst.private_ip:
        out.append(m("privateIpAddress", inst.private_ip))
    if inst.public_ip:
        out.append(m("ipAddress", inst.public_ip))
    out += ["<sourceDestCheck>true</sourceDestCheck>", groups]
    if inst.state in (State.FAILED, State.DONE) and inst.state_reason:
        why = "Server.InternalError" if inst.state is State.FAILED else "Client"
        out.append(
            f"<stateReason><code>{why}</code>{m('message', inst.state_reason)}</stateReason>"
        )
    out += [
        "<architecture>x86_64</architecture><rootDeviceType>instance-store</rootDeviceType>",
        "<blockDeviceMapping/><virtualizationType>hvm</virtualizationType>",
    ]
    if inst.client_token:
        out.append(m("clientToken", inst.client_token))
    if inst.tags:
        out.append("<tagSet>")
        out += (f"<item>{m('key', k)}{m('value', inst.tags[k])}</item>" for k in sorted(inst.tags))
        out.append("</tagSet>")
    out.append("<hypervisor>xen</hypervisor><networkInterfaceSet>")
    for nic in inst.interfaces:
        out += [
            "<item>",
            m("networkInterfaceId", nic.id),
            m("subnetId", nic.network_id),
            m("vpcId", vpc),
            m("ownerId", inst.owner_id),
            "<status>in-use</status>",
            m("macAddress", nic.mac),
            m("privateIpAddress", nic.ip) if nic.ip else "",
            "<sourceDestCheck>true</sourceDestCheck>",
            groups,
            "<attachment>",
            m("attachmentId", "eni-attach-" + nic.id.removeprefix("eni-")),
            m("deviceIndex", nic.device_index),
            "<status>attached</status>",
            m("attachTime", r.timestamp(inst.created_at)),
            "<deleteOnTermination>true</deleteOnTermination></attachment></item>",
        ]
    out.append("</networkInterfaceSet><ebsOptimized>false</ebsOptimized></item>")
    return "".join(out)


def render_reservations(call: Call, out: Element, items: Sequence[svc.InstanceView]) -> None:
    """Instances grouped by reservation, in the order the page gave them."""
    groups: dict[str, list[svc.InstanceView]] = {}
    for inst in items:
        groups.setdefault(inst.reservation_id, []).append(inst)
    box = r.node(out, "reservationSet")
    for rid, members in groups.items():
        it = r.item(box)
        r.text(it, "reservationId", rid)
        r.text(it, "ownerId", members[0].owner_id)
        r.node(it, "groupSet")
        inner = r.node(it, "instancesSet")
        for inst in members:
            render_instance(call, inner, inst)


def _changes(out: Element, changes: Sequence[svc.StateChange]) -> None:
    box = r.node(out, "instancesSet")
    for change in changes:
        it = r.item(box)
        r.text(it, "instanceId", change.id)
        _state(it, "currentState", change.current)
        _state(it, "previousState", change.previous)


# --- reading parameters ----------------------------------------------------------------------


def instance_ids(params: Params, *, required: bool = False) -> list[str]:
    found = check_ids("instance", params.listing("InstanceId"), "instance")
    if required and not found:
        raise missing("InstanceId")
    return found


def _instance_filter(
    call: Call, ids: Sequence[str], running_only: bool = False
) -> svc.InstanceFilter | None:
    """The service filter for ``InstanceId.N`` and ``Filter.N``, or None if nothing can match."""
    got = collect(call.params.filters(), INSTANCE_FIELDS, states=True)
    if ids:
        got.narrow("ids", ids)
    if running_only:
        got.narrow_states(BY_NAME["running"])
    if got.empty:
        return None
    base = svc.InstanceFilter(states=got.states or (), tags=tuple(got.tags))
    fields: dict[str, Any] = dict(got.fields)
    return dataclasses.replace(base, **fields)


async def _explicit(call: Call, ids: Sequence[str]) -> None:
    """Raise InvalidInstanceID.NotFound unless every id is one of the caller's instances."""
    if not ids:
        return
    page = await svc.describe(call.rt, call.caller, svc.InstanceFilter(ids=tuple(ids)))
    known = {i.id for i in page.items}
    absent = [i for i in dict.fromkeys(ids) if i not in known]
    if absent:
        raise NotFound(
            f"The instance ID '{', '.join(absent[:10])}' does not exist",
            resource="instance",
            field=absent[0],
        )


async def _explicit_missing(call: Call, ids: Sequence[str], page: Page[svc.InstanceView]) -> None:
    """Like :func:`_explicit`, asking again only for ids the page did not show (a filter may
    have hidden an instance that exists); the common case costs no second query."""
    seen = {i.id for i in page.items}
    await _explicit(call, [i for i in ids if i not in seen])


def _launch_tags(params: Params) -> dict[str, str]:
    tags: dict[str, str] = {}
    for kind, found in params.tag_specifications():
        if kind not in _TAG_TYPES:
            raise invalid("TagSpecification.ResourceType", kind, "use instance")
        if kind != "instance":
            raise Unsupported(f"Tags on {kind} resources at launch are not supported.")
        tags.update(found)
    return tags


def _check_block_devices(params: Params) -> None:
    mappings = params.members("BlockDeviceMapping")
    for number, fields in mappings:
        if "DeviceName" not in fields:
            raise missing(f"BlockDeviceMapping.{number}.DeviceName")
        size = fields.get("Ebs.VolumeSize")
        if size is not None and (not size.isdigit() or not 1 <= int(size) <= 16384):
            raise invalid(f"BlockDeviceMapping.{number}.Ebs.VolumeSize", size)
    if mappings:
        raise Unsupported("Block device mappings are not supported; the image defines the disks.")


async def launch_request(
    params: Params, default_group: Callable[[], Awaitable[str | None]]
) -> svc.LaunchRequest:
    """The launch ``params`` ask for, or EC2's error for the first thing wrong in them. Without
    security groups, the instance goes in the caller's default group, as on EC2: looked up
    (``default_group``, None to leave the groups empty) once everything was checked."""
    image_id = params.required("ImageId")
    flavor = params.required("InstanceType")
    low = params.integer("MinCount", 1, svc.MAX_COUNT)
    high = params.integer("MaxCount", 1, svc.MAX_COUNT)
    if low is None:
        raise missing("MinCount")
    if high is None:
        raise missing("MaxCount")
    if low > high:
        raise invalid("MinCount", str(low), "MinCount cannot be greater than MaxCount")
    tags = _launch_tags(params)
    requirements = tags.pop(REQUIREMENTS_TAG, "")
    rank = tags.pop(RANK_TAG, "")
    hops, origin = hops_from_tags(tags)  # a launch forwarded by a federated site
    subnet = params.text("SubnetId")
    if subnet is not None:
        check_ids("network", [subnet], "subnet")
    _check_block_devices(params)
    user_data = params.base64("UserData")
    if user_data is not None and len(user_data) > svc.MAX_USER_DATA:
        raise invalid("UserData", "<data>", f"it is limited to {svc.MAX_USER_DATA} bytes")
    group_ids = tuple(params.listing("SecurityGroupId"))
    group_names = tuple(params.listing("SecurityGroup"))
    if not group_ids and not group_names:
        found = await default_group()
        group_ids = (found,) if found is not None else ()
    return svc.LaunchRequest(
        image_id=image_id,
        flavor=flavor,
        min_count=low,
        max_count=high,
        key_name=params.text("KeyName") or None,
        user_data=user_data,
        security_group_ids=group_ids,
        security_group_names=group_names,
        zone=params.text("Placement.AvailabilityZone") or None,
        network_id=subnet,
        private_ip=params.text("PrivateIpAddress") or None,
        client_token=params.text("ClientToken") or None,
        tags=tags,
        requirements=requirements,
        rank=rank,
        hops=hops,
        origin=origin,
    )


# --- handlers ----------------------------------------------------------------------------------


async def run_instances(call: Call, _out: Element) -> bytes:
    async def default() -> str | None:
        if call.dry_run:  # changes nothing, and may be the first call to need the group
            return None
        if call.default_groups is not None:
            return await call.default_groups.get(call.rt, call.caller)
        return await default_group(call.rt, call.caller)

    req = await launch_request(call.params, default)
    if call.dry_run:
        await image_svc.get(call.rt, call.caller, req.image_id)
        if not await flavors.describe(call.rt, (req.flavor,)):
            raise invalid("InstanceType", req.flavor, "the instance type does not exist")
        call.check_dry_run()
    if sg_svc.DEFAULT in req.security_group_names:
        await sg_svc.ensure_default(call.rt, call.caller)
    launched = await svc.launch(call.rt, call.caller, req)
    # written as text in one go: the pending instances read differently by the time anyone
    # describes them, so nothing of this answer is kept
    region = call.rt.config.broker.region
    first = launched[0]
    body = [
        r.markup("reservationId", first.reservation_id),
        r.markup("ownerId", first.owner_id),
        "<groupSet/><instancesSet>",
        *(_instance_markup(region, inst) for inst in launched),
        "</instancesSet>",
    ]
    return r.document(call.action, call.version, call.request_id, "".join(body))


async def _page(
    call: Call, flt: svc.InstanceFilter | None, size: int | None, token: str
) -> Page[svc.InstanceView]:
    if flt is None:
        decode_token(token)
        return Page([])
    return await svc.describe(call.rt, call.caller, flt, limit=size, token=token or None)


async def describe_instances(call: Call, out: Element) -> None:
    ids = instance_ids(call.params)
    size, token = call.params.page(ids=bool(ids))
    flt = _instance_filter(call, ids)
    call.check_dry_run()
    page = await _page(call, flt, size, token)
    await _explicit_missing(call, ids, page)
    render_reservations(call, out, page.items)
    r.opt(out, "nextToken", page.next_token)


async def describe_instance_status(call: Call, out: Element) -> None:
    ids = instance_ids(call.params)
    size, token = call.params.page(ids=bool(ids))
    everything = call.params.boolean("IncludeAllInstances")
    flt = _instance_filter(call, ids, running_only=not everything)
    call.check_dry_run()
    page = await _page(call, flt, size, token)
    await _explicit_missing(call, ids, page)
    box = r.node(out, "instanceStatusSet")
    region = call.rt.config.broker.region
    for inst in page.items:
        it = r.item(box)
        r.text(it, "instanceId", inst.id)
        r.text(it, "availabilityZone", zone_of(region, inst))
        _state(it, "instanceState", inst.state)
        impaired = inst.state is State.UNKNOWN
        shown = inst.state is State.RUNNING or impaired
        for tag in ("systemStatus", "instanceStatus"):
            status = r.node(it, tag)
            word = "impaired" if impaired else ("ok" if shown else "not-applicable")
            r.text(status, "status", word)
            details = r.node(status, "details")
            if shown:
                d = r.item(details)
                r.text(d, "name", "reachability")
                r.text(d, "status", "failed" if impaired else "passed")
    r.opt(out, "nextToken", page.next_token)


async def _act(call: Call, out: Element, action: Action, *, reply: bool = True) -> None:
    ids = instance_ids(call.params, required=True)
    force = call.params.boolean("Force")
    call.params.boolean("Hibernate")
    if call.dry_run:
        await _explicit(call, ids)
        call.check_dry_run()
    changes = await svc.act(call.rt, call.caller, ids, action, force=force)
    if reply:
        _changes(out, changes)
    else:
        r.return_true(out)


async def terminate_instances(call: Call, out: Element) -> None:
    await _act(call, out, Action.TERMINATE)


async def stop_instances(call: Call, out: Element) -> None:
    if call.params.boolean("Hibernate"):
        raise Unsupported("Hibernation is not supported.")
    await _act(call, out, Action.STOP)


async def start_instances(call: Call, out: Element) -> None:
    await _act(call, out, Action.START)


async def reboot_instances(call: Call, out: Element) -> None:
    await _act(call, out, Action.REBOOT, reply=False)


def _one_instance(params: Params) -> str:
    rid = params.required("InstanceId")
    check_ids("instance", [rid], "instance")
    return rid


async def get_console_output(call: Call, out: Element) -> None:
    rid = _one_instance(call.params)
    call.params.boolean("Latest")
    if call.dry_run:
        await _explicit(call, [rid])
        call.check_dry_run()
    output, at = await svc.console(call.rt, call.caller, rid)
    r.text(out, "instanceId", rid)
    r.text(out, "timestamp", r.timestamp(at))
    r.text(out, "output", base64.b64encode(output.encode("utf-8", "replace")).decode())


_ATTRIBUTES: Final = frozenset(
    {
        "instanceType",
        "userData",
        "groupSet",
        "disableApiTermination",
        "disableApiStop",
        "instanceInitiatedShutdownBehavior",
        "sourceDestCheck",
        "ebsOptimized",
        "kernel",
        "ramdisk",
        "rootDeviceName",
        "blockDeviceMapping",
        "productCodes",
        "sriovNetSupport",
        "enaSupport",
        "enclaveOptions",
    }
)


async def describe_instance_attribute(call: Call, out: Element) -> None:
    rid = _one_instance(call.params)
    attribute = call.params.required("Attribute")
    if attribute not in _ATTRIBUTES:
        raise invalid("Attribute", attribute)
    inst = await svc.get(call.rt, call.caller, rid)
    call.check_dry_run()
    r.text(out, "instanceId", rid)
    if attribute == "instanceType":
        r.text(r.node(out, "instanceType"), "value", inst.flavor)
    elif attribute == "userData":
        data = await svc.user_data(call.rt, call.caller, rid)
        box = r.node(out, "userData")
        if data:
            r.text(box, "value", base64.b64encode(data).decode())
    elif attribute == "groupSet":
        box = r.node(out, "groupSet")
        for gid, _name in inst.security_groups:
            r.text(r.item(box), "groupId", gid)
    elif attribute in ("disableApiTermination", "disableApiStop", "ebsOptimized"):
        r.text(r.node(out, attribute), "value", False)
    elif attribute == "sourceDestCheck":
        r.text(r.node(out, attribute), "value", True)
    elif attribute == "instanceInitiatedShutdownBehavior":
        r.text(r.node(out, attribute), "value", "stop")
    else:
        raise Unsupported(f"The attribute {attribute} is not supported.")


_UNCHANGEABLE: Final = frozenset(
    {"DisableApiTermination", "SourceDestCheck", "GroupId", "Kernel", "Ramdisk", "EbsOptimized"}
)


async def modify_instance_attribute(call: Call, out: Element) -> None:
    rid = _one_instance(call.params)
    params = call.params
    flavor = params.text("InstanceType.Value")
    user_data = params.base64("UserData.Value")
    attribute = params.text("Attribute")
    if attribute is not None:
        value = params.required("Value")
        if attribute == "instanceType":
            flavor = value
        elif attribute == "userData":
            user_data = params.base64("Value")
        else:
            raise Unsupported(f"Changing the attribute {attribute[:64]} is not supported.")
    others = [
        k
        for k in params
        if k.split(".")[0]
        in (
            "DisableApiTermination",
            "SourceDestCheck",
            "GroupId",
            "Kernel",
            "Ramdisk",
            "EbsOptimized",
        )
    ]
    if others:
        raise Unsupported(f"Changing {others[0].split('.')[0]} is not supported.")
    if flavor is None and user_data is None:
        raise missing("InstanceType.Value or UserData.Value")
    if flavor is not None and user_data is not None:
        raise InvalidRequest("Change one attribute per request.", field="Attribute")
    if call.dry_run:
        await svc.get(call.rt, call.caller, rid)
        call.check_dry_run()
    await svc.modify(call.rt, call.caller, rid, flavor=flavor, user_data=user_data)
    r.return_true(out)


async def describe_instance_types(call: Call, out: Element) -> None:
    wanted = call.params.listing("InstanceType")
    size, token = call.params.page(low=5, high=100)
    got = collect(call.params.filters(), {"instance-type": "names"})
    call.check_dry_run()
    names = tuple(wanted)
    if "names" in got.fields:
        names = (
            tuple(n for n in names if n in got.fields["names"]) if names else got.fields["names"]
        )
        if not names:
            return _types(out, [], None)
    found = await flavors.describe(call.rt, names)
    absent = set(wanted) - {f.name for f in found}
    if absent:
        raise invalid("InstanceType", sorted(absent)[0], "the instance type does not exist")
    found.sort(key=lambda f: f.name)
    after = decode_token(token or None)
    if after is not None:
        found = [f for f in found if f.name > after]
    limit = size or 100
    more = len(found) > limit
    found = found[:limit]
    _types(out, found, encode_token(found[-1].name) if more else None)


def _types(out: Element, found: Sequence[flavors.FlavorView], next_token: str | None) -> None:
    box = r.node(out, "instanceTypeSet")
    for f in found:
        it = r.item(box)
        r.text(it, "instanceType", f.name)
        r.text(it, "currentGeneration", True)
        r.text(it, "freeTierEligible", False)
        r.strings(it, "supportedUsageClasses", ["on-demand"])
        r.strings(it, "supportedRootDeviceTypes", ["instance-store"])
        r.strings(it, "supportedVirtualizationTypes", ["hvm"])
        r.text(it, "bareMetal", False)
        r.text(it, "hypervisor", "xen")
        proc = r.node(it, "processorInfo")
        r.strings(proc, "supportedArchitectures", [f.arch])
        vcpu = r.node(it, "vCpuInfo")
        r.text(vcpu, "defaultVCpus", f.vcpus)
        r.text(r.node(it, "memoryInfo"), "sizeInMiB", f.memory_mb)
        r.text(it, "instanceStorageSupported", f.disk_gb > 0)
        if f.disk_gb:
            r.text(r.node(it, "instanceStorageInfo"), "totalSizeInGB", f.disk_gb)
    r.opt(out, "nextToken", next_token)


ACTIONS: Final[dict[str, Handler]] = {
    "RunInstances": run_instances,
    "DescribeInstances": describe_instances,
    "DescribeInstanceStatus": describe_instance_status,
    "TerminateInstances": terminate_instances,
    "StopInstances": stop_instances,
    "StartInstances": start_instances,
    "RebootInstances": reboot_instances,
    "GetConsoleOutput": get_console_output,
    "DescribeInstanceAttribute": describe_instance_attribute,
    "ModifyInstanceAttribute": modify_instance_attribute,
    "DescribeInstanceTypes": describe_instance_types,
}
