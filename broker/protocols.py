"""The small interfaces that let frontends, backends and policies plug into the core.

The core never imports an implementation: ``serve`` finds them through entry points
(``cloudbroker.backends``, ``cloudbroker.frontends``, ``cloudbroker.policies``). What crosses
these interfaces is immutable plain data, so a backend never reads or writes the database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from broker.states import Action, State

if TYPE_CHECKING:
    from aiohttp import web

    from broker.runtime import Runtime


@dataclasses.dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """What placement knows of one target at the start of a cycle.

    ``free_*`` already subtract reservations and what earlier cycles placed; ``attrs`` are the
    names a requirements or rank expression may use (FREE_CPU, HYPERVISOR, CLUSTER, PRICE...).
    """

    id: str
    name: str
    kind: str  # host | region | peer
    driver: str
    hypervisor: str
    cluster: str
    state: str
    total_cpu: int
    total_memory_mb: int
    free_cpu: int
    free_memory_mb: int
    free_disk_gb: int
    running: int
    load: float = 0.0
    price_per_hour: float = 0.0
    zone: str = ""
    simulated: bool = False
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    arch: str = ""  # "" = any
    prices: Mapping[str, float] = dataclasses.field(default_factory=dict)  # flavor -> USD/h
    capacity_by_flavor: Mapping[str, int] | None = None  # what a region still takes, per flavor
    running_by_flavor: Mapping[str, int] | None = None
    affinity_groups: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class PlacementRequest:
    """One instance waiting to be placed, as placement sees it."""

    instance_id: str
    owner_id: str
    group_id: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    flavor: str
    image_id: str
    image_hypervisor: str
    arch: str
    zone: str | None = None
    requirements: str = ""
    rank: str = ""
    hops: int = 0
    cluster: str | None = None
    affinity_group: str = ""
    affinity: str = ""  # affinity | anti-affinity
    image_mappings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pending_seconds: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Where placement sent an instance (``target_id`` None: nowhere, with the reason)."""

    instance_id: str
    target_id: str | None
    reason: str
    considered: Mapping[str, str] = dataclasses.field(default_factory=dict)


class PlacementPolicy(Protocol):
    """Pure and synchronous: no I/O, no global state; the scheduler passes everything in."""

    def place(
        self, requests: Sequence[PlacementRequest], targets: Sequence[TargetSnapshot]
    ) -> list[Decision]: ...

    def target_settings(self, target_name: str) -> Mapping[str, Any]:
        """Extra backend settings the policy gives a target (name maps, prices)."""
        ...


class PolicyFactory(Protocol):
    """The ``cloudbroker.policies`` plugin: builds a policy from the operator's document."""

    def __call__(self) -> PlacementPolicy: ...

    def from_document(self, data: Mapping[str, Any]) -> PlacementPolicy:
        """Validate ``data`` (raising InvalidRequest with the bad field's path) and build."""
        ...

    def normalise_document(self, data: Mapping[str, Any]) -> dict[str, Any]: ...

    def check_expressions(self, requirements: str, rank: str) -> None:
        """Raise InvalidRequest (field ``requirements`` or ``rank``, with the position) when an
        instance's own expression is malformed, so a launch refuses it instead of waiting."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class NicSpec:
    mac: str
    ip: str | None
    network: str
    bridge: str
    cidr: str
    gateway: str
    dns: str


@dataclasses.dataclass(frozen=True, slots=True)
class VolumeSpec:
    volume_id: str
    device: str
    size_gb: int
    backend_ref: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a backend needs to start one instance; immutable."""

    instance_id: str
    target_id: str
    target_settings: Mapping[str, Any]
    hostname: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    flavor: str
    image_id: str
    image_kind: str
    image_location: str
    image_kernel: str
    image_ramdisk: str
    image_cmdline: str
    image_checksum: str
    image_mappings: Mapping[str, Any]
    user_data: bytes | None
    key_name: str | None
    public_key: str | None
    nics: Sequence[NicSpec]
    security_groups: Sequence[str] = ()
    volumes: Sequence[VolumeSpec] = ()
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    owner_id: str = ""
    hops: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    """What a backend reports of one instance it runs."""

    ref: str
    state: State
    reason: str = ""
    private_ip: str | None = None
    public_ip: str | None = None
    instance_id: str | None = None  # ours, when the backend can read it back (tags, names)


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """A backend's answer to a launch: its reference for the instance and the state now."""

    ref: str
    state: State
    private_ip: str | None = None
    public_ip: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TargetProbe:
    """A monitoring sample of a target (capacity and usage)."""

    total_cpu: int
    total_memory_mb: int
    total_disk_gb: int
    used_cpu: float = 0.0
    free_memory_mb: int = 0
    free_disk_gb: float = 0.0
    load: float = 0.0
    running: int = 0
    hypervisor: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class TargetConfig:
    """A target's row as a backend receives it (secrets already decrypted)."""

    id: str
    name: str
    kind: str
    driver: str
    hypervisor: str
    settings: Mapping[str, Any]
    secret: Mapping[str, Any]
    data_dir: str


class Backend(Protocol):
    """One driver instance serves one target (a host, a region, a peer)."""

    kind: ClassVar[str]

    async def probe(self) -> TargetProbe: ...
    async def launch(self, spec: LaunchSpec) -> Placement: ...
    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None: ...
    async def observe(self, refs: Sequence[str]) -> list[Observed]: ...
    async def console(self, ref: str) -> str: ...
    async def aclose(self) -> None: ...


class VolumeBackend(Protocol):
    """What a backend that stores volumes adds: its disks follow the broker's volumes.

    ``attach_volume`` makes the disk on first use (``volume.backend_ref`` is None) and returns
    its reference there; ``detach_volume`` and ``delete_volume`` take that reference back.
    """

    async def attach_volume(self, ref: str, volume: VolumeSpec) -> str: ...
    async def detach_volume(self, ref: str, volume: VolumeSpec, *, force: bool = False) -> None: ...
    async def delete_volume(self, volume: VolumeSpec) -> None: ...


VOLUME_METHODS = ("attach_volume", "detach_volume", "delete_volume")


def stores_volumes(backend: object) -> bool:
    """Whether a backend (or its class) implements :class:`VolumeBackend`."""
    return all(callable(getattr(backend, name, None)) for name in VOLUME_METHODS)


class SnapshotBackend(Protocol):
    """What a backend that keeps snapshots of its instances adds (vSphere's, libvirt's).

    Snapshots are named; ``snapshots`` lists the names oldest first (parents before children).
    Reverting or deleting a name the instance does not have raises ``BackendError``: the
    service checks names against ``snapshots`` first, so that is a race, not the usual path.
    """

    async def snapshot(self, ref: str, name: str, description: str = "") -> None: ...
    async def snapshots(self, ref: str) -> list[str]: ...
    async def revert_snapshot(self, ref: str, name: str) -> None: ...
    async def delete_snapshot(self, ref: str, name: str) -> None: ...


SNAPSHOT_METHODS = ("snapshot", "snapshots", "revert_snapshot", "delete_snapshot")


def keeps_snapshots(backend: object) -> bool:
    """Whether a backend (or its class) implements :class:`SnapshotBackend`."""
    return all(callable(getattr(backend, name, None)) for name in SNAPSHOT_METHODS)


class OvfImportBackend(Protocol):
    """What a backend that takes OVF packages into its target's storage adds.

    ``files`` maps each file the descriptor references (its ``href``) to a local path; the
    package becomes a template named ``name`` there, which an image launches from through its
    location ``template:NAME``. Returns that name.
    """

    async def import_ovf(self, name: str, descriptor: str, files: Mapping[str, str]) -> str: ...


def imports_ovf(backend: object) -> bool:
    """Whether a backend (or its class) implements :class:`OvfImportBackend`."""
    return callable(getattr(backend, "import_ovf", None))


class BackendFactory(Protocol):
    kind: ClassVar[str]

    def __call__(self, config: TargetConfig) -> Backend: ...

    @staticmethod
    async def validate(config: TargetConfig) -> None:
        """Check the target's settings and reach it once; raise BrokerError with why not."""


class FrontendFactory(Protocol):
    """``create_app(runtime) -> web.Application`` for one listener."""

    def __call__(self, runtime: Runtime) -> web.Application: ...


class WorkerFrontendFactory(Protocol):
    """The factory of a frontend that worker processes can serve (``[ec2] workers``): with
    ``forwarded=True``, the app ``serve``'s own process runs for the requests its workers hand
    over, which the worker that accepted each has already rate limited and counted."""

    def __call__(self, runtime: Runtime, *, forwarded: bool = False) -> web.Application: ...
