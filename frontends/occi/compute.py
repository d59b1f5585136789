"""Decides what a compute is over the wire: an Instance, rendered and created from OCCI.

A compute's id is the instance id (``/compute/i-...``), the same in EC2. Attributes: cores and
memory (GiB) from the flavor, hostname, title (the ``Name`` tag, as EC2 shows it), summary (the
``occi.core.summary`` tag), and the state from :mod:`frontends.occi.states`. Its mixins are the
os_tpl of its image, the resource_tpl of its flavor and the user mixins its tags name. Its links
are its network interfaces and the volumes attached to it.

Creating one needs an os_tpl; the size comes from a resource_tpl or else from cores and memory,
as the smallest flavor (fewest cores, then least memory) that fits (400 when none does).
``user_data`` (base64) becomes the launch's user data; ``ssh_key`` imports the key under a
generated name (``occi-<random>``) and launches with it; ``placement`` gives requirements, rank
and zone. Inline links: one network (its interface's address may be asked for with the
ipnetworkinterface mixin) and any number of volumes, attached once the instance can take them
(see :mod:`frontends.occi.attach`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from typing import Final

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from broker import ids
from broker import model as m
from broker.errors import NotFound
from broker.service import flavors, images, instances, keypairs, tags, volumes
from broker.service.instances import InstanceFilter, InstanceView, LaunchRequest
from broker.states import Action, State
from frontends.occi import states
from frontends.occi.catalog import (
    MIXIN_TAG,
    RANK,
    REQUIREMENTS,
    ZONE,
    Catalog,
    os_tpl_id,
    resource_tpl_id,
)
from frontends.occi.categories import (
    COMPUTE,
    COMPUTE_ACTIONS,
    IPNETWORKINTERFACE,
    NETWORK,
    NETWORKINTERFACE,
    SSH_KEY,
    STORAGE,
    STORAGELINK,
    AttrValue,
    OcciConflict,
    OcciValidationError,
)
from frontends.occi.common import (
    COMPUTE_PATH,
    NETWORK_PATH,
    NIC_PATH,
    STORAGE_PATH,
    STORAGELINK_PATH,
    Ctx,
)
from frontends.occi.errors import Unsupported
from frontends.occi.parse import Entity, Link

NAME_TAG: Final = "Name"
SUMMARY_TAG: Final = "occi.core.summary"
ACTIONS_BY_STATE: Final[dict[str, tuple[str, ...]]] = {
    "active": ("stop", "restart", "suspend"),
    "inactive": ("start", "save"),
    "suspended": ("start", "stop"),
    "error": (),
}
#: (instance id, volume id, device, attach state) of one attachment.
Attachment = tuple[str, str, str | None, str | None]


def compute_id(rid: str) -> str:
    if not ids.is_valid("instance", rid):
        raise NotFound(f"no compute {rid[:64]}", resource="instance")
    return rid


# -- rendering ------------------------------------------------------------------------------------


def nic_link(rid: str, nic: instances.InterfaceView) -> Link:
    return Link(
        kind=NETWORKINTERFACE,
        mixins=(IPNETWORKINTERFACE,),
        attributes={
            "occi.core.id": nic.id,
            "occi.core.target": NETWORK_PATH + nic.network_id,
            "occi.core.target.kind": NETWORK,
            "occi.core.source": COMPUTE_PATH + rid,
            "occi.core.source.kind": COMPUTE,
            "occi.networkinterface.interface": f"eth{nic.device_index}",
            "occi.networkinterface.mac": nic.mac,
            "occi.networkinterface.state": "active",
            "occi.networkinterface.address": nic.ip or "",
            "occi.networkinterface.allocation": "dynamic",
        },
        location=NIC_PATH + nic.id,
    )


def storage_link(att: Attachment) -> Link:
    rid, vid, device, state = att
    attributes: dict[str, AttrValue] = {
        "occi.core.id": vid,
        "occi.core.target": STORAGE_PATH + vid,
        "occi.core.target.kind": STORAGE,
        "occi.core.source": COMPUTE_PATH + rid,
        "occi.core.source.kind": COMPUTE,
        "occi.storagelink.deviceid": device or "",
        "occi.storagelink.state": states.STORAGELINK.get(state, "inactive"),
    }
    return Link(kind=STORAGELINK, attributes=attributes, location=STORAGELINK_PATH + vid)


def compute_entity(
    catalog: Catalog, view: InstanceView, attached: Sequence[Attachment] = ()
) -> Entity:
    state = states.compute_state(view.state)
    attributes: dict[str, AttrValue] = {"occi.core.id": view.id}
    title = view.tags.get(NAME_TAG)
    if title is not None:
        attributes["occi.core.title"] = title
    summary = view.tags.get(SUMMARY_TAG)
    if summary is not None:
        attributes["occi.core.summary"] = summary
    attributes["occi.compute.cores"] = view.vcpus
    attributes["occi.compute.memory"] = view.memory_mb / 1024
    attributes["occi.compute.hostname"] = view.hostname
    attributes["occi.compute.state"] = state
    attributes["occi.compute.state.message"] = view.state_reason or view.state.value
    links = [nic_link(view.id, nic) for nic in view.interfaces]
    links.extend(storage_link(a) for a in attached)
    actions = tuple(COMPUTE_ACTIONS + a for a in ACTIONS_BY_STATE[state])
    return Entity(COMPUTE, compute_mixins(catalog, view), attributes, tuple(links), actions)


def compute_mixins(catalog: Catalog, view: InstanceView) -> tuple[str, ...]:
    """The compute's mixins: its os_tpl and resource_tpl (when known), its user mixins.

    This is all a compute's rendering takes from the catalog.
    """
    mixins = [os_tpl_id(view.image_id), resource_tpl_id(view.flavor)]
    mixins = [x for x in mixins if x in catalog.registry]
    mixins.extend(catalog.mixins_of_tags(dict(view.tags)))
    return tuple(mixins)


_ATTACHED: Final = (
    select(m.Volume.instance_id, m.Volume.id, m.Volume.device, m.Volume.attach_state)
    .where(m.Volume.instance_id.in_(bindparam("rids", expanding=True)))
    .order_by(m.Volume.device)
)


async def attachments(ctx: Ctx, rids: Sequence[str]) -> dict[str, list[Attachment]]:
    """Volumes attached to each instance, in one query."""
    if not rids:
        return {}

    def read(conn: Connection) -> dict[str, list[Attachment]]:
        out: dict[str, list[Attachment]] = {}
        for iid, vid, device, state in conn.execute(_ATTACHED, {"rids": list(rids)}):
            out.setdefault(str(iid), []).append((str(iid), vid, device, state))
        return out

    return await ctx.rt.reads.run(read)


async def load(ctx: Ctx, catalog: Catalog, rid: str) -> Entity:
    view = await instances.get(ctx.rt, ctx.caller, compute_id(rid))
    attached = await attachments(ctx, [view.id])
    return compute_entity(catalog, view, attached.get(view.id, ()))


async def load_all(
    ctx: Ctx, catalog: Catalog, *, limit: int, offset: int = 0
) -> tuple[list[str], list[InstanceView]]:
    """Ids of the caller's computes, ``offset`` onwards, at most ``limit``; views with them."""
    token: str | None = None
    views: list[InstanceView] = []
    skipped = 0
    while True:
        want = min(1000, limit + offset - skipped - len(views))
        page = await instances.describe(
            ctx.rt, ctx.caller, InstanceFilter(), limit=want, token=token
        )
        items = page.items
        if skipped < offset:
            drop = min(offset - skipped, len(items))
            skipped += drop
            items = items[drop:]
        views.extend(items)
        token = page.next_token
        if token is None or len(views) >= limit:
            break
    views = views[:limit]
    return [COMPUTE_PATH + v.id for v in views], views


# -- creation -------------------------------------------------------------------------------------


def _one(found: list[str], what: str) -> str | None:
    if len(found) > 1:
        raise OcciValidationError(f"a compute takes one {what} mixin, got {len(found)}")
    return found[0] if found else None


async def pick_flavor(ctx: Ctx, cores: AttrValue | None, memory: AttrValue | None) -> str:
    """The smallest flavor with at least ``cores`` and ``memory`` GiB; 400 when none fits."""
    if cores is None and memory is None:
        raise OcciValidationError(
            "a compute needs a resource_tpl mixin, or occi.compute.cores and/or "
            "occi.compute.memory to pick the smallest flavor that fits"
        )
    want_cores = int(cores) if isinstance(cores, int | float) else 1
    want_mb = float(memory) * 1024 if isinstance(memory, int | float) else 0.0
    fitting = [
        f
        for f in await flavors.describe(ctx.rt)
        if f.vcpus >= want_cores and f.memory_mb >= want_mb
    ]
    if not fitting:
        raise OcciValidationError(
            f"no flavor has {want_cores} cores and {want_mb / 1024:g} GiB; see resource_tpl"
        )
    return min(fitting, key=lambda f: (f.vcpus, f.memory_mb)).name


def _check_size(catalog: Catalog, flavor: str, attrs: Mapping[str, AttrValue]) -> None:
    cores, memory_mb, _ = catalog.flavors[flavor]
    want_cores = attrs.get("occi.compute.cores")
    want_memory = attrs.get("occi.compute.memory")
    if want_cores is not None and want_cores != cores:
        raise OcciValidationError(
            f"occi.compute.cores {want_cores} differs from resource_tpl {flavor} ({cores})"
        )
    if want_memory is not None and want_memory != memory_mb / 1024:
        raise OcciValidationError(
            f"occi.compute.memory {want_memory} differs from resource_tpl {flavor} "
            f"({memory_mb / 1024:g} GiB)"
        )


def _user_data(attrs: Mapping[str, AttrValue]) -> bytes | None:
    raw = attrs.get("occi.compute.userdata")
    if not isinstance(raw, str):
        return None
    try:
        data = base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise OcciValidationError("occi.compute.userdata must be base64") from None
    if len(data) > instances.MAX_USER_DATA:
        raise OcciValidationError("user data is limited to 16384 bytes")
    return data


def _placement(attrs: Mapping[str, AttrValue]) -> tuple[str, str, str | None]:
    def text(name: str) -> str:
        value = attrs.get(name, "")
        return value if isinstance(value, str) else ""

    return text(REQUIREMENTS), text(RANK), text(ZONE) or None


def _tail(location: str, base: str, what: str) -> str:
    path = location.split("://", 1)[-1]
    if "://" in location:
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
    if not path.startswith(base) or "/" in path[len(base) :] or path == base:
        raise OcciValidationError(
            f"a {what} link needs a target under {base}, got {location[:100]}"
        )
    return path[len(base) :]


def link_plan(links: Sequence[Link]) -> tuple[str | None, str | None, list[tuple[str, str | None]]]:
    """(network id, fixed address, [(volume id, device)]) asked for by inline links."""
    network: str | None = None
    address: str | None = None
    disks: list[tuple[str, str | None]] = []
    for link in links:
        target = link.target or ""
        kind = link.kind
        if kind in (None, "http://schemas.ogf.org/occi/core#link"):
            kind = NETWORKINTERFACE if NETWORK_PATH in target else STORAGELINK
        if kind == NETWORKINTERFACE:
            if network is not None:
                raise Unsupported("a compute joins one network at launch; more are not supported")
            network = _tail(target, NETWORK_PATH, "networkinterface")
            wanted = link.attributes.get("occi.networkinterface.address")
            address = wanted if isinstance(wanted, str) and wanted else None
        elif kind == STORAGELINK:
            device = link.attributes.get("occi.storagelink.deviceid")
            vid = _tail(target, STORAGE_PATH, "storagelink")
            disks.append((vid, device if isinstance(device, str) and device else None))
        else:
            raise OcciValidationError(f"a compute cannot carry a link of kind {kind}")
    return network, address, disks


async def launch_request(ctx: Ctx, catalog: Catalog, entity: Entity) -> LaunchRequest:
    """The launch an entity asks for; everything checked, nothing written yet."""
    attrs = entity.attributes
    image = _one(catalog.os_template(entity.mixins), "os_tpl")
    if image is None:
        raise OcciValidationError("a compute needs an os_tpl mixin (an image)")
    flavor = _one(catalog.resource_template(entity.mixins), "resource_tpl")
    if flavor is None:
        flavor = await pick_flavor(
            ctx, attrs.get("occi.compute.cores"), attrs.get("occi.compute.memory")
        )
    else:
        _check_size(catalog, flavor, attrs)
    for name in ("occi.compute.share", "occi.compute.architecture"):
        if name in attrs:
            raise Unsupported(f"{name} cannot be chosen here; pick a resource_tpl")
    network, address, disks = link_plan(entity.links)
    for vid, device in disks:
        if not ids.is_valid("volume", vid):
            raise OcciValidationError(f"no storage {vid[:64]}")
        volume = await volumes.get(ctx.rt, ctx.caller, vid)
        if volume.state != "available":
            raise OcciConflict(f"the storage {vid} is {volume.state}; it must be available")
        if device is not None:
            volumes.check_device(device)
    if network is not None and not ids.is_valid("network", network):
        raise OcciValidationError(f"no network {network[:64]}")
    requirements, rank, zone = _placement(attrs)
    labels: dict[str, str] = {}
    for name, key in (("occi.core.title", NAME_TAG), ("occi.core.summary", SUMMARY_TAG)):
        value = attrs.get(name)
        if isinstance(value, str):
            labels[key] = value
    for mixin in catalog.user_mixins(entity.mixins):
        labels[MIXIN_TAG + (mixin.location or "")] = mixin.type_id
    hostname = attrs.get("occi.compute.hostname")
    return LaunchRequest(
        image_id=image,
        flavor=flavor,
        user_data=_user_data(attrs),
        zone=zone,
        network_id=network,
        private_ip=address,
        tags=labels,
        requirements=requirements,
        rank=rank,
        hostname=hostname if isinstance(hostname, str) else "",
        origin="occi",
    )


async def create(
    ctx: Ctx, catalog: Catalog, entity: Entity
) -> tuple[InstanceView, list[tuple[str, str | None]]]:
    """Launch the compute; returns it and the volumes still to attach."""
    req = await launch_request(ctx, catalog, entity)
    key_name: str | None = None
    if SSH_KEY in entity.mixins:
        material = entity.attributes.get("occi.credentials.ssh.publickey")
        key_name = f"occi-{secrets.token_hex(6)}"
        await keypairs.import_key(ctx.rt, ctx.caller, key_name, str(material))
    try:
        (view,) = await instances.launch(ctx.rt, ctx.caller, _with_key(req, key_name))
    except NotFound as exc:
        if key_name is not None:
            await keypairs.delete(ctx.rt, ctx.caller, key_name)
        if exc.resource == "image":  # an image the caller may not launch is unknown to them
            raise OcciValidationError(f"unknown mixin {os_tpl_id(req.image_id)}") from None
        raise
    except BaseException:
        if key_name is not None:
            await keypairs.delete(ctx.rt, ctx.caller, key_name)
        raise
    return view, link_plan(entity.links)[2]


def _with_key(req: LaunchRequest, key_name: str | None) -> LaunchRequest:
    if key_name is None:
        return req
    return dataclasses.replace(req, key_name=key_name)


# -- changes --------------------------------------------------------------------------------------


async def update(
    ctx: Ctx, catalog: Catalog, view: InstanceView, entity: Entity, *, replace: bool
) -> None:
    """Apply a partial update (POST) or a full replacement (PUT) to an existing compute."""
    attrs = entity.attributes
    images_named = catalog.os_template(entity.mixins)
    if images_named and images_named != [view.image_id]:
        raise OcciConflict("the os_tpl of an existing compute cannot change")
    flavor = _one(catalog.resource_template(entity.mixins), "resource_tpl")
    cores, memory = attrs.get("occi.compute.cores"), attrs.get("occi.compute.memory")
    if flavor is None and (
        (cores is not None and cores != view.vcpus)
        or (memory is not None and memory != view.memory_mb / 1024)
    ):
        flavor = await pick_flavor(
            ctx,
            cores if cores is not None else view.vcpus,
            memory if memory is not None else view.memory_mb / 1024,
        )
    elif flavor is not None:
        _check_size(catalog, flavor, attrs)
    hostname = attrs.get("occi.compute.hostname")
    if hostname is not None and hostname != view.hostname:
        raise Unsupported("the hostname of an existing compute cannot be changed")
    for name in ("occi.compute.share", "occi.compute.architecture"):
        if name in attrs:
            raise Unsupported(f"{name} cannot be changed; pick a resource_tpl")
    if flavor is not None and flavor != view.flavor:
        await instances.modify(ctx.rt, ctx.caller, view.id, flavor=flavor)
    await _relabel(ctx, catalog, view, entity, replace=replace)


async def _relabel(
    ctx: Ctx, catalog: Catalog, view: InstanceView, entity: Entity, *, replace: bool
) -> None:
    """Title, summary and user mixins, kept as tags."""
    add: dict[str, str] = {}
    drop: dict[str, str | None] = {}
    for name, key in (("occi.core.title", NAME_TAG), ("occi.core.summary", SUMMARY_TAG)):
        value = entity.attributes.get(name)
        if isinstance(value, str):
            add[key] = value
        elif replace and key in view.tags:
            drop[key] = None
    wanted = {MIXIN_TAG + (x.location or ""): x.type_id for x in catalog.user_mixins(entity.mixins)}
    add.update(wanted)
    if replace:
        for key in view.tags:
            if key.startswith(MIXIN_TAG) and key not in wanted:
                drop[key] = None
    if drop:
        await tags.delete(ctx.rt, ctx.caller, [view.id], drop)
    if add:
        await tags.create(ctx.rt, ctx.caller, [view.id], add)


async def act(
    ctx: Ctx, rids: Sequence[str], term: str, attrs: Mapping[str, AttrValue]
) -> str | None:
    """Carry out a compute action through the service; returns a new image id for ``save``."""
    method = attrs.get("method")
    if term == "start":
        views = await instances.describe(
            ctx.rt, ctx.caller, InstanceFilter(ids=tuple(rids)), limit=len(rids)
        )
        suspended = [v.id for v in views.items if v.state is State.SUSPENDED]
        others = [r for r in rids if r not in suspended]
        if suspended:
            await instances.act(ctx.rt, ctx.caller, suspended, Action.RESUME)
        if others:
            await instances.act(ctx.rt, ctx.caller, others, Action.START)
    elif term == "stop":
        await instances.act(ctx.rt, ctx.caller, rids, Action.STOP, force=method == "poweroff")
    elif term == "restart":
        await instances.act(ctx.rt, ctx.caller, rids, Action.REBOOT)
    elif term == "suspend":
        if method == "hibernate":
            raise Unsupported("suspend method hibernate is not supported; use suspend")
        await instances.act(ctx.rt, ctx.caller, rids, Action.SUSPEND)
    elif term == "save":
        if method == "hot":
            raise OcciConflict("save method hot is not supported: stop the compute and save it")
        name = attrs.get("name")
        made: str | None = None
        for rid in rids:
            image = await images.create_from_instance(
                ctx.rt, ctx.caller, rid, name if isinstance(name, str) and name else f"{rid}-save"
            )
            made = image.id
        return made
    else:
        raise OcciValidationError(f"unknown compute action {term[:40]}")
    return None
