"""A simulated mixed group: gateway nodes sharing masterlessly, plus OpenEVSE firmware members.

``simnet.py`` runs the masterless protocol; a mixed group (docs/loadsharing_openevse.md, "Mixed
groups") adds chargers that only obey one controller, the lowest id of a gateway node's view.
This module adds them to the same simulated world, so the scenario tests and the randomized
search check the whole group's draw against the breaker:

- :class:`Firmware`: one OpenEVSE member with its own clock (rate within ``rho``), a
  :class:`~transports.loadsharing.simnet.SimCharger` with the gateways' response-time model, and
  the firmware's rules (``simulators.openevse_loadsharing``): a frame's target applied at once
  (below its minimum: sleep); no frame since it became a member, or none for more than
  ``heartbeat_timeout`` of its own clock: its failsafe current, a *raise* if it was asleep; a
  controller's config push makes it a member again (restarting "no frame yet"); frames taken
  from any client, as the firmware does; its status sent to every connected controller;
- each gateway node's controller side, as ``mixed.LedGroup`` does it: while ``node.controller``
  names the node, a ``MemberLink`` per member (joined, i.e. pushed, when its first status
  arrives), ``node.led_targets`` sent on change and every ``frame_interval``, the members
  published with ``node.set_led(led_entry(...))`` every step, a member naming another controller
  pushed again every ``CHECK_EVERY``; handing over drops the links and publishes ``()``.

Frames (controller -> ``e1``) and member status (``e1`` -> controller) travel on the simulated
``Network`` with its fault model (cut by direction, loss, duplication, delay, reordering). The
config push and the ``GET /config`` check are instantaneous, when both directions are up.

The search: ``python -m transports.loadsharing.simled --runs N --seed S``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from simulators.ev_model import EvModel
from simulators.openevse_loadsharing import charger_limit, member_failsafe
from transports.loadsharing import led
from transports.loadsharing.mixed import CHECK_EVERY, LedGroup, led_settings
from transports.loadsharing.mixed import margin as led_margin
from transports.loadsharing.node import Node, NodeConfig
from transports.loadsharing.openevse_plan import GroupSettings, MemberLink, classify, led_entry
from transports.loadsharing.simnet import (
    Faults,
    GroupSpec,
    NodeClock,
    Scheduler,
    SimCharger,
    SimGroup,
    calm,
    converged,
)
from transports.loadsharing.simsearch import switch_sides

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
    """The controller's end of a member's ``/ws``: only ``closed`` matters to ``classify``."""

    closed: bool = False


@dataclass
class MixedSpec(GroupSpec):
    k: int = 2  # OpenEVSE members e1..ek
    member_min: int = 6
    member_max: int = 32


class Firmware:
    """One OpenEVSE firmware member: the member rules on its own clock, driving its charger."""

    def __init__(self, host: str, clock: NodeClock, charger: SimCharger, group: MixedGroup) -> None:
        self.host, self.clock, self.charger, self.group = host, clock, charger, group
        self.min_current, self.max_current = group.spec.member_min, group.spec.member_max
        self.controller_host = ""
        self.became_member: float | None = None
        self.last_frame: float | None = None
        self.failsafe_applied = False
        self.connected: set[str] = set()  # gateway nodes with a /ws open to it
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

    def send_status(self, to: set[str] | None = None) -> None:
        self._shown = self.status()
        for nid in sorted(self.connected if to is None else to):
            self.group.net.transmit(self.host, nid, Text(self.host, dict(self._shown)))

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
        self.charger.command(0 if amps is None else min(amps, self.max_current))


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
        self._checked: dict[tuple[str, str], float] = {}
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
            self.fw[host].connected.discard(nid)
            link.ws.closed = True  # type: ignore[union-attr]

    def _now(self, nid: str) -> float:
        return self.members[nid].clock.now()

    def _up(self, a: str, b: str) -> bool:
        return (a, b) not in self.net.down and (b, a) not in self.net.down

    def _on_text(self, nid: str, text: Text) -> None:
        link = self.leading.get(nid, {}).get(text.host)
        if link is None:  # our socket is closed: a late text from before
            return
        link.status = dict(text.status)
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
            for host in self.hosts:
                self.fw[host].connected.add(nid)
                self.fw[host].send_status({nid})  # the full status on connect
        elif not leads and nid in self.leading:
            self._drop_lead(nid)
            node.set_led(())
        links = self.leading.get(nid)
        if links is None:
            return
        now = self._now(nid)
        node.set_led(tuple(led_entry(link, self.settings, now) for link in links.values()))
        if self.members[nid].node is not node or self.leading.get(nid) is not links:
            return  # set_led re-evaluated the node: it may have handed over meanwhile
        self._frames(nid, node, links, now)
        for host, link in links.items():
            key = (nid, host)
            if link.joined and now - self._checked.get(key, -CHECK_EVERY) >= CHECK_EVERY:
                self._checked[key] = now
                fw = self.fw[host]
                if fw.controller_host != nid and self._up(nid, host):
                    fw.push(nid)  # it names another controller: push again

    def _frames(self, nid: str, node: Node, links: dict[str, MemberLink], now: float) -> None:
        s = self.settings
        for host, amps in node.led_targets.items():
            link = links[host]
            if classify(link, s, now) != "online":
                continue
            reason = LedGroup._reason(node, host)
            due = link.last_frame is None or now - link.last_frame >= s.frame_interval
            if amps != link.sent or reason != link.reason or due:
                link.sent, link.reason, link.last_frame = amps, reason, now
                link.recent.append((now, amps))
                self.net.transmit(nid, host, Frame(nid, amps, reason))

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

    def limits(self) -> dict[str, int]:
        return {**super().limits(), **{h: fw.charger.offered for h, fw in self.fw.items()}}


# -- the randomized search ----------------------------------------------------------------------
WANTS = (10.0, 16.0, 32.0)


def random_walk(seed: int, *, rho: float = 0.01, **weaken: int | float) -> MixedGroup:
    """One random mixed group under a random fault schedule, healed at the end, then calm.

    Budgets are scarce (a few amps above everyone's failsafe current), so a flaw shows as an
    overload. The caller checks ``violations`` and, after the calm, :func:`converged`.
    """
    rng = random.Random(seed)
    n, k = rng.randint(2, 4), rng.randint(1, 3)
    timeout = rng.choice((5.0, 12.0))
    spec = MixedSpec(
        n=n, k=k, timeout=timeout, disable_mode=rng.random() < 0.25, rho=rho,
        max_current=rng.choice((16, 32)), supervision=timeout,
        response_time=rng.choice((1.0, 5.0)), member_max=rng.choice((16, 32)),
    )
    spec.group_max = float((n + k) * rng.choice((6, 8, 10, 15)) + rng.choice((0, 3, 20)))
    g = MixedGroup(spec, seed=seed, rates=[rng.uniform(1 - rho, 1 + rho) for _ in range(n)],
                   member_rates=[rng.uniform(1 - rho, 1 + rho) for _ in range(k)],
                   **weaken)  # type: ignore[arg-type]
    for nid in (*g.ids, *g.hosts):
        if rng.random() < 0.8:
            g.plug(nid, want=rng.choice(WANTS))
    for _ in range(rng.randint(5, 20)):
        random_fault(g, rng)
        # often a short while: a demand change right after a fault is where the old and the new
        # allocation meet (a member cut off just before it is told to lower)
        g.run(rng.uniform(0.05, 1.5) * timeout if rng.random() < 0.5 else
              rng.uniform(0.2, 12) * timeout)
    calm(g, 40 * timeout)
    return g


def random_fault(g: MixedGroup, rng: random.Random) -> None:
    """One change of the world: links (gateways and members alike), loss, crashes, plugs."""
    every = [*g.ids, *g.hosts]
    r = rng.random()
    f = g.net.faults
    if r < 0.08:
        g.net.heal()
    elif r < 0.20:
        rng.shuffle(every)
        cut = rng.randint(1, len(every) - 1)
        g.net.partition(every[:cut], every[cut:])
    elif r < 0.32:
        a, b = rng.choice(g.ids), rng.choice([*g.ids, *g.hosts])
        if a != b:
            g.net.cut(a, b, both=rng.random() < 0.5) if rng.random() < 0.5 else g.net.cut(b, a)
    elif r < 0.40 and len(g.ids) >= 3:
        switch_sides(g, rng, list(g.ids))
    elif r < 0.48:
        f.drop = rng.choice((0.0, 0.1, 0.3, 0.6))
        f.duplicate = rng.choice((0.0, 0.1))
        f.slow = rng.choice((0.0, 0.05, 0.2))
        f.delay_max = rng.choice((0.05, 0.5, 3.0))
    elif r < 0.56:
        nid = rng.choice(g.ids)
        g.kill(nid) if g.alive(nid) else g.start(nid)
    elif r < 0.60:
        g.fw[rng.choice(g.hosts)].reboot()
    elif r < 0.66:  # a member's WiFi drops out: nobody hears it, it hears nobody
        g.net.partition([rng.choice(g.hosts)], list(g.ids))
    else:
        g.plug(rng.choice(every), plugged=rng.random() < 0.6, want=rng.choice(WANTS))


def failures(runs: int, seed: int, **weaken: int | float) -> list[tuple[int, Any, str]]:
    """Seeds whose group overloaded the breaker or did not converge after the calm."""
    out = []
    for s in range(seed, seed + runs):
        g = random_walk(s, **weaken)
        problem = converged(g)
        if g.violations or problem:
            out.append((s, g.violations[:2], problem))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m transports.loadsharing.simled --runs N --seed S``: the mixed search."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    bad = failures(args.runs, args.seed)
    for s, violations, problem in bad:
        print(f"seed {s}: violations {violations} {problem}")
    took = time.monotonic() - started
    print(f"{args.runs} runs from seed {args.seed}: {len(bad)} failed, {took:.1f} s")
    return 1 if bad else 0


__all__ = ["Faults", "Firmware", "Frame", "MixedGroup", "MixedSpec", "Text", "calm", "converged",
           "failures", "random_walk"]

if __name__ == "__main__":
    raise SystemExit(main())
