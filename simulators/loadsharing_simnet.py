"""A simulated group: N nodes, one process, a controllable clock, a network that misbehaves.

Beside the other simulators (not in the product package): the scenario tests, the randomized
search and anyone checking a change to the protocol run the real
:class:`~transports.loadsharing.node.Node` (and its ChargerWriter) here, with

- :class:`Scheduler`: one global simulated time and an event queue (nothing sleeps);
- per-node clocks running at rates within the stated bound ``rho`` (offsets are irrelevant: no
  timestamp crosses the wire);
- :class:`Network`: per directed link up/down (so one-way and non-transitive partitions), loss,
  delay (any length: safety does not depend on a delay bound), duplication, reordering;
- :class:`SimCharger`: the local charger and its EV (``simulators.ev_model.EvModel``) with the
  documented response time: a higher limit is taken at once (worst case), a lower one only
  ``ev_lag`` after the RAPI write (``write_delay``), and ``$SY``-style supervision that lowers
  the offer to the safe current when the node stops pulsing (a dead gateway).

:meth:`SimGroup.check` is the safety claim: the current all EVs may draw, given every limit
offered within each charger's response window, never exceeds ``group_max * safety_factor``.
The randomized search over fault schedules that drives this group is ``simsearch.py``.

Size: a little over the ~400-line guide: clock, network and chargers are one world; the
search (``simsearch.py``) and the mixed group (``simled.py``) are already apart.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulators.ev_model import EvModel
from transports.charger import ChargerStatus, Command, Pause, Resume, SetLimit, UserRequest
from transports.loadsharing import allocation as al
from transports.loadsharing.charger_writer import ChargerWriter, Preference
from transports.loadsharing.demand import wire_state
from transports.loadsharing.messages import Report
from transports.loadsharing.node import DemandTracker, Node, NodeConfig


class Scheduler:
    """Simulated time: callbacks at given times, run in order (ties in insertion order)."""

    def __init__(self) -> None:
        self.time = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.time), next(self._ids), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.time + delay, action)

    def run_until(self, end: float) -> None:
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self.time = when
            action()
        self.time = max(self.time, end)


@dataclass
class NodeClock:
    """A node's monotonic clock: its own rate and offset over the simulated time."""

    sched: Scheduler
    rate: float = 1.0
    offset: float = 0.0

    def now(self) -> float:
        return self.offset + self.rate * self.sched.time


@dataclass
class Faults:
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability it is delivered twice
    delay_min: float = 0.005
    delay_max: float = 0.05
    slow: float = 0.0  # probability of a long delay (reordering)
    slow_max: float = 20.0


@dataclass
class Stream:
    """An ordered connection over the :class:`Network`: when its latest message arrives."""

    last: float = 0.0


class Network:
    """Directed links between node ids; ``cut``/``heal`` by direction. It carries reports, and
    anything else a subclass of the group sends (``simled.py``: frames and member status)."""

    def __init__(self, sched: Scheduler, rng: random.Random) -> None:
        self.sched = sched
        self.rng = rng
        self.faults = Faults()
        self.down: set[tuple[str, str]] = set()
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.delivered = 0
        self.dropped = 0

    def cut(self, a: str, b: str, both: bool = True) -> None:
        self.down.add((a, b))
        if both:
            self.down.add((b, a))

    def heal(self, a: str | None = None, b: str | None = None, both: bool = True) -> None:
        if a is None or b is None:
            self.down.clear()
            return
        self.down.discard((a, b))
        if both:
            self.down.discard((b, a))

    def partition(self, *groups: list[str]) -> None:
        """Cut every link between different groups (both ways)."""
        for g1, g2 in itertools.permutations(groups, 2):
            for a in g1:
                for b in g2:
                    self.down.add((a, b))

    def transmit(self, src: str, dst: str, message: Any, stream: Stream | None = None,
                 max_delay: float | None = None) -> None:
        """``stream``: one connection (a WebSocket), delivered in order: a late message holds
        up the ones behind it instead of being overtaken. ``max_delay``: a message that would
        arrive later is lost instead (a sender that aborts a stalled connection)."""
        f = self.faults
        if (src, dst) in self.down or self.rng.random() < f.drop:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            if self.rng.random() < f.slow:
                delay = self.rng.uniform(f.delay_max, f.slow_max)
            else:
                delay = self.rng.uniform(f.delay_min, f.delay_max)
            when = self.sched.time + delay
            if stream is not None:
                when = max(when, stream.last)
            if max_delay is not None and when - self.sched.time > max_delay:
                self.dropped += 1
                continue
            if stream is not None:
                stream.last = when
            self.sched.at(when, lambda m=message: self._deliver(src, dst, m))

    def _deliver(self, src: str, dst: str, message: Any) -> None:
        handler = self.handlers.get(dst)
        if handler is None:  # the node is down
            self.dropped += 1
            return
        self.delivered += 1
        handler(message)


@dataclass
class SimLink:
    """The :class:`~transports.loadsharing.node.PeerLink` of one simulated node."""

    network: Network
    node_id: str
    peers: tuple[str, ...]

    def send(self, peer_id: str, message: Report) -> None:
        self.network.transmit(self.node_id, peer_id, message)

    def broadcast(self, message: Report) -> None:
        for p in self.peers:
            self.network.transmit(self.node_id, p, message)


@dataclass
class SimCharger:
    """An EVSE with its EV: the limit the node sets, the draw the EV takes, and their timing."""

    sched: Scheduler
    ev: EvModel
    safe_current: float
    write_delay: float = 0.3
    ev_lag: float = 4.7
    supervision: float = 0.0  # $SY interval; 0 = the controller has none
    offered: int = 0
    setting: int = 0  # the current set (offered unless paused)
    #: (time, offered) from ``now - ev_lag``: what the EV may still be drawing on
    history: list[tuple[float, int]] = field(default_factory=list)
    last_pulse: float = 0.0
    pauses: int = 0
    on_change: Callable[[], None] | None = None

    paused: bool = False
    lose_writes: float = 0.0  # probability a write is lost on the way
    rng: random.Random | None = None

    lost: list[float] = field(default_factory=list)  # when writes were lost

    def command(self, cmd: Command) -> None:
        """A Charger command; reaches the controller after the write (or is lost)."""
        if self.rng is not None and self.rng.random() < self.lose_writes:
            self.lost.append(self.sched.time)
            return
        self.sched.after(self.write_delay, lambda: self._take(cmd))

    def _take(self, cmd: Command) -> None:
        if isinstance(cmd, SetLimit):
            self.setting = cmd.amps
        elif isinstance(cmd, Pause):
            self.paused = True
        elif isinstance(cmd, Resume):
            self.paused = False
        self._apply(0 if self.paused else self.setting)

    def offer(self, amps: int) -> None:
        """The firmware's own limit (an OpenEVSE member, ``simled.py``): after the write."""
        self.command(SetLimit(amps) if amps else Pause())
        if amps:
            self.command(Resume())

    def tamper(self, amps: int, paused: bool = False) -> None:
        """Changed at the charger itself (its display, its WiFi page, a reboot): at once."""
        self.setting, self.paused = amps, paused
        self._apply(0 if paused else amps)

    def status(self) -> ChargerStatus:
        state = "idle" if not self.ev.plugged else "paused" if self.offered == 0 else \
            "charging" if self.ev.requesting else "connected"
        return ChargerStatus(state=state, vehicle_connected=self.ev.plugged,
                             offered_current=float(self.setting))

    def pulse(self) -> None:
        self.last_pulse = self.sched.time

    def _apply(self, amps: int) -> None:
        if amps == 0 and self.offered > 0:
            self.pauses += 1
        self.offered = amps
        self.history.append((self.sched.time, amps))
        if self.on_change is not None:
            self.on_change()
            self.sched.after(self.ev_lag + 1e-6, self.on_change)

    def supervise(self) -> None:
        """``$SY``: no pulse for the interval lowers the offer to the safe current."""
        if self.supervision and self.sched.time - self.last_pulse > self.supervision:
            lowered = min(self.offered, int(self.safe_current))
            if lowered != self.offered:
                self._apply(lowered)

    def effective(self) -> int:
        """The highest offer the EV may still be following (response time allowed)."""
        since = self.sched.time - self.ev_lag
        keep = [h for h in self.history if h[0] >= since]
        older = [h for h in self.history if h[0] < since]
        if older:
            keep.insert(0, older[-1])
        self.history = keep
        return max((h[1] for h in keep), default=self.offered)

    def potential_draw(self) -> float:
        return min(float(self.effective()), self.ev.limit_a()) if self.ev.plugged else 0.0

    def state_code(self) -> int:
        """OpenEVSE's ``/status`` state number for this charger (what peers display)."""
        return wire_state(self.status())


@dataclass
class Member:
    node_id: str
    clock: NodeClock
    charger: SimCharger
    demand: DemandTracker
    writer: ChargerWriter
    node: Node | None = None
    epoch: int = 0
    limits_sent: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class GroupSpec:
    n: int = 3
    group_max: float = 60.0
    safety_factor: float = 1.0
    safe_current: float = 6.0
    assumed: float = 6.0
    timeout: float = 30.0
    disable_mode: bool = False
    response_time: float = 5.0
    rho: float = 0.01
    max_current: int = 32
    supervision: float = 0.0  # RAPI $SY interval; 0 = off
    tick: float = 1.0
    sample: float = 0.5


class SimGroup:
    """N nodes with chargers and EVs on a simulated network; checks the breaker at every step."""

    def __init__(self, spec: GroupSpec, seed: int = 0, rates: list[float] | None = None) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.sched = Scheduler()
        self.net = Network(self.sched, self.rng)
        self.ids = tuple(f"n{i}" for i in range(1, spec.n + 1))
        self.members: dict[str, Member] = {}
        self.violations: list[tuple[float, float, dict[str, float]]] = []
        self.max_total = 0.0
        for i, nid in enumerate(self.ids):
            rate = rates[i] if rates else 1.0
            clock = NodeClock(self.sched, rate=rate, offset=self.rng.uniform(0, 1e5))
            ev = EvModel(max_rate_a=float(spec.max_current), soc=0.2, battery_kwh=80.0)
            charger = SimCharger(
                self.sched, ev, spec.safe_current, write_delay=0.3,
                ev_lag=spec.response_time - 0.3, supervision=spec.supervision,
            )
            charger.on_change = self.check
            writer = ChargerWriter(max_current=spec.max_current, min_current=6,
                                   grace=min(1.0, spec.response_time / 2),
                                   preference=Preference())
            self.members[nid] = Member(nid, clock, charger, DemandTracker(), writer)
            self.start(nid)
        self.sched.after(spec.tick, self._tick)
        self.sched.after(spec.sample, self._sample)

    @property
    def ceiling(self) -> float:
        return self.spec.group_max * self.spec.safety_factor

    def config(self, nid: str) -> NodeConfig:
        s = self.spec
        return NodeConfig(
            node_id=nid, members=self.ids,
            limits=al.Limits(s.group_max, s.safety_factor, s.assumed), timeout=s.timeout,
            fallback=0.0 if s.disable_mode else s.safe_current, disable_mode=s.disable_mode,
            max_current=s.max_current, response_time=s.response_time, rho=s.rho,
        )

    # -- life of a node -----------------------------------------------------------------------
    def start(self, nid: str) -> None:
        m = self.members[nid]
        m.epoch += 1
        link = SimLink(self.net, nid, tuple(p for p in self.ids if p != nid))

        def on_limit(amps: int, m: Member = m) -> None:
            m.limits_sent.append((self.sched.time, amps))
            m.demand.commanded(amps)
            for cmd in m.writer.set_limit(amps, m.clock.now()):
                m.charger.command(cmd)

        c = m.charger
        initial = c.offered
        m.writer.restart()
        demanding = m.demand.update(c.status()) and m.writer.wants_charge
        m.node = Node(self.config(nid), m.clock, link, on_limit, epoch=m.epoch,
                      initial_limit=initial, demanding=demanding)
        self.net.handlers[nid] = m.node.receive
        m.charger.pulse()
        self._refresh(m)

    def kill(self, nid: str) -> None:
        """The gateway process dies: no more messages, no more pulses; the charger keeps its
        last limit until its own supervision (if any) lowers it."""
        m = self.members[nid]
        m.node = None
        self.net.handlers.pop(nid, None)

    def alive(self, nid: str) -> bool:
        return self.members[nid].node is not None

    def plug(self, nid: str, plugged: bool = True, want: float | None = None) -> None:
        m = self.members[nid]
        if plugged:
            m.charger.ev.plug()
            m.charger.ev.soc = 0.2
            if want is not None:
                m.charger.ev.max_rate_a = want
        else:
            m.charger.ev.unplug()
        self._refresh(m)
        self.check()

    def _refresh(self, m: Member) -> None:
        if m.node is None:
            return
        c = m.charger
        for cmd in m.writer.on_status(c.status(), m.clock.now()):  # the watchdog
            c.command(cmd)
        demanding = m.demand.update(c.status()) and m.writer.wants_charge
        top = m.writer.allocation_max()
        if demanding != m.node.status.demanding or top != m.node.status.max_current:
            m.node.set_local(demanding, state=c.state_code(), vehicle=int(c.ev.plugged),
                             max_current=top)

    def user_write(self, nid: str, amps: float | None = None,
                   charging: bool | None = None) -> dict[str, Any]:
        """A person's write (MQTT, REST): through the node's writer; what it answered."""
        m = self.members[nid]
        if m.node is None:  # the gateway is down: nobody takes the write
            return {"ok": False, "result": "error", "detail": "node down"}
        cmds, answer = m.writer.request(UserRequest(amps=amps, charging=charging),
                                        m.clock.now())
        for cmd in cmds:
            m.charger.command(cmd)
        self._refresh(m)
        return answer

    def _tick(self) -> None:
        for m in self.members.values():
            if m.node is not None:
                m.charger.pulse()
                m.node.tick()
            m.charger.supervise()
        self.sched.after(self.spec.tick, self._tick)

    def _sample(self) -> None:
        for m in self.members.values():
            m.charger.ev.step(self.spec.sample, float(m.charger.effective()))
            self._refresh(m)
        self.check()
        self.sched.after(self.spec.sample, self._sample)

    # -- the claim ----------------------------------------------------------------------------
    def check(self) -> None:
        draws = {nid: m.charger.potential_draw() for nid, m in self.members.items()}
        total = sum(draws.values())
        self.max_total = max(self.max_total, total)
        if total > self.ceiling + 1e-9 and len(self.violations) < 20:
            self.violations.append((self.sched.time, total, draws))

    def run(self, seconds: float) -> None:
        self.sched.run_until(self.sched.time + seconds)

    # -- views for assertions -------------------------------------------------------------------
    def limits(self) -> dict[str, int]:
        return {nid: m.charger.offered for nid, m in self.members.items()}

    def modes(self) -> dict[str, str]:
        return {nid: (m.node.mode if m.node else "dead") for nid, m in self.members.items()}

    def node(self, nid: str) -> Node:
        node = self.members[nid].node
        assert node is not None, f"{nid} is down"
        return node


# -- healing and liveness (scenarios and the search) -----------------------------------------
def calm(g: SimGroup, seconds: float = 200.0) -> None:
    """Heal everything, restart the dead, fast reliable network: the group must converge."""
    g.net.heal()
    g.net.faults = Faults()
    for nid in g.ids:
        if not g.alive(nid):
            g.start(nid)
    g.run(seconds)


def converged(g: SimGroup) -> str:
    """"" when every node agreed and every charger offers the equal share; else what differs."""
    expected = {a["id"]: a["target_current"] for a in g.node(g.ids[0]).allocations()}
    modes = g.modes()
    limits = g.limits()
    if set(modes.values()) != {"agreed"} or limits != expected:
        return f"modes {modes}, limits {limits}, expected {expected}"
    return ""


if __name__ == "__main__":
    # the documented entry point; the search itself lives in simsearch.py
    from simulators.loadsharing_simsearch import main

    raise SystemExit(main())
