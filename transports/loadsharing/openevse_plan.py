"""What the OpenEVSE controller role knows of its members, and the allocation from it (pure).

Kept apart from the I/O (``openevse_controller.py``) so that the reserve rules can be checked
without sockets: a member online gets its share of ``allocation.allocate``; a silent one stays
counted at what it may still draw until its lease ends (``GroupSettings.lease``), then at the
assumed current; a node not yet obeying us at its pilot. The why is in docs/loadsharing_openevse.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transports.loadsharing import allocation as al
from transports.loadsharing.group_keys import GroupKeys
from transports.loadsharing.messages import LedMember

if TYPE_CHECKING:
    import asyncio

    import aiohttp

#: our reason words -> OpenEVSE's where they mean the same (capped at max is an equal share)
REASON_WORDS = {al.CAPPED_AT_MAX: "equal_share", al.FAILSAFE: "failsafe_disabled"}
HELD = "held"  # silent, maybe still drawing: reserved at its last target until the lease ends


@dataclass(frozen=True)
class GroupSettings:
    group_max: float
    group_id: str = ""
    safety_factor: float = 1.0
    heartbeat_timeout: float = 30.0
    failsafe_mode: str = "safe_current"
    safe_current: float = 6.0
    peer_assumed_current: float = 6.0
    offline_margin: float = 5.0  # clock rate error and message delay beyond the timeout
    response_time: float = 5.0  # a charger's time to obey a lower limit
    push_retry: float = 0.5

    def __post_init__(self) -> None:
        if self.peer_assumed_current < self.safe_current:
            raise ValueError("failsafe_peer_assumed_current must be >= failsafe_safe_current")

    @property
    def lease(self) -> float:
        """After the last frame handed to a member's socket, how long it may still draw its
        target: its own timeout, the margin (delivery delay, clock rates), its charger's
        response time to the failsafe limit."""
        return self.heartbeat_timeout + self.offline_margin + self.response_time

    @property
    def frame_interval(self) -> float:
        return min(5.0, self.heartbeat_timeout / 3)

    @classmethod
    def from_keys(cls, keys: GroupKeys, **timing: float) -> GroupSettings:
        """The controller's settings from the group keys, plus its timing (margin, response)."""
        return cls(group_max=keys.group_max_current, group_id=keys.group_id,
                   safety_factor=keys.safety_factor, heartbeat_timeout=keys.heartbeat_timeout,
                   failsafe_mode=keys.failsafe_mode, safe_current=keys.failsafe_safe_current,
                   peer_assumed_current=keys.failsafe_peer_assumed_current, **timing)

    def keys(self) -> GroupKeys:
        return GroupKeys(group_id=self.group_id, group_max_current=self.group_max,
                         safety_factor=self.safety_factor,
                         heartbeat_timeout=self.heartbeat_timeout,
                         failsafe_mode=self.failsafe_mode,
                         failsafe_safe_current=self.safe_current,
                         failsafe_peer_assumed_current=self.peer_assumed_current)

    def push_body(self, own_host: str) -> dict[str, Any]:
        body = {"loadsharing_enabled": True, "loadsharing_role": "member",
                "loadsharing_controller_host": own_host, **self.keys().wire()}
        # OpenEVSE stores the timeout as an integer
        body["loadsharing_heartbeat_timeout"] = int(self.heartbeat_timeout)
        return body


@dataclass
class MemberLink:
    """What the controller knows of one member."""

    host: str
    status: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    ws: aiohttp.ClientWebSocketResponse | None = None
    last_text: float | None = None
    joined: bool = False  # our push acknowledged with a 200
    pushed_version: int = 0
    sent: int | None = None  # the target in our latest frame
    reason: str = ""
    last_frame: float | None = None
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    task: asyncio.Task[Any] | None = None
    paused_by_us: bool = False  # we sent it less than its minimum: asleep, still demanding
    unconfirmed_since: float | None = None  # its status shows more than its target since

    def update(self, data: dict[str, Any]) -> None:
        """A status text (full or a delta) from the member."""
        self.status.update(data)
        if self.status.get("state") not in (0, 254) and (self.sent or 0) >= self.min_current():
            self.paused_by_us = False  # awake again after we raised it

    def record_frame(self, amps: int, reason: str, now: float) -> None:
        """A frame handed to its socket: it may arrive, so it counts for the lease."""
        self.sent, self.reason, self.last_frame = amps, reason, now
        self.recent.append((now, amps))
        if amps < self.min_current():
            self.paused_by_us = True

    def obeys(self, target: int) -> bool:
        """Its latest status shows its charger at ``target`` or less: asleep or disabled, or a
        ``pilot`` of at most ``target``. A lower target is
        taken as obeyed only once the member says so (a frame can be lost with its socket
        while the member's status still arrives)."""
        if self.status.get("state") in (254, 255):
            return True
        return _num(self.status.get("pilot"), math.inf) <= target

    def connected(self, now: float, timeout: float) -> bool:
        return (self.ws is not None and not self.ws.closed and self.last_text is not None
                and now - self.last_text <= timeout)

    def held_until(self, s: GroupSettings) -> float:
        return (self.last_frame or 0.0) + s.lease

    def may_draw(self, now: float, s: GroupSettings) -> float:
        """The most it may draw by its own rules after losing us: recent targets or failsafe."""
        window = s.lease
        while self.recent and now - self.recent[0][0] > window:
            self.recent.popleft()
        return max([s.safe_current] + [a for _, a in self.recent])

    def demanding(self) -> bool:
        st, vehicle = self.status.get("state", 0), self.status.get("vehicle", 0)
        if vehicle != 1:
            return False
        if st in (0, 254):  # asleep, or starting up after we woke it: demanding only if we
            return self.paused_by_us  # put it to sleep (until it is seen awake again)
        return True

    def min_current(self) -> int:
        return _amps(self.status.get("loadsharing_min_current"), 6)

    def member(self) -> al.Member:
        """Its allocation inputs; what a member says is taken only within OpenEVSE's ranges
        (amps 0..80, a whole priority), so a lying or broken member can't stop the group."""
        hi = max(1, _amps(self.status.get("loadsharing_max_current"),
                          _amps(self.status.get("max_current"), 32)))
        lo = min(self.min_current(), hi)
        priority = int(max(-1000.0, min(1000.0, _num(self.status.get("loadsharing_priority"),
                                                     0))))
        return al.Member(self.host, True, self.demanding(), lo, hi, priority)


def _num(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else default


def _amps(value: Any, default: int) -> int:
    return int(max(0.0, min(80.0, _num(value, default))))


@dataclass
class Plan:
    targets: dict[str, tuple[int, str]]  # host -> (amps, OpenEVSE reason)
    reserved: float
    states: dict[str, str]  # host -> online | held | offline | outside


def classify(link: MemberLink, s: GroupSettings, now: float) -> str:
    """online (obeying us, heard within the timeout), held (silent with its lease running, or
    showing more than its target for the timeout), outside (reachable, not joined: it runs on
    its own limit) or offline."""
    if link.connected(now, s.heartbeat_timeout) and link.joined:
        stuck = link.unconfirmed_since is not None and \
            now - link.unconfirmed_since > s.heartbeat_timeout
        return HELD if stuck else "online"
    if link.last_frame is not None and now <= link.held_until(s):
        return HELD
    if link.connected(now, s.heartbeat_timeout):
        return "outside"
    return "offline"


def reserve_of(link: MemberLink, state: str, s: GroupSettings, now: float) -> float:
    """What a member not online may draw: held at its recent targets, outside at its pilot."""
    if state == HELD:
        return max(link.may_draw(now, s), _num(link.status.get("pilot"), 0))
    if state == "outside":
        return max(_num(link.status.get("pilot"), 0), s.peer_assumed_current)
    return 0.0


def led_entry(link: MemberLink, s: GroupSettings, now: float) -> LedMember:
    """The member as a mixed group's acting controller publishes it (``led.py``).

    One that has shown more than its target for ``heartbeat_timeout`` (its lowering frame was
    lost, though its status still arrives) is published offline, reserved at the most it may
    draw, so that the others can agree without it."""
    state = classify(link, s, now)
    if state == "online":
        m = link.member()
        return LedMember(link.host, True, m.demanding, m.min_current, m.max_current,
                         m.priority)
    return LedMember(link.host, reserve=float(math.ceil(reserve_of(link, state, s, now))))


def plan(links: list[MemberLink], s: GroupSettings, now: float,
         local: al.Member | None = None) -> Plan:
    """The allocation from what the controller knows now (pure apart from pruning ``recent``)."""
    extra = 0.0
    members: list[al.Member] = [] if local is None else [local]
    states: dict[str, str] = {}
    for link in links:
        state = states[link.host] = classify(link, s, now)
        if state == "online":
            members.append(link.member())
        elif state == "offline":
            members.append(al.Member(link.host, online=False))
        else:
            extra += reserve_of(link, state, s, now)
    limits = al.Limits(max(0.0, s.group_max * s.safety_factor - extra), 1.0,
                       s.peer_assumed_current)
    result = al.allocate(members, limits)
    targets = {a.id: (a.target_current, REASON_WORDS.get(a.reason, a.reason))
               for a in result.allocations}
    for host, st in states.items():
        if st in (HELD, "outside"):
            targets[host] = (0, "offline")
    lost = any(st in (HELD, "offline") for st in states.values())
    if lost and (s.failsafe_mode == "disable" or s.safe_current <= 0):
        # as the firmware and the design note: in disable mode one lost member stops the group
        targets = {h: (0, "failsafe_disabled" if states.get(h) == "online" or h not in states
                       else "offline") for h in targets}
    return Plan(targets, result.reserved + extra, states)
