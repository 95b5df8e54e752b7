"""Equal share with minimums: the group's allocation as one pure function.

Every node runs :func:`allocate` on the same inputs and gets the same answer, so the group needs
no master. No I/O, no clock, no randomness; the order of ``members`` never matters (they are
sorted by id first). Amps are whole: a charger takes whole amps, so each share is rounded *down*
to a whole amp and never above the exact equal share, which keeps the budget an upper bound.

The steps (docs/loadsharing.md, "Allocation"):

1. reserve ``peer_assumed_current`` for every offline member;
2. ``budget = floor(max(0, group_max * safety_factor - reserves))`` whole amps;
3. only demanding online members take part; none: everyone gets 0;
4. if the minimums fit, each gets its min, then the rest is shared equally in whole amps, capped
   at each max, the leftover re-shared until it is gone, everyone is capped, or less than one amp
   per uncapped member is left (that remainder stays unallocated: a share is never uneven);
5. otherwise a deterministic subset (priority, then id; lower wins) whose minimums fit is served
   the same way and the others get 0.

A member may have a ``floor``: it is counted at ``max(target, floor)`` whatever it is given,
because it can raise itself to that much on its own. That is an OpenEVSE firmware member in a
mixed group: after ``heartbeat_timeout`` without a frame it applies its failsafe current, whoever
leads it (docs/loadsharing_openevse.md, "Mixed groups"). Online floors come off the budget first;
a demanding floored member then takes part above its floor. An offline member's reserve is the
largest of ``peer_assumed_current``, its ``floor`` and its own ``reserve`` (what a silent member
may still draw from its last frames).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: The version of these rules. Nodes agree on it like on the group configuration (it is part of
#: the group hash every report carries, ``NodeConfig.group``): during a rolling upgrade a node
#: whose :func:`allocate` gives other answers never agrees with an older one, so neither raises
#: above its fallback until every member runs the same rules (docs/loadsharing.md, §3).
#: Bump it with any change that can move a share: the steps above, rounding, floors, ordering.
RULES_VERSION = 1

#: why a member got what it got (OpenEVSE's words where they exist)
IDLE = "idle"
EQUAL_SHARE = "equal_share"
CAPPED_AT_MAX = "capped_at_max"
MIN_SUBSET = "min_subset"
INSUFFICIENT = "insufficient"
OFFLINE = "offline"
FAILSAFE = "failsafe"
REASONS = (IDLE, EQUAL_SHARE, CAPPED_AT_MAX, MIN_SUBSET, INSUFFICIENT, OFFLINE, FAILSAFE)


@dataclass(frozen=True, slots=True)
class Member:
    """One member's allocation inputs. ``min_current <= max_current``, whole amps."""

    id: str
    online: bool = True
    demanding: bool = False
    min_current: int = 6
    max_current: int = 32
    priority: int = 0
    floor: int = 0  # counted at least this much whatever it gets (it can raise itself to it)
    reserve: float = 0.0  # offline: held back at least this much (beyond the assumed current)

    def __post_init__(self) -> None:
        if not 0 <= self.min_current <= self.max_current:
            raise ValueError(
                f"member {self.id!r}: need 0 <= min_current <= max_current, "
                f"got {self.min_current}..{self.max_current}"
            )
        if self.floor < 0 or not 0 <= self.reserve < math.inf:
            raise ValueError(f"member {self.id!r}: floor and reserve must be >= 0 and finite")

    def above_floor(self) -> Member:
        """How it takes part once its floor is counted: its min and max less the floor."""
        if self.floor == 0:
            return self
        lo = max(0, self.min_current - self.floor)
        hi = max(lo, self.max_current - self.floor)
        return Member(self.id, self.online, self.demanding, lo, hi, self.priority)

    def counted(self, target: int) -> int:
        """What the budget counts for it at ``target`` (online)."""
        return max(target, self.floor)


@dataclass(frozen=True, slots=True)
class Limits:
    """The group's budget: ``group_max * safety_factor`` less a reserve per offline member."""

    group_max: float
    safety_factor: float = 1.0
    peer_assumed_current: float = 6.0

    @property
    def ceiling(self) -> float:
        return self.group_max * self.safety_factor


@dataclass(frozen=True, slots=True)
class Allocation:
    id: str
    target_current: int
    reason: str


@dataclass(frozen=True, slots=True)
class Result:
    """The allocation of every member (sorted by id) and what was held back for offline ones.

    ``budget`` is what online members share (``floors`` of it counted for floored ones)."""

    allocations: tuple[Allocation, ...]
    reserved: float
    budget: int
    floors: int = 0

    def target(self, member_id: str) -> int:
        for a in self.allocations:
            if a.id == member_id:
                return a.target_current
        raise KeyError(member_id)

    def by_id(self) -> dict[str, Allocation]:
        return {a.id: a for a in self.allocations}

    @property
    def total(self) -> int:
        return sum(a.target_current for a in self.allocations)


def allocate(members: Iterable[Member], limits: Limits) -> Result:
    """The allocation for ``members`` under ``limits`` (see the module docstring)."""
    ordered = sorted(members, key=lambda m: m.id)
    ids = [m.id for m in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate member ids: {ids}")
    offline = [m for m in ordered if not m.online]
    reserved = sum(max(limits.peer_assumed_current, m.reserve, m.floor) for m in offline)
    available = max(0.0, limits.ceiling - reserved)
    budget = math.floor(available) if math.isfinite(available) else 0
    floors = sum(m.floor for m in ordered if m.online)
    pool = budget - floors
    demanding = [m for m in ordered if m.online and m.demanding]
    part = {m.id: m.above_floor() for m in demanding}

    served: list[Member]
    if pool < 0:  # the floors alone don't fit: nobody is given anything
        served, subset, pool = [], True, 0
    elif sum(part[m.id].min_current for m in demanding) <= pool:
        served, subset = [part[m.id] for m in demanding], False
    else:
        served, subset = _subset([part[m.id] for m in demanding], pool), True
    shares = _water_fill(served, pool)

    out: list[Allocation] = []
    served_ids = {m.id for m in served}
    for m in ordered:
        if not m.online:
            out.append(Allocation(m.id, 0, OFFLINE))
        elif not m.demanding:
            out.append(Allocation(m.id, 0, IDLE))
        elif m.id not in served_ids:
            out.append(Allocation(m.id, 0, INSUFFICIENT))
        else:
            amps = min(m.max_current, shares[m.id] + m.floor)
            if subset:
                reason = MIN_SUBSET
            elif amps >= m.max_current:
                reason = CAPPED_AT_MAX
            else:
                reason = EQUAL_SHARE
            out.append(Allocation(m.id, amps, reason))
    return Result(tuple(out), reserved, budget, floors)


def failsafe_result(member_ids: Iterable[str], local_id: str, local_amps: int) -> Result:
    """What a node in failsafe reports: its own fallback current, nothing known of the rest."""
    allocations = tuple(
        Allocation(i, local_amps if i == local_id else 0, FAILSAFE) for i in sorted(member_ids)
    )
    return Result(allocations, 0.0, local_amps)


def _subset(demanding: list[Member], budget: int) -> list[Member]:
    """Priority then id (lower wins); a member whose minimum no longer fits is skipped."""
    chosen: list[Member] = []
    used = 0
    for m in sorted(demanding, key=lambda m: (m.priority, m.id)):
        if used + m.min_current <= budget:
            chosen.append(m)
            used += m.min_current
    return chosen


def _water_fill(served: list[Member], budget: int) -> dict[str, int]:
    """Minimums first, then equal whole-amp rounds capped at each max."""
    amps = {m.id: m.min_current for m in served}
    left = budget - sum(amps.values())
    room = {m.id: m.max_current - m.min_current for m in served}
    open_ids = [i for i in amps if room[i] > 0]
    while left > 0 and open_ids:
        share = left // len(open_ids)
        if share == 0:
            break
        still_open: list[str] = []
        for i in open_ids:
            give = min(share, room[i])
            amps[i] += give
            room[i] -= give
            left -= give
            if room[i] > 0:
                still_open.append(i)
        open_ids = still_open
    return amps
