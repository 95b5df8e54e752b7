"""Reconnect pacing and "log a failure once, its recovery once" for every transport.

Both use the monotonic clock: a Pi has no RTC and wall time jumps when NTP syncs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff: ``initial`` doubling to ``maximum``; ``give_up_after`` 0 = never.

    ``next_delay()`` returns the wait before the next attempt, or None when the total time
    since the first failure exceeds ``give_up_after``. ``reset()`` after a success.
    """

    initial: float = 1.0
    maximum: float = 30.0
    give_up_after: float = 0.0
    factor: float = 2.0
    _current: float = field(default=0.0, init=False)
    _first_failure: float | None = field(default=None, init=False)

    def next_delay(self) -> float | None:
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        elif self.give_up_after > 0 and now - self._first_failure > self.give_up_after:
            return None
        self._current = self.initial if self._current == 0 else min(
            self._current * self.factor, self.maximum
        )
        return self._current

    def reset(self) -> None:
        self._current = 0.0
        self._first_failure = None

    @property
    def failing_for(self) -> float:
        return 0.0 if self._first_failure is None else time.monotonic() - self._first_failure


class FailureLog:
    """Logs the first failure of something and its recovery, and only counts the retries.

    SD cards and people both prefer one line saying "broker down" and one saying "back after
    37 s, 12 retries" to a line per retry.
    """

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failures = 0
        self._since: float | None = None

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, reason: object) -> None:
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self.log.warning("%s failed: %s", self.what, reason)
        else:
            self.log.debug("%s still failing (%d): %s", self.what, self.failures, reason)

    def recovered(self) -> None:
        if self._since is not None:
            self.log.warning(
                "%s recovered after %.1f s (%d failed attempts)",
                self.what,
                time.monotonic() - self._since,
                self.failures,
            )
        self._since = None
        self.failures = 0
