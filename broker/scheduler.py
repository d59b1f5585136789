"""The scheduler: pending -> placed -> dispatched, in batches, and every other intent carried out.

Each cycle places a batch of pending instances against one snapshot of the targets (placement
itself is a pure policy), records each decision and its explanation, then hands backends
immutable specs, concurrently, with a limit of operations in flight per target. A burst also
passes its owner's and group's spend quotas here, and a burst target refused for its budget is
recorded once. Intents include an operator's migration (to the destination it names), and each
cycle ends with the volume work (:mod:`broker.volumework`). Every write is conditional on the
intent it carries out, so a user's newer request is never overwritten, and everything is in the
database first: a killed broker resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
import logging
import time
from typing import Any, Final, TypeVar

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import bulk, db, metrics
from broker import model as m
from broker.errors import BrokerError, Unsupported
from broker.events import EventRecord, record, transition
from broker.groupcommit import GroupCommit
from broker.hooks import budget_events
from broker.model import utcnow
from broker.protocols import (
    Decision,
    LaunchSpec,
    Observed,
    Placement,
    PlacementPolicy,
    PolicyFactory,
)
from broker.runtime import Runtime
from broker.service import quotas
from broker.service.instances import release
from broker.snapshots import pending_requests, snapshot_targets
from broker.specs import launch_specs
from broker.states import Action, State, can_move
from broker.volumework import VolumeWorker

log = logging.getLogger(__name__)
T = TypeVar("T")

#: intent -> (state on success when the backend reports nothing, state to fall back to on failure)
AFTER: dict[Action, tuple[State, State | None]] = {
    Action.STOP: (State.POWEROFF, State.RUNNING),
    Action.POWEROFF: (State.POWEROFF, State.RUNNING),
    Action.START: (State.RUNNING, State.POWEROFF),
    Action.REBOOT: (State.RUNNING, None),
    Action.SUSPEND: (State.SUSPENDED, None),
    Action.RESUME: (State.RUNNING, None),
    Action.TERMINATE: (State.DONE, None),
    Action.MIGRATE: (State.RUNNING, None),
}
MIGRATE_TIMEOUT = 600.0
LAUNCH_TIMEOUT = 300.0
ACTION_TIMEOUT = 180.0
WAKE_GAP = 0.05  # seconds at least from one woken cycle's start to the next
BUDGET_SAMPLE = 20  # waiting decisions explained per cycle to notice a burst budget reached
#: decisions written in one transaction, and the pause between two (seconds): a cycle of 500
#: held SQLite's write lock for 10 to 20 ms at a time, while an EC2 worker's batch of launches
#: (clients waiting on the other end) waited for it
PLACE_CHUNK = 32
CHUNK_GAP = 0.001


# what a cycle runs, built once (building a statement costs more than running it for a cycle's
# few instances)
_POLICY: Final = (
    select(m.PolicyVersion.id, m.PolicyVersion.document)
    .order_by(m.PolicyVersion.id.desc())
    .limit(1)
)
_PLACE: Final = (
    update(m.Instance)
    .where(m.Instance.id == bindparam("b_id"), m.Instance.state == State.PENDING.value)
    .values(
        state=State.PROLOG.value,
        target_id=bindparam("b_target"),
        intent=Action.LAUNCH.value,
        intent_at=bindparam("b_intent_at"),
        updated_at=bindparam("b_updated_at"),
        state_reason="",
        explanation=bindparam("b_expl"),
    )
)
_WAIT: Final = (
    update(m.Instance)
    .where(m.Instance.id == bindparam("b_id"), m.Instance.state == State.PENDING.value)
    .values(state_reason=bindparam("b_reason"), explanation=bindparam("b_expl"))
)
#: every intent to carry out, oldest first: :class:`Work`'s columns and whether the image is
#: there. Narrow on purpose: the intents in flight come back in every read until they end (a
#: read of 200 rows found 30 new under load), so what only a new launch's spec needs (the
#: target's settings, the image's mappings: JSON to decode) is read for the new ones alone.
_DISPATCH: Final = (
    select(
        m.Instance.id,
        m.Instance.target_id,
        m.Instance.intent,
        m.Instance.intent_at,
        m.Instance.state,
        m.Instance.backend_ref,
        m.Instance.attempts,
        m.Instance.intent_target,
        m.Image.id,
    )
    .join(m.Target, m.Target.id == m.Instance.target_id)
    .outerjoin(m.Image, m.Image.id == m.Instance.image_id)
    # every intent by name, not "is not null": SQLite then reads the intent index instead of
    # scanning every instance
    .where(m.Instance.intent.in_([a.value for a in Action]), m.Target.state != "error")
    .order_by(m.Instance.intent_at)
    .limit(bindparam("b_limit"))
)
_STILL_LAUNCHING: Final = (
    select(m.Instance.id)
    .where(
        m.Instance.id.in_(bindparam("b_ids", expanding=True)),
        m.Instance.intent == Action.LAUNCH.value,
    )
    .with_for_update()
)
_IS_LAUNCHING = m.Instance.intent == Action.LAUNCH.value
#: a finished launch: the reference always (even when the user asked for something else
#: meanwhile: that is what a terminate needs to find the instance on its target), the new
#: state only while the launch is still the intent
_LAUNCHED: Final = (
    update(m.Instance)
    .where(m.Instance.id == bindparam("b_id"))
    .values(
        backend_ref=bindparam("b_ref"),
        public_ip=bindparam("b_ip"),
        launched_at=bindparam("b_launched_at"),
        updated_at=bindparam("b_updated_at"),
        attempts=0,
        state=case(
            (_IS_LAUNCHING, bindparam("b_state", type_=m.Instance.state.type)),
            else_=m.Instance.state,
        ),
        state_reason=case((_IS_LAUNCHING, ""), else_=m.Instance.state_reason),
        intent=case((_IS_LAUNCHING, None), else_=m.Instance.intent),
    )
)


@dataclasses.dataclass(frozen=True, slots=True)
class Work:
    instance_id: str
    intent: Action
    intent_at: dt.datetime | None
    state: State
    target_id: str
    backend_ref: str | None
    attempts: int
    intent_target: str | None = None


class Scheduler:
    def __init__(
        self, rt: Runtime, policy: PlacementPolicy, factory: PolicyFactory | None = None
    ) -> None:
        self.rt = rt
        self.policy = policy
        self.factory = factory
        self.policy_version: int | None = None
        self._launched: GroupCommit[tuple[Work, Placement]] = GroupCommit(self._write_launched)
        self.cfg = rt.config.scheduler
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._backlog = False  # the last dispatch left work out (it read a full batch)
        self._per_target: dict[str, asyncio.Semaphore] = {}
        self._budget_reported: set[str] = set()
        self.volumes = VolumeWorker(rt)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                await self.cycle()
            except Exception:  # the loop must survive anything one cycle meets
                log.exception("scheduler cycle failed")
            metrics.observe_cycle(self.rt, time.perf_counter() - started, len(self._inflight))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.scheduler_wake.wait(), self.cfg.interval)
                # woken: cycles start at most every WAKE_GAP, so launches arriving one by one
                # are placed together instead of each paying a whole cycle
                await asyncio.sleep(max(0.0, WAKE_GAP - (time.perf_counter() - started)))
            self.rt.scheduler_wake.clear()

    async def cycle(self) -> None:
        await self.place()
        await self.dispatch()
        await self.volumes.cycle()

    async def drain(self) -> None:
        """Wait for the work in flight (tests and shutdown)."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    # --- placement --------------------------------------------------------------------------

    async def place(self) -> list[Decision]:
        async with self.rt.engine.connect() as conn:
            await conn.execution_options(**db.ONLY_READS)
            await self._refresh_policy(conn)
            requests = await pending_requests(conn, self.cfg.batch, utcnow())
            if not requests:
                return []
            targets = await snapshot_targets(conn)
        decisions = self.policy.place(requests, targets)
        now = utcnow()
        at = now.isoformat()
        placed = [d for d in decisions if d.target_id is not None]
        waiting = [d for d in decisions if d.target_id is None]
        budget: list[EventRecord] = []
        if waiting and any(t.kind != "host" for t in targets):
            # a target refused for its budget is refused to every waiting request that would
            # fit it, so a sample finds it without explaining the whole batch
            budget = budget_events(waiting[:BUDGET_SAMPLE], targets, self._budget_reported)
        kinds = {t.id: t.kind for t in targets}
        asked = {r.instance_id: r for r in requests}
        # rows made before the write lock is taken, which is held for the writes alone
        rows = [
            (
                d,
                {
                    "b_id": d.instance_id,
                    "b_target": d.target_id,
                    "b_intent_at": now,
                    "b_updated_at": now,
                    "b_expl": _explain(d, at),
                },
                transition(
                    d.instance_id, "pending", "prolog", "scheduler", d.reason, target=d.target_id
                ),
            )
            for d in placed
        ]
        waits = [_waits(d, at) for d in waiting]
        placing, holding = _chunks(rows), _chunks(waits)
        for number in range(max(len(placing), len(holding), 1)):
            chunk = placing[number] if number < len(placing) else []
            wait_rows = holding[number] if number < len(holding) else []
            if number:
                # the lock is let go between chunks: a launch being answered elsewhere waits
                # for one chunk's writes, not for a whole cycle's
                await asyncio.sleep(CHUNK_GAP)
            async with self.rt.engine.begin() as conn:
                if not number:
                    await record(conn, budget)
                bursts = [
                    asked[d.instance_id]
                    for d, _, _ in chunk
                    if kinds.get(d.target_id or "") != "host"
                ]
                refused = await quotas.spend_refusals(conn, bursts) if bursts else {}
                # a burst also spends: the owner's and group's spend quotas decide
                wait_rows += [
                    _waits(Decision(i, None, "waits: " + why), at) for i, why in refused.items()
                ]
                kept = [(row, event) for d, row, event in chunk if d.instance_id not in refused]
                if kept:
                    await bulk.execute_many(conn, _PLACE, [row for row, _ in kept])
                    await record(conn, [event for _, event in kept])
                if wait_rows:
                    await bulk.execute_many(conn, _WAIT, wait_rows)
        return decisions

    async def _refresh_policy(self, conn: AsyncConnection) -> None:
        """Use the newest stored policy: changes take effect without a restart."""
        if self.factory is None:
            return
        row = (await conn.execute(_POLICY)).first()
        if row is None or row[0] == self.policy_version:
            return
        self.policy = self.factory.from_document(row[1])
        self.policy_version = row[0]
        log.info("placement policy version %s in force", row[0])

    # --- dispatch ---------------------------------------------------------------------------

    async def dispatch(self) -> None:
        """Start every intent not in flight yet, with the specs of the launches among them."""
        limit = self.cfg.batch + len(self._inflight)
        async with self.rt.engine.connect() as conn:
            await conn.execution_options(**db.ONLY_READS)
            rows = (await conn.execute(_DISPATCH, {"b_limit": limit})).all()
            self._backlog = len(rows) >= limit
            fresh = [r for r in rows if r[0] not in self._inflight]
            # a launch whose image is gone gets no spec, and fails as one no longer placed
            launching = [r[0] for r in fresh if r[2] == Action.LAUNCH.value and r[8] is not None]
            specs = await launch_specs(conn, launching, self.policy.target_settings)
        for row in fresh:
            work = Work(row[0], Action(str(row[2])), row[3], State(row[4]), str(row[1]), *row[5:8])
            task = asyncio.create_task(self._carry_out(work, specs.get(work.instance_id)))
            self._inflight[work.instance_id] = task
            task.add_done_callback(functools.partial(self._done, work.instance_id))

    def _done(self, rid: str, _task: asyncio.Task[None]) -> None:
        """A task ended: the next cycle comes at once when work was left out of the last
        dispatch (it was full) or nothing is in flight any more; otherwise at its interval,
        so a burst of launches finishing does not make a cycle each."""
        self._inflight.pop(rid, None)
        if self._backlog or not self._inflight:
            self.rt.wake_scheduler()

    async def _carry_out(self, work: Work, spec: LaunchSpec | None = None) -> None:
        sem = self._per_target.setdefault(
            work.target_id, asyncio.Semaphore(self.cfg.in_flight_per_target)
        )
        async with sem:
            try:
                if work.intent is Action.LAUNCH:
                    await self._launch(work, spec)
                else:
                    await self._act(work)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is recorded against the instance
                await self._failed(work, exc)

    async def _launch(self, work: Work, spec: LaunchSpec | None) -> None:
        assert self.rt.backends is not None
        if spec is None:
            raise BrokerError("the instance is no longer placed on a target")
        backend = await self.rt.backends.get(work.target_id)
        async with asyncio.timeout(LAUNCH_TIMEOUT):  # in this task: no task of its own
            placement = await backend.launch(spec)
        await self._launched.submit((work, placement))

    async def _write_launched(self, done: list[tuple[Work, Placement]]) -> None:
        """Record a batch of finished launches in one transaction (see GroupCommit)."""
        now = utcnow()
        async with self.rt.engine.begin() as conn:
            still = set(
                (
                    await conn.scalars(
                        _STILL_LAUNCHING, {"b_ids": [w.instance_id for w, _ in done]}
                    )
                ).all()
            )
            rows = []
            events = []
            for w, p in done:
                new = p.state if can_move(State.PROLOG, p.state) else State.BOOT
                rows.append(
                    {
                        "b_id": w.instance_id,
                        "b_ref": p.ref,
                        "b_ip": p.public_ip,
                        "b_launched_at": now,
                        "b_updated_at": now,
                        "b_state": new.value,
                    }
                )
                if w.instance_id in still:
                    events.append(
                        transition(
                            w.instance_id,
                            State.PROLOG.value,
                            new.value,
                            "scheduler",
                            "launched",
                            ref=p.ref,
                        )
                    )
            await bulk.execute_many(conn, _LAUNCHED, rows)
            await record(conn, events)

    async def _act(self, work: Work) -> None:
        if work.backend_ref is None:
            if work.intent is Action.TERMINATE:  # never reached the target: nothing to undo
                await self._finish(work, State.DONE, "terminated before launch")
                return
            raise BrokerError("the instance has no backend reference")
        assert self.rt.backends is not None
        backend = await self.rt.backends.get(work.target_id)
        if work.intent is Action.MIGRATE:
            await self._migrate(work, backend)
            return
        async with asyncio.timeout(ACTION_TIMEOUT):
            seen = await backend.act(work.backend_ref, work.intent)
        await self._finish(work, _result(work.intent, seen), "", seen)

    async def _migrate(self, work: Work, backend: object) -> None:
        """Move the domain to the target the operator chose; it then runs there."""
        assert self.rt.backends is not None and work.backend_ref is not None
        move = getattr(backend, "migrate", None)
        if move is None or work.intent_target is None:
            raise Unsupported("this target's driver cannot migrate instances")
        dest = await self.rt.backends.config_for(work.intent_target)
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            seen = await move(work.backend_ref, dest)
        await self._finish(
            work,
            _result(work.intent, seen),
            f"migrated to {dest.name}",
            seen,
            moved_to=work.intent_target,
        )

    async def _finish(
        self,
        work: Work,
        new: State,
        reason: str,
        seen: Observed | None = None,
        moved_to: str | None = None,
    ) -> None:
        now = utcnow()
        async with self.rt.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(m.Instance.state).where(
                        m.Instance.id == work.instance_id,
                        m.Instance.intent == work.intent.value,
                        m.Instance.intent_at == work.intent_at,
                    )
                )
            ).first()
            if row is None:
                return  # the user asked for something newer meanwhile; that will be carried out
            old = State(row[0])
            if not can_move(old, new):
                new = old
            values: dict[str, Any] = {
                "intent": None,
                "state": new.value,
                "updated_at": now,
                "state_reason": reason,
                "attempts": 0,
            }
            if new is State.DONE:
                values["ended_at"] = now
            if seen is not None and seen.private_ip:
                values["private_ip"] = seen.private_ip
            if moved_to is not None:
                values.update(target_id=moved_to, intent_target=None)
            await conn.execute(
                update(m.Instance).where(m.Instance.id == work.instance_id).values(**values)
            )
            if new is State.DONE:
                await release(conn, [work.instance_id])
            await record(
                conn,
                [
                    transition(
                        work.instance_id,
                        old.value,
                        new.value,
                        "scheduler",
                        reason or work.intent.value,
                        **({"target": moved_to} if moved_to else {}),
                    )
                ],
            )

    async def _failed(self, work: Work, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, BrokerError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError):
            reason = f"the target did not finish '{work.intent.value}' in time"
        log.warning("%s %s failed: %s", work.intent.value, work.instance_id, reason)
        attempts = work.attempts + 1
        now = utcnow()
        async with self.rt.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(m.Instance.state).where(
                        m.Instance.id == work.instance_id,
                        m.Instance.intent == work.intent.value,
                        m.Instance.intent_at == work.intent_at,
                    )
                )
            ).first()
            if row is None:
                return
            old = State(row[0])
            values: dict[str, Any] = {
                "attempts": attempts,
                "state_reason": reason[:1000],
                "updated_at": now,
            }
            retry = attempts < self.cfg.max_attempts
            if work.intent is Action.LAUNCH:
                new = State.PENDING if retry else State.FAILED
                values.update(state=new.value, intent=None)
                if retry:
                    values.update(target_id=None, backend_ref=None)
            elif work.intent is Action.TERMINATE:
                new = old if retry else State.FAILED
                values.update(state=new.value, intent_at=now)
                if not retry:
                    values["intent"] = None
            else:
                fallback = AFTER[work.intent][1]
                new = fallback if fallback is not None and can_move(old, fallback) else old
                values.update(state=new.value, intent=None, intent_target=None)
            await conn.execute(
                update(m.Instance).where(m.Instance.id == work.instance_id).values(**values)
            )
            await record(
                conn,
                [
                    EventRecord(
                        work.instance_id,
                        "error",
                        "scheduler",
                        old.value,
                        new.value,
                        f"{work.intent.value} failed: {reason}",
                    )
                ],
            )


def _result(intent: Action, seen: Observed | None) -> State:
    if intent is Action.TERMINATE:
        return State.DONE
    if seen is not None and seen.state is not State.UNKNOWN:
        return seen.state
    return AFTER[intent][0]


EXPLAIN_TARGETS = 50


def _chunks(rows: list[T]) -> list[list[T]]:
    return [rows[i : i + PLACE_CHUNK] for i in range(0, len(rows), PLACE_CHUNK)]


def _waits(d: Decision, at: str) -> dict[str, Any]:
    """The row of a decision that leaves its instance waiting, for :data:`_WAIT`."""
    return {"b_id": d.instance_id, "b_reason": d.reason[:500], "b_expl": _explain(d, at)}


def _explain(d: Decision, at: str) -> dict[str, Any]:
    """What is kept of a decision (made at ``at``): the reason and the first targets
    considered (bounded)."""
    considered = dict(itertools.islice(d.considered.items(), EXPLAIN_TARGETS))
    more = len(d.considered) - len(considered)
    if more > 0:
        considered["..."] = f"{more} more targets not kept"
    return {
        "target": d.target_id,
        "reason": d.reason,
        "considered": considered,
        "at": at,
    }


async def explain(rt: Runtime, rid: str) -> dict[str, Any] | None:
    async with rt.engine.connect() as conn:
        value = await conn.scalar(select(m.Instance.explanation).where(m.Instance.id == rid))
    return value if isinstance(value, dict) else None
