"""The image actions: describe (owners, executable-by, filters), register, deregister,
create from an instance, and launch permissions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from broker.errors import NotFound, Unsupported
from broker.service import images as svc
from broker.service.common import check_ids
from frontends.ec2 import render as r
from frontends.ec2.errors import invalid, missing
from frontends.ec2.filters import IMAGE_FIELDS, collect
from frontends.ec2.protocol import Call, Handler, Params
from frontends.ec2.render import Element

#: Owner.N aliases of AWS that own nothing here (so they match no image rather than erring)
_ALIASES: Final = frozenset({"amazon", "aws-marketplace", "aws-backup-vault"})
_ARCHES: Final = frozenset({"x86_64", "i386", "arm64", "aarch64"})


def _owner(image: svc.ImageView) -> str:
    return image.owner_id or "cloudbroker"


def _render(box: Element, image: svc.ImageView) -> None:
    it = r.item(box)
    r.text(it, "imageId", image.id)
    r.text(it, "imageLocation", image.location or image.name)
    r.text(it, "imageState", image.state)
    r.text(it, "imageOwnerId", _owner(image))
    r.text(it, "creationDate", r.timestamp(image.created_at))
    r.text(it, "isPublic", image.visibility == "public")
    r.text(it, "architecture", image.arch)
    r.text(it, "imageType", "kernel" if image.kind == "kernel" else "machine")
    if image.owner_id is None:
        r.text(it, "imageOwnerAlias", "cloudbroker")
    r.text(it, "name", image.name)
    r.text(it, "description", image.description)
    r.text(it, "rootDeviceType", "instance-store")
    r.text(it, "rootDeviceName", image.root_device)
    r.node(it, "blockDeviceMapping")
    r.text(it, "virtualizationType", "hvm")
    r.tag_set(it, image.tags)
    r.text(it, "hypervisor", "xen")


async def describe_images(call: Call, out: Element) -> None:
    params = call.params
    ids = tuple(check_ids("image", params.listing("ImageId"), "image"))
    owners = tuple(params.listing("Owner"))
    executable = tuple(params.listing("ExecutableBy"))
    size, token = params.page(ids=False)
    got = collect(params.filters(), IMAGE_FIELDS, extra=frozenset({"is-public"}))
    visibility: tuple[str, ...] = ()
    if "is-public" in got.extra:
        flags = {v.lower() for v in got.extra["is-public"]}
        if not flags <= {"true", "false"}:
            raise invalid("Filter", "is-public", "its values are true or false")
        if flags == {"true"}:
            visibility = ("public",)
        elif flags == {"false"}:
            visibility = ("private", "group")
    call.check_dry_run()
    if ids:
        got.narrow("ids", ids)
    if owners:
        kept = tuple(o for o in owners if o not in _ALIASES)
        got.narrow("owners", kept or ("-",))
    fields: dict[str, Any] = dict(got.fields)
    flt = dataclasses.replace(
        svc.ImageFilter(executable_by=executable, visibility=visibility, tags=tuple(got.tags)),
        **fields,
    )
    box = r.node(out, "imagesSet")
    if got.empty:
        return
    page = await svc.describe(call.rt, call.caller, flt, limit=size, token=token or None)
    if ids and not params.filters() and not owners and not executable:
        absent = set(ids) - {i.id for i in page.items}
        if absent:
            first = sorted(absent)[0]
            raise NotFound(f"The image id '[{first}]' does not exist", resource="image")
    for image in page.items:
        _render(box, image)
    r.opt(out, "nextToken", page.next_token)


def _spec(params: Params) -> svc.ImageSpec:
    name = params.required("Name")
    arch = params.text("Architecture") or "x86_64"
    if arch not in _ARCHES:
        raise invalid("Architecture", arch)
    virt = params.text("VirtualizationType") or "hvm"
    if virt not in ("hvm", "paravirtual"):
        raise invalid("VirtualizationType", virt)
    for number, fields in params.members("BlockDeviceMapping"):
        if "DeviceName" not in fields:
            raise missing(f"BlockDeviceMapping.{number}.DeviceName")
        if any(k.startswith("Ebs.") for k in fields):
            raise Unsupported("Registering an image from EBS snapshots is not supported.")
    return svc.ImageSpec(
        name=name,
        location=params.text("ImageLocation") or "",
        description=params.text("Description") or "",
        arch=arch,
        root_device=params.text("RootDeviceName") or "/dev/vda",
    )


async def register_image(call: Call, out: Element) -> None:
    spec = _spec(call.params)
    if not spec.location:
        raise missing("ImageLocation")
    call.check_dry_run()
    image = await svc.register(call.rt, call.caller, spec)
    r.text(out, "imageId", image.id)


def _image_id(params: Params) -> str:
    image_id = params.required("ImageId")
    check_ids("image", [image_id], "image")
    return image_id


async def deregister_image(call: Call, out: Element) -> None:
    image_id = _image_id(call.params)
    if call.dry_run:
        await svc.launch_permissions(call.rt, call.caller, image_id)
        call.check_dry_run()
    await svc.deregister(call.rt, call.caller, image_id)
    r.return_true(out)


async def create_image(call: Call, out: Element) -> None:
    params = call.params
    rid = params.required("InstanceId")
    check_ids("instance", [rid], "instance")
    name = params.required("Name")
    params.boolean("NoReboot")
    if params.members("BlockDeviceMapping"):
        raise Unsupported("Block device mappings are not supported; the image copies the disk.")
    if call.dry_run:
        from broker.service import instances

        await instances.get(call.rt, call.caller, rid)
        call.check_dry_run()
    image = await svc.create_from_instance(
        call.rt, call.caller, rid, name, params.text("Description") or ""
    )
    r.text(out, "imageId", image.id)


def _grantee_item(box: Element, grantee: str) -> None:
    it = r.item(box)
    if grantee == "all" or grantee.startswith("g-"):
        r.text(it, "group", grantee)
    else:
        r.text(it, "userId", grantee)


async def describe_image_attribute(call: Call, out: Element) -> None:
    image_id = _image_id(call.params)
    attribute = call.params.required("Attribute")
    if attribute not in ("launchPermission", "description"):
        raise invalid("Attribute", attribute)
    if attribute == "launchPermission":
        grantees = await svc.launch_permissions(call.rt, call.caller, image_id)
        call.check_dry_run()
        r.text(out, "imageId", image_id)
        box = r.node(out, "launchPermission")
        for grantee in grantees:
            _grantee_item(box, grantee)
        return
    image = await svc.get(call.rt, call.caller, image_id)
    call.check_dry_run()
    r.text(out, "imageId", image_id)
    r.text(r.node(out, "description"), "value", image.description)


def _permission_changes(params: Params) -> tuple[list[str], list[str]]:
    add: list[str] = []
    remove: list[str] = []
    for target, word in ((add, "Add"), (remove, "Remove")):
        for number, fields in params.members(f"LaunchPermission.{word}"):
            who = fields.get("UserId") or fields.get("Group")
            if not who:
                raise missing(f"LaunchPermission.{word}.{number}.UserId")
            target.append(who)
    operation = params.text("OperationType")
    if operation is not None:
        if operation not in ("add", "remove"):
            raise invalid("OperationType", operation)
        listed = params.listing("UserId") + params.listing("UserGroup")
        (add if operation == "add" else remove).extend(listed)
    return add, remove


async def modify_image_attribute(call: Call, out: Element) -> None:
    image_id = _image_id(call.params)
    attribute = call.params.text("Attribute") or "launchPermission"
    if attribute != "launchPermission":
        raise Unsupported(f"Changing the image attribute {attribute[:64]} is not supported.")
    add, remove = _permission_changes(call.params)
    if not add and not remove:
        raise missing("LaunchPermission")
    if call.dry_run:
        await svc.launch_permissions(call.rt, call.caller, image_id)
        call.check_dry_run()
    await svc.modify_launch_permissions(call.rt, call.caller, image_id, add=add, remove=remove)
    r.return_true(out)


ACTIONS: Final[dict[str, Handler]] = {
    "DescribeImages": describe_images,
    "RegisterImage": register_image,
    "DeregisterImage": deregister_image,
    "CreateImage": create_image,
    "DescribeImageAttribute": describe_image_attribute,
    "ModifyImageAttribute": modify_image_attribute,
}
