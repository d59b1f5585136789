"""An in-memory backend for service and scheduler unit tests (real backends have their own)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from broker.protocols import LaunchSpec, Observed, Placement, TargetConfig, TargetProbe
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

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.domains: dict[str, State] = {}
        self.launched: list[str] = []
        self.down = False

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

    async def aclose(self) -> None:
        return None
