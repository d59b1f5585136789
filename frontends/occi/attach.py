"""Decides when a volume asked for at launch (an inline storagelink) is attached.

A new instance is pending, and volumes attach only to instances that are running, booting,
powered off or suspended (:data:`broker.service.volumes.ATTACHABLE`). So the attachment waits:
one task per launch polls the instance until it can take the volumes (or ends, or ten minutes
pass) and then attaches them through :func:`broker.service.volumes.attach`. The tasks live in
this process (cancelled when the app stops); the broker has no "attach at launch" of its own.
A device not given is the first free ``/dev/vdX`` from ``b``.
"""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import Sequence
from typing import Final

from sqlalchemy import select

from broker import model as m
from broker.auth import Caller
from broker.errors import BrokerError
from broker.runtime import Runtime
from broker.service import volumes

log = logging.getLogger(__name__)

POLL: Final = 0.25
GIVE_UP: Final = 600.0
DONE_STATES: Final = frozenset({"done", "failed", "epilog"})


async def free_device(rt: Runtime, instance_id: str) -> str:
    async with rt.engine.connect() as conn:
        used = set(
            (
                await conn.scalars(
                    select(m.Volume.device).where(m.Volume.instance_id == instance_id)
                )
            ).all()
        )
    for letter in string.ascii_lowercase[1:]:
        device = f"/dev/vd{letter}"
        if device not in used:
            return device
    return "/dev/vdz"


async def attach_now(
    rt: Runtime, caller: Caller, instance_id: str, volume_id: str, device: str | None
) -> volumes.AttachmentView:
    return await volumes.attach(
        rt, caller, volume_id, instance_id, device or await free_device(rt, instance_id)
    )


class Attacher:
    """Background attachments of volumes to instances that are not ready yet."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.tasks: set[asyncio.Task[None]] = set()

    def later(
        self, caller: Caller, instance_id: str, disks: Sequence[tuple[str, str | None]]
    ) -> None:
        if not disks:
            return
        task = asyncio.create_task(self._run(caller, instance_id, list(disks)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(
        self, caller: Caller, instance_id: str, disks: list[tuple[str, str | None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + GIVE_UP
        while loop.time() < until:
            async with self.rt.engine.connect() as conn:
                state = await conn.scalar(
                    select(m.Instance.state).where(m.Instance.id == instance_id)
                )
            if state is None or state in DONE_STATES:
                return
            if state in volumes.ATTACHABLE:
                for vid, device in disks:
                    try:
                        await attach_now(self.rt, caller, instance_id, vid, device)
                    except BrokerError as exc:
                        log.warning(
                            "OCCI: %s not attached to %s: %s", vid, instance_id, exc.message
                        )
                return
            await asyncio.sleep(POLL)

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
