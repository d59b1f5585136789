"""Placement: which target each pending instance goes to in one cycle, and why.

Pure and synchronous over one snapshot of the targets. Local hosts are tried first: the
filters (``policies.filters``) remove hosts that cannot take the instance, a ranker
(``policies.rankers``) orders the rest, the best wins. Whether the instance may instead go to
a public-cloud region or a peer cluster, and to which, is the burst policy's call
(``policies.burst``): its ordered targets are tried in turn, each within its instance limit
and budget. The cycle accounts for everything it has placed, so a batch never overfills a
target, and no burst limit or budget is passed.

Speed: instances that share a *signature* (sizes, flavor, and every request field a filter or
ranker reads) share a bucket. Filters that cannot change during the cycle run once per (host,
distinct values they read); a bucket keeps the hosts that passed them in a heap by rank, and
after each placement only the one host that changed is re-scored, in each bucket that holds
it, when that bucket is next used. Instances in affinity groups are placed by a full scan.

Every decision carries ``considered``: target name -> "removed by <filter>" or "rank <n>",
as things stood when that instance was decided. It is a lazy mapping computed from the
cycle's history on first read, so placing 10,000 instances does not build 10,000 full maps.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

from broker.errors import InvalidRequest
from broker.protocols import Decision, PlacementRequest, TargetSnapshot
from policies import burst as b
from policies import expr
from policies.filters import (
    EnoughCapacity,
    Filter,
    Free,
    Requirements,
    World,
    default_filters,
    request_affinity,
    request_pending_seconds,
)
from policies.rankers import Ranker, RankExpression, make_ranker

__all__ = ["Considered", "DefaultPolicy"]

_SIZE_KEYS = ("vcpus", "memory_mb", "disk_gb", "flavor", "rank")


class DefaultPolicy:
    """Filters, then the operator's ranker (or the instance's own rank expression) over local
    hosts; bursting as the :class:`~policies.burst.BurstPolicy` allows."""

    def __init__(
        self,
        *,
        preset: str = "packing",
        requirements: str = "",
        rank: str = "",
        burst: b.BurstPolicy | None = None,
        filters: Sequence[Filter] | None = None,
        max_hops: int = 1,
    ) -> None:
        self.burst = burst if burst is not None else b.BurstPolicy()
        self.filters: list[Filter] = (
            list(filters)
            if filters is not None
            else default_filters(
                requirements, image_maps=self.burst.image_maps(), max_hops=max_hops
            )
        )
        self.ranker: Ranker = make_ranker(preset, rank)
        self._ranks: dict[str, Ranker | None] = {}
        self._keys = tuple(dict.fromkeys(k for f in self.filters for k in f.request_keys))

    @classmethod
    def from_policy(cls, policy: b.BurstPolicy) -> DefaultPolicy:
        """The policy an operator's document describes (``cloudbroker policy set``)."""
        p = policy.placement
        return cls(
            preset=p.preset,
            requirements=p.requirements,
            rank=p.rank,
            burst=policy,
            max_hops=p.max_hops,
        )

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> DefaultPolicy:
        """A policy from an operator's document (``policy set``); bad fields raise with a path."""
        return cls.from_policy(b.BurstPolicy.from_dict(dict(data)))

    @staticmethod
    def normalise_document(data: Mapping[str, Any]) -> dict[str, Any]:
        """The document as stored: validated and with every default spelled out."""
        return b.BurstPolicy.from_dict(dict(data)).to_dict()

    @staticmethod
    def check_expressions(requirements: str, rank: str) -> None:
        """Refuse an instance's malformed requirements or rank expression, saying where."""
        for field, text, parse in (
            ("requirements", requirements, expr.parse_requirements),
            ("rank", rank, expr.parse_rank),
        ):
            if text:
                try:
                    parse(text)
                except expr.ExprError as exc:
                    raise InvalidRequest(
                        f"the {field} expression is invalid: {exc}", field=field
                    ) from None

    def target_settings(self, target_name: str) -> dict[str, Any]:
        """What the burst policy says a backend must translate for ``target_name``: our
        flavors, images, key pairs and security groups to the target's, and its prices."""
        for target in self.burst.targets:
            if target.name == target_name:
                out: dict[str, Any] = {}
                for key in ("flavor_map", "image_map", "key_map", "security_group_map", "prices"):
                    value = getattr(target, key)
                    if value:
                        out[key] = dict(value)
                return out
        return {}

    def ranker_for(self, req: PlacementRequest) -> Ranker:
        """The instance's own rank expression if it has a valid one, else the operator's."""
        if not req.rank:
            return self.ranker
        if req.rank not in self._ranks:
            if len(self._ranks) > 4096:
                self._ranks.clear()
            try:
                self._ranks[req.rank] = RankExpression(req.rank)
            except expr.ExprError:
                self._ranks[req.rank] = None
        return self._ranks[req.rank] or self.ranker

    def signature(self, req: PlacementRequest) -> tuple[Hashable, ...]:
        """Instances with equal signatures are filtered and ranked alike."""
        sig = tuple([getattr(req, k, None) for k in self._keys + _SIZE_KEYS])
        try:
            hash(sig)
        except TypeError:
            sig = tuple(_hashable(v) for v in sig)
        return sig

    def place(
        self,
        requests: Sequence[PlacementRequest],
        targets: Sequence[TargetSnapshot],
        *,
        usage: b.BurstState | None = None,
    ) -> list[Decision]:
        """One decision per request, in order; ``usage`` defaults to what the snapshots say."""
        if usage is None:
            usage = b.usage_from_snapshots(self.burst, targets)
        cycle = _Cycle(self, targets, b.Ledger(self.burst, usage))
        return [cycle.decide(req) for req in requests]


def _hashable(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    if isinstance(value, list | set | frozenset):
        return tuple(sorted(value))
    return value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- one cycle


class _Cycle:
    """The mutable state of one ``place`` call."""

    def __init__(self, policy: DefaultPolicy, targets: Sequence[TargetSnapshot], ledger: b.Ledger):
        self.policy = policy
        self.targets = targets
        self.world = World()
        self.free = [Free.of(t, self.world) for t in targets]
        for f in self.free:
            for g in f.groups:
                self.world.group_targets[g] = self.world.group_targets.get(g, 0) + 1
        self.local = [i for i, t in enumerate(targets) if t.kind == "host"]
        self.by_name = {t.name: i for i, t in enumerate(targets)}
        self.ledger = ledger
        self.buckets: dict[tuple[Hashable, ...], _Bucket] = {}
        self.static: dict[tuple[int, tuple[Hashable, ...]], list[bool]] = {}
        self.interned: dict[tuple[int, bytes], list[bool]] = {}
        self.shared: dict[tuple[Any, ...], _Bucket] = {}
        self.scores: dict[tuple[Any, ...], dict[int, tuple[int, float]]] = {}
        self.log: list[int] = []  # the target index of each placement, in order
        self.epoch = [0] * len(targets)
        self.hist_seq: list[list[int]] = [[-1] for _ in targets]
        self.hist: list[list[tuple[int, int, int, int]]] = [
            [(f.cpu, f.memory_mb, f.disk_gb, f.running)] for f in self.free
        ]
        self.seq = 0
        enabled = [i for i in self.local if targets[i].state == "enabled"]
        self.enabled_local = set(enabled)
        self.total_cpu = sum(targets[i].total_cpu for i in enabled)
        self.used_cpu = sum(targets[i].total_cpu - targets[i].free_cpu for i in enabled)
        self.requirements = next((f for f in policy.filters if isinstance(f, Requirements)), None)

    def utilisation(self) -> float:
        if self.total_cpu <= 0:
            return 1.0
        return min(1.0, max(0.0, self.used_cpu / self.total_cpu))

    def static_results(self, pos: int, flt: Filter, req: PlacementRequest) -> list[bool]:
        """One filter's answer for every local host, once per distinct request values
        (equal answers are one shared list, so buckets can tell they filter alike)."""
        key = (pos, tuple(_hashable(getattr(req, k, None)) for k in flt.request_keys))
        hit = self.static.get(key)
        if hit is None:
            hit = [flt.passes(self.targets[i], self.free[i], req) for i in self.local]
            hit = self.interned.setdefault((pos, bytes(hit)), hit)
            self.static[key] = hit
        return hit

    def bucket_for(self, req: PlacementRequest) -> _Bucket:
        """Signatures that filter and rank alike share one bucket (say, two images that are
        both available everywhere)."""
        filters = self.policy.filters
        key = (
            tuple(
                id(self.static_results(pos, f, req))
                if not f.volatile(req)
                else (f.name, tuple(_hashable(getattr(req, k, None)) for k in f.request_keys))
                for pos, f in enumerate(filters)
            ),
            id(self.policy.ranker_for(req)),
            (req.vcpus, req.memory_mb, req.disk_gb, req.flavor),
        )
        bucket = self.shared.get(key)
        if bucket is None:
            bucket = self.shared[key] = _Bucket(self, req)
        return bucket

    def take(self, idx: int, req: PlacementRequest) -> None:
        free = self.free[idx]
        free.take(req)
        self.epoch[idx] += 1
        self.log.append(idx)
        self.hist_seq[idx].append(self.seq - 1)  # the decision being made
        self.hist[idx].append((free.cpu, free.memory_mb, free.disk_gb, free.running))
        if idx in self.enabled_local:
            self.used_cpu += req.vcpus

    def state_at(self, idx: int, seq: int) -> Free:
        """Target ``idx`` as decision ``seq`` saw it (before that decision's own placement)."""
        pos = bisect.bisect_left(self.hist_seq[idx], seq) - 1
        return self.free[idx].at(*self.hist[idx][pos])

    # ----------------------------------------------------------------------- one decision

    def decide(self, req: PlacementRequest) -> Decision:
        seq = self.seq
        self.seq += 1
        policy = self.policy
        sig = policy.signature(req)
        bucket = self.buckets.get(sig)
        if bucket is None:
            bucket = self.buckets[sig] = self.bucket_for(req)
        affine = bool(request_affinity(req)[0])
        extras: dict[str, str] = {}
        if affine:
            local, local_score = bucket.scan(req, extras)
        else:
            local, local_score = bucket.best()
        verdict = b.may_burst(
            policy.burst,
            req.group_id,
            local_fits=local is not None,
            utilisation=self.utilisation(),
            pending_seconds=request_pending_seconds(req),
        )
        chosen, burst_note = None, ""
        if verdict.allowed:
            chosen, burst_note = self.burst(req, verdict.why, extras)
        elif policy.burst.targets:
            burst_note = f"not tried: {verdict.why}"
        considered = Considered(self, bucket, req, seq, burst_note, extras)
        if chosen is not None:
            self.take(chosen, req)
            considered.chosen = chosen
            return Decision(req.instance_id, self.targets[chosen].id, burst_note, considered)
        if local is not None:
            self.take(local, req)
            considered.chosen = local
            t = self.targets[local]
            reason = f"{t.name}: best local host by {bucket.ranker.name} (rank {local_score:g})"
            if verdict.allowed:
                reason += f"; {verdict.why} but {burst_note}"
            return Decision(req.instance_id, t.id, reason, considered)
        reason = f"no target fits: {bucket.why_none(req)}; "
        reason += burst_note if verdict.allowed else verdict.why
        reason += f"; waits for {_wanted(req)}"
        return Decision(req.instance_id, None, reason, considered)

    def burst(
        self, req: PlacementRequest, why: str, extras: dict[str, str]
    ) -> tuple[int | None, str]:
        """The first burst target, in the policy's order, that passes every limit and filter."""
        pol = self.policy.burst
        eligible, refused = b.eligible_targets(
            pol, group=req.group_id, flavor=req.flavor, image_id=req.image_id, ledger=self.ledger
        )
        for name, reason in refused.items():
            extras[name] = f"removed by burst policy: {reason}"
        for bt in eligible:
            idx = self.by_name.get(bt.name)
            if idx is None:
                refused[bt.name] = f"{bt.name} is not a known target"
                extras[bt.name] = f"removed by burst policy: {refused[bt.name]}"
                continue
            target, free = self.targets[idx], self.free[idx]
            removed = next(
                (f.name for f in self.policy.filters if not f.passes(target, free, req)), None
            )
            if removed is None and not free.fits(req):
                removed = EnoughCapacity.name
            if removed is not None:
                refused[bt.name] = f"removed by {removed}"
                extras[bt.name] = refused[bt.name]
                continue
            self.ledger.charge(bt, req.flavor)
            order = ", ".join(t.name for t in pol.targets)
            reason = f"{bt.name}: burst, {why}; first usable of [{order}]"
            skipped = [f"{n}: {r}" for n, r in refused.items()]
            if skipped:
                reason += f" (skipped {'; '.join(skipped)})"
            extras[bt.name] = "chosen by burst policy"
            return idx, reason
        if not pol.targets:
            return None, "no burst target is configured"
        return None, "no burst target is usable: " + "; ".join(
            refused.get(t.name, "") for t in pol.targets
        )


def _wanted(req: PlacementRequest) -> str:
    return (
        f"a target with {req.vcpus} CPU, {req.memory_mb} MB memory and {req.disk_gb} GB disk free"
    )


# --------------------------------------------------------------------------- buckets


class _Bucket:
    """Local hosts for one request signature: static filtering done, a heap of survivors."""

    def __init__(self, cycle: _Cycle, req: PlacementRequest) -> None:
        self.cycle = cycle
        self.req = req
        self.ranker = cycle.policy.ranker_for(req)
        filters = cycle.policy.filters
        self.volatile = [
            f for f in filters if f.volatile(req) and f.name not in ("capacity", "affinity")
        ]
        self.affinity = [f for f in filters if f.name == "affinity" and f.volatile(req)]
        checks = [
            (f.name, cycle.static_results(pos, f, req))
            for pos, f in enumerate(filters)
            if not f.volatile(req)
        ]
        self.removed: dict[str, str] = {}
        self.members: list[int] = []
        for j, idx in enumerate(cycle.local):
            failed = next((name for name, ok in checks if not ok[j]), None)
            if failed is None:
                self.members.append(idx)
            else:
                self.removed[cycle.targets[idx].name] = f"removed by {failed}"
        self.is_member = set(self.members)
        self.removed_counts = Counter(v[len("removed by ") :] for v in self.removed.values())
        self.cursor = len(cycle.log)
        self.score_cache = cycle.scores.setdefault(
            (id(self.ranker), req.vcpus, req.memory_mb, req.disk_gb, req.flavor), {}
        )
        self.heap: list[tuple[float, int, int]] = []
        for idx in self.members:
            self._push(idx)
        heapq.heapify(self.heap)
        self._why: tuple[int, str] | None = None

    def _entry(self, idx: int) -> float | None:
        """The score of host ``idx`` now, or None if a volatile filter removes it."""
        cycle, req = self.cycle, self.req
        free = cycle.free[idx]
        if not free.fits(req):
            return None
        target = cycle.targets[idx]
        for f in self.volatile:
            if not f.passes(target, free, req):
                return None
        return self.ranker.score(target, free, req)

    def _push(self, idx: int) -> None:
        score = self._entry(idx)
        if score is not None:
            heapq.heappush(self.heap, (-score, idx, self.cycle.epoch[idx]))

    def _catch_up(self) -> None:
        """Re-score the member hosts that changed since this bucket was last used."""
        cycle = self.cycle
        log = cycle.log
        if self.cursor >= len(log):
            return
        changed = self.is_member.intersection(log[self.cursor :])
        self.cursor = len(log)
        req, heap, push = self.req, self.heap, heapq.heappush
        frees, targets, epochs, cache = cycle.free, cycle.targets, cycle.epoch, self.score_cache
        v, m, d = req.vcpus, req.memory_mb, req.disk_gb
        volatile, score = self.volatile, self.ranker.score
        for idx in changed:
            f = frees[idx]
            if f.cpu < v or f.memory_mb < m or f.disk_gb < d:
                continue
            if f.flavors is not None and f.flavors.get(req.flavor, 0) <= 0:
                continue
            t = targets[idx]
            if volatile and not all(flt.passes(t, f, req) for flt in volatile):
                continue
            ep = epochs[idx]
            hit = cache.get(idx)
            if hit is None or hit[0] != ep:
                hit = cache[idx] = (ep, score(t, f, req))
            push(heap, (-hit[1], idx, ep))

    def best(self) -> tuple[int | None, float]:
        """The best host for the bucket's signature now (heap top, stale entries dropped)."""
        self._catch_up()
        heap, epoch = self.heap, self.cycle.epoch
        while heap:
            neg, idx, ep = heap[0]
            if ep == epoch[idx]:
                return idx, -neg
            heapq.heappop(heap)
        return None, 0.0

    def scan(self, req: PlacementRequest, extras: dict[str, str]) -> tuple[int | None, float]:
        """Affinity groups: every member host with every filter, recorded in ``extras``."""
        cycle = self.cycle
        best: tuple[float, int] | None = None
        for idx in self.members:
            target, free = cycle.targets[idx], cycle.free[idx]
            removed = "capacity" if not free.fits(req) else None
            if removed is None:
                removed = next(
                    (
                        f.name
                        for f in self.affinity + self.volatile
                        if not f.passes(target, free, req)
                    ),
                    None,
                )
            if removed is not None:
                extras[target.name] = f"removed by {removed}"
                continue
            score = self.ranker.score(target, free, req)
            extras[target.name] = f"rank {score:g}"
            if best is None or (score, -idx) > (best[0], -best[1]):
                best = (score, idx)
        if best is None:
            return None, 0.0
        return best[1], best[0]

    def why_none(self, req: PlacementRequest) -> str:
        """Why no local host fits, counted by filter (cached until the cycle changes)."""
        cycle = self.cycle
        if not cycle.local:
            return "there are no local hosts"
        if (
            self._why is not None
            and self._why[0] == len(cycle.log)
            and not request_affinity(req)[0]
        ):
            return self._why[1]
        counts = Counter(self.removed_counts)
        for idx in self.members:
            target, free = cycle.targets[idx], cycle.free[idx]
            if not free.fits(req):
                counts["capacity"] += 1
                continue
            name = next(
                (f.name for f in self.affinity + self.volatile if not f.passes(target, free, req)),
                "",
            )
            counts[name or "nothing"] += 1
        detail = ", ".join(f"{n} by {name}" for name, n in counts.most_common())
        why = f"no local host fits ({len(cycle.local)} hosts: {detail})"
        err = cycle.requirements.error(req) if cycle.requirements is not None else ""
        if err:
            why += f"; its requirements are invalid: {err}"
        self._why = (len(cycle.log), why)
        return why


# --------------------------------------------------------------------------- explanations


class Considered(Mapping[str, str]):
    """Target name -> what happened to it for one decision, computed when first read."""

    def __init__(
        self,
        cycle: _Cycle,
        bucket: _Bucket,
        req: PlacementRequest,
        seq: int,
        burst_note: str,
        extras: dict[str, str],
    ) -> None:
        self._cycle = cycle
        self._bucket = bucket
        self._req = req
        self._seq = seq
        self._burst_note = burst_note
        self._extras = extras
        self._done: dict[str, str] | None = None
        self.chosen: int | None = None

    def _one(self, idx: int) -> str:
        cycle, bucket, req = self._cycle, self._bucket, self._req
        target = cycle.targets[idx]
        hit = self._extras.get(target.name)
        if hit is not None:
            return hit
        if target.kind != "host":
            if cycle.policy.burst.target(target.name) is None:
                return "removed by burst policy: not a burst target"
            if self.chosen is not None and cycle.targets[self.chosen].kind != "host":
                first = cycle.targets[self.chosen].name
                return f"not tried: {first} comes first in the burst order"
            return self._burst_note or "not tried"
        removed = bucket.removed.get(target.name)
        if removed is not None:
            return removed
        free = cycle.state_at(idx, self._seq)
        if not free.fits(req):
            return "removed by capacity"
        for f in bucket.volatile:
            if not f.passes(target, free, req):
                return f"removed by {f.name}"
        score = bucket.ranker.score(target, free, req)
        return f"rank {score:g}, chosen" if idx == self.chosen else f"rank {score:g}"

    def _all(self) -> dict[str, str]:
        if self._done is None:
            self._done = {t.name: self._one(i) for i, t in enumerate(self._cycle.targets)}
        return self._done

    def __getitem__(self, name: str) -> str:
        if self._done is not None:
            return self._done[name]
        idx = self._cycle.by_name.get(name)
        if idx is None:
            raise KeyError(name)
        return self._one(idx)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._cycle.targets)

    def __repr__(self) -> str:
        return f"Considered({self._all()!r})"
