"""The masterless node with ``node_listen``: the Node on the HTTP peer link.

Kept apart from ``network.py`` (the node on the network: REST, peers, pushes): this is the life
around them: the Node built from the synced group values (rebuilt when they change), the mixed
group's OpenEVSE members led while this node is their acting controller (``mixed.py``), and the
loop that ticks, publishes and returns when the transport stops or its role changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from transports.loadsharing import allocation as al
from transports.loadsharing.charger_driver import ChargerDriver
from transports.loadsharing.mixed import LedGroup, configure_node
from transports.loadsharing.network import NetworkNode
from transports.loadsharing.node import MonotonicClock, Node
from transports.loadsharing.node_config import NodeConfig, from_settings
from transports.loadsharing.runtime_role import RoleStore
from transports.loadsharing.settings import LoadSharingSettings


def group_node_config(s: LoadSharingSettings, net: NetworkNode) -> NodeConfig:
    """The Node's configuration from the synced group values and members.

    If the failsafe of all members would exceed the breaker (members were added after the
    values were set), the fallback is lowered to the whole amps that fit: the safe direction.
    """
    v = s.bounded(net.group.values)  # the INI is the ceiling of what sync brought
    members = net.group.members
    disable = v["loadsharing_failsafe_mode"] == "disable"
    ceiling = v["loadsharing_group_max_current"] * v["loadsharing_safety_factor"]
    fallback = 0.0 if disable else v["loadsharing_failsafe_safe_current"]
    chargers = len(members) + len(s.openevse_members)  # OpenEVSE members fall back too
    if chargers * fallback > ceiling:
        fallback = float(int(ceiling // chargers))
    cfg = replace(
        from_settings(s), node_id=net.node_id, members=members,
        limits=al.Limits(v["loadsharing_group_max_current"], v["loadsharing_safety_factor"],
                         v["loadsharing_failsafe_peer_assumed_current"]),
        timeout=v["loadsharing_heartbeat_timeout"], fallback=fallback, disable_mode=disable,
        priority=net.priority, group_id=v["loadsharing_group_id"],
    )
    return configure_node(s.openevse_members, cfg)


class MasterlessOnHttp:
    """The masterless protocol on OpenEVSE's wire, with a new Node (a new epoch) whenever the
    group configuration changes; returns when ``stopping`` or ``switch_role`` is set (an
    OpenEVSE controller's push, kept in ``roles``, made this node its member)."""

    def __init__(self, settings: LoadSharingSettings, charger: ChargerDriver,
                 log: logging.Logger, *, state_dir: Path, instance: int,
                 stopping: asyncio.Event, switch_role: asyncio.Event, roles: RoleStore,
                 next_epoch: Callable[[], int], show: Callable[[], Awaitable[None]]) -> None:
        self.settings, self.charger, self.log = settings, charger, log
        self.stopping, self.switch_role, self.roles = stopping, switch_role, roles
        self.next_epoch = next_epoch  # the state directory's epoch counter
        self.show = show  # the node's readings, as the transport publishes them
        self.rebuild = asyncio.Event()
        self.net = NetworkNode(settings, charger, log, state_dir=state_dir, instance=instance,
                               stopping=stopping, on_group_change=self.rebuild.set,
                               on_join=self.join_openevse)
        self.leading = LedGroup(self.net.node_id, settings.openevse_members, log)
        self.net.led_group = self.leading
        self.initial = 0  # what the charger offered when this role started

    def join_openevse(self, push: dict[str, Any]) -> None:
        """This node accepted an OpenEVSE controller's push: switch to the member role."""
        self.roles.save(push)
        self.switch_role.set()

    async def run(self) -> None:
        net, leading, charger = self.net, self.leading, self.charger
        await net.start()
        try:
            await charger.wait_first_status()
            self.initial = charger.offers()
            self._build()
            async with charger.driving():
                while not self.stopping.is_set() and not self.switch_role.is_set():
                    if self.rebuild.is_set():
                        self.rebuild.clear()
                        self._build()
                    node = charger.node
                    assert node is not None
                    node.tick()
                    if leading.hosts:
                        leading.wake.clear()
                        await leading.step(node)
                    net.publish()
                    await self.show()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await _first(self.rebuild, leading.wake, self.switch_role)
        finally:
            await leading.stop()
            await net.stop()

    def _build(self) -> None:
        net, charger = self.net, self.charger
        cfg = group_node_config(self.settings, net)
        self.leading.configure(cfg, net.group.values["loadsharing_group_id"])
        old = charger.node
        if old is not None and (old.config.members, old.config.timeout,
                                old.config.disable_mode) == (cfg.members, cfg.timeout,
                                                             cfg.disable_mode):
            # same members and timing: new values apply in place, views kept; the new
            # group hash stops agreement until every member has it (lower at once, raise
            # only on agreement), without waiting a whole view hold again
            old.reconfigure(cfg)
            self.log.info("node %s: group version %d applied", net.node_id, net.group.version)
            return
        limit = old.limit if old is not None else self.initial
        charger.node = None
        node = Node(cfg, MonotonicClock(), net, charger.set_limit, epoch=self.next_epoch(),
                    initial_limit=limit,
                    demanding=charger.local is not None and charger.local[0],
                    on_led=self.leading.on_led)
        charger.attach(node)
        self.log.info("node %s: group of %d (version %d), fallback %g A, view hold %.1f s",
                      net.node_id, len(cfg.members), net.group.version, cfg.fallback,
                      cfg.view_hold)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
