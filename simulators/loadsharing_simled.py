"""A simulated mixed group: gateway nodes sharing masterlessly, plus OpenEVSE firmware members.

``simnet.py`` runs the masterless protocol; a mixed group (docs/loadsharing_openevse.md, "Mixed
groups") adds chargers that only obey one controller, the lowest id of a gateway node's view.
This module adds them to the same simulated world, so the scenario tests and the randomized
search check the whole group's draw against the breaker:

- :class:`Firmware`: one OpenEVSE member with its own clock (rate within ``rho``), a
  :class:`~simulators.loadsharing_simnet.SimCharger` with the gateways' response-time model, and
  the firmware's rules (``simulators.openevse_loadsharing``): a frame's target applied at once
  (below its minimum: sleep); no frame since it became a member, or none for more than
  ``heartbeat_timeout`` of its own clock: its failsafe current, a *raise* if it was asleep; a
  controller's config push makes it a member again (restarting "no frame yet"); frames taken
  from any client, as the firmware does; its status sent to every connected controller;
- each gateway node's controller side, as ``mixed.LedGroup`` does it and with the same code
  (``led.lead_step``): while ``node.controller`` names the node, a ``MemberLink`` per member
  (joined, i.e. pushed, when its first status arrives), the members' confirmations and their
  publication to the group, ``node.led_targets`` sent on change and every ``frame_interval``;
  a member naming another controller pushed again every ``CHECK_EVERY``; handing over drops
  the links and publishes ``()``.

Frames (controller -> ``e1``) and member status (``e1`` -> controller) travel on the simulated
``Network`` with its fault model (cut by direction, loss, duplication, delay), in order on each
``/ws`` (a TCP stream: a late frame holds up the ones behind it, it is never overtaken; frames
of different controllers may interleave). The config push and the ``GET /config`` check are
instantaneous, when both directions are up.

The randomized search over fault schedules is ``simledsearch.py``:
``python -m simulators.loadsharing_simled --runs N --seed S``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from simulators.ev_model import EvModel
from simulators.loadsharing_simnet import (
    Faults,
    GroupSpec,
    NodeClock,
    Scheduler,
    SimCharger,
    SimGroup,
    Stream,
    calm,
    converged,
)
from simulators.openevse_loadsharing import charger_limit, member_failsafe
from transports.loadsharing import led
from transports.loadsharing.mixed import CHECK_EVERY, led_settings
from transports.loadsharing.mixed import margin as led_margin
from transports.loadsharing.node import Node, NodeConfig
from transports.loadsharing.openevse_plan import GroupSettings, MemberLink

KEEPALIVE = 2.0  # a member's idle /ws text, seconds of its clock (simulators.openevse_node)


@dataclass(frozen=True)
class Frame:
    """``{"loadsharing": {"target_current": A, "reason": ...}}`` into a member's ``/ws``."""

    src: str
    target: int
    reason: str


@dataclass(frozen=True)
class Text:
    """A member's status JSON on the ``/ws`` of a controller connected to it."""

    host: str
    status: dict[str, Any]


@dataclass
class SimSocket:
    """A member's ``/ws`` held by one controller: ``closed`` (all ``classify`` asks) and its
    two directions, each in order (TCP): a late frame holds up the frames behind it."""

    closed: bool = False
    down: Stream = field(default_factory=Stream)  # frames, controller -> member
    up: Stream = field(default_factory=Stream)  # status, member -> controller


@dataclass
class MixedSpec(GroupSpec):
    """The masterless group's spec plus the members (same safe current, timeout, response
    time and ``rho``: the controller pushes the group keys, so they share them)."""

    k: int = 2  # OpenEVSE members e1..ek
    member_min: int = 6
    member_max: int = 32


class Firmware:
    """One OpenEVSE firmware member: the member rules on its own clock, driving its charger.

    It trusts no gateway to be alive: its own timeout is what makes a lost leader safe, which
    is why every allocation counts it at its failsafe current at least (``led_floor``).
    """

    def __init__(self, host: str, clock: NodeClock, charger: SimCharger, group: MixedGroup) -> None:
        self.host, self.clock, self.charger, self.group = host, clock, charger, group
        self.min_current, self.max_current = group.spec.member_min, group.spec.member_max
        self.controller_host = ""
        self.became_member: float | None = None
        self.last_frame: float | None = None
        self.failsafe_applied = False
        self.connected: dict[str, SimSocket] = {}  # gateway nodes with a /ws open to it
        self.frames: list[tuple[float, str, int]] = []  # (sim time, sender, target)
        self._shown: dict[str, Any] = {}

    @property
    def sched(self) -> Scheduler:
        return self.group.sched

    def status(self) -> dict[str, Any]:
        c = self.charger
        return {"state": c.state_code(), "vehicle": int(c.ev.plugged), "pilot": c.offered,
                "loadsharing_min_current": self.min_current,
                "loadsharing_max_current": self.max_current, "loadsharing_priority": 0}

    def send_status(self, only: str | None = None) -> None:
        self._shown = self.status()
        for nid, sock in sorted(self.connected.items()):
            if only in (None, nid):
                self.group.net.transmit(self.host, nid, Text(self.host, dict(self._shown)),
                                        stream=sock.up)

    def keepalive(self) -> None:
        self.send_status()
        self.sched.after(KEEPALIVE / self.clock.rate, self.keepalive)

    def changed(self) -> None:
        """``/ws`` sends changed keys at once (here: the whole status)."""
        if self.status() != self._shown:
            self.send_status()

    def receive(self, message: Any) -> None:
        if isinstance(message, Frame):
            self.on_frame(message)

    def on_frame(self, frame: Frame) -> None:
        if not self.controller_host:  # not a member (yet): frames mean nothing
            return
        self.frames.append((self.sched.time, frame.src, frame.target))
        del self.frames[:-50]
        self.last_frame = self.clock.now()
        self.failsafe_applied = False
        self.apply(frame.target, frame.reason == "failsafe_disabled")
        # the firmware checks its failsafe on every loop: exactly when the timeout runs out
        self.sched.after(self.group.spec.timeout / self.clock.rate + 1e-6, self.check)

    def push(self, controller: str) -> None:
        """A controller's ``POST /config`` (role member): "no frame yet" starts again."""
        self.controller_host = controller
        self.became_member = self.clock.now()
        self.failsafe_applied = False
        self.check()

    def reboot(self) -> None:
        """Power cycle: still a member (the keys persist), no frame since it came up."""
        self.became_member = self.clock.now()
        self.failsafe_applied = False
        self.check()

    def check(self) -> None:
        frame = self.last_frame
        if frame is not None and self.became_member is not None and frame < self.became_member:
            frame = None
        failsafe = self.controller_host != "" and member_failsafe(
            self.controller_host, frame, self.clock.now(), self.group.spec.timeout)
        if not failsafe or self.failsafe_applied:
            return
        self.failsafe_applied = True
        s = self.group.spec
        self.apply(0.0 if s.disable_mode else s.safe_current, s.disable_mode)

    def apply(self, target: float, force_disabled: bool) -> None:
        amps = charger_limit(target, force_disabled, self.min_current)
        self.charger.offer(0 if amps is None else min(amps, self.max_current))


class MixedGroup(SimGroup):
    """N gateway nodes and K OpenEVSE members on one simulated network and breaker."""

    spec: MixedSpec

    def __init__(self, spec: MixedSpec, seed: int = 0, rates: list[float] | None = None,
                 member_rates: list[float] | None = None, *, led_floor: int | None = None,
                 extra_hold: float | None = None) -> None:
        if (spec.n + spec.k) * (0.0 if spec.disable_mode else spec.safe_current) \
                > spec.group_max * spec.safety_factor:
            raise ValueError("the group's failsafe total (N+K) * safe_current exceeds the breaker")
        self.hosts = tuple(f"e{i}" for i in range(1, spec.k + 1))
        self.fw: dict[str, Firmware] = {}
        self.leading: dict[str, dict[str, MemberLink]] = {}
        self._checked: dict[tuple[str, str], float] = {}  # (node, member): last GET /config
        self._weaken = {"led_floor": led_floor, "extra_hold": extra_hold}  # checks of the test
        super().__init__(spec, seed=seed, rates=rates)
        for i, host in enumerate(self.hosts):
            rate = member_rates[i] if member_rates else 1.0
            clock = NodeClock(self.sched, rate=rate, offset=self.rng.uniform(0, 1e5))
            ev = EvModel(max_rate_a=float(spec.member_max), soc=0.2, battery_kwh=80.0)
            charger = SimCharger(self.sched, ev, spec.safe_current, write_delay=0.3,
                                 ev_lag=spec.response_time - 0.3)
            charger.on_change = self.check
            fw = self.fw[host] = Firmware(host, clock, charger, self)
            self.net.handlers[host] = fw.receive
            fw.controller_host = self.ids[0]  # a member that has just booted: failsafe first
            fw.reboot()
            self.sched.after(self.rng.uniform(0, KEEPALIVE), fw.keepalive)
        cfg = self.config(self.ids[0])
        self.settings: GroupSettings = led_settings(cfg, "", float(cfg.led_floor))

    @property
    def margin(self) -> float:
        return led_margin(self.spec.timeout, self.spec.rho)

    def config(self, nid: str) -> NodeConfig:
        s = self.spec
        cfg = led.mixed_config(super().config(nid), self.hosts, s.safe_current, self.margin)
        weak = {k: v for k, v in self._weaken.items() if v is not None}
        return replace(cfg, **weak)  # type: ignore[arg-type]

    # -- gateway nodes: their controller side -----------------------------------------------
    def start(self, nid: str) -> None:
        self._drop_lead(nid)  # a new process: no sockets, a new controller (it will push)
        super().start(nid)
        node = self.node(nid)
        node.on_led = lambda _targets, nid=nid: self.sched.after(0, lambda: self.step(nid))
        self.net.handlers[nid] = lambda msg, nid=nid, node=node: self._deliver(nid, node, msg)
        self.sched.after(0, lambda: self.step(nid))

    def kill(self, nid: str) -> None:
        super().kill(nid)
        self._drop_lead(nid)

    def _deliver(self, nid: str, node: Node, message: Any) -> None:
        if isinstance(message, Text):
            self._on_text(nid, message)
        else:
            node.receive(message)

    def _drop_lead(self, nid: str) -> None:
        for host, link in self.leading.pop(nid, {}).items():
            self.fw[host].connected.pop(nid, None)
            self._checked.pop((nid, host), None)
            link.ws.closed = True  # type: ignore[union-attr]

    def _now(self, nid: str) -> float:
        return self.members[nid].clock.now()

    def _up(self, a: str, b: str) -> bool:
        return (a, b) not in self.net.down and (b, a) not in self.net.down

    def _on_text(self, nid: str, text: Text) -> None:
        link = self.leading.get(nid, {}).get(text.host)
        if link is None:  # our socket is closed: a late text from before
            return
        link.update(dict(text.status))
        link.last_text = self._now(nid)
        if not link.joined and self._up(nid, text.host):
            self.fw[text.host].push(nid)  # first contact: the config push (instantaneous)
            link.joined = True
            self.sched.after(0, lambda: self.step(nid))

    def step(self, nid: str) -> None:
        """``LedGroup.step``: take over or hand over, publish the members, send frames."""
        node = self.members[nid].node
        if node is None:
            return
        leads = node.controller == nid
        if leads and nid not in self.leading:
            self.leading[nid] = {h: MemberLink(h, ws=SimSocket()) for h in self.hosts}  # type: ignore[arg-type]
            for host, link in self.leading[nid].items():
                self.fw[host].connected[nid] = link.ws  # type: ignore[assignment]
                self.fw[host].send_status(nid)  # the full status on connect
        elif not leads and nid in self.leading:
            self._drop_lead(nid)
            node.led_obeys = None
            node.set_led(())
        links = self.leading.get(nid)
        if links is None:
            return
        now = self._now(nid)
        frames = led.lead_step(node, links, self.settings, now)
        if self.members[nid].node is not node or self.leading.get(nid) is not links:
            return  # set_led re-evaluated the node: it may have handed over meanwhile
        for link, amps, reason in frames:
            link.record_frame(amps, reason, now)
            # a frame arrives within the margin or never: the controller aborts a stalled
            # socket (its buffered frames are discarded), the margin's stated assumption
            self.net.transmit(nid, link.host, Frame(nid, amps, reason),
                              stream=link.ws.down, max_delay=self.margin)  # type: ignore[union-attr]
        for host, link in links.items():
            key = (nid, host)
            if link.joined and now - self._checked.get(key, -CHECK_EVERY) >= CHECK_EVERY:
                self._checked[key] = now
                fw = self.fw[host]
                if fw.controller_host != nid and self._up(nid, host):
                    fw.push(nid)  # it names another controller: push again

    # -- the world ------------------------------------------------------------------------------
    def _tick(self) -> None:
        super()._tick()
        for nid in self.ids:
            self.step(nid)
        for fw in self.fw.values():
            fw.check()

    def _sample(self) -> None:
        for fw in self.fw.values():
            fw.charger.ev.step(self.spec.sample, float(fw.charger.effective()))
            fw.changed()
        super()._sample()

    def plug(self, nid: str, plugged: bool = True, want: float | None = None) -> None:
        fw = self.fw.get(nid)
        if fw is None:
            super().plug(nid, plugged, want)
            return
        ev = fw.charger.ev
        if plugged:
            ev.plug()
            ev.soc = 0.2
            if want is not None:
                ev.max_rate_a = want
        else:
            ev.unplug()
        fw.changed()
        self.check()

    def check(self) -> None:
        """The claim over every EV, gateway and member, response time allowed."""
        draws = {nid: m.charger.potential_draw() for nid, m in self.members.items()}
        draws.update({h: fw.charger.potential_draw() for h, fw in self.fw.items()})
        total = sum(draws.values())
        self.max_total = max(self.max_total, total)
        if total > self.ceiling + 1e-9 and len(self.violations) < 20:
            self.violations.append((self.sched.time, total, draws))

    def charger(self, cid: str) -> SimCharger:
        """A gateway node's or a member's charger."""
        return self.fw[cid].charger if cid in self.fw else self.members[cid].charger

    def limits(self) -> dict[str, int]:
        return {**super().limits(), **{h: fw.charger.offered for h, fw in self.fw.items()}}


__all__ = ["Faults", "Firmware", "Frame", "MixedGroup", "MixedSpec", "Text", "calm", "converged"]

if __name__ == "__main__":
    # the documented entry point; the search itself lives in simledsearch.py
    from simulators.loadsharing_simledsearch import main

    raise SystemExit(main())
