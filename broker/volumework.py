"""Volume work: the attaches, detaches and deletes the volume service asked for, carried out
on the targets where the instances run.

The service records what it wants (``attach_state`` ``attaching`` or ``detaching``, or the
volume ``deleting``) in the same transaction as its checks, and wakes the scheduler, whose
cycle runs :meth:`VolumeWorker.cycle`. Each outcome is written conditionally on the request
still being the one carried out, so a newer request is never overwritten:

- attach done: ``attached``, with the disk's reference and target kept on the volume (a volume
  lives on the target that made its disk from then on); attach failed: the volume is
  ``available`` again and the reason is an ``error`` event on it and on the instance;
- detach done: ``available``; failed: still ``attached``, with the reason in an event;
- delete done: the row and its tags go; failed: it stays ``deleting`` and is retried next
  cycle (the reason is recorded once).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import delete, select, update

from broker import db
from broker import model as m
from broker.events import EventRecord, audit, record
from broker.protocols import VolumeBackend, VolumeSpec, stores_volumes
from broker.runtime import Runtime
from broker.service.tags import drop_tags

log = logging.getLogger(__name__)
BATCH = 100
TIMEOUT = 120.0


class VolumeWorker:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._reported: set[str] = set()  # volumes whose failed delete was recorded

    async def cycle(self) -> int:
        """Carry out what is asked; returns how many volumes were worked on."""
        async with self.rt.engine.connect() as conn:
            await conn.execution_options(**db.ONLY_READS)  # each scheduler cycle reads this
            rows = (
                await conn.execute(
                    select(
                        m.Volume.id,
                        m.Volume.size_gb,
                        m.Volume.device,
                        m.Volume.backend_ref,
                        m.Volume.attach_state,
                        m.Volume.state,
                        m.Volume.instance_id,
                        m.Volume.target_id,
                        m.Instance.target_id,
                        m.Instance.backend_ref,
                    )
                    .outerjoin(m.Instance, m.Instance.id == m.Volume.instance_id)
                    .where(
                        m.Volume.attach_state.in_(("attaching", "detaching"))
                        | (m.Volume.state == "deleting")
                    )
                    .limit(BATCH)
                )
            ).all()
        await asyncio.gather(*(self._one(*row) for row in rows))  # type: ignore[call-arg]
        return len(rows)

    async def _backend(self, target_id: str | None) -> VolumeBackend:
        if target_id is None or self.rt.backends is None:
            raise LookupError("the instance is not on a target")
        backend = await self.rt.backends.get(target_id)
        if not stores_volumes(backend):
            raise LookupError("its target cannot hold volumes")
        return backend  # type: ignore[return-value]

    async def _one(
        self,
        vid: str,
        size_gb: int,
        device: str | None,
        vref: str | None,
        attach_state: str | None,
        state: str,
        iid: str | None,
        vol_target: str | None,
        inst_target: str | None,
        inst_ref: str | None,
    ) -> None:
        spec = VolumeSpec(vid, device or "", size_gb, vref)
        try:
            if attach_state == "attaching" and iid is not None:
                backend = await self._backend(inst_target)
                made = await asyncio.wait_for(backend.attach_volume(inst_ref or "", spec), TIMEOUT)
                await self._done(
                    vid,
                    "attaching",
                    {"attach_state": "attached", "backend_ref": made, "target_id": inst_target},
                    [audit(vid, "scheduler", "volume attached on its target", instance=iid)],
                )
            elif attach_state == "detaching" and iid is not None:
                backend = await self._backend(inst_target)
                await asyncio.wait_for(backend.detach_volume(inst_ref or "", spec), TIMEOUT)
                await self._done(
                    vid,
                    "detaching",
                    {"state": "available", "attach_state": None, "instance_id": None,
                     "device": None},
                    [audit(vid, "scheduler", "volume detached from its target", instance=iid)],
                )  # fmt: skip
            elif state == "deleting":
                if vref is not None:
                    backend = await self._backend(vol_target)
                    await asyncio.wait_for(backend.delete_volume(spec), TIMEOUT)
                async with self.rt.engine.begin() as conn:
                    await conn.execute(
                        delete(m.Volume).where(m.Volume.id == vid, m.Volume.state == "deleting")
                    )
                    await drop_tags(conn, [vid])
                    await record(conn, [audit(vid, "scheduler", "volume deleted on its target")])
                self._reported.discard(vid)
        except Exception as exc:  # every failure is recorded against the volume
            reason = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            log.warning("volume %s (%s) failed: %s", vid, attach_state or state, reason)
            await self._failed(vid, attach_state, state, iid, reason)

    async def _done(
        self, vid: str, asked: str, values: dict[str, Any], events: list[EventRecord]
    ) -> None:
        async with self.rt.engine.begin() as conn:
            result = await conn.execute(
                update(m.Volume)
                .where(m.Volume.id == vid, m.Volume.attach_state == asked)
                .values(**values)
            )
            if result.rowcount:
                await record(conn, events)

    async def _failed(
        self, vid: str, attach_state: str | None, state: str, iid: str | None, reason: str
    ) -> None:
        if attach_state == "attaching":
            values: dict[str, Any] = {
                "state": "available",
                "attach_state": None,
                "instance_id": None,
                "device": None,
            }
            what = "attach"
        elif attach_state == "detaching":
            values, what = {"attach_state": "attached"}, "detach"
        else:
            if vid in self._reported:
                return
            self._reported.add(vid)
            async with self.rt.engine.begin() as conn:
                await record(conn, [_error(vid, f"delete failed, retried: {reason}")])
            return
        async with self.rt.engine.begin() as conn:
            result = await conn.execute(
                update(m.Volume)
                .where(m.Volume.id == vid, m.Volume.attach_state == attach_state)
                .values(**values)
            )
            if result.rowcount:
                events = [_error(vid, f"{what} failed: {reason}")]
                if iid is not None:
                    events.append(_error(iid, f"{what} of {vid} failed: {reason}"))
                await record(conn, events)


def _error(rid: str, message: str) -> EventRecord:
    return EventRecord(rid, "error", "scheduler", message=message)
