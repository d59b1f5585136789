"""Finding implementations through entry points, and keeping one live backend per target.

``cloudbroker.backends`` names a backend factory per driver (libvirt, vmware, ec2, peer),
``cloudbroker.frontends`` an app factory per listener, ``cloudbroker.policies`` a placement
policy. An operator's own package can add to any of them without touching ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, cast

from sqlalchemy import select

from broker import model as m
from broker.errors import InvalidRequest, NotFound
from broker.protocols import Backend, BackendFactory, TargetConfig


def load(group: str, name: str) -> Any:
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    raise InvalidRequest(f"no plugin named '{name}' in {group}", field=name)


def names(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


class BackendRegistry:
    """Target id -> a live backend, created on first use from the target's row."""

    def __init__(
        self,
        engine: Any,
        open_secret: Callable[[bytes], str],
        data_dir: str,
        loader: Callable[[str], BackendFactory] | None = None,
    ) -> None:
        self._engine = engine
        self._open = open_secret
        self._data_dir = data_dir
        self._loader = loader or (
            lambda driver: cast(BackendFactory, load("cloudbroker.backends", driver))
        )
        self._live: dict[str, Backend] = {}
        self._lock = asyncio.Lock()

    def factory(self, driver: str) -> BackendFactory:
        return self._loader(driver)

    async def config_for(self, target_id: str) -> TargetConfig:
        import json

        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        m.Target.id,
                        m.Target.name,
                        m.Target.kind,
                        m.Target.driver,
                        m.Target.hypervisor,
                        m.Target.settings,
                        m.Target.secret_enc,
                    ).where(m.Target.id == target_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"the target '{target_id}' does not exist", resource="target")
        secret = json.loads(self._open(row[6])) if row[6] else {}
        return TargetConfig(
            id=row[0],
            name=row[1],
            kind=row[2],
            driver=row[3],
            hypervisor=row[4],
            settings=row[5] or {},
            secret=secret,
            data_dir=self._data_dir,
        )

    async def get(self, target_id: str) -> Backend:
        backend = self._live.get(target_id)
        if backend is not None:
            return backend
        async with self._lock:
            backend = self._live.get(target_id)
            if backend is None:
                config = await self.config_for(target_id)
                backend = self.factory(config.driver)(config)
                self._live[target_id] = backend
        return backend

    async def drop(self, target_id: str) -> None:
        backend = self._live.pop(target_id, None)
        if backend is not None:
            await backend.aclose()

    async def aclose(self) -> None:
        live, self._live = self._live, {}
        for backend in live.values():
            await backend.aclose()
