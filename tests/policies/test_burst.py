"""The burst policy document and its decisions (policies.burst), alone and through placement."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.errors import InvalidRequest
from policies.burst import (
    BurstPolicy,
    BurstTarget,
    Ledger,
    Rule,
    Usage,
    eligible_targets,
    may_burst,
    usage_from_snapshots,
)
from policies.placement import DefaultPolicy
from tests.policies.test_filters import host, peer, region, req

DOC: dict[str, Any] = {
    "placement": {"preset": "striping", "requirements": 'KIND != "host" | HYPERVISOR = "kvm"'},
    "default": {"trigger": "no_local_fit"},
    "groups": {
        "batch": {"trigger": "pending_longer_than", "seconds": 600},
        "web": {"trigger": "utilisation_above", "threshold": 0.8},
        "frozen": {"trigger": "never"},
    },
    "targets": [
        {"name": "lyon", "max_instances": 2, "flavor_map": {"*": "*"}, "image_map": {"*": "*"}},
        {
            "name": "us-east-1",
            "max_instances": 100,
            "max_spend_per_hour": 0.80,
            "allowed_groups": ["g1", "batch", "web"],
            "flavor_map": {"m1.small": "t3.small"},
            "image_map": {"ami-1": "ami-0123456789abcdef0"},
            "key_map": {"mine": "theirs"},
            "security_group_map": {"default": "sg-0abc"},
            "prices": {"t3.small": 0.10},
        },
    ],
}


def test_round_trip_dict_json_toml() -> None:
    policy = BurstPolicy.from_dict(DOC)
    assert BurstPolicy.from_dict(policy.to_dict()) == policy
    assert BurstPolicy.from_json(json.dumps(policy.to_dict())) == policy
    toml = """
        [default]
        trigger = "utilisation_above"
        threshold = 0.5
        [[targets]]
        name = "us-east-1"
        max_spend_per_hour = 1.5
        flavor_map = { "m1.small" = "t3.small" }
        prices = { "t3.small" = 0.0208 }
    """
    p = BurstPolicy.from_toml(toml)
    assert p.default == Rule("utilisation_above", 0.5)
    assert p.targets[0].price_micro("m1.small") == 20800
    assert p.placement.preset == "packing"


def test_defaults() -> None:
    p = BurstPolicy.from_dict({})
    assert p.default.trigger == "no_local_fit" and p.targets == ()
    assert p.rule_for("anyone") == p.default


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"targets": [{"name": "a"}, {"name": "b", "max_spend_per_hour": -1}]},
            "targets[1].max_spend_per_hour: must be >= 0",
        ),
        (
            {"targets": [{"name": "a", "max_instances": 1.5}]},
            "targets[0].max_instances: must be a whole",
        ),
        ({"targets": [{"name": "a", "max_instances": True}]}, "targets[0].max_instances"),
        ({"targets": [{"name": "a"}, {"name": "a"}]}, "targets[1].name: 'a' is listed twice"),
        ({"targets": [{"max_instances": 1}]}, "targets[0].name: required"),
        ({"targets": [{"name": "a", "colour": "red"}]}, "targets[0].colour: unknown field"),
        (
            {"targets": [{"name": "a", "prices": {"t3": "cheap"}}]},
            "targets[0].prices.t3: must be a number",
        ),
        ({"targets": [{"name": "a", "prices": {"t3": float("nan")}}]}, "must be finite"),
        ({"targets": [{"name": "a", "flavor_map": {"x": 1}}]}, "targets[0].flavor_map.x"),
        (
            {"targets": [{"name": "a", "allowed_groups": "g1"}]},
            "targets[0].allowed_groups: must be a list",
        ),
        ({"targets": {"name": "a"}}, "targets: must be a list"),
        ({"default": {"trigger": "sometimes"}}, "default.trigger: must be one of"),
        ({"default": {"trigger": "utilisation_above"}}, "default.threshold: required"),
        (
            {"default": {"trigger": "utilisation_above", "threshold": 1.5}},
            "default.threshold: must be <= 1",
        ),
        ({"default": {"trigger": "never", "threshold": 0.5}}, "default.threshold: only for"),
        (
            {"groups": {"g": {"trigger": "pending_longer_than", "seconds": -5}}},
            "groups.g.seconds: must be >= 0",
        ),
        ({"groups": {"g": {"trigger": "pending_longer_than"}}}, "groups.g.seconds: required"),
        ({"groups": ["g"]}, "groups: must be a table"),
        ({"placement": {"preset": "random"}}, "placement.preset: must be one of"),
        ({"placement": {"requirements": "FREE_CPU >"}}, "placement.requirements: expected"),
        ({"placement": {"rank": "FREE_CPU > 1"}}, "placement.rank: rank must be a number"),
        ({"extra": 1}, "extra: unknown field"),
    ],
)
def test_validation_names_the_field(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        BurstPolicy.from_dict(patch)
    assert message in str(info.value)
    assert info.value.field and str(info.value).startswith(info.value.field)


def test_not_a_table_and_bad_text() -> None:
    with pytest.raises(InvalidRequest, match="must be a table"):
        BurstPolicy.from_dict([1, 2])
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        BurstPolicy.from_toml("[default")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        BurstPolicy.from_json("{")


def test_mappings() -> None:
    bt = BurstPolicy.from_dict(DOC).targets[1]
    assert bt.instance_type("m1.small") == "t3.small"
    assert bt.instance_type("m1.large") is None
    assert bt.image("ami-1") == "ami-0123456789abcdef0" and bt.image("ami-2") is None
    assert bt.key("mine") == "theirs" and bt.key("other") == "other"
    assert bt.security_groups(["default", "web"]) == ("sg-0abc", "web")
    wildcard = BurstTarget("x", flavor_map={"*": "*"}, image_map={"*": "ami-fixed"})
    assert wildcard.instance_type("any") == "any" and wildcard.image("ami-9") == "ami-fixed"


# --------------------------------------------------------------------------- triggers


def verdict(group: str, *, fits: bool, util: float = 0.0, pending: float = 0.0) -> tuple[bool, str]:
    p = BurstPolicy.from_dict(DOC)
    return tuple(may_burst(p, group, local_fits=fits, utilisation=util, pending_seconds=pending))  # type: ignore[return-value]


def test_trigger_never() -> None:
    ok, why = verdict("frozen", fits=False)
    assert not ok and why == "bursting not allowed for group frozen (policy: never)"


def test_trigger_no_local_fit() -> None:
    assert verdict("g1", fits=False)[0]
    assert not verdict("g1", fits=True)[0]


def test_trigger_utilisation_above() -> None:
    assert verdict("web", fits=True, util=0.81)[0]
    ok, why = verdict("web", fits=False, util=0.8)
    assert not ok and "0.80 is not above 0.80" in why


def test_trigger_pending_longer_than() -> None:
    assert not verdict("batch", fits=False, pending=600)[0]
    assert verdict("batch", fits=False, pending=601)[0]
    assert not verdict("batch", fits=True, pending=9999)[0]
    assert "may burst after 600 s" in verdict("batch", fits=False, pending=12)[1]


# --------------------------------------------------------------------------- limits


def test_budget_is_exact_in_micro_dollars() -> None:
    p = BurstPolicy.from_dict(DOC)
    bt = p.targets[1]
    ledger = Ledger(p, {})
    n = 0
    while not ledger.refusal(bt, "m1.small"):
        ledger.charge(bt, "m1.small")
        n += 1
    assert n == 8  # 8 x 0.10 == 0.80, no float drift
    assert ledger.refusal(bt, "m1.small") == (
        "budget of us-east-1 reached (0.90 of 0.80 USD/h with this instance)"
    )
    assert ledger.usage("us-east-1") == Usage(8, 0.8)


def test_budget_counts_current_spend() -> None:
    p = BurstPolicy.from_dict(DOC)
    ledger = Ledger(p, {"us-east-1": Usage(7, 0.73)})
    assert "budget of us-east-1 reached (0.83 of 0.80" in ledger.refusal(p.targets[1], "m1.small")


def test_instance_limit() -> None:
    p = BurstPolicy.from_dict(DOC)
    ledger = Ledger(p, {"lyon": Usage(1, 0.0)})
    assert ledger.refusal(p.targets[0], "m1.small") == ""
    ledger.charge(p.targets[0], "m1.small")
    assert ledger.refusal(p.targets[0], "m1.small") == "instance limit of lyon reached (2 of 2)"


def test_no_price_means_no_burst_under_a_budget() -> None:
    p = BurstPolicy.from_dict(
        {"targets": [{"name": "r", "max_spend_per_hour": 1, "flavor_map": {"*": "*"}}]}
    )
    assert (
        Ledger(p, {}).refusal(p.targets[0], "m1.tiny")
        == "no price for m1.tiny in the price table of r"
    )


def test_eligible_in_order_with_reasons() -> None:
    p = BurstPolicy.from_dict(DOC)
    ledger = Ledger(p, {})
    ok, refused = eligible_targets(
        p, group="g1", flavor="m1.small", image_id="ami-1", ledger=ledger
    )
    assert [t.name for t in ok] == ["lyon", "us-east-1"] and refused == {}
    ok, refused = eligible_targets(
        p, group="other", flavor="m1.small", image_id="ami-1", ledger=ledger
    )
    assert [t.name for t in ok] == ["lyon"]
    assert refused == {"us-east-1": "group other is not allowed on us-east-1"}
    _, refused = eligible_targets(p, group="g1", flavor="m1.large", image_id="ami-1", ledger=ledger)
    assert refused["us-east-1"] == "flavor m1.large is not mapped for us-east-1"
    _, refused = eligible_targets(p, group="g1", flavor="m1.small", image_id="ami-2", ledger=ledger)
    assert refused["us-east-1"] == "image ami-2 is not mapped for us-east-1"


def test_usage_from_snapshots() -> None:
    p = BurstPolicy.from_dict(DOC)
    snaps = [
        region(running=3, running_by_flavor={"m1.small": 3}),
        peer(running=1),
        host("h1", running=5),
    ]
    usage = usage_from_snapshots(p, snaps)
    assert usage["us-east-1"] == Usage(3, pytest.approx(0.3))
    assert usage["lyon"] == Usage(1, 0.0)
    # no per-flavor breakdown: charged at the dearest price, never underestimated
    assert usage_from_snapshots(p, [region(running=2)])[
        "us-east-1"
    ].spend_per_hour == pytest.approx(0.2)


def test_problems_for_policy_test() -> None:
    p = BurstPolicy.from_dict(
        {
            "targets": [
                {"name": "h1"},
                {"name": "gone"},
                {"name": "us-east-1", "max_spend_per_hour": 1, "flavor_map": {"a": "t3.a"}},
            ]
        }
    )
    got = p.problems([host("h1"), region()])
    assert got == [
        "targets[0].name: 'h1' is a local host, not a region or peer",
        "targets[1].name: no target named 'gone'",
        "targets[2].prices: no price for t3.a",
    ]


# --------------------------------------------------------------------------- through placement


def world(full: bool = True) -> list[Any]:
    return [
        host("h1", cpu=2, free_cpu=0 if full else 2),
        peer("lyon"),
        region("us-east-1"),
        region("eu-west-1"),
    ]


def test_no_local_fit_bursts_to_the_first_usable_target_in_order() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    ds = policy.place([req() for _ in range(4)], world())
    assert [d.target_id for d in ds] == ["t-lyon", "t-lyon", "t-us-east-1", "t-us-east-1"]
    assert "burst, no local host fits (policy: no_local_fit)" in ds[0].reason
    assert "instance limit of lyon reached (2 of 2)" in ds[2].reason
    assert ds[0].considered["lyon"] == "chosen by burst policy"
    assert ds[0].considered["eu-west-1"] == "removed by burst policy: not a burst target"
    assert ds[0].considered["h1"] == "removed by capacity"


def test_local_first_when_it_fits() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    d = policy.place([req()], world(full=False))[0]
    assert d.target_id == "t-h1"
    assert d.considered["lyon"] == "not tried: a local host fits (policy: no_local_fit)"


def test_never_waits_and_says_why() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    d = policy.place([req(group_id="frozen")], world())[0]
    assert d.target_id is None
    assert d.reason.startswith("no target fits: no local host fits (1 hosts: 1 by capacity)")
    assert "bursting not allowed for group frozen (policy: never)" in d.reason
    assert "waits for a target with 1 CPU" in d.reason


def test_pending_longer_than_through_placement() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    young, old = (
        req(group_id="batch", pending_seconds=10),
        req(group_id="batch", pending_seconds=700),
    )
    ds = policy.place([young, old], world())
    assert ds[0].target_id is None and "may burst after 600 s" in ds[0].reason
    assert ds[1].target_id == "t-lyon"


def test_utilisation_above_prefers_burst_even_when_local_fits() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    targets = [host("h1", cpu=10, free_cpu=1), peer("lyon"), region("us-east-1")]
    ds = policy.place([req(group_id="web"), req(group_id="web")], targets)
    assert [d.target_id for d in ds] == ["t-lyon", "t-lyon"]
    # below the threshold the local host is used
    targets = [host("h1", cpu=10, free_cpu=5), peer("lyon")]
    assert policy.place([req(group_id="web")], targets)[0].target_id == "t-h1"


def test_utilisation_above_falls_back_to_local_when_no_burst_target_is_usable() -> None:
    doc = {**DOC, "targets": [{**DOC["targets"][0], "max_instances": 0}]}
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(doc))
    targets = [host("h1", cpu=10, free_cpu=1), peer("lyon")]
    d = policy.place([req(group_id="web")], targets)[0]
    assert d.target_id == "t-h1"
    assert "instance limit of lyon reached (0 of 0)" in d.reason


def test_budget_reason_when_waiting() -> None:
    doc = {**DOC, "targets": [DOC["targets"][1]]}
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(doc))
    d = policy.place([req()], world(), usage={"us-east-1": Usage(7, 0.73)})[0]
    assert d.target_id is None
    assert "budget of us-east-1 reached (0.83 of 0.80 USD/h with this instance)" in d.reason


def test_region_filters_still_apply() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    targets = [host("h1", free_cpu=0), peer("lyon", state="disabled"), region(free_cpu=0)]
    d = policy.place([req()], targets)[0]
    assert d.target_id is None
    assert d.considered["lyon"] == "removed by state"
    assert d.considered["us-east-1"] == "removed by capacity"


def test_peer_hops_are_limited() -> None:
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(DOC))
    d = policy.place([req(hops=1)], world())[0]
    assert d.target_id == "t-us-east-1" and d.considered["lyon"] == "removed by hops"


@pytest.mark.parametrize("cycles", [1, 3, 7, 50])
def test_fifty_requests_compete_for_the_last_units(cycles: int) -> None:
    """Three instances left under the count limit and 0.35 USD/h of budget (room for three
    at 0.10): 50 requests over one or several cycles never get more than three bursts."""
    doc = {
        "targets": [
            {
                "name": "us-east-1",
                "max_instances": 10,
                "max_spend_per_hour": 1.05,
                "flavor_map": {"*": "*"},
                "image_map": {"*": "*"},
                "prices": {"m1.small": 0.10, "m1.large": 0.40},
            }
        ]
    }
    policy = DefaultPolicy.from_policy(BurstPolicy.from_dict(doc))
    usage = Usage(7, 0.70)
    arrivals = [req(flavor="m1.small" if i % 3 else "m1.large") for i in range(50)]
    flavor = {r.instance_id: r.flavor for r in arrivals}
    per_cycle = -(-len(arrivals) // cycles)
    waiting: list[Any] = []
    won = 0
    for c in range(cycles):
        waiting += arrivals[c * per_cycle : (c + 1) * per_cycle]
        ds = policy.place(waiting, world(), usage={"us-east-1": usage})
        placed = {d.instance_id for d in ds if d.target_id}
        spend = sum(0.10 if flavor[i] == "m1.small" else 0.40 for i in placed)
        usage = Usage(usage.instances + len(placed), usage.spend_per_hour + spend)
        waiting = [r for r in waiting if r.instance_id not in placed]
        won += len(placed)
        assert usage.instances <= 10
        assert usage.spend_per_hour <= 1.05 + 1e-9
    assert won == 3 and len(waiting) == 47
    assert "instance limit of us-east-1 reached (10 of 10)" in ds[-1].reason
