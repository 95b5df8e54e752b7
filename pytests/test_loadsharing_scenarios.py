"""Load sharing under faults: N real nodes, simulated clock, network, chargers and EVs.

Every scenario ends with the safety claim of docs/loadsharing.md: the current the EVs may draw,
allowing each charger its response time, never exceeded ``group_max * safety_factor``
(``SimGroup.check`` samples it every half second and at every change of an offer). The
randomized search at the end takes PGW_LS_RUNS / PGW_LS_SEED from the environment.
"""

from __future__ import annotations

import os
import random

import pytest

from simulators.loadsharing_simnet import GroupSpec, SimGroup, calm, converged
from simulators.loadsharing_simsearch import random_walk


def make(n: int = 3, seed: int = 0, plugged: bool = True, **spec: object) -> SimGroup:
    spec.setdefault("supervision", 30.0)
    g = SimGroup(GroupSpec(n=n, **spec), seed=seed)  # type: ignore[arg-type]
    if plugged:
        for nid in g.ids:
            g.plug(nid)
    return g


def settle(g: SimGroup, seconds: float = 200.0) -> None:
    g.run(seconds)
    assert converged(g) == ""


def assert_safe(g: SimGroup) -> None:
    assert g.violations == [], f"over {g.ceiling} A: {g.violations[:3]}"
    assert g.max_total <= g.ceiling


def limits_since(g: SimGroup, nid: str, since: float) -> list[int]:
    return [a for t, a in g.members[nid].limits_sent if t >= since]


def test_three_nodes_converge_to_the_equal_share() -> None:
    g = make(3)
    settle(g)
    assert g.limits() == {"n1": 20, "n2": 20, "n3": 20}
    assert all(a["reason"] == "equal_share" for a in g.node("n1").allocations())
    assert_safe(g)


def test_silent_node_is_reserved_then_the_others_share_the_rest_and_it_comes_back() -> None:
    g = make(3)
    settle(g)
    cut_at = g.sched.time
    g.net.partition(["n1", "n2"], ["n3"])
    g.run(g.spec.timeout + 6)
    # offline after the heartbeat timeout: the others keep their share meanwhile
    assert not g.node("n1").online("n3", g.node("n1").clock.now())
    assert g.limits()["n1"] == 20
    g.run(200)
    assert g.limits() == {"n1": 27, "n2": 27, "n3": 6}  # 60 - 6 reserved, n3 at safe current
    assert g.node("n3").failsafe_active
    snap = g.node("n1").snapshot()
    assert snap["offline_count"] == 1
    assert {a["id"]: a["reason"] for a in snap["allocations"]}["n3"] == "offline"
    g.net.heal()
    settle(g)
    assert g.limits() == {"n1": 20, "n2": 20, "n3": 20}
    for nid in g.ids:  # no charging interruption anywhere
        assert min(limits_since(g, nid, cut_at), default=20) >= 6
        assert g.members[nid].charger.pauses == 0
    assert min(limits_since(g, "n1", cut_at)) == 20
    assert_safe(g)


@pytest.mark.parametrize("disable", [False, True])
def test_all_peers_lost_in_each_failsafe_mode(disable: bool) -> None:
    g = make(3, disable_mode=disable)
    settle(g)
    g.net.partition(["n1"], ["n2"], ["n3"])
    g.run(400)
    expected = 0 if disable else 6
    assert g.limits() == {"n1": expected, "n2": expected, "n3": expected}
    assert all(g.node(n).failsafe_active for n in g.ids)
    g.net.heal()
    settle(g)
    assert g.limits() == {"n1": 20, "n2": 20, "n3": 20}
    assert_safe(g)


def test_disable_mode_stops_the_group_when_one_member_is_offline() -> None:
    g = make(3, disable_mode=True)
    settle(g)
    g.net.partition(["n1", "n2"], ["n3"])
    g.run(g.spec.timeout + 10)
    assert g.limits() == {"n1": 0, "n2": 0, "n3": 0}
    assert_safe(g)


def test_partition_two_plus_two_does_not_draw_96_amps() -> None:
    g = make(4)
    settle(g)
    assert g.limits() == {"n1": 15, "n2": 15, "n3": 15, "n4": 15}
    g.net.partition(["n1", "n2"], ["n3", "n4"])
    g.run(600)
    assert g.limits() == {"n1": 6, "n2": 6, "n3": 6, "n4": 6}  # no side is a majority
    g.net.heal()
    settle(g)
    assert_safe(g)


def test_non_transitive_five_node_split_does_not_draw_76_amps() -> None:
    g = make(5)
    settle(g)
    for a, b in (("n1", "n4"), ("n1", "n5"), ("n2", "n4"), ("n2", "n5")):
        g.net.cut(a, b)
    g.run(600)
    views = {n: g.node(n).view for n in g.ids}
    assert views["n3"] == g.ids and views["n1"] == ("n1", "n2", "n3")
    assert sum(g.limits().values()) <= 60
    g.net.heal()
    settle(g)
    assert g.limits() == dict.fromkeys(g.ids, 12)
    assert_safe(g)


def test_majority_side_keeps_sharing_minority_falls_back() -> None:
    g = make(5)
    settle(g)
    g.net.partition(["n1", "n2", "n3"], ["n4", "n5"])
    g.run(400)
    assert g.limits() == {"n1": 16, "n2": 16, "n3": 16, "n4": 6, "n5": 6}
    assert_safe(g)


@pytest.mark.parametrize("both_ways_later", [False, True])
def test_one_way_links(both_ways_later: bool) -> None:
    g = make(4)
    settle(g)
    g.net.cut("n1", "n2", both=False)  # n2 no longer hears n1; n1 still hears n2
    g.net.cut("n3", "n4", both=False)
    g.run(300)
    if both_ways_later:
        g.net.cut("n2", "n1", both=False)
        g.run(300)
    assert_safe(g)
    g.net.heal()
    settle(g)
    assert_safe(g)


def test_flapping_links() -> None:
    g = make(4, seed=3)
    settle(g)
    rng = random.Random(3)
    for _ in range(120):
        a, b = rng.sample(list(g.ids), 2)
        if rng.random() < 0.5:
            g.net.cut(a, b, both=rng.random() < 0.5)
        else:
            g.net.heal(a, b)
        g.run(rng.uniform(0.5, 15))
    assert_safe(g)
    g.net.heal()
    settle(g)


def test_message_loss_delay_and_duplication() -> None:
    g = make(5, seed=7)
    f = g.net.faults
    f.drop, f.duplicate, f.slow, f.delay_max, f.slow_max = 0.3, 0.2, 0.1, 1.0, 25.0
    g.run(1200)
    assert_safe(g)
    assert g.net.dropped > 0
    calm(g)
    assert converged(g) == ""


def test_clocks_that_differ_within_the_stated_bound() -> None:
    rho = 0.01
    rates = [1 - rho, 1 + rho, 1 - rho / 2, 1 + rho, 1 - rho]
    g = SimGroup(GroupSpec(n=5, rho=rho, supervision=30.0), seed=5, rates=rates)
    for nid in g.ids:
        g.plug(nid)
    settle(g)
    g.net.partition(["n1", "n2", "n3"], ["n4", "n5"])
    g.run(300)
    g.net.partition(["n1", "n4", "n5"], ["n2", "n3"])
    g.run(300)
    g.net.heal()
    settle(g)
    assert_safe(g)


def test_dead_gateway_charger_falls_back_by_rapi_supervision() -> None:
    g = make(3)
    settle(g)
    g.kill("n3")
    g.run(300)
    assert g.limits() == {"n1": 27, "n2": 27, "n3": 6}  # $SY lowered n3's charger
    g.start("n3")
    settle(g)
    assert_safe(g)


def test_dead_gateway_without_supervision_is_what_supervision_is_for() -> None:
    """The check can fail: with no $SY, a dead gateway leaves its charger at its share."""
    g = make(3, supervision=0.0)
    settle(g)
    g.kill("n3")
    g.run(300)
    assert g.violations, "expected an overload: nothing lowers a dead node's charger"


def test_idle_member_partitioned_then_plugged_waits_before_its_fallback_current() -> None:
    """Counted at 0 by the others, a cut-off idle node may only offer the safe current once
    nobody counts it below that any more."""
    g = make(3, plugged=False)
    g.plug("n1")
    g.plug("n2")
    settle(g)
    assert g.limits() == {"n1": 30, "n2": 30, "n3": 0}
    g.net.partition(["n1", "n2"], ["n3"])
    g.run(1)
    g.plug("n3")
    g.run(400)
    assert g.limits() == {"n1": 27, "n2": 27, "n3": 6}
    assert_safe(g)


def test_eight_nodes_evs_plugging_in_and_out_for_an_hour() -> None:
    g = make(8, seed=11, plugged=False, group_max=80.0)
    rng = random.Random(11)
    seen_total = 0
    end = g.sched.time + 3600
    while g.sched.time < end:
        nid = rng.choice(g.ids)
        g.plug(nid, plugged=rng.random() < 0.6, want=rng.choice((10.0, 16.0, 32.0)))
        g.run(rng.uniform(5, 120))
        seen_total = max(seen_total, sum(g.limits().values()))
    assert_safe(g)
    assert seen_total > 48  # the group did share more than its fallback currents
    settle(g, 300)


def test_randomized_fault_schedules() -> None:
    runs = int(os.environ.get("PGW_LS_RUNS", "100"))
    seed = int(os.environ.get("PGW_LS_SEED", "0"))
    failures = []
    for s in range(seed, seed + runs):
        g = random_walk(s)
        problem = converged(g)
        if g.violations or problem:
            failures.append((s, g.violations[:2], problem))
    hint = "rerun one with PGW_LS_SEED=<seed> PGW_LS_RUNS=1"
    assert failures == [], f"failing seeds ({hint}): {failures}"


def test_member_switching_sides_of_a_partition() -> None:
    """n3 leaves the {n1,n2,n3} majority for {n3,n4,n5} by a one-way cut: n1 and n2 notice a
    timeout later than n3 does, and keep their share meanwhile. {n3,n4,n5} may only raise once
    its view has matured everywhere (Lemma 1 of docs/loadsharing.md), or it would draw 80 A."""
    g = make(5)
    settle(g)
    g.net.partition(["n1", "n2", "n3"], ["n4", "n5"])
    g.run(300)
    assert g.limits() == {"n1": 16, "n2": 16, "n3": 16, "n4": 6, "n5": 6}
    g.net.heal()
    g.net.cut("n1", "n3", both=False)
    g.net.cut("n2", "n3", both=False)
    g.net.partition(["n1", "n2"], ["n4", "n5"])
    g.run(g.spec.timeout * 1.5)
    assert g.node("n3").view == ("n3", "n4", "n5")
    assert "n3" in g.node("n1").view and g.limits()["n1"] == 16  # n1 still counts n3
    g.run(300)
    assert g.limits() == {"n1": 6, "n2": 6, "n3": 16, "n4": 16, "n5": 16}
    assert_safe(g)


def test_demand_change_lowers_the_others_at_once_and_raises_after_agreement() -> None:
    g = make(3, plugged=False)
    g.plug("n1")
    g.plug("n2")
    settle(g)
    start = g.sched.time
    g.plug("n3")
    g.run(1.0)  # one report: n1 and n2 have already lowered their chargers
    assert [a for t, a in g.members["n1"].limits_sent if t > start] == [20]
    assert g.limits()["n3"] == 0
    g.run(g.spec.response_time * 1.1 + 3.0)  # a round of reports plus the raise wait
    assert g.limits() == {"n1": 20, "n2": 20, "n3": 20}
    assert_safe(g)
