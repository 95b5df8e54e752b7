"""Reconnect pacing and "log a failure once, its recovery once" for every transport.

Both use the monotonic clock: a Pi has no RTC and wall time jumps when NTP syncs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any


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

    def __init__(self, log: logging.Logger, what: str, counters: Any = None) -> None:
        """``counters`` (a transport's :class:`~transports.base.Counters`): the outage also
        becomes its ``last_error``, and the recovery its ``recovered_at``, so that ``status``
        and the status page say what the log says."""
        self.log = log
        self.what = what
        self.counters = counters
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
            if self.counters is not None:
                self.counters.error(f"{self.what}: {reason}")
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
            if self.counters is not None:
                self.counters.recovered()
        self._since = None
        self.failures = 0


class RepeatLog:
    """Repeated identical warnings collapsed into one line and a count (FailureLog's idea for
    things that do not recover: a flood of reboots, refused requests, garbled replies).

    The first occurrence of a ``key`` is logged at ``level``; more within ``window`` seconds
    are counted (and logged at DEBUG). When the window closes, one line says how many more
    there were. The close is scheduled on the running event loop when there is one; without
    a loop it happens at the next ``warn`` (or :meth:`flush`).
    """

    def __init__(
        self, log: logging.Logger, window: float = 60.0, level: int = logging.WARNING,
        max_keys: int = 64,
    ) -> None:
        self.log = log
        self.window = window
        self.level = level
        self.max_keys = max_keys
        self.total = 0
        #: key -> [opened at (monotonic), repeats since, what the first line said]
        self._open: dict[str, list[Any]] = {}

    def warn(self, key: str, msg: str, *args: object) -> bool:
        """Count one occurrence; returns True when it was logged at ``level``."""
        self.total += 1
        now = time.monotonic()
        self._close_expired(now)
        entry = self._open.get(key)
        if entry is not None:
            entry[1] += 1
            self.log.debug(msg, *args)
            return False
        if len(self._open) >= self.max_keys:  # bounded: the oldest window closes early
            self._close(next(iter(self._open)))
        self._open[key] = [now, 0, msg % args if args else msg]
        self.log.log(self.level, msg, *args)
        try:
            asyncio.get_running_loop().call_later(self.window, self._close_if_due, key, now)
        except RuntimeError:
            pass  # no loop: closed lazily
        return True

    def pending(self, key: str) -> int:
        """Occurrences of ``key`` counted but not yet summarised."""
        entry = self._open.get(key)
        return 0 if entry is None else entry[1]

    @property
    def open_windows(self) -> int:
        """Kinds counted now (bounded by ``max_keys``)."""
        return len(self._open)

    def flush(self) -> None:
        for key in list(self._open):
            self._close(key)

    def _close_if_due(self, key: str, opened: float) -> None:
        entry = self._open.get(key)
        if entry is not None and entry[0] == opened:
            self._close(key)

    def _close_expired(self, now: float) -> None:
        for key in [k for k, e in self._open.items() if now - e[0] >= self.window]:
            self._close(key)

    def _close(self, key: str) -> None:
        opened, repeats, first = self._open.pop(key)
        if repeats:
            self.log.log(
                self.level, "%s (and %d more like it in %.0f s)",
                first, repeats, time.monotonic() - opened,
            )
