"""The allocation: the invariants over arbitrary groups (hypothesis) and the spec's examples."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports.loadsharing.allocation import (
    CAPPED_AT_MAX,
    EQUAL_SHARE,
    IDLE,
    INSUFFICIENT,
    MIN_SUBSET,
    OFFLINE,
    Limits,
    Member,
    allocate,
    failsafe_result,
)


@st.composite
def members(draw: st.DrawFn) -> list[Member]:
    n = draw(st.integers(1, 16))
    out = []
    for i in range(n):
        lo = draw(st.integers(0, 16))
        hi = draw(st.integers(max(lo, 1), 80))
        out.append(Member(
            id=f"m{draw(st.integers(0, 10_000))}-{i}",
            online=draw(st.booleans()),
            demanding=draw(st.booleans()),
            min_current=lo,
            max_current=hi,
            priority=draw(st.integers(-3, 3)),
            # some members raise themselves to a floor (OpenEVSE members of a mixed group)
            floor=draw(st.sampled_from([0, 0, 0, 6, 10])),
            reserve=draw(st.sampled_from([0.0, 0.0, 8.0, 20.5])),
        ))
    return out


def reserves_of(group: list[Member], limits: Limits) -> float:
    return sum(max(limits.peer_assumed_current, m.reserve, m.floor)
               for m in group if not m.online)


def counted(group: list[Member], result: object) -> int:
    """What the breaker sees of the online members: a floored one at least at its floor."""
    by_id = {a.id: a.target_current for a in result.allocations}  # type: ignore[attr-defined]
    return sum(m.counted(by_id[m.id]) for m in group if m.online)


limits_st = st.builds(
    Limits,
    group_max=st.floats(0, 400, allow_nan=False),
    safety_factor=st.floats(0, 1, allow_nan=False),
    peer_assumed_current=st.floats(0, 80, allow_nan=False),
)


@given(members(), limits_st)
def test_within_the_breaker(group: list[Member], limits: Limits) -> None:
    """Allocations (a floored member counted at its floor at least) plus offline reserves stay
    under group_max * safety_factor (and when reserves and floors alone exceed it, nobody gets
    anything)."""
    result = allocate(group, limits)
    reserves = reserves_of(group, limits)
    floors = sum(m.floor for m in group if m.online)
    assert result.total <= max(0.0, limits.ceiling - reserves) + 1e-9
    if reserves + floors <= limits.ceiling:
        assert counted(group, result) + reserves <= limits.ceiling + 1e-9
    else:
        assert result.total == 0


@given(members(), limits_st)
def test_nobody_above_max_or_between_zero_and_min(group: list[Member], limits: Limits) -> None:
    by_id = {m.id: m for m in group}
    for a in allocate(group, limits).allocations:
        m = by_id[a.id]
        assert a.target_current <= m.max_current
        assert a.target_current == 0 or a.target_current >= m.min_current
        if not (m.online and m.demanding):
            assert a.target_current == 0


@given(members(), limits_st, st.randoms(use_true_random=False))
def test_order_of_members_does_not_matter(
    group: list[Member], limits: Limits, rnd: random.Random
) -> None:
    shuffled = list(group)
    rnd.shuffle(shuffled)
    assert allocate(group, limits) == allocate(shuffled, limits)


@given(members(), limits_st)
def test_nothing_left_while_someone_is_below_max(group: list[Member], limits: Limits) -> None:
    """Up to rounding: less than one whole amp per served member still below its max."""
    result = allocate(group, limits)
    by_id = {m.id: m for m in group}
    served_below_max = [
        a for a in result.allocations
        if a.target_current > 0 and a.target_current < by_id[a.id].max_current
    ]
    left = result.budget - counted(group, result)
    if left < 0:  # the floors alone did not fit: nobody was given anything
        assert result.total == 0
        return
    assert left >= 0
    if served_below_max:
        assert left < len(served_below_max)
    # and a demanding member left out really could not fit its minimum
    for a in result.allocations:
        m = by_id[a.id]
        if a.reason == INSUFFICIENT:
            assert m.above_floor().min_current > left


def g(*specs: tuple[str, bool, bool], mx: int = 32) -> list[Member]:
    return [Member(i, online=on, demanding=d, min_current=6, max_current=mx) for i, on, d in specs]


def test_examples_from_the_spec() -> None:
    one = allocate(g(("a", True, True)), Limits(50))
    assert (one.target("a"), one.by_id()["a"].reason) == (32, CAPPED_AT_MAX)
    two = allocate(g(("a", True, True), ("b", True, True)), Limits(50))
    assert [a.target_current for a in two.allocations] == [25, 25]
    assert {a.reason for a in two.allocations} == {EQUAL_SHARE}
    three = allocate(g(*[(i, True, True) for i in "abc"]), Limits(60))
    assert [a.target_current for a in three.allocations] == [20, 20, 20]
    four = allocate(g(*[(i, True, True) for i in "abcd"]), Limits(20))
    assert [(a.id, a.target_current, a.reason) for a in four.allocations] == [
        ("a", 6, MIN_SUBSET), ("b", 6, MIN_SUBSET), ("c", 6, MIN_SUBSET), ("d", 0, INSUFFICIENT),
    ]
    off = allocate(g(("a", True, True), ("b", True, True), ("c", False, True)), Limits(50, 1, 6))
    assert [(a.target_current, a.reason) for a in off.allocations] == [
        (22, EQUAL_SHARE), (22, EQUAL_SHARE), (0, OFFLINE),
    ]
    assert off.reserved == 6


def test_nobody_demanding_gets_nothing() -> None:
    res = allocate(g(("a", True, False), ("b", True, False)), Limits(60))
    assert [(a.target_current, a.reason) for a in res.allocations] == [(0, IDLE), (0, IDLE)]


def test_leftover_of_capped_members_is_re_shared() -> None:
    group = [Member("a", demanding=True, max_current=10), Member("b", demanding=True),
             Member("c", demanding=True)]
    res = allocate(group, Limits(60))
    assert [a.target_current for a in res.allocations] == [10, 25, 25]
    assert res.by_id()["a"].reason == CAPPED_AT_MAX


def test_subset_by_priority_then_id() -> None:
    group = [Member("a", demanding=True, priority=1), Member("b", demanding=True),
             Member("c", demanding=True, priority=1)]
    res = allocate(group, Limits(13))
    assert [a.target_current for a in res.allocations] == [6, 6, 0]  # b first, then a (by id)


def test_safety_factor_and_reserves_round_down() -> None:
    res = allocate(g(("a", True, True), ("b", True, True)), Limits(41, 0.9))  # 36.9 A
    assert res.budget == 36 and res.total == 36


def test_bad_members_are_refused() -> None:
    with pytest.raises(ValueError, match="min_current"):
        Member("x", min_current=10, max_current=6)
    with pytest.raises(ValueError, match="duplicate"):
        allocate([Member("x"), Member("x")], Limits(10))


def test_failsafe_result_names_every_member() -> None:
    res = failsafe_result(["b", "a"], "a", 6)
    assert [(a.id, a.target_current, a.reason) for a in res.allocations] == [
        ("a", 6, "failsafe"), ("b", 0, "failsafe"),
    ]


def test_floored_members_count_at_their_floor() -> None:
    """OpenEVSE members of a mixed group raise themselves to their failsafe current (6 A) on
    their own: they are counted at 6 A at least, given at least that when demanding, and an
    offline one reserves the largest of its floor, its own reserve and the assumed current."""
    group = [Member("gw1", demanding=True), Member("gw2", demanding=True),
             Member("ev1", demanding=True, floor=6), Member("ev2", demanding=True, floor=6)]
    res = allocate(group, Limits(40))
    assert [a.target_current for a in res.allocations] == [10, 10, 10, 10]
    idle = [*group[:3], Member("ev2", demanding=False, floor=6)]
    res = allocate(idle, Limits(40))
    assert [a.target_current for a in res.allocations] == [11, 0, 11, 11]  # ev2 counts 6 A
    assert res.floors == 12
    held = [*group[:3], Member("ev2", online=False, floor=6, reserve=14.5)]
    res = allocate(held, Limits(40))
    assert res.reserved == 14.5 and res.total == 24
    scarce = allocate(group, Limits(20))  # floors 12 A, 8 A left: one gateway node at 6 A
    assert [(a.target_current, a.reason) for a in scarce.allocations] == [
        (6, MIN_SUBSET), (6, MIN_SUBSET), (6, MIN_SUBSET), (0, INSUFFICIENT)]
