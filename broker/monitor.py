"""The monitor: probes every target every few seconds and reconciles instance states.

A target that answers has its capacity and a usage sample recorded (kept as a short history).
A target that misses ``misses`` probes in a row goes to *error* and its instances to *unknown*,
never to terminated: when it answers again, what it reports moves them on. An instance the
target no longer knows is marked *failed* with the reason ``lost``, not silently finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import delete, insert, select, update

from broker import model as m
from broker.events import EventRecord, record, transition
from broker.model import utcnow
from broker.protocols import Observed, TargetProbe
from broker.runtime import Runtime
from broker.service.instances import release
from broker.states import ON_TARGET, State, can_move

log = logging.getLogger(__name__)
_WATCHED = tuple(s.value for s in ON_TARGET if s is not State.EPILOG)


class Monitor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.config.monitor
        self._reported: set[tuple[str, str]] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.cycle()
            except Exception:
                log.exception("monitor cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.monitor_wake.wait(), self.cfg.interval)
            self.rt.monitor_wake.clear()

    async def cycle(self) -> None:
        async with self.rt.engine.connect() as conn:
            targets = (
                await conn.execute(
                    select(
                        m.Target.id, m.Target.state, m.Target.misses, m.Target.name, m.Target.kind
                    )
                )
            ).all()
        async with asyncio.TaskGroup() as tg:
            for tid, state, misses, name, kind in targets:
                tg.create_task(self.check(tid, state, misses, name, kind))

    async def check(self, tid: str, state: str, misses: int, name: str, kind: str = "host") -> None:
        assert self.rt.backends is not None
        try:
            backend = await self.rt.backends.get(tid)
            probe = await asyncio.wait_for(backend.probe(), self.cfg.probe_timeout)
        except Exception as exc:  # any failure to answer counts as a miss
            await self._missed(tid, state, misses, name, exc)
            return
        await self._answered(tid, state, probe)
        refs = await self._watched(tid)
        if not refs and kind == "host":
            return  # regions and peers are still asked: they report unmanaged instances
        try:
            seen = await asyncio.wait_for(backend.observe(list(refs)), self.cfg.probe_timeout)
        except Exception as exc:
            log.warning("observing %s failed: %s", name, exc)
            return
        await self.reconcile(refs, seen)
        await self._unmanaged(tid, name, [o for o in seen if o.ref not in refs])

    async def _unmanaged(self, tid: str, name: str, extra: list[Observed]) -> None:
        """Record, once each, instances a target runs for us that we have no record of."""
        new = [
            o
            for o in extra
            if o.reason.startswith("unmanaged") and (tid, o.ref) not in self._reported
        ]
        if not new:
            return
        async with self.rt.engine.begin() as conn:
            await record(
                conn,
                [
                    EventRecord(
                        tid,
                        "unmanaged",
                        "monitor",
                        message=f"{name} runs {o.ref}, "
                        "which carries our tag but matches no instance of ours",
                        detail={"ref": o.ref, "instance": o.instance_id},
                    )
                    for o in new
                ],
            )
        self._reported.update((tid, o.ref) for o in new)
        log.warning("target %s runs %d unmanaged instance(s)", name, len(new))

    async def _answered(self, tid: str, state: str, probe: TargetProbe) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "misses": 0,
            "last_seen_at": now,
            "total_cpu": probe.total_cpu,
            "total_memory_mb": probe.total_memory_mb,
            "total_disk_gb": probe.total_disk_gb,
        }
        events = []
        if state == "error":
            values.update(state="enabled", state_reason="answering again")
            events.append(
                EventRecord(
                    tid, "transition", "monitor", "error", "enabled", "target answers again"
                )
            )
        async with self.rt.engine.begin() as conn:
            await conn.execute(update(m.Target).where(m.Target.id == tid).values(**values))
            await conn.execute(
                insert(m.HostSample).values(
                    target_id=tid,
                    at=now,
                    used_cpu=probe.used_cpu,
                    used_memory_mb=max(0, probe.total_memory_mb - probe.free_memory_mb),
                    free_memory_mb=probe.free_memory_mb,
                    free_disk_gb=probe.free_disk_gb,
                    load=probe.load,
                    running=probe.running,
                )
            )
            keep = (
                select(m.HostSample.id)
                .where(m.HostSample.target_id == tid)
                .order_by(m.HostSample.id.desc())
                .limit(self.cfg.history)
            )
            await conn.execute(
                delete(m.HostSample).where(
                    m.HostSample.target_id == tid, m.HostSample.id.not_in(keep)
                )
            )
            await record(conn, events)
        if events:
            self.rt.wake_scheduler()

    async def _missed(
        self, tid: str, state: str, misses: int, name: str, exc: BaseException
    ) -> None:
        misses += 1
        reason = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
        log.warning("target %s missed a probe (%d): %s", name, misses, reason)
        async with self.rt.engine.begin() as conn:
            values: dict[str, Any] = {"misses": misses}
            events: list[EventRecord] = []
            if state == "error":
                values["state_reason"] = reason  # the newest cause (e.g. an open breaker)
            if misses >= self.cfg.misses and state != "error":
                values.update(state="error", state_reason=reason)
                events.append(EventRecord(tid, "transition", "monitor", state, "error", reason))
                rows = (
                    await conn.execute(
                        select(m.Instance.id, m.Instance.state).where(
                            m.Instance.target_id == tid, m.Instance.state.in_(_WATCHED)
                        )
                    )
                ).all()
                for rid, old in rows:
                    events.append(
                        transition(
                            rid,
                            old,
                            State.UNKNOWN.value,
                            "monitor",
                            f"target {name} does not answer",
                        )
                    )
                if rows:
                    await conn.execute(
                        update(m.Instance)
                        .where(m.Instance.id.in_([r[0] for r in rows]))
                        .values(
                            state=State.UNKNOWN.value,
                            state_reason=f"target {name} does not answer",
                            updated_at=utcnow(),
                        )
                    )
            await conn.execute(update(m.Target).where(m.Target.id == tid).values(**values))
            await record(conn, events)

    async def _watched(self, tid: str) -> dict[str, tuple[str, State]]:
        """backend ref -> (instance id, state) of instances the monitor should watch there."""
        async with self.rt.engine.connect() as conn:
            rows = await conn.execute(
                select(m.Instance.backend_ref, m.Instance.id, m.Instance.state).where(
                    m.Instance.target_id == tid,
                    m.Instance.state.in_(_WATCHED),
                    m.Instance.intent.is_(None),
                    m.Instance.backend_ref.is_not(None),
                )
            )
            return {str(ref): (rid, State(st)) for ref, rid, st in rows}

    async def reconcile(self, refs: dict[str, tuple[str, State]], seen: list[Observed]) -> None:
        by_ref = {o.ref: o for o in seen}
        events: list[EventRecord] = []
        lost: list[str] = []
        now = utcnow()
        async with self.rt.engine.begin() as conn:
            for ref, (rid, old) in refs.items():
                obs = by_ref.get(ref)
                if obs is None:
                    new, reason = State.FAILED, "lost: the target no longer knows this instance"
                else:
                    new, reason = obs.state, obs.reason
                if new is State.UNKNOWN or new is old or not can_move(old, new):
                    continue
                cond = (
                    m.Instance.id == rid,
                    m.Instance.state == old.value,
                    m.Instance.intent.is_(None),
                )
                values: dict[str, Any] = {
                    "state": new.value,
                    "state_reason": reason,
                    "updated_at": now,
                }
                if obs is not None and obs.private_ip:
                    values["private_ip"] = obs.private_ip
                if obs is not None and obs.public_ip:
                    values["public_ip"] = obs.public_ip
                result = await conn.execute(update(m.Instance).where(*cond).values(**values))
                if result.rowcount:
                    events.append(transition(rid, old.value, new.value, "monitor", reason))
                    if obs is None:
                        lost.append(rid)
            if lost:
                await release(conn, lost)
            await record(conn, events)
