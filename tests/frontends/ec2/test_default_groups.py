"""The EC2 app's memo of default security groups: made or read once per user, then kept."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from broker.runtime import Runtime
from broker.service import security_groups
from frontends.ec2.lookups import DefaultGroups
from tests.conftest import make_user


async def test_a_users_default_group_is_looked_up_once_and_is_theirs(rt: Runtime) -> None:
    alice, bob = await make_user(rt, "alice"), await make_user(rt, "bob")
    memo = DefaultGroups()
    seen: list[str] = []

    def on_execute(*args: Any) -> None:
        seen.append(str(args[2]))

    for engine in {rt.engine.sync_engine, rt.reader.sync_engine}:
        event.listen(engine, "before_cursor_execute", on_execute)
    try:
        first = await memo.get(rt, alice)  # made now: alice has no default group yet
        asked = len(seen)
        assert asked > 0
        assert await memo.get(rt, alice) == first
        assert len(seen) == asked  # kept: no statement the second time
        other = await memo.get(rt, bob)
    finally:
        for engine in {rt.engine.sync_engine, rt.reader.sync_engine}:
            event.remove(engine, "before_cursor_execute", on_execute)
    assert other != first
    assert first == await security_groups.ensure_default(rt, alice)
    assert other == await security_groups.ensure_default(rt, bob)


async def test_the_memo_starts_again_past_its_size(rt: Runtime) -> None:
    users = [await make_user(rt, f"u{n}") for n in range(3)]
    memo = DefaultGroups(size=2)
    ids = [await memo.get(rt, u) for u in users]
    assert len(set(ids)) == 3
    assert [await memo.get(rt, u) for u in users] == ids
