"""Who gets the bus next: fair interleaving of device scans, quarantine, load figures. No I/O.

A bus carries one request at a time, so the devices' scans take turns. The rule is
earliest-deadline-first on each device's *due time* (when its next scan should start):

- a scan that starts late keeps its phase (next due = due + interval), so a device's mean
  interval is its ``read_interval`` whenever the bus has the time;
- a device more than a whole interval behind is not owed a burst of catch-up scans: its next
  due becomes "now", behind everyone already waiting, which under overload degrades to round
  robin among the late devices while devices with long intervals keep theirs;
- ``offline_after`` requests in a row without an answer put a device in quarantine: it is then
  only probed (one request) after a backoff that starts at its interval and doubles up to
  ``quarantine_max``, so a dead device costs the others one timeout per probe, not a scan of
  timeouts per interval. The first answer ends the quarantine and a full scan follows at once.

Load: each device's measured bus time per scan (a moving average) over its interval, summed,
is the bus time the devices need per second. Above 1 s per second the bus is oversubscribed:
:meth:`BusSchedule.load_notice` says so once, with the figures, and once when it clears.

Everything takes ``now`` as an argument (the caller's ``time.monotonic()``), so tests and
``bench/modbus_bus.py`` drive it with a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: weight of the newest scan in the moving average of a device's bus time
COST_WEIGHT = 0.3
#: demand (bus seconds per second) above which the bus counts as oversubscribed, and below
#: which it counts as fine again (hysteresis, so a bus at the edge is not reported every scan)
OVERLOAD_ABOVE = 1.0
OVERLOAD_CLEAR = 0.9


@dataclass(frozen=True)
class Timing:
    interval: float
    offline_after: int = 3
    quarantine_max: float = 300.0


@dataclass(frozen=True)
class Change:
    """A device came back or went away: what the transport turns into a status envelope."""

    name: str
    available: bool
    reason: str


@dataclass
class Slot:
    """One device's place in the schedule."""

    name: str
    order: int
    timing: Timing
    due: float
    cost: float | None = None
    probe_cost: float = 0.0
    failures: int = 0
    quarantined: bool = False
    probe_wait: float = 0.0
    recovered: bool = False
    heard: bool = False  # the current scan got an answer
    scans: int = 0
    probes: int = 0
    first_start: float | None = None
    last_start: float | None = None
    late_max: float = 0.0

    @property
    def achieved_interval(self) -> float | None:
        """Mean seconds between scan starts so far (None before two scans)."""
        if self.scans < 2 or self.first_start is None or self.last_start is None:
            return None
        return (self.last_start - self.first_start) / (self.scans - 1)

    @property
    def demand(self) -> float:
        """Bus seconds this device needs per second (its share of the bus)."""
        if self.quarantined:
            return self.probe_cost / max(self.probe_wait, 1e-9)
        return (self.cost or 0.0) / self.timing.interval


class BusSchedule:
    def __init__(self, timings: Mapping[str, Timing], now: float) -> None:
        if not timings:
            raise ValueError("a bus schedule needs at least one device")
        self.slots = {name: Slot(name, i, t, due=now) for i, (name, t) in
                      enumerate(timings.items())}
        self.overloaded = False

    def __getitem__(self, name: str) -> Slot:
        return self.slots[name]

    def upcoming(self) -> Slot:
        """The device whose scan (or probe) is due first; ties go by listed order."""
        return min(self.slots.values(), key=lambda s: (s.due, s.order))

    # ------------------------------------------------------------------ a scan's life
    def begin(self, name: str, now: float) -> bool:
        """A scan starts; returns True when it is a quarantine probe (one request only)."""
        slot = self.slots[name]
        slot.heard = False
        if slot.quarantined:
            slot.probes += 1
            return True
        slot.scans += 1
        slot.late_max = max(slot.late_max, now - slot.due)
        if slot.first_start is None:
            slot.first_start = now
        slot.last_start = now
        return False

    def answered(self, name: str) -> Change | None:
        """A request got an answer (values or an exception reply): the device is there."""
        slot = self.slots[name]
        slot.failures = 0
        slot.heard = True
        if slot.quarantined:
            slot.quarantined = False
            slot.recovered = True
            return Change(name, True, "answering again")
        return None

    def failed(self, name: str) -> Change | None:
        """A request got no (valid) answer; returns the quarantine when it begins."""
        slot = self.slots[name]
        slot.failures += 1
        if not slot.quarantined and slot.failures >= slot.timing.offline_after:
            slot.quarantined = True
            slot.probe_wait = min(slot.timing.interval, slot.timing.quarantine_max)
            slot.first_start = slot.last_start = None  # the achieved rate restarts afterwards
            slot.scans = 0
            return Change(name, False, f"no answer to {slot.failures} requests in a row")
        return None

    def end(self, name: str, now: float, busy: float, *, probe: bool = False) -> None:
        """The scan (or probe) is over after ``busy`` seconds of bus time; set the next due."""
        slot = self.slots[name]
        if slot.quarantined:
            # a probe costs one request; the scan that began the quarantine, its mean request
            slot.probe_cost = busy if probe else busy / max(1, slot.failures)
            slot.due = now + slot.probe_wait
            slot.probe_wait = min(slot.probe_wait * 2, slot.timing.quarantine_max)
            return
        if slot.recovered:
            slot.recovered = False
            slot.due = now
            return
        if not probe and slot.heard:  # a scan of timeouts says nothing of the scan's cost
            slot.cost = busy if slot.cost is None else (
                (1 - COST_WEIGHT) * slot.cost + COST_WEIGHT * busy)
        slot.due += slot.timing.interval
        slot.due = max(slot.due, now)

    def quarantined(self, name: str) -> bool:
        return self.slots[name].quarantined

    # ------------------------------------------------------------------ load
    def demand(self) -> float | None:
        """Bus seconds needed per second; None until every answering device has a scan time."""
        if any(s.cost is None and not s.quarantined for s in self.slots.values()):
            return None
        return sum(s.demand for s in self.slots.values())

    def load_notice(self) -> str | None:
        """A message when the bus becomes oversubscribed (with figures) or fine again; once."""
        demand = self.demand()
        if demand is None:
            return None
        if not self.overloaded and demand > OVERLOAD_ABOVE:
            self.overloaded = True
            parts = []
            for s in self.slots.values():
                if s.quarantined:
                    parts.append(f"{s.name}: quarantined, probe {s.probe_cost:.2f} s every "
                                 f"{s.probe_wait:g} s")
                else:
                    parts.append(f"{s.name}: {s.cost or 0:.2f} s per scan every "
                                 f"{s.timing.interval:g} s")
            return (f"bus oversubscribed: the devices need {demand:.2f} s of bus time per "
                    f"second, 1 s is available ({'; '.join(parts)}); scans will come about "
                    f"{demand:.1f}x later than asked")
        if self.overloaded and demand < OVERLOAD_CLEAR:
            self.overloaded = False
            return f"bus no longer oversubscribed: the devices need {demand:.2f} s per second"
        return None
