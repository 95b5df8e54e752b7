"""A node's configuration and the timings derived from its bounds (docs/loadsharing.md, "Timing").

Apart from ``node.py`` (the state machine) because every driver builds one: the transport from
the INI section or the synced group values, ``led.mixed_config`` for a mixed group, the
simulations from their specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.instance import offset_address
from transports.loadsharing import allocation as al
from transports.loadsharing.messages import group_hash

if TYPE_CHECKING:
    from transports.loadsharing.settings import LoadSharingSettings

#: seconds a node waits for the charger's first status before starting paused
FIRST_STATUS_WAIT = 5.0
#: seconds between two readings of the node's state when nothing changes
READING_EVERY = 30.0


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    members: tuple[str, ...]  # every member, this node included
    limits: al.Limits
    timeout: float = 30.0
    fallback: float = 6.0  # safe current, or 0 in disable mode
    disable_mode: bool = False
    min_current: int = 6
    max_current: int = 32
    priority: int = 0
    response_time: float = 5.0
    rho: float = 0.01
    heartbeat_interval: float = 0.0  # 0: timeout / 6
    group_id: str = ""
    led: tuple[str, ...] = ()  # OpenEVSE members, led by the view's lowest id (led.py)
    led_floor: int = 0  # what each counts at least: its own failsafe current
    extra_hold: float = 0.0  # added to the view hold: how late a led member may fall back
    rules: int = al.RULES_VERSION  # the allocation rules this node runs (part of the group hash)

    def __post_init__(self) -> None:
        if self.node_id not in self.members:
            raise ValueError(f"node {self.node_id!r} is not among the members {self.members}")

    # -- timings derived from the bounds (docs/loadsharing.md, "Timing") --------------------
    @property
    def kappa(self) -> float:
        """Worst ratio between two clocks' measures of one interval."""
        return (1 + self.rho) / (1 - self.rho)

    @property
    def interval(self) -> float:
        return self.heartbeat_interval or self.timeout / 6

    @property
    def view_hold(self) -> float:
        """A view must be this old everywhere before anyone raises on it (alone: no wait)."""
        if len(self.members) == 1:
            return 0.0
        k = self.kappa
        return k * (2 * k * self.timeout + self.response_time + self.extra_hold) + self.interval

    @property
    def hold_time(self) -> float:
        """How long an old share may be kept without agreement (a new view can mature)."""
        return self.view_hold + 3 * self.kappa * self.interval + self.raise_wait

    @property
    def fallback_wait(self) -> float:
        """Not ready this long: nobody counts us below the fallback current any more."""
        k = self.kappa
        return k * (k * self.timeout + k * self.hold_time + self.response_time) + self.interval

    @property
    def raise_wait(self) -> float:
        return self.kappa * self.response_time

    @property
    def group(self) -> str:
        return group_hash(
            group_id=self.group_id, group_max=self.limits.group_max,
            safety_factor=self.limits.safety_factor, assumed=self.limits.peer_assumed_current,
            failsafe_mode="disable" if self.disable_mode else "safe_current",
            timeout=self.timeout, members=self.members + tuple(f"led:{h}" for h in self.led),
            rules=self.rules,
        )

    def quorum(self, view: tuple[str, ...]) -> bool:
        if self.disable_mode:
            return len(view) == len(self.members)
        return 2 * len(view) > len(self.members)


def from_settings(s: LoadSharingSettings, instance: int = 0) -> NodeConfig:
    """The node's configuration; with a link, a member's id is its address after the offset."""
    me = offset_address(s.listen, instance) if s.listen else s.member_id
    members = tuple(sorted({me, *s.peers}))
    return NodeConfig(
        node_id=me,
        members=members,
        limits=al.Limits(
            s.loadsharing_group_max_current, s.loadsharing_safety_factor,
            s.loadsharing_failsafe_peer_assumed_current,
        ),
        timeout=s.loadsharing_heartbeat_timeout,
        fallback=s.fallback_current,
        disable_mode=s.loadsharing_failsafe_mode == "disable",
        min_current=s.loadsharing_min_current,
        max_current=s.loadsharing_max_current,
        priority=s.loadsharing_priority,
        response_time=s.loadsharing_response_time,
        rho=s.loadsharing_clock_tolerance,
        heartbeat_interval=s.loadsharing_heartbeat_interval,
        group_id=s.loadsharing_group_id,
    )
