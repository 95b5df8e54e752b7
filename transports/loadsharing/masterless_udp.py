"""The masterless node on part 1's link: reports as UDP datagrams between fixed peers.

The simplest role: the Node from the file's settings, one epoch for the life of the process,
the link the transport opened on ``listen`` (or none, for a one-node group), and a loop that
ticks and publishes until the transport stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from transports.loadsharing.charger_driver import ChargerDriver
from transports.loadsharing.node import MonotonicClock, Node, PeerLink
from transports.loadsharing.node_config import NodeConfig


class MasterlessOnUdp:
    """Runs a :class:`~transports.loadsharing.node.Node` configured by ``config`` over
    ``link``, driving ``charger``; returns when ``stopping`` is set."""

    def __init__(self, config: NodeConfig, charger: ChargerDriver, link: PeerLink,
                 log: logging.Logger, *, fallback: float, stopping: asyncio.Event,
                 next_epoch: Callable[[], int], show: Callable[[], Awaitable[None]]) -> None:
        self.config, self.charger, self.link, self.log = config, charger, link, log
        self.fallback = fallback  # for the log line: the failsafe current
        self.stopping = stopping
        self.next_epoch = next_epoch  # the state directory's epoch counter
        self.show = show  # the node's readings, as the transport publishes them

    async def run(self) -> None:
        charger = self.charger
        await charger.wait_first_status()
        initial = charger.offers()  # the node lowers it to the fallback at once
        charger.take_over()
        node = Node(self.config, MonotonicClock(), self.link, charger.set_limit,
                    epoch=self.next_epoch(), initial_limit=initial,
                    demanding=charger.local is not None and charger.local[0])
        self.log.info("node %s in a group of %d; fallback %g A; view hold %.0f s",
                      node.config.node_id, len(node.config.members), self.fallback,
                      node.config.view_hold)
        charger.attach(node)
        async with charger.driving():
            while not self.stopping.is_set():
                node.tick()
                await self.show()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 0.5)
