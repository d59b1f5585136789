"""A target that never answers: the launch or action is given up at its timeout, recorded
against the instance with the reason, and the scheduler goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import select

from broker import model as m
from broker import scheduler as sched_mod
from broker.auth import SYSTEM, Caller
from broker.monitor import Monitor
from broker.protocols import LaunchSpec, Observed, Placement
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, instances
from broker.service.instances import LaunchRequest
from broker.states import Action
from policies.placement import DefaultPolicy
from tests.conftest import make_user
from tests.fakes import FakeBackend
from tests.harness import add_fake_host, use_backend


class SilentBackend(FakeBackend):
    """A host that takes launches (while ``launches_answer`` is off) and actions other than
    terminate, and never answers them."""

    launches_answer = False

    async def launch(self, spec: LaunchSpec) -> Placement:
        if SilentBackend.launches_answer:
            return await super().launch(spec)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        if action is Action.TERMINATE:
            return await super().act(ref, action, force=force)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
async def world(rt: Runtime) -> AsyncIterator[tuple[Runtime, Caller, str]]:
    SilentBackend.launches_answer = False
    use_backend(rt, SilentBackend)
    view = await add_fake_host(rt, cpu=8, memory_mb=16384)
    await Monitor(rt).cycle()
    img = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    assert rt.backends is not None
    await rt.backends.get(view.id)
    yield rt, await make_user(rt, "alice"), img.id


async def _reasons(rt: Runtime, rids: Sequence[str]) -> dict[str, tuple[str, str, int]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(m.Instance.id, m.Instance.state, m.Instance.state_reason, m.Instance.attempts)
            .where(m.Instance.id.in_(rids))
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_a_launch_that_never_ends_is_given_up_and_tried_again(
    world: tuple[Runtime, Caller, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, alice, image = world
    monkeypatch.setattr(sched_mod, "LAUNCH_TIMEOUT", 0.2)
    (made,) = await instances.launch(rt, alice, LaunchRequest(image, "t3.micro"))
    sched = Scheduler(rt, DefaultPolicy())
    await sched.place()
    await sched.dispatch()
    await asyncio.wait_for(sched.drain(), 10)
    state, reason, attempts = (await _reasons(rt, [made.id]))[made.id]
    assert (state, attempts) == ("pending", 1)  # back in the queue for another target
    assert reason == "the target did not finish 'launch' in time"


async def test_an_action_that_never_ends_is_given_up_and_the_instance_keeps_running(
    world: tuple[Runtime, Caller, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, alice, image = world
    monkeypatch.setattr(sched_mod, "ACTION_TIMEOUT", 0.2)
    SilentBackend.launches_answer = True
    (made,) = await instances.launch(rt, alice, LaunchRequest(image, "t3.micro"))
    sched = Scheduler(rt, DefaultPolicy())
    await sched.place()
    await sched.dispatch()
    await asyncio.wait_for(sched.drain(), 10)
    assert (await _reasons(rt, [made.id]))[made.id][0] == "running"
    await instances.act(rt, alice, [made.id], Action.STOP)
    await sched.dispatch()
    await asyncio.wait_for(sched.drain(), 10)
    state, reason, _ = (await _reasons(rt, [made.id]))[made.id]
    assert state == "running"
    assert reason == "the target did not finish 'stop' in time"
