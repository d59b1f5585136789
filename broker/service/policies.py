"""The operator's placement and burst policy: set (validated first), shown, tested, versioned.

Every ``policy set`` stores a new version with who made it; the newest version is in force and
the scheduler picks it up on its next cycle, without a restart. ``test`` runs placement over the
current pending instances and targets with a candidate document and writes nothing, so an
operator sees what would burst where before saving.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select

from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import ConfigError, InvalidRequest
from broker.events import audit, record
from broker.model import utcnow
from broker.protocols import PolicyFactory
from broker.runtime import Runtime
from broker.snapshots import pending_requests, snapshot_targets

MAX_DOCUMENT = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyVersionView:
    version: int
    author: str
    comment: str
    created_at: dt.datetime
    document: dict[str, Any]


def _factory(rt: Runtime) -> PolicyFactory:
    if rt.policy_factory is None:
        raise InvalidRequest("no placement policy plugin is loaded")
    return rt.policy_factory


def _validated(rt: Runtime, document: Any) -> dict[str, Any]:
    if not isinstance(document, Mapping):
        raise InvalidRequest("a policy is a document (a TOML or JSON object)")
    if len(repr(document)) > MAX_DOCUMENT:
        raise InvalidRequest(f"a policy document is limited to {MAX_DOCUMENT} bytes")
    return _factory(rt).normalise_document(document)


async def set_policy(
    rt: Runtime, caller: Caller, document: Any, comment: str = ""
) -> PolicyVersionView:
    require_admin(caller)
    normal = _validated(rt, document)
    async with rt.engine.begin() as conn:
        result = await conn.execute(
            insert(m.PolicyVersion).values(
                document=normal, author=caller.name, comment=comment[:500], created_at=utcnow()
            )
        )
        version = int(result.inserted_primary_key[0])  # type: ignore[index]
        await record(
            conn, [audit(f"policy-{version}", caller.name, "policy set", comment=comment[:200])]
        )
    rt.wake_scheduler()
    return (await history(rt, caller, limit=1))[0]


async def history(rt: Runtime, caller: Caller, limit: int = 50) -> list[PolicyVersionView]:
    require_admin(caller)
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(
                m.PolicyVersion.id,
                m.PolicyVersion.author,
                m.PolicyVersion.comment,
                m.PolicyVersion.created_at,
                m.PolicyVersion.document,
            )
            .order_by(m.PolicyVersion.id.desc())
            .limit(max(1, min(limit, 1000)))
        )
        return [PolicyVersionView(*r) for r in rows]


async def current(rt: Runtime, caller: Caller) -> PolicyVersionView | None:
    found = await history(rt, caller, limit=1)
    return found[0] if found else None


async def test_policy(rt: Runtime, caller: Caller, document: Any | None = None) -> dict[str, Any]:
    """Where the pending instances would go under ``document`` (default: the policy in force)."""
    require_admin(caller)
    factory = _factory(rt)
    if document is None:
        now_in_force = await current(rt, caller)
        policy = factory.from_document(now_in_force.document) if now_in_force else factory()
    else:
        policy = factory.from_document(_validated(rt, document))
    async with rt.engine.connect() as conn:
        requests = await pending_requests(conn, rt.config.scheduler.batch, utcnow())
        targets = await snapshot_targets(conn)
    decisions = policy.place(requests, targets)
    names = {t.id: t.name for t in targets}
    by_target: dict[str, int] = {}
    for d in decisions:
        key = names.get(d.target_id or "", "(waits)")
        by_target[key] = by_target.get(key, 0) + 1
    return {
        "pending": len(requests),
        "by_target": by_target,
        "decisions": [
            {"instance": d.instance_id, "target": names.get(d.target_id or ""), "reason": d.reason}
            for d in decisions
        ],
    }


FILE_AUTHOR = "broker.toml"


async def apply_file_policy(rt: Runtime, document: Any) -> PolicyVersionView | None:
    """Put the ``[policy]`` of broker.toml in force when its text changed since it last was.

    Compared with the newest version the file itself set, not with the newest of all, so a
    change an operator made since through the CLI or the admin API stays in force until the
    file is edited. A document that does not validate stops the broker from starting.
    """
    caller = Caller(user_id="", name=FILE_AUTHOR, group_id="", role="admin")
    try:
        normal = _validated(rt, document)
    except InvalidRequest as exc:
        where = rt.config.source or "the configuration"
        raise ConfigError(f"[policy] in {where}: {exc.message}") from None
    async with rt.engine.connect() as conn:
        last = await conn.scalar(
            select(m.PolicyVersion.document)
            .where(m.PolicyVersion.author == FILE_AUTHOR)
            .order_by(m.PolicyVersion.id.desc())
            .limit(1)
        )
    if last == normal:
        return None
    return await set_policy(rt, caller, normal, f"from {rt.config.source or 'the configuration'}")
