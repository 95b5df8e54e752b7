"""The OpenEVSE WiFi firmware's load-sharing rules (branch ``jeremypoulter/issue940``), pure.

Not our gateway's allocation (``transports/loadsharing/allocation.py``): this is what a real
OpenEVSE controller computes, quirks included, so the gateway can be tested against it
(/work/shared/design/LOADSHARING.md, "OpenEVSE differs"):

- only state C members share the budget; a demanding member in any other state (B, disabled,
  fault) gets ``connected_min`` outside the budget, so offered totals may exceed the group max;
- an offline member reserves ``failsafe_peer_assumed_current``; in ``disable`` mode (or with a
  safe current <= 0) one offline member stops everyone (``failsafe_disabled``);
- under scarcity, runs of equal priority rotate every ``rotation_interval``;
- an EV drawing below its pilot has its max capped to its draw (sticky, see :class:`DemandCap`);
- shares are not rounded (the firmware sends doubles).

Also here: the ``/config`` validation messages and the member read-only rule. No I/O, no clock:
callers pass ``now`` (monotonic seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transports.loadsharing.group_keys import (  # the firmware's wire messages
    MSG_ASSUMED,
    MSG_GROUP_MAX,
    MSG_MODE,
    MSG_SAFE,
    MSG_SAFE_OVER_MAX,
    MSG_SAFETY,
    MSG_TIMEOUT,
)
from transports.loadsharing.settings import MSG_READ_ONLY  # noqa: F401

SLEEPING = 254
CHARGING = 3

#: the keys a controller pushes to its members (plus role and controller host)
GROUP_KEYS = (
    "loadsharing_group_id",
    "loadsharing_group_max_current",
    "loadsharing_safety_factor",
    "loadsharing_heartbeat_timeout",
    "loadsharing_failsafe_mode",
    "loadsharing_failsafe_safe_current",
    "loadsharing_failsafe_peer_assumed_current",
)

DEFAULT_CONFIG: dict[str, Any] = {
    "loadsharing_enabled": False,
    "loadsharing_group_id": "",
    "loadsharing_group_max_current": 0.0,
    "loadsharing_safety_factor": 1.0,
    "loadsharing_heartbeat_timeout": 30,
    "loadsharing_failsafe_mode": "safe_current",
    "loadsharing_failsafe_safe_current": 6.0,
    "loadsharing_failsafe_peer_assumed_current": 6.0,
    "loadsharing_priority": 0,
    "loadsharing_rotation_interval": 1800,
    "loadsharing_role": "",
    "loadsharing_controller_host": "",
}


# -- /config -----------------------------------------------------------------------------------
def member_write_forbidden(role: str, body: dict[str, Any]) -> bool:
    """A member refuses ``loadsharing_*`` writes, except its controller's push or reset."""
    if role != "member" or not any(k.startswith("loadsharing_") for k in body):
        return False
    return body.get("loadsharing_role") not in ("member", "")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def validate(body: dict[str, Any], stored: dict[str, Any]) -> str | None:
    """The firmware's 400 message for the first bad value, or None (incoming else stored)."""
    ranges = (
        ("loadsharing_group_max_current", 0.0, math.inf, MSG_GROUP_MAX),
        ("loadsharing_safety_factor", 0.0, 1.0, MSG_SAFETY),
        ("loadsharing_heartbeat_timeout", 5.0, 600.0, MSG_TIMEOUT),
        ("loadsharing_failsafe_safe_current", 0.0, 80.0, MSG_SAFE),
        ("loadsharing_failsafe_peer_assumed_current", 0.0, 80.0, MSG_ASSUMED),
    )
    for key, low, high, msg in ranges:
        if key in body:
            value = _number(body[key])
            if value is None or not low <= value <= high:
                return msg
    if "loadsharing_failsafe_mode" in body and body["loadsharing_failsafe_mode"] not in (
        "safe_current",
        "disable",
    ):
        return MSG_MODE
    group_max = float(
        body.get("loadsharing_group_max_current", stored["loadsharing_group_max_current"])
    )
    safe = float(
        body.get("loadsharing_failsafe_safe_current", stored["loadsharing_failsafe_safe_current"])
    )
    if group_max > 0 and safe > group_max:
        return MSG_SAFE_OVER_MAX
    return None


# -- allocation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberInput:
    """One group member as the controller sees it (its own node or a polled peer)."""

    id: str
    online: bool
    vehicle: int
    state: int
    min_current: float
    max_current: float
    priority: int = 0

    @property
    def demanding(self) -> bool:
        """The firmware's test: a sleeping (254) or starting (0) charger asks for nothing."""
        return self.online and self.vehicle == 1 and self.state not in (0, SLEEPING)


@dataclass(frozen=True)
class GroupConfig:
    group_max: float
    safety_factor: float = 1.0
    peer_assumed: float = 6.0
    failsafe_mode: str = "safe_current"
    safe_current: float = 6.0
    rotation_interval: float = 1800.0
    #: later firmware (#1147): offer idle members their minimum instead of 0 so they can wake
    keep_awake: bool = False


@dataclass
class Rotation:
    """Persistent across calls, like the firmware's ``rotation`` state."""

    offset: int = 0
    last: float | None = None


@dataclass(frozen=True)
class Allocation:
    id: str
    target_current: float
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "target_current": self.target_current, "reason": self.reason}


def allocate(
    members: list[MemberInput], cfg: GroupConfig, rotation: Rotation, now: float
) -> tuple[list[Allocation], bool]:
    """(allocations in input order, failsafe_active). Empty when the group max is <= 0."""
    if cfg.group_max <= 0 or not members:
        return [], False
    offline = [m for m in members if not m.online]
    if offline and (cfg.failsafe_mode == "disable" or cfg.safe_current <= 0):
        return [Allocation(m.id, 0.0, "failsafe_disabled") for m in members], True
    out: dict[str, tuple[float, str]] = {m.id: (0.0, "idle") for m in members}
    available = max(0.0, cfg.group_max * cfg.safety_factor - len(offline) * cfg.peer_assumed)
    charging: list[MemberInput] = []
    for m in members:
        if not m.online:
            continue
        floor = min(m.min_current, m.max_current)
        if not m.demanding:
            out[m.id] = (floor if cfg.keep_awake else 0.0, "idle")
        elif m.state == CHARGING:
            charging.append(m)
        else:
            out[m.id] = (floor, "connected_min")
    if charging:
        charging.sort(key=lambda m: (m.priority, m.id))
        if cfg.rotation_interval > 0 and len(charging) > 1:
            if rotation.last is None:
                rotation.last = now
            elif now - rotation.last >= cfg.rotation_interval:
                rotation.offset += 1
                rotation.last = now
            charging = _rotate_runs(charging, rotation.offset)
        _share(charging, available, out)
    for m in offline:
        out[m.id] = (0.0, "offline")
    result = [Allocation(m.id, round(out[m.id][0], 2), out[m.id][1]) for m in members]
    return result, bool(offline)


def _rotate_runs(ordered: list[MemberInput], offset: int) -> list[MemberInput]:
    result: list[MemberInput] = []
    i = 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j].priority == ordered[i].priority:
            j += 1
        run = ordered[i:j]
        k = offset % len(run)
        result.extend(run[k:] + run[:k])
        i = j
    return result


def _share(charging: list[MemberInput], available: float, out: dict[str, Any]) -> None:
    floors = {m.id: min(m.min_current, m.max_current) for m in charging}
    if available >= sum(floors.values()):
        alloc = dict(floors)
        left = available - sum(floors.values())
        open_ = [m for m in charging if alloc[m.id] < m.max_current]
        while left >= 0.01 and open_:
            share = left / len(open_)
            left = 0.0
            still = []
            for m in open_:
                proposed = alloc[m.id] + share
                if proposed > m.max_current:
                    left += proposed - m.max_current
                    alloc[m.id] = m.max_current
                else:
                    alloc[m.id] = proposed
                    still.append(m)
            open_ = still
        for m in charging:
            out[m.id] = (alloc[m.id], "equal_share")
        return
    budget = available
    for m in charging:
        if budget >= m.min_current:
            out[m.id] = (floors[m.id], "min_subset")
            budget -= floors[m.id]
        else:
            out[m.id] = (0.0, "insufficient")


@dataclass
class _CapState:
    cap: float | None = None
    cycles: int = 0
    offered: list[float] = field(default_factory=list)


class DemandCap:
    """An EV drawing below its pilot gets its max capped to its draw, so others get the rest.

    Sticky (the firmware's later ``LoadSharingDemandState``): set when the measured current is
    more than 0.25 A below a pilot above the minimum, floored at the minimum, kept until the
    member stops charging, and released every 6th cycle as a probe (re-set at once if the EV
    still draws less). Not armed in the cycle after the offer went up (ramp-up transient), and
    only used when more than one member charges.
    """

    PROBE_EVERY = 6

    def __init__(self) -> None:
        self._state: dict[str, _CapState] = {}

    def effective_max(
        self,
        member_id: str,
        charging: bool,
        *,
        pilot: float,
        amps: float,
        min_a: float,
        max_a: float,
    ) -> float:
        st = self._state.setdefault(member_id, _CapState())
        if not charging:
            self._state[member_id] = _CapState()
            return max_a
        rising = len(st.offered) >= 2 and st.offered[-1] > st.offered[-2] + 0.01
        if st.cap is not None:
            st.cycles += 1
            if st.cycles % self.PROBE_EVERY == 0:
                st.cap = None
        elif not rising and pilot > min_a and amps < pilot - 0.25:
            st.cap = max(min_a, amps)
            st.cycles = 0
        return max_a if st.cap is None else min(max_a, st.cap)

    def offered(self, member_id: str, target: float) -> None:
        st = self._state.setdefault(member_id, _CapState())
        st.offered = [*st.offered[-1:], target]

    def forget(self, member_id: str) -> None:
        self._state.pop(member_id, None)


# -- member ------------------------------------------------------------------------------------
def member_failsafe(
    controller_host: str, last_frame: float | None, now: float, heartbeat_timeout: float
) -> bool:
    """A member with no controller, no frame yet since it became one, or a stale one."""
    if not controller_host or last_frame is None:
        return True
    return now - last_frame > heartbeat_timeout


def charger_limit(target: float, force_disabled: bool, min_a: int) -> int | None:
    """What the shaper makes of a limit: whole amps, or None = put the charger to sleep."""
    if force_disabled or target < min_a:
        return None
    return math.floor(target)
