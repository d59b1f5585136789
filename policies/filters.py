"""Placement filters: which targets can take an instance at all.

One small class per filter, as nova's ``scheduler/filters``. Each has a ``name`` (what
``cloudbroker explain`` prints as "removed by <name>"), the ``request_keys`` it reads from a
:class:`PlacementRequest`, and ``volatile(req)``: whether its answer for a target can change
while a cycle fills that target. A filter that is not volatile depends only on the target's
snapshot and those request fields, so the framework evaluates it once per (target, distinct
values of those fields) per cycle, however many instances share them.

What a target has left during a cycle is a :class:`Free`, which the framework keeps up to date
(free CPU, memory and disk, instances running, per-flavor room, affinity-group members, and
the expression attributes ``FREE_CPU``, ``FREE_MEM``, ``FREE_DISK``, ``RUNNING_VMS``).

Fields the snapshot and request do not carry yet are read through the small accessors at the
bottom (``target_arch``, ``request_cluster``, ...), so adding them to ``broker.protocols`` is
a one-line change here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from broker.protocols import PlacementRequest, TargetSnapshot
from policies import expr

#: Expression attributes that change as a cycle places instances on a target.
DYNAMIC_NAMES = frozenset({"FREE_CPU", "FREE_MEM", "FREE_DISK", "RUNNING_VMS"})

AFFINITY = "affinity"
ANTI_AFFINITY = "anti-affinity"


@dataclasses.dataclass(slots=True)
class World:
    """Cycle-wide facts beyond one target: how many targets hold members of each group."""

    group_targets: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class Free:
    """What is left on one target during one cycle; ``attrs`` feed the expressions."""

    cpu: int
    memory_mb: int
    disk_gb: int
    running: int
    attrs: dict[str, Any]
    flavors: dict[str, int] | None = None  # room per flavor (regions); None: unconstrained
    groups: dict[str, int] = dataclasses.field(default_factory=dict)
    world: World = dataclasses.field(default_factory=World)

    @classmethod
    def of(cls, target: TargetSnapshot, world: World | None = None) -> Free:
        room = target_flavor_capacity(target)
        free = cls(
            target.free_cpu,
            target.free_memory_mb,
            target.free_disk_gb,
            target.running,
            target_attrs(target),
            dict(room) if room is not None else None,
            dict(target_groups(target)),
            world if world is not None else World(),
        )
        return free

    def fits(self, req: PlacementRequest) -> bool:
        if self.cpu < req.vcpus or self.memory_mb < req.memory_mb or self.disk_gb < req.disk_gb:
            return False
        return self.flavors is None or self.flavors.get(req.flavor, 0) > 0

    def take(self, req: PlacementRequest) -> None:
        """Account for one instance placed here."""
        self.cpu -= req.vcpus
        self.memory_mb -= req.memory_mb
        self.disk_gb -= req.disk_gb
        self.running += 1
        a = self.attrs
        a["FREE_CPU"] = self.cpu
        a["FREE_MEM"] = self.memory_mb
        a["FREE_DISK"] = self.disk_gb
        a["RUNNING_VMS"] = self.running
        if self.flavors is not None:
            self.flavors[req.flavor] = self.flavors.get(req.flavor, 0) - 1
        group, _mode = request_affinity(req)
        if group:
            held = self.groups.get(group, 0)
            if held == 0:
                targets = self.world.group_targets
                targets[group] = targets.get(group, 0) + 1
            self.groups[group] = held + 1

    def at(self, cpu: int, memory_mb: int, disk_gb: int, running: int) -> Free:
        """A copy as it was at an earlier point of the cycle (for explanations)."""
        attrs = dict(self.attrs)
        attrs.update(FREE_CPU=cpu, FREE_MEM=memory_mb, FREE_DISK=disk_gb, RUNNING_VMS=running)
        return dataclasses.replace(
            self, cpu=cpu, memory_mb=memory_mb, disk_gb=disk_gb, running=running, attrs=attrs
        )


class Filter(Protocol):
    name: str
    request_keys: tuple[str, ...]

    def volatile(self, req: PlacementRequest) -> bool: ...

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool: ...


class _Static:
    """Base for filters whose answer depends only on the snapshot and the request."""

    name = ""
    request_keys: tuple[str, ...] = ()

    def volatile(self, req: PlacementRequest) -> bool:
        return False


class TargetEnabled(_Static):
    """The target (host, region or peer) is enabled, not disabled, draining or in error."""

    name = "state"

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return target.state == "enabled"


class ZoneMatch(_Static):
    """The instance asked for an availability zone: only targets in it."""

    name = "zone"
    request_keys: tuple[str, ...] = ("zone",)

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return not req.zone or target.zone == req.zone


class ClusterMatch(_Static):
    """The instance asked for a cluster: only targets in it."""

    name = "cluster"
    request_keys: tuple[str, ...] = ("cluster",)

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        wanted = request_cluster(req)
        return not wanted or target.cluster == wanted


class HypervisorMatch(_Static):
    """A local host runs the image's hypervisor (regions and peers choose their own)."""

    name = "hypervisor"
    request_keys: tuple[str, ...] = ("image_hypervisor",)

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        if not req.image_hypervisor or target.kind != "host":
            return True
        return req.image_hypervisor == target.hypervisor


_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i686": "i386"}


def same_arch(a: str, b: str) -> bool:
    """Architectures match if either is unknown ("") or both name the same one."""
    if not a or not b:
        return True
    return _ARCH_ALIASES.get(a.lower(), a.lower()) == _ARCH_ALIASES.get(b.lower(), b.lower())


class ArchMatch(_Static):
    """The target runs the image's architecture (x86_64, aarch64, ...)."""

    name = "arch"
    request_keys: tuple[str, ...] = ("arch",)

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return same_arch(req.arch, target_arch(target))


class ImageAvailable(_Static):
    """The image is usable there: local hosts copy it from the catalog; regions and peers need
    the image mapped to an id of theirs, in the image's own mappings or a burst policy's
    ``image_map`` (passed in as target name -> our image ids, ``"*"`` for any)."""

    name = "image"
    request_keys: tuple[str, ...] = ("image_id",)  # an image's mappings are a function of its id

    def __init__(self, mapped: Mapping[str, frozenset[str]] | None = None) -> None:
        self._mapped = dict(mapped or {})

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        if target.kind == "host":
            return True
        mappings = request_image_mappings(req)
        if target.name in mappings or target.id in mappings:
            return True
        ours = self._mapped.get(target.name, frozenset())
        return req.image_id in ours or "*" in ours


class HopLimit(_Static):
    """A request forwarded by a peer is not forwarded again past ``max_hops``."""

    name = "hops"
    request_keys: tuple[str, ...] = ("hops",)

    def __init__(self, max_hops: int = 1) -> None:
        self.max_hops = max_hops

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return target.kind != "peer" or req.hops < self.max_hops


class EnoughCapacity:
    """Enough free CPU, memory and disk, and room for the flavor where a region declares it."""

    name = "capacity"
    request_keys: tuple[str, ...] = ("vcpus", "memory_mb", "disk_gb", "flavor")

    def volatile(self, req: PlacementRequest) -> bool:
        return True

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        return free.fits(req)


class Affinity:
    """Instances of one affinity group run together; of an anti-affinity group, apart."""

    name = "affinity"
    request_keys: tuple[str, ...] = ("affinity_group", "affinity")

    def volatile(self, req: PlacementRequest) -> bool:
        return bool(request_affinity(req)[0])

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        group, mode = request_affinity(req)
        if not group:
            return True
        here = free.groups.get(group, 0)
        if mode == ANTI_AFFINITY:
            return here == 0
        return here > 0 or free.world.group_targets.get(group, 0) == 0


class Requirements:
    """The operator's requirements expression and the instance's own: both must hold.

    A malformed instance expression removes every target (the service validates expressions
    at launch, so this only happens to rows written before validation)."""

    name = "requirements"
    request_keys: tuple[str, ...] = ("requirements",)

    def __init__(self, default: str = "") -> None:
        self.default = expr.parse_requirements(default)
        self._cache: dict[str, tuple[Callable[[Mapping[str, Any]], bool], bool, str]] = {}

    def _compiled(self, text: str) -> tuple[Callable[[Mapping[str, Any]], bool], bool, str]:
        hit = self._cache.get(text)
        if hit is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            try:
                r = expr.parse_requirements(text)
                hit = (r.evaluate, bool(r.names & DYNAMIC_NAMES), "")
            except expr.ExprError as exc:
                hit = (_never, False, str(exc))
            self._cache[text] = hit
        return hit

    def error(self, req: PlacementRequest) -> str:
        """Why the instance's own expression is unusable ("" if it is fine)."""
        return self._compiled(req.requirements)[2] if req.requirements else ""

    def volatile(self, req: PlacementRequest) -> bool:
        if self.default.names & DYNAMIC_NAMES:
            return True
        return bool(req.requirements) and self._compiled(req.requirements)[1]

    def passes(self, target: TargetSnapshot, free: Free, req: PlacementRequest) -> bool:
        if not self.default.evaluate(free.attrs):
            return False
        return not req.requirements or self._compiled(req.requirements)[0](free.attrs)


def _never(_attrs: Mapping[str, Any]) -> bool:
    return False


def default_filters(
    requirements: str = "",
    *,
    image_maps: Mapping[str, frozenset[str]] | None = None,
    max_hops: int = 1,
) -> list[Filter]:
    """The standard chain, cheapest and most selective first; capacity before expressions."""
    return [
        TargetEnabled(),
        ZoneMatch(),
        ClusterMatch(),
        HypervisorMatch(),
        ArchMatch(),
        ImageAvailable(image_maps),
        HopLimit(max_hops),
        EnoughCapacity(),
        Affinity(),
        Requirements(requirements),
    ]


# --------------------------------------------------------------------------- attributes


def target_attrs(target: TargetSnapshot) -> dict[str, Any]:
    """The names an expression may use for a target, live values included."""
    attrs = {
        "NAME": target.name,
        "KIND": target.kind,
        "DRIVER": target.driver,
        "HYPERVISOR": target.hypervisor,
        "CLUSTER": target.cluster,
        "ZONE": target.zone,
        "ARCH": target_arch(target),
        "STATE": target.state,
        "TOTAL_CPU": target.total_cpu,
        "TOTAL_MEM": target.total_memory_mb,
        "LOAD": target.load,
        "PRICE": target.price_per_hour,
        "SIMULATED": target.simulated,
    }
    attrs.update(target.attrs)
    attrs.update(
        FREE_CPU=target.free_cpu,
        FREE_MEM=target.free_memory_mb,
        FREE_DISK=target.free_disk_gb,
        RUNNING_VMS=target.running,
    )
    return attrs


# Accessors for fields proposed for broker.protocols (read with defaults until they exist).


def target_arch(target: TargetSnapshot) -> str:
    arch = getattr(target, "arch", None)
    if arch is None:
        arch = target.attrs.get("ARCH", "")
    return str(arch or "")


def target_flavor_capacity(target: TargetSnapshot) -> Mapping[str, int] | None:
    """How many more of each flavor a region takes, as the operator declares (None: any)."""
    room = getattr(target, "capacity_by_flavor", None)
    return room if room else None


def target_groups(target: TargetSnapshot) -> Mapping[str, int]:
    """Affinity group -> members already on the target."""
    groups: Mapping[str, int] = getattr(target, "affinity_groups", None) or {}
    return groups


def target_prices(target: TargetSnapshot) -> Mapping[str, float]:
    """Flavor -> USD per hour on this target (regions); ``price_per_hour`` otherwise."""
    prices: Mapping[str, float] = getattr(target, "prices", None) or {}
    return prices


def target_running_by_flavor(target: TargetSnapshot) -> Mapping[str, int] | None:
    running: Mapping[str, int] | None = getattr(target, "running_by_flavor", None)
    return running


def request_cluster(req: PlacementRequest) -> str:
    return str(getattr(req, "cluster", None) or "")


def request_affinity(req: PlacementRequest) -> tuple[str, str]:
    """(group, "affinity" | "anti-affinity"); ("", "") when the instance has none."""
    group = getattr(req, "affinity_group", None) or ""
    if not group:
        return "", ""
    return str(group), str(getattr(req, "affinity", None) or AFFINITY)


def request_image_mappings(req: PlacementRequest) -> Mapping[str, str]:
    mappings: Mapping[str, str] = getattr(req, "image_mappings", None) or {}
    return mappings


def request_pending_seconds(req: PlacementRequest) -> float:
    return float(getattr(req, "pending_seconds", 0.0) or 0.0)
