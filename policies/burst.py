"""Burst policy: when an instance may leave the local hosts, where it may go, and the limits.

The operator's document (TOML or JSON, set with ``cloudbroker policy set``)::

    [placement]                      # the operator's placement defaults (all optional)
    preset = "packing"               # packing | striping | load-aware | cost
    requirements = 'HYPERVISOR = "kvm"'
    rank = ""                        # overrides the preset when set

    [default]                  # when to burst, for every group without its own rule
    trigger = "no_local_fit"   # never | no_local_fit | utilisation_above | pending_longer_than

    [groups.research]
    trigger = "pending_longer_than"
    seconds = 600                    # utilisation_above takes threshold = 0.8 (0..1)

    [[targets]]                      # where to, in order of preference
    name = "us-east-1"
    max_instances = 20               # omitted: no limit
    max_spend_per_hour = 0.80        # USD, from the price table; omitted: no budget
    allowed_groups = ["research"]    # empty: every group
    flavor_map = { "m1.small" = "t3.small", "*" = "*" }   # "*" = "*": same name
    image_map = { "ami-0a1b2c3d" = "ami-0123456789abcdef0" }
    key_map = {}                     # unmapped keys and security groups keep their names
    security_group_map = {}
    prices = { "t3.small" = 0.0208 } # per the target's instance type

:meth:`BurstPolicy.from_dict` validates everything before it can take effect and raises
:class:`~broker.errors.InvalidRequest` naming the bad field (``targets[1].max_spend_per_hour:
must be >= 0``). The decision functions are pure: :func:`may_burst` answers "may this instance
burst now", :func:`eligible_targets` lists the burst targets it may use, in order, and a
:class:`Ledger` started from the current :data:`BurstState` charges every burst of a batch, so
neither a target's instance limit nor its budget is ever passed. Money is counted in integer
micro-dollars, so a budget of 0.80 takes exactly eight instances at 0.10.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from broker.errors import InvalidRequest
from broker.mappings import mapped_name
from broker.protocols import TargetSnapshot
from policies import expr
from policies.filters import target_running_by_flavor
from policies.rankers import PRESETS

NEVER = "never"
NO_LOCAL_FIT = "no_local_fit"
UTILISATION_ABOVE = "utilisation_above"
PENDING_LONGER_THAN = "pending_longer_than"
TRIGGERS = (NEVER, NO_LOCAL_FIT, UTILISATION_ABOVE, PENDING_LONGER_THAN)

MAX_TARGETS = 64
MAX_GROUPS = 1024
MAX_MAP_ENTRIES = 4096
MAX_NAME = 128
MICRO = 1_000_000


def _micro(usd: float) -> int:
    return round(usd * MICRO)


def _usd(micro: int) -> str:
    return f"{micro / MICRO:.2f}"


# --------------------------------------------------------------------------- the document


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """When a group's instances burst."""

    trigger: str = NO_LOCAL_FIT
    threshold: float | None = None  # utilisation_above: 0..1
    seconds: float | None = None  # pending_longer_than

    def describe(self) -> str:
        if self.trigger == UTILISATION_ABOVE:
            return f"{self.trigger} {self.threshold:g}"
        if self.trigger == PENDING_LONGER_THAN:
            return f"{self.trigger} {self.seconds:g} s"
        return self.trigger


@dataclasses.dataclass(frozen=True, slots=True)
class BurstTarget:
    """One place to burst to, with its limits and how our names translate to its names."""

    name: str
    max_instances: int | None = None
    max_spend_per_hour: float | None = None
    allowed_groups: tuple[str, ...] = ()
    flavor_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    image_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    key_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    security_group_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    prices: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def allows(self, group: str) -> bool:
        return not self.allowed_groups or group in self.allowed_groups

    def instance_type(self, flavor: str) -> str | None:
        """The target's instance type for our flavor; no map at all means the same names."""
        if not self.flavor_map:
            return flavor
        return mapped_name(self.flavor_map, flavor)

    def image(self, image_id: str) -> str | None:
        return mapped_name(self.image_map, image_id)

    def key(self, name: str) -> str:
        return self.key_map.get(name, name)

    def security_groups(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.security_group_map.get(n, n) for n in names)

    def price_micro(self, flavor: str) -> int | None:
        """Micro-USD per hour of one instance of our ``flavor`` here (None: not in the table)."""
        itype = self.instance_type(flavor)
        if itype is None or itype not in self.prices:
            return None
        return _micro(self.prices[itype])


@dataclasses.dataclass(frozen=True, slots=True)
class PlacementDefaults:
    """The operator's placement defaults; an instance's own requirements add to these."""

    preset: str = "packing"
    requirements: str = ""
    rank: str = ""
    max_hops: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class BurstPolicy:
    """The whole operator document, validated; immutable so a cycle sees one version."""

    default: Rule = Rule()
    groups: Mapping[str, Rule] = dataclasses.field(default_factory=dict)
    targets: tuple[BurstTarget, ...] = ()
    placement: PlacementDefaults = PlacementDefaults()

    def rule_for(self, group: str) -> Rule:
        return self.groups.get(group, self.default)

    def target(self, name: str) -> BurstTarget | None:
        return next((t for t in self.targets if t.name == name), None)

    def image_maps(self) -> dict[str, frozenset[str]]:
        """Target name -> our image ids it maps (``"*"`` for any), for the image filter."""
        return {t.name: frozenset(t.image_map) for t in self.targets}

    @classmethod
    def from_dict(cls, data: Any) -> BurstPolicy:
        return _parse_policy(data)

    @classmethod
    def from_toml(cls, text: str) -> BurstPolicy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"policy: not valid TOML: {exc}", field="policy") from exc
        return _parse_policy(data)

    @classmethod
    def from_json(cls, text: str) -> BurstPolicy:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidRequest(f"policy: not valid JSON: {exc}", field="policy") from exc
        return _parse_policy(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no None values, so it also writes as TOML); from_dict reads it back."""
        p = self.placement
        return {
            "placement": {
                "preset": p.preset,
                "requirements": p.requirements,
                "rank": p.rank,
                "max_hops": p.max_hops,
            },
            "default": _rule_dict(self.default),
            "groups": {g: _rule_dict(r) for g, r in self.groups.items()},
            "targets": [_target_dict(t) for t in self.targets],
        }

    def problems(self, targets: Sequence[TargetSnapshot]) -> list[str]:
        """What ``policy test`` should warn about against the targets that exist now."""
        known = {t.name: t for t in targets}
        out = []
        for i, bt in enumerate(self.targets):
            snap = known.get(bt.name)
            if snap is None:
                out.append(f"targets[{i}].name: no target named {bt.name!r}")
            elif snap.kind == "host":
                out.append(f"targets[{i}].name: {bt.name!r} is a local host, not a region or peer")
            if bt.max_spend_per_hour is not None:
                missing = sorted({v for v in bt.flavor_map.values() if v != "*"} - set(bt.prices))
                if missing:
                    out.append(f"targets[{i}].prices: no price for {', '.join(missing)}")
        return out


def _rule_dict(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"trigger": rule.trigger}
    if rule.threshold is not None:
        out["threshold"] = rule.threshold
    if rule.seconds is not None:
        out["seconds"] = rule.seconds
    return out


def _target_dict(t: BurstTarget) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name}
    if t.max_instances is not None:
        out["max_instances"] = t.max_instances
    if t.max_spend_per_hour is not None:
        out["max_spend_per_hour"] = t.max_spend_per_hour
    out.update(
        allowed_groups=list(t.allowed_groups),
        flavor_map=dict(t.flavor_map),
        image_map=dict(t.image_map),
        key_map=dict(t.key_map),
        security_group_map=dict(t.security_group_map),
        prices=dict(t.prices),
    )
    return out


# --------------------------------------------------------------------------- validation


def _bad(path: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {why}", field=path)


def _table(data: Any, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _bad(path, "must be a table")
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise _bad(f"{path}.{key}" if path else str(key), "unknown field")
    return data


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, "must be a non-empty string")
    if len(value) > MAX_NAME:
        raise _bad(path, f"longer than {MAX_NAME} characters")
    return value


def _number(value: Any, path: str, *, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, "must be a number")
    x = float(value)
    if not math.isfinite(x):
        raise _bad(path, "must be finite")
    if x < lo:
        raise _bad(path, f"must be >= {lo:g}")
    if hi is not None and x > hi:
        raise _bad(path, f"must be <= {hi:g}")
    return x


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, "must be a whole number")
    if value < 0:
        raise _bad(path, "must be >= 0")
    return value


def _names(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _bad(path, "must be a list of names")
    if len(value) > MAX_GROUPS:
        raise _bad(path, f"more than {MAX_GROUPS} entries")
    return tuple(_name(v, f"{path}[{i}]") for i, v in enumerate(value))


def _map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _bad(path, "must be a table of names")
    if len(value) > MAX_MAP_ENTRIES:
        raise _bad(path, f"more than {MAX_MAP_ENTRIES} entries")
    return {_name(k, path): _name(v, f"{path}.{k}") for k, v in value.items()}


def _prices(value: Any, path: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise _bad(path, "must be a table of instance type = USD per hour")
    if len(value) > MAX_MAP_ENTRIES:
        raise _bad(path, f"more than {MAX_MAP_ENTRIES} entries")
    return {_name(k, path): _number(v, f"{path}.{k}") for k, v in value.items()}


def _parse_rule(data: Any, path: str) -> Rule:
    t = _table(data, path, ("trigger", "threshold", "seconds"))
    trigger = t.get("trigger")
    if trigger not in TRIGGERS:
        raise _bad(_join(path, "trigger"), f"must be one of {', '.join(TRIGGERS)}")
    threshold = seconds = None
    if trigger == UTILISATION_ABOVE:
        if "threshold" not in t:
            raise _bad(_join(path, "threshold"), "required for utilisation_above")
        threshold = _number(t["threshold"], _join(path, "threshold"), hi=1.0)
    elif "threshold" in t:
        raise _bad(_join(path, "threshold"), "only for utilisation_above")
    if trigger == PENDING_LONGER_THAN:
        if "seconds" not in t:
            raise _bad(_join(path, "seconds"), "required for pending_longer_than")
        seconds = _number(t["seconds"], _join(path, "seconds"))
    elif "seconds" in t:
        raise _bad(_join(path, "seconds"), "only for pending_longer_than")
    return Rule(str(trigger), threshold, seconds)


_TARGET_FIELDS = (
    "name",
    "max_instances",
    "max_spend_per_hour",
    "allowed_groups",
    "flavor_map",
    "image_map",
    "key_map",
    "security_group_map",
    "prices",
)


def _parse_target(data: Any, path: str) -> BurstTarget:
    t = _table(data, path, _TARGET_FIELDS)
    if "name" not in t:
        raise _bad(f"{path}.name", "required")
    max_n = t.get("max_instances")
    max_usd = t.get("max_spend_per_hour")
    return BurstTarget(
        name=_name(t["name"], f"{path}.name"),
        max_instances=None if max_n is None else _count(max_n, f"{path}.max_instances"),
        max_spend_per_hour=(
            None if max_usd is None else _number(max_usd, f"{path}.max_spend_per_hour")
        ),
        allowed_groups=_names(t.get("allowed_groups", []), f"{path}.allowed_groups"),
        flavor_map=_map(t.get("flavor_map", {}), f"{path}.flavor_map"),
        image_map=_map(t.get("image_map", {}), f"{path}.image_map"),
        key_map=_map(t.get("key_map", {}), f"{path}.key_map"),
        security_group_map=_map(t.get("security_group_map", {}), f"{path}.security_group_map"),
        prices=_prices(t.get("prices", {}), f"{path}.prices"),
    )


def _parse_placement(data: Any) -> PlacementDefaults:
    t = _table(data, "placement", ("preset", "requirements", "rank", "max_hops"))
    preset = t.get("preset", "packing")
    if preset not in PRESETS:
        raise _bad("placement.preset", f"must be one of {', '.join(PRESETS)}")
    texts = {}
    for key, parse in (("requirements", expr.parse_requirements), ("rank", expr.parse_rank)):
        text = t.get(key, "")
        if not isinstance(text, str):
            raise _bad(f"placement.{key}", "must be a string")
        try:
            parse(text)
        except expr.ExprError as exc:
            raise _bad(f"placement.{key}", str(exc)) from exc
        texts[key] = text
    return PlacementDefaults(
        preset,
        texts["requirements"],
        texts["rank"],
        _count(t.get("max_hops", 1), "placement.max_hops"),
    )


def _parse_policy(data: Any) -> BurstPolicy:
    top = _table(data, "", ("placement", "default", "groups", "targets"))
    placement = _parse_placement(top.get("placement", {}))
    default = _parse_rule(top.get("default", {"trigger": NO_LOCAL_FIT}), "default")
    groups_data = _table(top.get("groups", {}), "groups", top.get("groups", {}) or ())
    if len(groups_data) > MAX_GROUPS:
        raise _bad("groups", f"more than {MAX_GROUPS} groups")
    groups = {_name(g, "groups"): _parse_rule(r, f"groups.{g}") for g, r in groups_data.items()}
    raw_targets = top.get("targets", [])
    if not isinstance(raw_targets, list | tuple):
        raise _bad("targets", "must be a list")
    if len(raw_targets) > MAX_TARGETS:
        raise _bad("targets", f"more than {MAX_TARGETS} targets")
    targets = tuple(_parse_target(t, f"targets[{i}]") for i, t in enumerate(raw_targets))
    seen: set[str] = set()
    for i, bt in enumerate(targets):
        if bt.name in seen:
            raise _bad(f"targets[{i}].name", f"{bt.name!r} is listed twice")
        seen.add(bt.name)
    return BurstPolicy(default, groups, targets, placement)


# --------------------------------------------------------------------------- decisions


class Usage(NamedTuple):
    """What a burst target runs now: instances and their spend per hour (USD)."""

    instances: int
    spend_per_hour: float


#: Burst target name -> its usage at the start of the cycle.
BurstState = Mapping[str, Usage]


def usage_from_snapshots(
    policy: BurstPolicy, targets: Sequence[TargetSnapshot]
) -> dict[str, Usage]:
    """The :data:`BurstState` the snapshots imply: their instance counts, and spend from the
    policy's price table over ``running_by_flavor``. A snapshot without that breakdown is
    charged its most expensive listed price per instance, so a budget is never underestimated.
    """
    by_name = {t.name: t for t in targets}
    out = {}
    for bt in policy.targets:
        snap = by_name.get(bt.name)
        if snap is None:
            continue
        per_flavor = target_running_by_flavor(snap)
        if per_flavor is not None:
            micro = 0
            for flavor, n in per_flavor.items():
                price = bt.price_micro(flavor)
                micro += n * (price if price is not None else _max_price(bt))
        else:
            micro = snap.running * _max_price(bt)
        out[bt.name] = Usage(snap.running, micro / MICRO)
    return out


def _max_price(bt: BurstTarget) -> int:
    return max((_micro(p) for p in bt.prices.values()), default=0)


class Ledger:
    """Counts and spend per burst target during one batch; refuses what would pass a limit."""

    def __init__(self, policy: BurstPolicy, state: BurstState) -> None:
        self._count: dict[str, int] = {}
        self._spend: dict[str, int] = {}
        for bt in policy.targets:
            used = state.get(bt.name, Usage(0, 0.0))
            self._count[bt.name] = used.instances
            self._spend[bt.name] = _micro(used.spend_per_hour)

    def usage(self, name: str) -> Usage:
        return Usage(self._count.get(name, 0), self._spend.get(name, 0) / MICRO)

    def refusal(self, bt: BurstTarget, flavor: str) -> str:
        """Why one more ``flavor`` instance may not go to ``bt`` ("" if it may)."""
        count = self._count.get(bt.name, 0)
        if bt.max_instances is not None and count + 1 > bt.max_instances:
            return f"instance limit of {bt.name} reached ({count} of {bt.max_instances})"
        if bt.max_spend_per_hour is not None:
            price = bt.price_micro(flavor)
            if price is None:
                itype = bt.instance_type(flavor)
                return f"no price for {itype} in the price table of {bt.name}"
            limit = _micro(bt.max_spend_per_hour)
            after = self._spend.get(bt.name, 0) + price
            if after > limit:
                return (
                    f"budget of {bt.name} reached ({_usd(after)} of "
                    f"{_usd(limit)} USD/h with this instance)"
                )
        return ""

    def charge(self, bt: BurstTarget, flavor: str) -> None:
        self._count[bt.name] = self._count.get(bt.name, 0) + 1
        self._spend[bt.name] = self._spend.get(bt.name, 0) + (bt.price_micro(flavor) or 0)


class Verdict(NamedTuple):
    allowed: bool
    why: str


def may_burst(
    policy: BurstPolicy,
    group: str,
    *,
    local_fits: bool,
    utilisation: float,
    pending_seconds: float,
) -> Verdict:
    """Whether an instance of ``group`` may burst now, and the reason in words."""
    rule = policy.rule_for(group)
    trigger = rule.trigger
    if trigger == NEVER:
        return Verdict(False, f"bursting not allowed for group {group} (policy: never)")
    if trigger == NO_LOCAL_FIT:
        if local_fits:
            return Verdict(False, "a local host fits (policy: no_local_fit)")
        return Verdict(True, "no local host fits (policy: no_local_fit)")
    if trigger == UTILISATION_ABOVE:
        assert rule.threshold is not None
        if utilisation > rule.threshold:
            return Verdict(
                True,
                f"local utilisation {utilisation:.2f} is above {rule.threshold:.2f} "
                "(policy: utilisation_above)",
            )
        return Verdict(
            False,
            f"local utilisation {utilisation:.2f} is not above {rule.threshold:.2f} "
            "(policy: utilisation_above)",
        )
    assert rule.seconds is not None
    if local_fits:
        return Verdict(False, "a local host fits (policy: pending_longer_than)")
    if pending_seconds > rule.seconds:
        return Verdict(
            True,
            f"pending {pending_seconds:.0f} s, longer than {rule.seconds:g} s "
            "(policy: pending_longer_than)",
        )
    return Verdict(
        False,
        f"may burst after {rule.seconds:g} s pending, pending {pending_seconds:.0f} s now "
        "(policy: pending_longer_than)",
    )


def eligible_targets(
    policy: BurstPolicy, *, group: str, flavor: str, image_id: str, ledger: Ledger
) -> tuple[list[BurstTarget], dict[str, str]]:
    """The burst targets this instance may use, in the policy's order, and why not the others.

    Only the policy's own conditions (groups, mappings, limits, budgets); the caller still
    runs the placement filters and charges the ledger for the one it picks.
    """
    eligible: list[BurstTarget] = []
    refused: dict[str, str] = {}
    for bt in policy.targets:
        if not bt.allows(group):
            refused[bt.name] = f"group {group} is not allowed on {bt.name}"
        elif bt.instance_type(flavor) is None:
            refused[bt.name] = f"flavor {flavor} is not mapped for {bt.name}"
        elif bt.image(image_id) is None:
            refused[bt.name] = f"image {image_id} is not mapped for {bt.name}"
        elif why := ledger.refusal(bt, flavor):
            refused[bt.name] = why
        else:
            eligible.append(bt)
    return eligible, refused
