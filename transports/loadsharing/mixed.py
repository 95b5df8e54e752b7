"""A mixed group's OpenEVSE members, led by this gateway node while it is the acting controller.

The allocation and every limit rule are the masterless node's (``node.py`` with ``led.py``); this
module only does the I/O toward the members while :attr:`Node.controller` names this node:

- taking over: the reciprocal add on each member, its ``/status`` and ``/ws`` followed and the
  group keys pushed with ``loadsharing_controller_host`` = this node (``OpenEvseController``
  without its own allocator);
- every step: the members as seen from here go into the node's status (``Node.set_led``, the
  whole group allocates from them), and each joined member gets ``Node.led_targets[host]`` in a
  frame at once on a change and at least every ``min(5, timeout / 3)`` seconds;
- every ``CHECK_EVERY`` seconds a member's ``GET /config`` must name this node as its controller,
  else the keys are pushed again (another node led it while the views disagreed); only with a
  majority, so that a cut-off node that still believes it leads never fights the majority's
  leader (it sends the failsafe current only, which every allocation counts anyway);
- handing over (another node is the lowest of the view): the sockets close, nothing is reset;
  the members keep their last frame until the new controller's, or their own failsafe.

Why this is safe, and what a member does meanwhile: docs/loadsharing_openevse.md, "Mixed groups".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from transports.loadsharing import led
from transports.loadsharing.node import FAILSAFE, Node, NodeConfig
from transports.loadsharing.openevse_controller import OpenEvseController
from transports.loadsharing.openevse_plan import GroupSettings, classify

if TYPE_CHECKING:
    from transports.loadsharing.network import NetworkNode

#: seconds between checks that each member still names this node as its controller
CHECK_EVERY = 10.0


def margin(timeout: float, rho: float) -> float:
    """Frame delivery and clock rates beyond a member's ``heartbeat_timeout`` (seconds)."""
    return max(2.0, 2 * rho * timeout + 1.0)


def led_settings(cfg: NodeConfig, group_id: str, safe_current: float) -> GroupSettings:
    """The keys pushed to the members and the lease rules, from the node's configuration."""
    lim = cfg.limits
    return GroupSettings(
        group_max=lim.group_max, group_id=group_id, safety_factor=lim.safety_factor,
        heartbeat_timeout=cfg.timeout,
        failsafe_mode="disable" if cfg.disable_mode else "safe_current",
        safe_current=safe_current, peer_assumed_current=lim.peer_assumed_current,
        offline_margin=margin(cfg.timeout, cfg.rho),
        response_time=cfg.response_time - margin(cfg.timeout, cfg.rho))


class LedGroup:
    """Leads ``hosts`` for ``me`` whenever the node says so; a no-op for the other nodes."""

    def __init__(self, me: str, hosts: tuple[str, ...], log: logging.Logger) -> None:
        self.me = me
        self.hosts = hosts
        self.log = log
        self.settings: GroupSettings | None = None
        self.ctl: OpenEvseController | None = None
        self.wake = asyncio.Event()
        self._checked: dict[str, float] = {}
        self._checks: set[asyncio.Task[Any]] = set()
        self._leader: str | None = None

    def configure(self, cfg: NodeConfig, group_id: str) -> None:
        """The group's values (at start and after a change): pushed again when they change."""
        if not self.hosts:
            return  # not a mixed group
        new = led_settings(cfg, group_id, float(cfg.led_floor))
        if new != self.settings:
            self.settings = new
            if self.ctl is not None:
                self.ctl.update_settings(new)

    def on_led(self, targets: dict[str, int]) -> None:
        """From the node (synchronous): targets changed, send frames now."""
        self.wake.set()

    async def step(self, node: Node) -> None:
        leader = node.controller
        if leader != self._leader:
            self.log.info("OpenEVSE members led by %s%s", leader,
                          " (this node)" if leader == self.me else "")
            self._leader = leader
        if leader == self.me and self.ctl is None:
            await self._take_over()
        elif leader != self.me and self.ctl is not None:
            await self._hand_over(node)
        if self.ctl is None or self.settings is None:
            return
        now = time.monotonic()
        for link, amps, reason in led.lead_step(node, self.ctl.links, self.settings, now):
            await self.ctl.send_frame(link, amps, reason, now)
        if node.mode != FAILSAFE:  # a leader without a majority takes over, but never fights
            self._check_controllers(now)

    async def _take_over(self) -> None:
        assert self.settings is not None
        self.ctl = OpenEvseController(self.me, self.settings, log=self.log)
        await self.ctl.start(allocate=False)
        for host in self.hosts:
            await self.ctl.add_member(host, reciprocal=False)
            self.ctl.spawn(self._reciprocal(host))
        self.log.info("leading %d OpenEVSE member(s)", len(self.hosts))

    async def _reciprocal(self, host: str) -> None:
        """OpenEVSE's reciprocal add: the member then knows (and polls) its controller."""
        assert self.ctl is not None
        with contextlib.suppress(Exception):
            async with self.ctl.session.post(f"http://{host}/loadsharing/peers",
                                             json={"host": self.me, "reciprocal": False}) as r:
                if r.status != 200:
                    self.log.info("reciprocal add on %s: %s", host, r.status)

    async def _hand_over(self, node: Node) -> None:
        assert self.ctl is not None
        ctl, self.ctl = self.ctl, None
        for task in self._checks:
            task.cancel()
        await ctl.stop()
        node.led_obeys = None
        node.set_led(())
        self._checked.clear()

    def _check_controllers(self, now: float) -> None:
        assert self.ctl is not None
        for host, link in self.ctl.links.items():
            if not link.joined or now - self._checked.get(host, -CHECK_EVERY) < CHECK_EVERY:
                continue
            self._checked[host] = now
            task = asyncio.create_task(self._check(host))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check(self, host: str) -> None:
        ctl = self.ctl
        if ctl is None:
            return
        named = await ctl.controller_of(host)
        if named is not None and named != self.me and ctl is self.ctl:
            self.log.info("OpenEVSE member %s names %r as its controller: pushing again",
                          host, named)
            ctl.repush(host)

    def snapshot(self, node: Node | None) -> dict[str, Any]:
        """For ``/loadsharing/status``: who leads, and each member as this node knows it."""
        if node is None:
            return {}
        out: dict[str, Any] = {"openevse_controller": node.controller, "openevse_members": []}
        now = time.monotonic()
        for host in self.hosts:
            link = self.ctl.links.get(host) if self.ctl is not None else None
            state = classify(link, self.settings, now) if link and self.settings else None
            out["openevse_members"].append({
                "host": host, "state": state, "target_current": node.led_targets.get(host),
                "sent": None if link is None else link.sent,
                "amp": None if link is None else link.status.get("amp")})
        return out

    async def stop(self) -> None:
        for task in self._checks:
            task.cancel()
        if self.ctl is not None:
            await self.ctl.stop()
            self.ctl = None


def configure_node(net: NetworkNode, cfg: NodeConfig) -> NodeConfig:
    """The node's configuration in a mixed group (unchanged without OpenEVSE members)."""
    hosts = net.t.settings.openevse_members
    if not hosts:
        return cfg
    return led.mixed_config(cfg, hosts, cfg.fallback, margin(cfg.timeout, cfg.rho))
