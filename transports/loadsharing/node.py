"""One member of a masterless load-sharing group, as a sans-I/O state machine.

The node owns no socket and no timer. A driver (``transport.py`` for real,
``simulators/loadsharing_simnet.py`` in tests) gives it a :class:`Clock`, a :class:`PeerLink`
to send through, delivers incoming reports to :meth:`Node.receive`, local charger status to
:meth:`Node.set_local`, and calls :meth:`Node.tick` often (every second or so); the node calls
``on_limit(amps)`` whenever the current its charger may offer changes (0 = pause).

Why it is safe when views differ (the whole argument is in docs/loadsharing.md):

- *two-way view*: a peer is online only if its latest report echoes ours and that echo proves
  the report is at most ``timeout`` old (a lower bound on its send time, from our own clock and
  the echo's age: no clock synchronisation, only a bound ``rho`` on clock rates);
- *ready*: our view is a strict majority (everyone, in ``disable`` mode), has been held for
  ``view_hold``, and every member of it reports the same view (held as long), the same group
  configuration and the same allocation inputs; being ready, we at once lower to our share;
- *agreed*: ready, and every member reports ready. Only then, and ``raise_wait`` after agreement
  began (so that every member's lowering has reached its EV), may the node *raise* its limit;
- otherwise the limit only goes down: for ``hold`` after the last agreement (keeping the old
  share while a new view matures), then to the fallback (safe current, or 0 in disable mode);
- a node not ready for ``fallback_wait`` may raise to the fallback current: by then no member
  counts it below that any more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from transports.loadsharing import allocation as al
from transports.loadsharing import led
from transports.loadsharing.demand import DemandTracker
from transports.loadsharing.messages import LedMember, Report, Status
from transports.loadsharing.node_config import NodeConfig

__all__ = ["AGREED", "FAILSAFE", "HOLD", "DemandTracker", "MonotonicClock", "Node",
           "NodeConfig"]

AGREED = "agreed"
HOLD = "hold"
FAILSAFE = "failsafe"


class MonotonicClock:
    """The real clock (the simulation passes its own)."""

    def now(self) -> float:
        return time.monotonic()


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (each node's own; rates may differ within ``rho``)."""
        ...


class PeerLink(Protocol):
    """How a node reaches its peers; the driver delivers what arrives to ``Node.receive``."""

    def send(self, peer_id: str, message: Report) -> None: ...

    def broadcast(self, message: Report) -> None: ...


@dataclass
class PeerState:
    report: Report | None = None
    received_at: float = -math.inf  # our clock, when the latest report arrived
    origin: float = -math.inf  # our clock, lower bound on when the latest two-way report left


@dataclass
class NodeCounters:
    reports_in: int = 0
    reports_out: int = 0
    stale: int = 0  # duplicates and reordered reports, ignored
    foreign: int = 0  # from a non-member or ourselves
    group_mismatch: int = 0


class Node:
    def __init__(
        self,
        config: NodeConfig,
        clock: Clock,
        link: PeerLink,
        on_limit: Callable[[int], None],
        *,
        epoch: int = 0,
        initial_limit: int = 0,
        demanding: bool = False,
        on_led: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.link = link
        self.on_limit = on_limit
        self.epoch = epoch
        self.seq = 0
        self.counters = NodeCounters()
        self.status = Status(
            demanding=demanding, min_current=config.min_current, max_current=config.max_current,
            priority=config.priority,
        )
        self.peers = {m: PeerState() for m in config.members if m != config.node_id}
        self._group = config.group
        now = clock.now()
        self.view: tuple[str, ...] = (config.node_id,)
        self.view_since = now
        self.limit = self._clamp(min(initial_limit, config.fallback))
        self.mode = FAILSAFE
        self.ready = False
        self.result: al.Result | None = None
        self.last_agreed: float | None = None
        self.agreed_since: float | None = None
        self.not_ready_since: float | None = now
        self.on_led = on_led
        self.led_targets: dict[str, int] = {}  # while this node leads the OpenEVSE members
        #: (host, target) -> whether the member's latest status shows it at target or less
        self.led_obeys: Callable[[str, int], bool] | None = None
        self._sent_at: dict[int, float] = {}
        self._last_sent = -math.inf
        self._last_key: tuple[Any, ...] = ()
        self.on_limit(self.limit)
        self.evaluate()  # announce ourselves at once

    def reconfigure(self, config: NodeConfig) -> None:
        """New group values for the same members and timing: views are kept, and the new group
        hash stops agreement until every member has it (lower at once, raise on agreement)."""
        self.config = config
        self._group = config.group
        self.evaluate()

    # -- inputs -------------------------------------------------------------------------------
    def set_local(self, demanding: bool, **shown: Any) -> None:
        """The local charger's status: demand (versioned) and what peers display."""
        status = replace(self.status, demanding=demanding, **shown)
        if status.inputs() != self.status.inputs():
            status = replace(status, version=self.status.version + 1)
        self.status = status
        self.evaluate()

    def set_led(self, members: tuple[LedMember, ...]) -> None:
        """The OpenEVSE members as this node, their acting controller, sees them (or ())."""
        self.set_local(self.status.demanding, led=tuple(sorted(members, key=lambda m: m.host)))

    @property
    def controller(self) -> str | None:
        """Who leads the OpenEVSE members in this node's view (None: there are none)."""
        return led.acting_controller(self.view) if self.config.led else None

    def receive(self, report: Report) -> None:
        """A report from a peer (any order, maybe duplicated, maybe old)."""
        cfg = self.config
        peer = self.peers.get(report.node)
        if peer is None:
            self.counters.foreign += 1
            return
        if peer.report is not None and report.order <= peer.report.order:
            self.counters.stale += 1
            return
        now = self.clock.now()
        if peer.report is not None and report.epoch != peer.report.epoch:
            peer.origin = -math.inf  # a restarted peer: nothing of the old one carries over
        if report.group != self._group:
            self.counters.group_mismatch += 1
        self.counters.reports_in += 1
        peer.report = report
        peer.received_at = now
        echo = report.echo.get(cfg.node_id)
        if echo is not None and echo[0] > self.epoch:
            # peers remember a later incarnation of us (our epoch file was lost and the clock
            # went back): move past it, or our reports would be ignored as old forever
            self.epoch = echo[0] + 1
        if echo is not None and echo[0] == self.epoch and echo[1] in self._sent_at:
            # the peer got our report ``seq`` (sent at our time t) and sent this one ``age``
            # seconds of its clock later: it left no earlier than t + age scaled to our clock
            origin = self._sent_at[echo[1]] + echo[2] / cfg.kappa
            peer.origin = max(peer.origin, min(origin, now))
        self.evaluate()

    def tick(self) -> None:
        self.evaluate()

    # -- the state machine ------------------------------------------------------------------
    def online(self, peer_id: str, now: float) -> bool:
        """Heard both ways, the latest such report at most ``timeout`` old (> is offline)."""
        return now - self.peers[peer_id].origin <= self.config.timeout

    def evaluate(self) -> None:
        cfg = self.config
        now = self.clock.now()
        view = tuple(sorted([cfg.node_id, *(p for p in self.peers if self.online(p, now))]))
        if view != self.view:
            self.view, self.view_since = view, now
        inputs = self._inputs(view)
        quorum = cfg.quorum(view)
        self.result = al.allocate(self._members(view), cfg.limits) if quorum else None
        share = self.result.target(cfg.node_id) if self.result else 0
        eligible = quorum and now - self.view_since >= cfg.view_hold and all(
            self._agrees(self.peers[p].report, view, inputs) for p in view if p != cfg.node_id
        )
        # ready = at our share *and* every led member shown at its lowered target (led.py)
        ready = eligible and self._led_confirmed()
        agreed = ready and all(
            self.peers[p].report.ready for p in view if p != cfg.node_id  # type: ignore[union-attr]
        )
        limit = self.limit
        if eligible:
            limit = min(limit, share)
        if ready:
            self.not_ready_since = None
        elif self.not_ready_since is None:
            self.not_ready_since = now
        if agreed:
            self.mode = AGREED
            self.last_agreed = now
            if self.agreed_since is None:
                self.agreed_since = now
            if now - self.agreed_since >= cfg.raise_wait:
                limit = share
        else:
            self.agreed_since = None
            held = self.last_agreed is not None and now - self.last_agreed <= cfg.hold_time
            if quorum and held:
                self.mode = HOLD
                limit = min(limit, share)
            else:
                self.mode = FAILSAFE
                limit = min(limit, self._clamp(cfg.fallback))
                since = now if self.not_ready_since is None else self.not_ready_since
                if not ready and now - since >= cfg.fallback_wait:
                    limit = self._clamp(cfg.fallback) if self.status.demanding else 0
        self.ready = ready
        self._lead(share_of=self.result.by_id() if self.result else {}, ready=eligible,
                   raise_now=agreed and self.agreed_since is not None
                   and now - self.agreed_since >= cfg.raise_wait)
        limit = self._clamp(limit)
        if limit != self.limit:
            self.limit = limit
            self.on_limit(limit)
        key = (view, tuple(sorted(inputs.items())), ready, limit, self.mode, self.status)
        if key != self._last_key or now - self._last_sent >= cfg.interval:
            self._last_key = key
            self._send(now, view, inputs)

    def _lead(self, share_of: dict[str, al.Allocation], ready: bool, raise_now: bool) -> None:
        """Move the led members' targets by this node's phase, if it is their controller."""
        cfg = self.config
        if not cfg.led or self.controller != cfg.node_id:
            targets: dict[str, int] = {}
        else:
            shares = {h: share_of[h].target_current if h in share_of else 0 for h in cfg.led}
            targets = led.step_targets(self.led_targets, shares, ready=ready, mode=self.mode,
                                       raise_now=raise_now, fallback=cfg.led_floor)
        if targets != self.led_targets:
            self.led_targets = targets
            if self.on_led is not None:
                self.on_led(dict(targets))

    def _led_confirmed(self) -> bool:
        """Every led member online in the allocation shows itself at its lowered target
        (F2 for members: their lowering is confirmed before this node says it is ready)."""
        cfg = self.config
        if not cfg.led or self.controller != cfg.node_id or self.led_obeys is None:
            return True
        share_of = self.result.by_id() if self.result else {}
        for host in cfg.led:
            a = share_of.get(host)
            if a is None or a.reason == al.OFFLINE:
                continue
            target = led.lowered(self.led_targets.get(host, cfg.led_floor), a.target_current,
                                 cfg.led_floor)
            if not self.led_obeys(host, target):
                return False
        return True

    def _led_entries(self, view: tuple[str, ...]) -> tuple[LedMember, ...]:
        """The led members as their acting controller (in this view) reports them."""
        lead = led.acting_controller(view)
        if lead == self.config.node_id:
            return self.status.led
        r = self.peers[lead].report
        return r.status.led if r is not None else ()

    def _agrees(self, r: Report | None, view: tuple[str, ...], inputs: dict[str, Any]) -> bool:
        cfg = self.config
        return (
            r is not None
            and r.group == self._group
            and r.view == view
            and r.view_age >= cfg.view_hold
            and r.inputs == inputs
        )

    def _inputs(self, view: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for m in view:
            if m == self.config.node_id:
                out[m] = (self.epoch, self.status.version)
            else:
                r = self.peers[m].report
                assert r is not None  # online implies a report
                out[m] = (r.epoch, r.status.version)
        return out

    def _members(self, view: tuple[str, ...]) -> list[al.Member]:
        out = []
        for m in self.config.members:
            st = self.status if m == self.config.node_id else self._peer_status(m)
            out.append(al.Member(
                m, online=m in view, demanding=st.demanding, min_current=st.min_current,
                max_current=st.max_current, priority=st.priority,
            ))
        if self.config.led:
            out += led.as_members(self.config.led, self._led_entries(view), self.config.led_floor)
        return out

    def _peer_status(self, m: str) -> Status:
        r = self.peers[m].report
        return r.status if r is not None else Status()

    def _clamp(self, amps: float) -> int:
        """Whole amps a charger can offer: below its minimum means pause (0)."""
        whole = max(0, min(math.floor(amps), self.config.max_current))
        return whole if whole >= max(1, self.config.min_current) else 0

    def _send(self, now: float, view: tuple[str, ...], inputs: dict[str, tuple[int, int]]) -> None:
        self.seq += 1
        self._sent_at[self.seq] = now
        if len(self._sent_at) > 512:
            for old in sorted(self._sent_at)[:256]:
                del self._sent_at[old]
        echo = {
            p: (st.report.epoch, st.report.seq, now - st.received_at)
            for p, st in self.peers.items()
            if st.report is not None and now - st.received_at <= self.config.timeout
        }
        report = Report(
            node=self.config.node_id, epoch=self.epoch, seq=self.seq, group=self._group,
            status=self.status, view=view, view_age=now - self.view_since, inputs=inputs,
            echo=echo, ready=self.ready, limit=float(self.limit), mode=self.mode,
        )
        self._last_sent = now
        self.counters.reports_out += 1
        self.link.broadcast(report)

    # -- what the node shows ------------------------------------------------------------------
    @property
    def failsafe_active(self) -> bool:
        return self.mode == FAILSAFE

    def allocations(self) -> list[dict[str, Any]]:
        """``/loadsharing/status``'s ``allocations[]``: the group as this node sees it."""
        if self.mode == FAILSAFE or self.result is None:
            res = al.failsafe_result(self.config.members, self.config.node_id, self.limit)
        else:
            res = self.result
        return [
            {"id": a.id, "target_current": a.target_current, "reason": a.reason}
            for a in res.allocations
        ]

    def snapshot(self) -> dict[str, Any]:
        now = self.clock.now()
        peers = []
        for p, st in sorted(self.peers.items()):
            r = st.report
            peers.append({
                "id": p, "online": p in self.view,
                "last_seen": None if r is None else round(now - st.received_at, 3),
                "mode": "" if r is None else r.mode,
                "limit": None if r is None else r.limit,
            })
        return {
            "node": self.config.node_id, "mode": self.mode, "limit": self.limit,
            "ready": self.ready, "failsafe_active": self.failsafe_active,
            "view": list(self.view), "view_age": round(now - self.view_since, 3),
            "online_count": len(self.view),
            "offline_count": len(self.config.members) - len(self.view),
            "peers": peers, "allocations": self.allocations(),
            **({"controller": self.controller, "led_targets": dict(self.led_targets)}
               if self.config.led else {}),
        }
