"""``LoadSharing.run`` for a masterless node with ``node_listen``: the Node on the HTTP peer link.

Kept apart from ``network.py`` (the node on the network: REST, peers, pushes): this is the life
around them: the Node built from the synced group values (rebuilt when they change), the mixed
group's OpenEVSE members led while this node is their acting controller (``mixed.py``), and the
loop that ticks, publishes and returns when the transport stops or its role changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

from transports.loadsharing import allocation as al
from transports.loadsharing.mixed import LedGroup, configure_node
from transports.loadsharing.network import NetworkNode
from transports.loadsharing.node import MonotonicClock, Node
from transports.loadsharing.node_config import NodeConfig, from_settings

if TYPE_CHECKING:
    from transports.loadsharing.transport import LoadSharing


def group_node_config(net: NetworkNode) -> NodeConfig:
    """The Node's configuration from the synced group values and members.

    If the failsafe of all members would exceed the breaker (members were added after the
    values were set), the fallback is lowered to the whole amps that fit: the safe direction.
    """
    s = net.t.settings
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
    return configure_node(net, cfg)


async def run_networked(t: LoadSharing) -> None:
    """``LoadSharing.run`` for a node with ``node_listen``: the same life, the HTTP peer link,
    and a new Node (a new epoch) whenever the group configuration changes."""
    rebuild = asyncio.Event()
    net = NetworkNode(t, rebuild.set)
    t.net = net
    leading = LedGroup(net.node_id, t.settings.openevse_members, t.log)
    net.led_group = leading
    await net.start()
    try:
        await t.wait_first_status()
        initial = t.charger_offers()

        def build() -> None:
            cfg = group_node_config(net)
            leading.configure(cfg, net.group.values["loadsharing_group_id"])
            old = t.node
            if old is not None and (old.config.members, old.config.timeout,
                                    old.config.disable_mode) == (cfg.members, cfg.timeout,
                                                                 cfg.disable_mode):
                # same members and timing: new values apply in place, views kept; the new
                # group hash stops agreement until every member has it (lower at once, raise
                # only on agreement), without waiting a whole view hold again
                old.reconfigure(cfg)
                t.log.info("node %s: group version %d applied", net.node_id, net.group.version)
                return
            limit = t.node.limit if t.node is not None else initial
            t.node = None
            t.node = Node(cfg, MonotonicClock(), net, t.set_limit, epoch=t.next_epoch(),
                          initial_limit=limit, demanding=t.local is not None and t.local[0],
                          on_led=leading.on_led)
            t.show_local()
            t.log.info("node %s: group of %d (version %d), fallback %g A, view hold %.1f s",
                       net.node_id, len(cfg.members), net.group.version, cfg.fallback,
                       cfg.view_hold)

        build()
        async with t.driving():
            while not t.ctx.stopping.is_set() and not t.switch_role.is_set():
                if rebuild.is_set():
                    rebuild.clear()
                    build()
                assert t.node is not None
                t.node.tick()
                if leading.hosts:
                    leading.wake.clear()
                    await leading.step(t.node)
                net.publish()
                await t.show()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await _first(rebuild, leading.wake, t.switch_role)
    finally:
        await leading.stop()
        await net.stop()


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
