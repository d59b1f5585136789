"""Decides which categories the app offers beyond the OCCI standard ones, and keeps them fresh.

Each registered image is an ``os_tpl`` mixin (term: its id) and each flavor a ``resource_tpl``
mixin (term: its name, defaults: cores, memory in GiB, architecture); both under our own
schemes. They are read from the database at most once a second, and at once when a request
names a template of ours that the registry does not know yet (an image registered through EC2
a moment ago). The query interface shows a caller only the images they may launch.

Two mixins of our own: ``placement`` (requirements, rank and zone for one request, applies to
compute and storage) and nothing else. User-defined mixins (POST /-/) live in the registry of
this process: their associations are tags on the resources (key ``occi:mixin:<location>``, so
EC2 clients see them too), their definitions are lost on restart and must be posted again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

from sqlalchemy import select

from broker import model as m
from broker.auth import Caller
from broker.runtime import Runtime
from broker.service import images
from broker.service.images import ImageFilter
from frontends.occi.categories import (
    COMPUTE,
    DEFAULT_OS_TPL_SCHEME,
    DEFAULT_RESOURCE_TPL_SCHEME,
    OS_TPL,
    RESOURCE_TPL,
    STORAGE,
    Attribute,
    AttrType,
    Category,
    Mixin,
    Registry,
    build_registry,
)

PLACEMENT_SCHEME: Final = "http://schemas.cloudbroker.org/occi/infrastructure#"
PLACEMENT: Final = PLACEMENT_SCHEME + "placement"
REQUIREMENTS: Final = "org.cloudbroker.placement.requirements"
RANK: Final = "org.cloudbroker.placement.rank"
ZONE: Final = "org.cloudbroker.placement.zone"
#: Tag key prefix of a user mixin association; the value is the mixin's type identifier.
MIXIN_TAG: Final = "occi:mixin:"
MAX_USER_LOCATION: Final = 100
REFRESH_EVERY: Final = 1.0

_ARCH: Final = {"x86_64": "x64", "i386": "x86"}


def _placement() -> Mixin:
    def attr(name: str, text: str) -> Attribute:
        return Attribute(
            name=name, type=AttrType.STRING, mutable=False, write_once=True, description=text
        )

    return Mixin(
        scheme=PLACEMENT_SCHEME,
        term="placement",
        title="Where the broker may place this resource",
        applies=(COMPUTE, STORAGE),
        location="/mixin/placement/",
        attributes=(
            attr(REQUIREMENTS, "Requirements expression targets must pass"),
            attr(RANK, "Rank expression; higher wins"),
            attr(ZONE, "Availability zone (a cluster)"),
        ),
    )


def os_tpl_id(image_id: str) -> str:
    return DEFAULT_OS_TPL_SCHEME + image_id


def resource_tpl_id(flavor: str) -> str:
    return DEFAULT_RESOURCE_TPL_SCHEME + flavor


class Catalog:
    """The app's registry with the database's images and flavors folded in as templates."""

    def __init__(self) -> None:
        self.registry: Registry = build_registry()
        self.registry.add(_placement())
        self.registry.freeze_builtins()
        self.images: set[str] = set()
        self.flavors: dict[str, tuple[int, int, str]] = {}
        self.owners: dict[str, str] = {}  # user mixin -> user id of whoever defined it
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, rt: Runtime, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._at < REFRESH_EVERY:
            return
        async with self._lock:
            if not force and time.monotonic() - self._at < REFRESH_EVERY:
                return
            async with rt.engine.connect() as conn:
                found = (
                    await conn.execute(
                        select(m.Image.id, m.Image.name).where(m.Image.state != "deregistered")
                    )
                ).all()
                sizes = (
                    await conn.execute(
                        select(m.Flavor.name, m.Flavor.vcpus, m.Flavor.memory_mb, m.Flavor.arch)
                    )
                ).all()
            self._sync_images({str(r[0]): str(r[1]) for r in found})
            self._sync_flavors({str(r[0]): (int(r[1]), int(r[2]), str(r[3])) for r in sizes})
            self._at = time.monotonic()

    def _sync_images(self, current: dict[str, str]) -> None:
        for gone in self.images - set(current):
            self.registry.remove_mixin(os_tpl_id(gone))
        for image_id, name in current.items():
            if image_id not in self.images:
                self.registry.add_os_template(image_id, name or image_id)
        self.images = set(current)

    def _sync_flavors(self, current: dict[str, tuple[int, int, str]]) -> None:
        for name in set(self.flavors) - set(current):
            self.registry.remove_mixin(resource_tpl_id(name))
            del self.flavors[name]
        for name, (cores, memory_mb, arch) in current.items():
            if name in self.flavors:
                continue
            defaults: dict[str, str | int | float] = {
                "occi.compute.cores": cores,
                "occi.compute.memory": memory_mb / 1024,
            }
            if arch in _ARCH:
                defaults["occi.compute.architecture"] = _ARCH[arch]
            self.registry.add_resource_template(
                name, f"{name}: {cores} cores, {memory_mb} MiB", defaults=defaults
            )
            self.flavors[name] = (cores, memory_mb, arch)

    async def ensure(self, rt: Runtime, identifiers: Sequence[str]) -> None:
        """Refresh at once when a request names a category the registry does not know."""
        if any(i not in self.registry for i in identifiers):
            await self.refresh(rt, force=True)

    async def visible_to(self, rt: Runtime, caller: Caller) -> list[Category]:
        """Every category, with only the OS templates of images ``caller`` may launch."""
        await self.refresh(rt)
        page = await images.describe(rt, caller, ImageFilter(), limit=1000)
        mine = {os_tpl_id(i.id) for i in page.items}
        return [
            c
            for c in self.registry
            if not (self.registry.is_template(c.type_id, OS_TPL) and c.type_id not in mine)
        ]

    def os_template(self, mixins: Sequence[str]) -> list[str]:
        """Image ids named by the os_tpl mixins among ``mixins``."""
        return [
            i.removeprefix(DEFAULT_OS_TPL_SCHEME)
            for i in mixins
            if self.registry.is_template(i, OS_TPL)
        ]

    def resource_template(self, mixins: Sequence[str]) -> list[str]:
        return [
            i.removeprefix(DEFAULT_RESOURCE_TPL_SCHEME)
            for i in mixins
            if self.registry.is_template(i, RESOURCE_TPL)
        ]

    def user_mixins(self, mixins: Sequence[str]) -> list[Mixin]:
        """The user-defined mixins among ``mixins``."""
        out = []
        for identifier in mixins:
            found = self.registry.get(identifier)
            if isinstance(found, Mixin) and identifier in self.owners:
                out.append(found)
        return out

    def mixins_of_tags(self, tags: dict[str, str] | object) -> list[str]:
        """User mixin identifiers a resource's tags associate it with (registered ones)."""
        out = []
        if isinstance(tags, dict):
            for key, value in tags.items():
                if key.startswith(MIXIN_TAG) and value in self.owners:
                    out.append(value)
        return out
