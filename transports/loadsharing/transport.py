"""``transport = loadsharing``: a load-sharing node wired to its charger over the bridge.

The protocol is :class:`~transports.loadsharing.node.Node`; this module only moves things:

- the ``charger`` section is a Charger (``transports/charger.py``), driven by one
  :class:`~transports.loadsharing.charger_driver.ChargerDriver`: its status events become the
  node's local status, and this node is the one writer of its current: the node's limit and the
  user's preference (writes from MQTT, REST or any transport, forwarded here by the charger
  section) meet in :class:`~transports.loadsharing.charger_writer.ChargerWriter`, which also puts
  back a charger found above its limit; a lower limit goes out at once; supervision is set up
  with the fallback current and pulsed, so a dead gateway *or* a dead load-sharing process
  leaves the charger at the safe current;
- the role: this builds the one the file or a controller's push chose
  (:class:`~transports.loadsharing.masterless_udp.MasterlessOnUdp` without ``node_listen``;
  with it :class:`~transports.loadsharing.networked.MasterlessOnHttp`,
  :class:`~transports.loadsharing.openevse_roles.OpenEvseMemberRole` or
  :class:`~transports.loadsharing.openevse_roles.OpenEvseControllerRole`), handing it the
  charger driver, the settings and the context's parts it uses, and runs it;
- peers: part 1 carries reports as JSON datagrams over UDP between ``listen`` and ``peers``
  addresses (loopback in the tests and the demo); with ``node_listen`` the reports go over
  HTTP/WebSocket instead, OpenEVSE's wire (``network.py``, docs/loadsharing_network.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, ClassVar

from gateway.backoff import FailureLog
from gateway.instance import offset_address
from gateway.message import (
    COMMAND,
    EVENT,
    READING,
    STATUS,
    Envelope,
    ValueSpec,
    command_result,
    describe_event,
)
from transports import register
from transports.base import Transport, TransportContext
from transports.charger import REQUEST_COMMAND, STATUS_EVENT, ChargerStatus
from transports.loadsharing.charger_driver import ChargerDriver
from transports.loadsharing.masterless_udp import MasterlessOnUdp
from transports.loadsharing.messages import MessageError, Report, decode, encode
from transports.loadsharing.network import NetworkNode
from transports.loadsharing.networked import MasterlessOnHttp
from transports.loadsharing.node import Node
from transports.loadsharing.node_config import READING_EVERY, from_settings
from transports.loadsharing.openevse_roles import OpenEvseControllerRole, OpenEvseMemberRole
from transports.loadsharing.runtime_role import RoleStore
from transports.loadsharing.settings import LoadSharingSettings, node_address, parse_address


class UdpLink(asyncio.DatagramProtocol):
    """The part-1 peer link: one datagram per report, peers addressed by ``host:port`` id."""

    def __init__(self, owner: LoadSharing) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.link_failure.failed(exc)  # e.g. ICMP port unreachable: a peer is down

    def send(self, peer_id: str, message: Report) -> None:
        if self.transport is None:
            return
        try:
            self.transport.sendto(encode(message), parse_address(peer_id))
        except OSError as exc:
            self.owner.link_failure.failed(exc)

    def broadcast(self, message: Report) -> None:
        for peer in self.owner.settings.peers:
            if peer != message.node:
                self.send(peer, message)


class NoLink:
    """A one-node group: nobody to tell."""

    def send(self, peer_id: str, message: Report) -> None:
        pass

    def broadcast(self, message: Report) -> None:
        pass


@register
class LoadSharing(Transport[LoadSharingSettings]):
    kind = "loadsharing"
    Settings = LoadSharingSettings
    accepts: ClassVar[frozenset[str]] = frozenset({READING, EVENT, STATUS, COMMAND})

    def __init__(self, settings: LoadSharingSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.net: NetworkNode | None = None  # with node_listen: the HTTP/WS side (part 2)
        self.link_failure = FailureLog(self.log, "load-sharing peer link")
        self._udp: UdpLink | None = None
        self._last_reading = 0.0
        self._last_shown: tuple[Any, ...] = ()
        self.switch_role = asyncio.Event()  # the role changed at run time (runtime_role.py)
        self.roles = RoleStore(ctx.state_dir, self.log)
        for key in ("bad_reports", "reports_in", "reports_out"):
            ctx.counters.extra[key] = 0
        self.charger = ChargerDriver(settings, self.log, name=ctx.name, state_dir=ctx.state_dir,
                                     counters=ctx.counters, emit=ctx.emit)

    @property
    def node(self) -> Node | None:
        """The masterless node now driving the charger, if any (the role attaches it)."""
        return self.charger.node

    # -- life ---------------------------------------------------------------------------------
    async def connect(self) -> None:
        s = self.settings
        if s.loadsharing_enabled and s.listen:
            host, port = parse_address(offset_address(s.listen, self.ctx.general.instance))
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_datagram_endpoint(
                lambda: UdpLink(self), local_addr=(host, port)
            )
            self._udp = proto

    async def run(self) -> None:
        s = self.settings
        if not s.loadsharing_enabled:
            self.log.info("loadsharing_enabled is false: this node commands nothing")
            await self.ctx.emit(STATUS, {"available": False, "reason": "disabled"})
            await self.ctx.stopping.wait()
            return
        await self.ctx.emit(EVENT, describe_event(_specs()), info=self.device_info())
        if s.node_listen:
            await self._run_on_http()
            return
        link = self._udp if self._udp is not None else NoLink()
        await MasterlessOnUdp(
            from_settings(s, self.ctx.general.instance), self.charger, link, self.log,
            fallback=s.fallback_current, stopping=self.ctx.stopping,
            next_epoch=self.next_epoch, show=self.show).run()

    def device_info(self) -> dict[str, str]:
        """Who the describe is about: the same node id as the readings' (HA's device)."""
        s, instance = self.settings, self.ctx.general.instance
        if s.node_listen:
            me = node_address(s.node_listen, s.node_host, instance)[2]
        else:
            me = from_settings(s, instance).node_id
        return {"transport_name": self.ctx.name, "device_identifier": me,
                "device_name": f"Load sharing {me}", "device_manufacturer": "protocol-gateway",
                "device_model": "load-sharing node"}

    async def _run_on_http(self) -> None:
        """OpenEVSE's wire: the masterless node (``networked.py``), or a role in an OpenEVSE
        group (``openevse_roles.py``): set in the file, or taken at run time from a controller's
        push and left when it resets the role (``runtime_role.py``)."""
        configured = self.settings.loadsharing_role
        while not self.ctx.stopping.is_set():
            self.switch_role.clear()
            self.charger.take_over()
            pushed = None if configured else self.roles.load()
            if configured or pushed is not None:
                await self._openevse_role(configured or "member", pushed).run()
            else:
                role = self._masterless_on_http()
                self.net = role.net
                await role.run()

    def _masterless_on_http(self) -> MasterlessOnHttp:
        ctx = self.ctx
        return MasterlessOnHttp(
            self.settings, self.charger, self.log, state_dir=ctx.state_dir,
            instance=ctx.general.instance, stopping=ctx.stopping, switch_role=self.switch_role,
            roles=self.roles, next_epoch=self.next_epoch, show=self.show)

    def _openevse_role(self, role: str, pushed: dict[str, Any] | None,
                       ) -> OpenEvseMemberRole | OpenEvseControllerRole:
        s, ctx = self.settings, self.ctx
        address = node_address(s.node_listen, s.node_host, ctx.general.instance)
        if role == "member":
            return OpenEvseMemberRole(s, self.charger, self.log, address=address,
                                      stopping=ctx.stopping, publish=self.emit_reading,
                                      roles=self.roles, pushed=pushed)
        return OpenEvseControllerRole(s, self.charger, self.log, address=address,
                                      stopping=ctx.stopping, publish=self.emit_reading,
                                      state_dir=ctx.state_dir)

    async def close(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()

    def next_epoch(self) -> int:
        """A counter kept in the state directory: a restarted node is told from its old self."""
        path = self.ctx.state_dir / "epoch"
        try:
            epoch = int(path.read_text().strip()) + 1
        except (OSError, ValueError):
            epoch = int(time.time())  # missing or corrupt: wall seconds still grow
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(epoch))
        os.replace(tmp, path)
        return epoch

    # -- peers ----------------------------------------------------------------------------------
    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        counters = self.ctx.counters
        try:
            report = decode(data)
        except MessageError as exc:
            counters.extra["bad_reports"] = int(counters.extra["bad_reports"]) + 1
            counters.error(str(exc))
            self.log.warning("bad report from %s:%d: %s", addr[0], addr[1], exc)
            return
        if self.node is None:
            return
        self.link_failure.recovered()
        counters.extra["reports_in"] = int(counters.extra["reports_in"]) + 1
        self.node.receive(report)

    # -- the charger section's messages ---------------------------------------------------------
    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]]:
        """The node as one device (the runner answers ``describe`` commands from this)."""
        return [(self.device_info(), _specs())]

    async def receive(self, envelope: Envelope) -> None:
        data = envelope.data
        if envelope.kind == COMMAND:
            # every command is answered, to its sender (the bridge's command windows count on
            # it): the charger section's forwarded user writes are the only ones taken here
            if envelope.source_transport == self.settings.charger and \
                    data.get("command") == REQUEST_COMMAND:
                result = self.charger.user_request(data)
            else:
                result = {"ok": False, "result": "unsupported",
                          "detail": f"{self.ctx.name} takes user writes from its charger "
                                    f"section [{self.settings.charger}] only"}
            await self.ctx.emit(EVENT, command_result(data, **result),
                                target=envelope.source_transport)
            return
        if envelope.source_transport != self.settings.charger:
            return
        if envelope.kind == EVENT and data.get("event") == STATUS_EVENT:
            try:
                status = ChargerStatus.from_event(data)
            except ValueError as exc:
                self.ctx.counters.error(f"charger status: {exc}")
                self.log.warning("bad status from charger %s: %s", self.settings.charger, exc)
                return
            self.charger.on_status(status)
        elif envelope.kind == EVENT and data.get("event") == "command_result":
            self.charger.on_result(data)

    # -- what this node shows -------------------------------------------------------------------
    async def emit_reading(self, data: dict[str, Any]) -> None:
        """A role's readings, about this node's device."""
        await self.ctx.emit(READING, data, info=self.device_info())

    async def show(self) -> None:
        n = self.node
        assert n is not None
        counters = self.ctx.counters
        counters.extra["reports_in"] = n.counters.reports_in
        counters.extra["reports_out"] = n.counters.reports_out
        shown = (n.mode, n.limit, len(n.view))
        now = time.monotonic()
        if shown == self._last_shown and now - self._last_reading < READING_EVERY:
            return
        if shown[0] != (self._last_shown[0] if self._last_shown else None):
            self.log.info("load sharing: %s, limit %d A, %d of %d members online",
                          n.mode, n.limit, len(n.view), len(n.config.members))
        self._last_shown, self._last_reading = shown, now
        snap = n.snapshot()
        await self.emit_reading({
            "loadsharing_mode": n.mode,
            "loadsharing_limit": n.limit,
            "loadsharing_failsafe": n.failsafe_active,
            "loadsharing_online_count": snap["online_count"],
            "loadsharing_offline_count": snap["offline_count"],
        })


def _specs() -> list[ValueSpec]:
    return [
        # every mode a reading can carry: the node's, and an OpenEVSE role's
        ValueSpec("loadsharing_mode", kind="select", display_name="Mode",
                  options=("agreed", "hold", "failsafe", "member", "waiting", "controller")),
        ValueSpec("loadsharing_limit", "A", "current", "measurement", display_name="Limit"),
        ValueSpec("loadsharing_failsafe", kind="binary", device_class="problem",
                  display_name="Failsafe"),
        ValueSpec("loadsharing_online_count", state_class="measurement",
                  display_name="Members online", icon="mdi:account-multiple-check"),
        ValueSpec("loadsharing_offline_count", state_class="measurement",
                  display_name="Members offline", icon="mdi:account-multiple-remove"),
    ]
