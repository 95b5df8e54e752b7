"""A floor on the rate of device events: at most one per key per interval, the last one wins.

A device that floods (a controller rebooting in a loop, a flapping contact sending ``$AT``
hundreds of times a second) must not turn into an unbounded queue of envelopes nor a burst of
work towards the device. :class:`Coalescer` holds at most one pending value per key, so its
size is bounded by the number of keys; what it folded together is counted, not lost silently.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any


class Coalescer:
    """Pending device events, one slot per key, released at most once per ``min_interval``.

    ``offer`` never blocks and never grows anything but a slot per key. ``take`` waits for the
    next key that is due and returns it with the number of offers folded into it.
    """

    def __init__(self, min_interval: float, max_keys: int = 32) -> None:
        self.min_interval = min_interval
        self.max_keys = max_keys
        #: offers that replaced a pending value (folded, last one wins)
        self.coalesced = 0
        #: offers dropped because they repeated the last released value (``dedupe``)
        self.unchanged = 0
        self._pending: dict[str, tuple[Any, int]] = {}
        self._sent_at: dict[str, float] = {}
        self._sent_value: dict[str, Any] = {}
        self._changed = asyncio.Event()

    def offer(self, key: str, value: Any, *, dedupe: bool = False) -> None:
        """Hold ``value`` for ``key``; with ``dedupe``, a value equal to the last one released
        (and nothing pending) is dropped and counted."""
        pending = self._pending.get(key)
        if pending is not None:
            self.coalesced += 1
            self._pending[key] = (value, pending[1] + 1)
            return
        if dedupe and key in self._sent_value and self._sent_value[key] == value:
            self.unchanged += 1
            return
        if len(self._pending) >= self.max_keys:
            raise ValueError(f"more than {self.max_keys} event keys")  # a bug, not the device
        self._pending[key] = (value, 1)
        self._changed.set()

    def pending(self, key: str) -> bool:
        return key in self._pending

    def _due(self, now: float) -> tuple[str | None, float]:
        """The first key due now (or None) and the earliest time one will be."""
        soonest = math.inf
        for key in self._pending:
            at = self._sent_at.get(key, -math.inf) + self.min_interval
            if at <= now:
                return key, now
            soonest = min(soonest, at)
        return None, soonest

    async def take(self) -> tuple[str, Any, int]:
        """The next due key, its last value and how many offers it stands for."""
        while True:
            now = time.monotonic()
            key, at = self._due(now)
            if key is not None:
                value, offers = self._pending.pop(key)
                self._sent_at[key] = now
                self._sent_value[key] = value
                return key, value, offers
            self._changed.clear()
            if at == math.inf:
                await self._changed.wait()
            else:
                try:
                    async with asyncio.timeout(at - now):
                        await self._changed.wait()
                except TimeoutError:
                    pass
