"""Admission of commands on the bridge: pure bookkeeping, no I/O, no asyncio.

Why commands get their own rules (docs/architecture.md "No deadlock"): a command and its
result travel in opposite directions, so two transports that command each other (MQTT to a
charger, the charger's result back to MQTT) form a cycle; if either side could wait for room
while the other waits for it, both would stop, and their heartbeats with them. Two bounds
break the cycle without ever waiting:

- :class:`CommandWindow`, on the sending side: at most ``size`` commands per target that are
  not answered yet. One more is answered ``busy`` at once, on the sender's own side; it never
  crosses the bridge. An answer that never comes (the target died) turns into ``timeout``
  after ``timeout`` seconds, so every command is answered exactly once by someone.
- the receiving side's bounded command queue (in the runner) answers ``busy`` when full, so
  a sender outside these rules cannot make the receiver's inbox wait either.

Because every command in flight holds one slot of a bounded window, the results on their way
back are bounded too, and the runner may send them without waiting for room.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CommandWindow:
    """Commands sent and not yet answered, per target, each with its deadline (monotonic)."""

    size: int = 16
    timeout: float = 60.0
    inflight: dict[str, OrderedDict[str, tuple[float, dict[str, Any]]]] = field(
        default_factory=dict)

    def admit(self, target: str, request_id: str, data: dict[str, Any], now: float) -> bool:
        """True: send it (a slot is taken). False: ``target`` is busy, answer at once."""
        waiting = self.inflight.setdefault(target, OrderedDict())
        if len(waiting) >= self.size:
            return False
        waiting[request_id] = (now + self.timeout, data)
        return True

    def answered(self, target: str, request_id: str) -> bool:
        """A result from ``target`` came: free its slot. False if it was not ours (or late)."""
        waiting = self.inflight.get(target)
        return waiting is not None and waiting.pop(request_id, None) is not None

    def expired(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Commands whose deadline passed, removed: (target, the command's data) each."""
        out: list[tuple[str, dict[str, Any]]] = []
        for target, waiting in self.inflight.items():
            while waiting:
                request_id, (deadline, data) = next(iter(waiting.items()))
                if deadline > now:
                    break  # in send order, so deadlines are in order too
                del waiting[request_id]
                out.append((target, data))
        return out

    def count(self, target: str) -> int:
        return len(self.inflight.get(target, ()))
