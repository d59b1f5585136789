"""Decides what a network is over the wire: a broker Network (``/network/subnet-...``).

Networks are read-mostly: every user sees the shared ones (no owner) and their own. An admin
may create one (``ipnetwork`` mixin: ``occi.network.address`` in CIDR notation, gateway);
deleting, changing, and the ``down`` action need service functions the broker does not have,
and answer 501. ``up`` on an active network succeeds (it is up); on one that is not, 501.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from broker import ids
from broker import model as m
from broker.errors import NotFound
from broker.service import networks
from frontends.occi import states
from frontends.occi.categories import (
    IPNETWORK,
    NETWORK,
    NETWORK_ACTIONS,
    AttrValue,
    OcciValidationError,
)
from frontends.occi.common import Ctx
from frontends.occi.errors import Unsupported
from frontends.occi.parse import Entity

_COLS = (
    m.Network.id,
    m.Network.name,
    m.Network.bridge,
    m.Network.cidr,
    m.Network.gateway,
    m.Network.state,
    m.Network.zone,
)


def network_id(nid: str) -> str:
    if not ids.is_valid("network", nid):
        raise NotFound(f"no network {nid[:64]}", resource="network")
    return nid


def network_entity(row: Any) -> Entity:
    nid, name, bridge, cidr, gateway, state, _ = row
    attributes: dict[str, AttrValue] = {"occi.core.id": nid, "occi.core.title": name}
    if bridge:
        attributes["occi.network.label"] = bridge
    attributes["occi.network.state"] = states.network_state(state)
    attributes["occi.network.state.message"] = state
    attributes["occi.network.address"] = cidr
    if gateway:
        attributes["occi.network.gateway"] = gateway
    attributes["occi.network.allocation"] = "dynamic"
    actions = (NETWORK_ACTIONS + "up", NETWORK_ACTIONS + "down")
    return Entity(NETWORK, (IPNETWORK,), attributes, (), actions)


def _visible(ctx: Ctx) -> list[Any]:
    if ctx.caller.is_admin:
        return []
    return [or_(m.Network.owner_id.is_(None), m.Network.owner_id == ctx.caller.user_id)]


async def load_all(ctx: Ctx, nid: str | None = None) -> list[Entity]:
    stmt = select(*_COLS).where(*_visible(ctx)).order_by(m.Network.id).limit(10_000)
    if nid is not None:
        stmt = stmt.where(m.Network.id == nid)
    async with ctx.rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [network_entity(r) for r in rows]


async def load(ctx: Ctx, nid: str) -> Entity:
    found = await load_all(ctx, network_id(nid))
    if not found:
        raise NotFound(f"no network {nid}", resource="network")
    return found[0]


async def create(ctx: Ctx, entity: Entity) -> str:
    if entity.links:
        raise Unsupported("a network cannot carry links")
    attrs = entity.attributes
    cidr = attrs.get("occi.network.address")
    title = attrs.get("occi.core.title")
    if not isinstance(cidr, str) or not isinstance(title, str):
        raise OcciValidationError(
            "a network needs occi.core.title (its name) and the ipnetwork mixin's "
            "occi.network.address (CIDR)"
        )
    gateway = attrs.get("occi.network.gateway")
    bridge = attrs.get("occi.network.label")
    view = await networks.create(
        ctx.rt,
        ctx.caller,
        name=title,
        cidr=cidr,
        gateway=gateway if isinstance(gateway, str) else "",
        bridge=bridge if isinstance(bridge, str) else "",
    )
    return view.id


async def act(ctx: Ctx, nid: str, term: str) -> None:
    entity = await load(ctx, nid)
    if term == "down":
        raise Unsupported("bringing a network down is not supported by the broker's service")
    if entity.attributes.get("occi.network.state") != "active":
        raise Unsupported("bringing a network up is not supported by the broker's service")
