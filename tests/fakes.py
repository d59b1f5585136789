"""An in-memory backend for service and scheduler unit tests (real backends have their own)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import ClassVar

from broker.protocols import (
    LaunchSpec,
    Observed,
    Placement,
    TargetConfig,
    TargetProbe,
    VolumeSpec,
)
from broker.states import Action, State

AFTER = {
    Action.STOP: State.POWEROFF,
    Action.POWEROFF: State.POWEROFF,
    Action.START: State.RUNNING,
    Action.REBOOT: State.RUNNING,
    Action.SUSPEND: State.SUSPENDED,
    Action.RESUME: State.RUNNING,
}


class FakeBackend:
    kind: ClassVar[str] = "fake"
    fail_launches: ClassVar[int] = 0
    fail_volumes: ClassVar[int] = 0  # the next N volume operations fail
    #: target id -> its live fake, so a migration can hand a domain to the destination's fake
    live: ClassVar[weakref.WeakValueDictionary[str, FakeBackend]] = weakref.WeakValueDictionary()

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.domains: dict[str, State] = {}
        self.launched: list[str] = []
        self.down = False
        self.disks: dict[str, int] = {}  # our volume ref -> size in GiB
        self.attached: dict[str, dict[str, str]] = {}  # instance ref -> device -> volume ref
        FakeBackend.live[config.id] = self

    @staticmethod
    async def validate(config: TargetConfig) -> None:
        return None

    async def probe(self) -> TargetProbe:
        if self.down:
            raise ConnectionError("host down")
        cpu = int(self.config.settings.get("cpu", 8))
        mem = int(self.config.settings.get("memory_mb", 16384))
        return TargetProbe(
            total_cpu=cpu,
            total_memory_mb=mem,
            total_disk_gb=100,
            free_memory_mb=mem,
            free_disk_gb=100,
            running=len(self.domains),
        )

    async def launch(self, spec: LaunchSpec) -> Placement:
        if FakeBackend.fail_launches:
            FakeBackend.fail_launches -= 1
            raise ConnectionError("launch refused")
        self.launched.append(spec.instance_id)
        self.domains[spec.instance_id] = State.RUNNING
        return Placement(ref=spec.instance_id, state=State.RUNNING)

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        if action is Action.TERMINATE:
            self.domains.pop(ref, None)
            return None
        self.domains[ref] = AFTER[action]
        return Observed(ref, self.domains[ref])

    async def observe(self, refs: Sequence[str]) -> list[Observed]:
        if self.down:
            raise ConnectionError("host down")
        return [Observed(r, self.domains[r]) for r in refs if r in self.domains]

    async def console(self, ref: str) -> str:
        return f"console of {ref}\n"

    async def migrate(self, ref: str, dest: TargetConfig) -> Observed:
        other = FakeBackend.live.get(dest.id)
        if other is None or ref not in self.domains:
            raise LookupError(f"cannot migrate {ref} to {dest.name}")
        other.domains[ref] = self.domains.pop(ref)
        return Observed(ref, other.domains[ref])

    def _volume_fault(self) -> None:
        if FakeBackend.fail_volumes:
            FakeBackend.fail_volumes -= 1
            raise ConnectionError("volume operation refused")

    async def attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        self._volume_fault()
        if ref not in self.domains:
            raise LookupError(f"no domain {ref}")
        vref = volume.backend_ref or f"disk-{volume.volume_id}"
        self.disks.setdefault(vref, volume.size_gb)
        self.attached.setdefault(ref, {})[volume.device] = vref
        return vref

    async def detach_volume(self, ref: str, volume: VolumeSpec, *, force: bool = False) -> None:
        self._volume_fault()
        self.attached.get(ref, {}).pop(volume.device, None)

    async def delete_volume(self, volume: VolumeSpec) -> None:
        self._volume_fault()
        if volume.backend_ref is not None:
            self.disks.pop(volume.backend_ref, None)

    async def aclose(self) -> None:
        return None
