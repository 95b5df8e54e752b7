"""The restart decision as a table: no processes, just (policy, history, now) -> decision."""

from __future__ import annotations

import pytest

from gateway.policy import Failed, History, Restart, RestartPolicy, decide

POLICY = RestartPolicy(backoff_initial=1, backoff_max=30, max_count=5, window=60,
                       stable_after=10, failed_retry=300)


def run_crashes(times: list[tuple[float, float]], policy: RestartPolicy = POLICY) -> list:
    """Feed (now, ran_for) crash events through decide; return the decisions."""
    history = History()
    out = []
    for now, ran_for in times:
        decision, history = decide(policy, history, ran_for, now)
        out.append(decision)
    return out


def test_backoff_doubles_to_the_maximum() -> None:
    policy = RestartPolicy(backoff_initial=1, backoff_max=8, max_count=100, window=60)
    delays = [d.delay for d in run_crashes([(t, 0.1) for t in range(7)], policy)]
    assert delays == [1, 2, 4, 8, 8, 8, 8]


def test_stable_run_resets_the_backoff() -> None:
    decisions = run_crashes([(0, 0.1), (1, 0.1), (3, 0.1), (100, 50.0)])
    assert [d.delay for d in decisions] == [1, 2, 4, 1]


@pytest.mark.parametrize(
    ("crashes", "expected_failed_at"),
    [
        ([(t, 0.1) for t in range(6)], 5),  # the 6th restart within 60 s fails
        ([(t * 20, 0.1) for t in range(8)], None),  # spread out: at most 3 in any 60 s
    ],
)
def test_intensity_limit(
    crashes: list[tuple[float, float]], expected_failed_at: int | None
) -> None:
    decisions = run_crashes(crashes)
    failed = [i for i, d in enumerate(decisions) if isinstance(d, Failed)]
    assert (failed[0] if failed else None) == expected_failed_at
    if expected_failed_at is not None:
        assert decisions[expected_failed_at] == Failed(300)
        assert all(isinstance(d, Restart) for d in decisions[:expected_failed_at])


def test_failed_retry_zero_means_never() -> None:
    policy = RestartPolicy(max_count=1, failed_retry=0)
    assert run_crashes([(0, 0.1), (1, 0.1)], policy)[1] == Failed(None)
