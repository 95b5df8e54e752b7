"""The OpenEVSE members a mixed group leads: who leads them, how they count, their targets. Pure.

A mixed group is gateway nodes sharing masterlessly (``node.py``) plus OpenEVSE firmware members,
which only take orders from one controller. The rules (docs/loadsharing_openevse.md, "Mixed
groups"):

- the acting controller is the lowest id of a node's view: the same node on every member of an
  agreed view, so exactly one node leads the members with shares of the agreed allocation;
- the acting controller publishes the members as it sees them (:class:`LedMember`, in its status,
  versioned with it): every gateway node allocates from the same inputs;
- every member is counted at its failsafe current at least (the allocation's ``floor``), because
  a firmware member raises itself to it after ``heartbeat_timeout`` without a frame, whoever
  leads it; a silent one is reserved at what it may still draw until its lease is over;
- the acting controller moves each member's target by the rules its own charger follows: lower
  at once when ready, raise only after agreement and the raise wait, only lower in hold, and in
  failsafe send the members' own failsafe current; and it says it is ready only once each
  member's own status shows it at its lowered target (its frame may be lost while its status
  still arrives); one that doesn't within ``heartbeat_timeout`` is published offline, reserved
  at the most it may draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from transports.loadsharing import allocation as al
from transports.loadsharing.messages import LedMember
from transports.loadsharing.openevse_plan import REASON_WORDS, classify, led_entry

if TYPE_CHECKING:
    from transports.loadsharing.node import Node, NodeConfig
    from transports.loadsharing.openevse_plan import GroupSettings, MemberLink

__all__ = ["LedMember", "acting_controller", "as_members", "frame_reason", "lead_step",
           "lowered", "mixed_config", "step_targets"]


def acting_controller(view: Iterable[str]) -> str:
    """The lowest id of the view: deterministic, and one node for everyone who agrees on it."""
    return min(view)


def as_members(hosts: Iterable[str], entries: Iterable[LedMember], floor: int) -> list[al.Member]:
    """The allocation's view of the led members; one the controller doesn't report is offline."""
    by_host = {e.host: e for e in entries}
    out: list[al.Member] = []
    for host in hosts:
        e = by_host.get(host)
        if e is None:
            out.append(al.Member(host, online=False, floor=floor))
        elif e.online:
            out.append(al.Member(host, True, e.demanding, e.min_current, e.max_current,
                                 e.priority, floor=floor))
        else:
            out.append(al.Member(host, online=False, floor=floor, reserve=e.reserve))
    return out


def lowered(current: int, share: int, fallback: int) -> int:
    """A target lowered toward a share, never below the floor every allocation counts anyway
    (a member taken over in hold keeps its failsafe current instead of pausing)."""
    return min(current, max(share, fallback))


def step_targets(current: dict[str, int], shares: dict[str, int], *, ready: bool, mode: str,
                 raise_now: bool, fallback: int) -> dict[str, int]:
    """The targets after one evaluation, by the node's phase (``Node.evaluate``).

    ``mode`` is the node's (``agreed``, ``hold``, ``failsafe``); ``raise_now``: agreed for the
    raise wait; ``ready``: eligible to be ready (its lowering comes first). In failsafe a member
    gets what it would fall back to by itself (``fallback``: its safe current, 0 in disable
    mode), which every allocation counts already (its floor). A member not yet led starts at
    ``fallback``.
    """
    out: dict[str, int] = {}
    for host, share in shares.items():
        cur = current.get(host, fallback)
        if ready:
            cur = lowered(cur, share, fallback)
        if mode == "agreed":
            if raise_now:
                cur = share
        elif mode == "hold":
            cur = lowered(cur, share, fallback)
        else:
            cur = fallback
        out[host] = cur
    return out


def frame_reason(node: Node, host: str) -> str:
    """OpenEVSE's reason word for a member's frame."""
    if node.mode == "failsafe" or node.result is None:
        return "failsafe_disabled" if node.config.led_floor == 0 else "failsafe"
    a = node.result.by_id().get(host)
    return "offline" if a is None else REASON_WORDS.get(a.reason, a.reason)


def lead_step(node: Node, links: dict[str, MemberLink], s: GroupSettings,
              now: float) -> list[tuple[MemberLink, int, str]]:
    """One step of the acting controller, without I/O (``mixed.LedGroup`` and the simulation
    share it): which members show more than their target, the members as published to the
    group, and the frames due (on a change, or ``frame_interval`` after the last)."""
    node.led_obeys = lambda host, target: host not in links or links[host].obeys(target)
    for host, link in links.items():
        target = node.led_targets.get(host)
        if target is None or classify(link, s, now) != "online" or link.obeys(target):
            link.unconfirmed_since = None
        elif link.unconfirmed_since is None:
            link.unconfirmed_since = now
    node.set_led(tuple(led_entry(link, s, now) for link in links.values()))
    frames: list[tuple[MemberLink, int, str]] = []
    for host, amps in node.led_targets.items():
        link = links.get(host)
        if link is None or not (link.joined and link.connected(now, s.heartbeat_timeout)):
            continue  # a member held for not showing its target still gets its frames
        reason = frame_reason(node, host)
        due = link.last_frame is None or now - link.last_frame >= s.frame_interval
        if amps != link.sent or reason != link.reason or due:
            frames.append((link, amps, reason))
    return frames


def mixed_config(base: NodeConfig, hosts: Iterable[str], safe_current: float,
                 margin: float) -> NodeConfig:
    """A gateway node's configuration in a mixed group, from its masterless one.

    - ``led_floor``: each member counts at least its failsafe current (whole amps, rounded up;
      0 in disable mode, where a member's failsafe is to stop);
    - ``response_time`` grows by ``margin``: a lower target reaches a member as a frame on its
      ``/ws`` (delivery and the two clocks), then its charger has the usual response time;
    - ``extra_hold`` = ``kappa * timeout + margin``: a member whose leader lost quorum may still
      obey its last frame until its own ``heartbeat_timeout`` runs out (the failsafe frame may
      be lost with the socket), so a new agreement must wait that much longer before raising.
    """
    hosts = tuple(sorted(hosts))
    clash = set(hosts) & set(base.members)
    if clash:
        raise ValueError(f"{', '.join(sorted(clash))}: both a gateway node and an OpenEVSE member")
    floor = 0 if base.disable_mode else math.ceil(safe_current)
    return replace(base, led=hosts, led_floor=floor,
                   extra_hold=base.kappa * base.timeout + margin,
                   response_time=base.response_time + margin)
