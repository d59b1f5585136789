"""Each ranker over synthetic snapshots (policies.rankers), and its effect on placement."""

from __future__ import annotations

import pytest

from broker.errors import InvalidRequest
from policies.filters import Free
from policies.placement import DefaultPolicy
from policies.rankers import (
    PRESETS,
    Cheapest,
    LoadAware,
    Packing,
    RankExpression,
    Striping,
    make_ranker,
    normalise,
    price_of,
)
from tests.policies.test_filters import host, region, req


def score(ranker: object, target: object, **kw: object) -> float:
    t = target
    return ranker.score(t, Free.of(t), req(**kw))  # type: ignore[attr-defined,arg-type,no-any-return]


def test_packing_prefers_busy() -> None:
    assert score(Packing(), host(running=5)) > score(Packing(), host(running=1))


def test_striping_prefers_idle() -> None:
    assert score(Striping(), host(running=1)) > score(Striping(), host(running=5))


def test_load_aware_prefers_free_cpu() -> None:
    assert score(LoadAware(), host(free_cpu=7)) > score(LoadAware(), host(free_cpu=2))


def test_cost_prefers_cheap_per_flavor() -> None:
    cheap = region("a", prices={"m1.small": 0.01}, price_per_hour=1.0)
    dear = region("b", prices={"m1.small": 0.02}, price_per_hour=0.001)
    assert score(Cheapest(), cheap) > score(Cheapest(), dear)
    # no per-flavor price: the target's flat price
    assert price_of(dear, "m1.large") == 0.001
    assert not Cheapest.volatile


def test_rank_expression() -> None:
    r = RankExpression("FREE_CPU * 2 - RUNNING_VMS")
    assert score(r, host(free_cpu=4, running=3)) == 5.0
    assert r.volatile
    assert not RankExpression("-LOAD").volatile


def test_make_ranker() -> None:
    assert isinstance(make_ranker("striping"), Striping)
    assert isinstance(make_ranker("packing", "FREE_CPU"), RankExpression)
    with pytest.raises(InvalidRequest, match="unknown ranking preset"):
        make_ranker("random")
    assert set(PRESETS) == {"packing", "striping", "load-aware", "cost"}


def test_normalise() -> None:
    assert normalise([]) == []
    assert normalise([3.0, 3.0]) == [1.0, 1.0]
    assert normalise([0.0, 5.0, 10.0]) == [0.0, 0.5, 1.0]


def _where(policy: DefaultPolicy, n: int, targets: list) -> list[str | None]:  # type: ignore[type-arg]
    return [d.target_id for d in policy.place([req() for _ in range(n)], targets)]


def test_packing_fills_one_host_first() -> None:
    targets = [host("a", cpu=2), host("b", cpu=2), host("c", cpu=2)]
    assert _where(DefaultPolicy(preset="packing"), 4, targets) == ["t-a", "t-a", "t-b", "t-b"]


def test_striping_spreads() -> None:
    targets = [host("a", cpu=4), host("b", cpu=4), host("c", cpu=4)]
    got = _where(DefaultPolicy(preset="striping"), 6, targets)
    assert sorted(got) == ["t-a", "t-a", "t-b", "t-b", "t-c", "t-c"]  # type: ignore[type-var]
    assert got[:3] == ["t-a", "t-b", "t-c"]


def test_load_aware_follows_free_cpu() -> None:
    targets = [host("a", cpu=8, free_cpu=3), host("b", cpu=8, free_cpu=6)]
    got = _where(DefaultPolicy(preset="load-aware"), 4, targets)
    assert got == ["t-b", "t-b", "t-b", "t-a"]  # 6,5,4 on b; then a (3) ties b (3): first


def test_instance_rank_overrides_operator_preset() -> None:
    targets = [host("a", running=9), host("b", running=0)]
    policy = DefaultPolicy(preset="packing")
    assert policy.place([req()], targets)[0].target_id == "t-a"
    assert policy.place([req(rank="-RUNNING_VMS")], targets)[0].target_id == "t-b"
    # an invalid instance rank falls back to the operator's
    assert policy.place([req(rank="RUNNING_VMS >")], targets)[0].target_id == "t-a"
