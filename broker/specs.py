"""Launch specs for a whole batch of instances: one query per table, not per instance.

The scheduler hands backends immutable :class:`LaunchSpec` values; building them for a batch
of a thousand launches must not cost thousands of round trips to the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import bindparam, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from broker import model as m
from broker.protocols import LaunchSpec, NicSpec

#: what a spec needs of the instance, its image and its target
_SPEC_COLUMNS: Final = (
    m.Instance.id,
    m.Instance.target_id,
    m.Instance.hostname,
    m.Instance.vcpus,
    m.Instance.memory_mb,
    m.Instance.disk_gb,
    m.Instance.flavor,
    m.Instance.image_id,
    m.Image.kind,
    m.Image.location,
    m.Image.kernel,
    m.Image.ramdisk,
    m.Image.cmdline,
    m.Image.checksum,
    m.Image.mappings,
    m.Instance.user_data,
    m.Instance.key_name,
    m.Instance.owner_id,
    m.Target.settings,
    m.Instance.hops,
    m.Target.name,
)


_RIDS: Final[BindParameter[Any]] = bindparam("rids", expanding=True)
# built once: building a statement costs more than running it for a cycle's few instances
_SPECS: Final = (
    select(*_SPEC_COLUMNS)
    .join(m.Image, m.Image.id == m.Instance.image_id)
    .join(m.Target, m.Target.id == m.Instance.target_id)
    .where(m.Instance.id.in_(_RIDS))
)
_NICS: Final = (
    select(
        m.NetworkInterface.instance_id,
        m.NetworkInterface.mac,
        m.NetworkInterface.ip,
        m.Network.name,
        m.Network.bridge,
        m.Network.cidr,
        m.Network.gateway,
        m.Network.dns,
    )
    .join(m.Network, m.Network.id == m.NetworkInterface.network_id)
    .where(m.NetworkInterface.instance_id.in_(_RIDS))
    .order_by(m.NetworkInterface.device_index)
)
_GROUPS: Final = select(
    m.InstanceSecurityGroup.instance_id, m.InstanceSecurityGroup.group_id
).where(m.InstanceSecurityGroup.instance_id.in_(_RIDS))
_TAGS: Final = select(m.Tag.resource_id, m.Tag.key, m.Tag.value).where(m.Tag.resource_id.in_(_RIDS))


async def launch_specs(
    conn: AsyncConnection,
    rids: Sequence[str],
    policy_settings: Callable[[str], Mapping[str, Any]],
) -> dict[str, LaunchSpec]:
    """Specs of the instances ``rids`` (those still placed on a target)."""
    if not rids:
        return {}
    rows = (await conn.execute(_SPECS, {"rids": list(rids)})).all()
    if not rows:
        return {}
    rids_param = {"rids": [r[0] for r in rows]}
    wanted_keys = {(r[17], r[16]) for r in rows if r[16]}
    keys: dict[tuple[str, str], str] = {}
    if wanted_keys:
        for owner, name, public in await conn.execute(
            select(m.KeyPair.owner_id, m.KeyPair.name, m.KeyPair.public_key).where(
                tuple_(m.KeyPair.owner_id, m.KeyPair.name).in_(list(wanted_keys))
            )
        ):
            keys[(owner, name)] = public
    nics: dict[str, list[NicSpec]] = {}
    for rid, mac, ip, net, bridge, cidr, gateway, dns in await conn.execute(_NICS, rids_param):
        nics.setdefault(str(rid), []).append(NicSpec(mac, ip, net, bridge, cidr, gateway, dns))
    groups: dict[str, list[str]] = {}
    for rid, gid in await conn.execute(_GROUPS, rids_param):
        groups.setdefault(rid, []).append(gid)
    tags: dict[str, dict[str, str]] = {}
    for rid, key, value in await conn.execute(_TAGS, rids_param):
        tags.setdefault(rid, {})[key] = value
    by_target: dict[str, Mapping[str, Any]] = {}  # the policy's maps, asked once a target
    out = {}
    for r in rows:
        rid = r[0]
        name, own = r[20], r[18]
        policy = by_target.get(name)
        if policy is None:
            policy = by_target[name] = policy_settings(name)
        # the target's own settings win over the policy's maps for it (a copy each: a spec
        # shares nothing another spec could change)
        settings = {**policy, **own} if own else dict(policy)
        out[rid] = LaunchSpec(
            instance_id=rid,
            target_id=r[1],
            target_settings=settings,
            hostname=r[2],
            vcpus=r[3],
            memory_mb=r[4],
            disk_gb=r[5],
            flavor=r[6],
            image_id=r[7],
            image_kind=r[8],
            image_location=r[9],
            image_kernel=r[10],
            image_ramdisk=r[11],
            image_cmdline=r[12],
            image_checksum=r[13],
            image_mappings=r[14] or {},
            user_data=r[15],
            key_name=r[16],
            public_key=keys.get((r[17], r[16] or "")),
            nics=tuple(nics.get(rid, ())),
            security_groups=tuple(groups.get(rid, ())),
            tags=tags.get(rid, {}),
            owner_id=r[17],
            hops=r[19],
        )
    return out
