"""The restart policy as data, and the decision as a pure function (OTP's one_for_one).

``decide(policy, history, now)`` answers "restart after d seconds" or "failed", from the times of
earlier restarts alone, so it is table-tested without a single process. Intensity: more than
``max_count`` restarts inside a sliding ``window`` marks the transport failed (OTP's
``add_restart``). A failed transport is not abandoned (supervisord's most hated FATAL state): it
is retried after ``failed_retry`` seconds (0 = never) and reported as failed meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.settings import GeneralSettings


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_count: int = 5
    window: float = 60.0
    stable_after: float = 10.0
    failed_retry: float = 300.0

    @classmethod
    def from_general(cls, general: GeneralSettings) -> RestartPolicy:
        return cls(
            backoff_initial=general.restart_backoff_initial,
            backoff_max=general.restart_backoff_max,
            max_count=general.restart_max_count,
            window=general.restart_window,
            stable_after=general.restart_stable_after,
            failed_retry=general.restart_failed_retry,
        )


@dataclass(frozen=True)
class Restart:
    delay: float


@dataclass(frozen=True)
class Failed:
    retry_after: float | None  # None: never


Decision = Restart | Failed


@dataclass(frozen=True)
class History:
    """Monotonic times of restarts inside the window, and the current backoff streak."""

    restarts: tuple[float, ...] = ()
    streak: int = 0


def decide(
    policy: RestartPolicy, history: History, ran_for: float, now: float
) -> tuple[Decision, History]:
    """Decide what to do about a child that just exited unexpectedly.

    ``ran_for`` is how long the child ran before this exit. A run of at least ``stable_after``
    ends the backoff streak (the next delay is the initial one again); the intensity window
    still counts every restart inside it.
    """
    recent = tuple(t for t in history.restarts if now - t <= policy.window)
    if len(recent) + 1 > policy.max_count:
        retry = policy.failed_retry if policy.failed_retry > 0 else None
        return Failed(retry), History()
    streak = 0 if ran_for >= policy.stable_after else history.streak
    delay = min(policy.backoff_initial * (2**streak), policy.backoff_max)
    return Restart(delay), History((*recent, now), streak + 1)
