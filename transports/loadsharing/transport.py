"""``transport = loadsharing``: a load-sharing node wired to its charger over the bridge.

The protocol is :class:`~transports.loadsharing.node.Node`; this module only moves things:

- the ``charger`` section is a Charger (``transports/charger.py``): its status events become
  the node's local status, and this node is the one writer of its current: the node's limit and
  the user's preference (writes from MQTT, REST or any transport, forwarded here by the charger
  section) meet in :class:`~transports.loadsharing.charger_writer.ChargerWriter`, which also puts
  back a charger found above its limit; a lower limit goes out at once;
- supervision: configured with the fallback current and pulsed from here, so a dead gateway
  *or* a dead load-sharing process leaves the charger at the safe current;
- peers: part 1 carries reports as JSON datagrams over UDP between ``listen`` and ``peers``
  addresses (loopback in the tests and the demo); with ``node_listen`` the reports go over
  HTTP/WebSocket instead, OpenEVSE's wire (``network.py``, docs/loadsharing_network.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator
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
from transports.charger import (
    REQUEST_COMMAND,
    STATUS_EVENT,
    AcknowledgeMissed,
    ChargerStatus,
    Command,
    Pulse,
    Supervise,
    UserRequest,
    command,
    missed_pulse,
)
from transports.loadsharing.charger_writer import ChargerWriter, PreferenceStore
from transports.loadsharing.demand import wire_state
from transports.loadsharing.messages import MessageError, Report, decode, encode
from transports.loadsharing.network import NetworkNode
from transports.loadsharing.networked import run_networked
from transports.loadsharing.node import FAILSAFE, DemandTracker, MonotonicClock, Node
from transports.loadsharing.node_config import FIRST_STATUS_WAIT, READING_EVERY, from_settings
from transports.loadsharing.openevse_roles import run_openevse_role
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
        self.node: Node | None = None
        self.net: NetworkNode | None = None  # with node_listen: the HTTP/WS side (part 2)
        self.demand = DemandTracker()
        self.link_failure = FailureLog(self.log, "load-sharing peer link")
        self.charger_failure = FailureLog(self.log, f"charger {settings.charger!r} commands")
        self._udp: UdpLink | None = None
        self._kick = asyncio.Event()  # the command loop has work
        self._new_limit: int | None = None  # the node's latest limit, not yet handled
        self._outbox: list[Command] = []
        self.first_status = asyncio.Event()  # the charger has reported
        self.charger_status: ChargerStatus | None = None  # the charger's latest status
        self.preferences = PreferenceStore(ctx.state_dir, self.log)
        self.writer = ChargerWriter(
            max_current=settings.loadsharing_max_current,
            min_current=settings.loadsharing_min_current,
            grace=min(1.0, settings.loadsharing_response_time / 2),
            preference=self.preferences.load(), log=self.log)
        self._ids = itertools.count(1)
        self._last_reading = 0.0
        self._last_shown: tuple[Any, ...] = ()
        self.local: tuple[bool, dict[str, Any]] | None = None  # the latest charger status
        self.switch_role = asyncio.Event()  # the role changed at run time (runtime_role.py)
        self.roles = RoleStore(ctx.state_dir, self.log)
        for key in ("bad_reports", "reports_in", "reports_out", "charger_commands"):
            ctx.counters.extra[key] = 0

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
        await self.wait_first_status()
        initial = self.charger_offers()  # the node lowers it to the fallback at once
        self.take_over()
        link = self._udp if self._udp is not None else NoLink()
        self.node = Node(
            from_settings(s, self.ctx.general.instance), MonotonicClock(), link, self.set_limit,
            epoch=self.next_epoch(), initial_limit=initial,
            demanding=self.local is not None and self.local[0],
        )
        self.log.info(
            "node %s in a group of %d; fallback %g A; view hold %.0f s",
            self.node.config.node_id, len(self.node.config.members), s.fallback_current,
            self.node.config.view_hold,
        )
        self.show_local()
        async with self.driving():
            while not self.ctx.stopping.is_set():
                self.node.tick()
                await self.show()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.stopping.wait(), 0.5)

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
        """OpenEVSE's wire: the masterless node (``network.py``), or a role in an OpenEVSE group
        (``openevse_roles.py``): set in the file, or taken at run time from a controller's push
        and left when it resets the role (``runtime_role.py``)."""
        configured = self.settings.loadsharing_role
        while not self.ctx.stopping.is_set():
            self.switch_role.clear()
            self.take_over()
            pushed = None if configured else self.roles.load()
            if configured or pushed is not None:
                await run_openevse_role(self, configured or "member", pushed)
            else:
                await run_networked(self)

    def join_openevse(self, push: dict[str, Any]) -> None:
        """A masterless node accepted an OpenEVSE controller's push: switch to the member role."""
        self.roles.save(push)
        self.switch_role.set()

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

    # -- the charger ----------------------------------------------------------------------------
    def charger_offers(self) -> int:
        """What the charger offers now, as it last reported (0: paused or unknown)."""
        st = self.charger_status
        if st is None or st.paused or st.offered_current is None:
            return 0
        return int(st.offered_current)

    def charger_view(self) -> dict[str, Any]:
        """What ``/loadsharing/status`` shows of the charger: what it offers, what this node
        wants it to offer, the user's preference, how often it had to be put back."""
        st, w = self.charger_status, self.writer
        return {"offered": None if st is None else st.offered_current,
                "state": None if st is None else st.state, "target": w.target(),
                "user_max_current": w.preference.max_current,
                "user_paused": w.preference.paused, "corrections": w.corrections}

    def take_over(self) -> None:
        """A node or role starts driving the charger: its first limit goes out whatever was
        sent before (a role change or a new node never leaves an old value standing)."""
        self.writer.restart()
        self._new_limit = None
        self._outbox.clear()
        self.node = None  # a new Node (a new epoch): none of the old one's limit carries over

    def describe(self) -> list[tuple[dict[str, str], list[ValueSpec]]]:
        """The node as one device (the runner answers ``describe`` commands from this)."""
        return [(self.device_info(), _specs())]

    async def receive(self, envelope: Envelope) -> None:
        data = envelope.data
        if envelope.kind == COMMAND:
            # every command is answered, to its sender (the bridge's command windows count on
            # it): the charger section's forwarded user writes are the only ones taken here
            if envelope.source_transport == self.settings.charger and \
                    data.get("command") == REQUEST_COMMAND:
                result = await self._user_request(data)
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
            self._charger_reading(status)
        elif envelope.kind == EVENT and data.get("event") == "command_result":
            if data.get("ok"):
                self.charger_failure.recovered()
            else:
                self.charger_failure.failed(f"{data.get('command')}: {data.get('result')} "
                                            f"{data.get('detail', '')}")
                if missed_pulse(data):
                    self._queue([AcknowledgeMissed(), *self.writer.resend(time.monotonic())])

    async def _user_request(self, data: dict[str, Any]) -> dict[str, Any]:
        """A write to the charger by someone else (MQTT, REST, a transport), forwarded by the
        charger section: it becomes this member's preference. Returns the answer (what was
        applied and why), which goes back through the charger section to the requester."""
        try:
            req = UserRequest.from_command(data)
        except ValueError as exc:
            return {"ok": False, "result": "rejected", "detail": str(exc)}
        cmds, result = self.writer.request(req, time.monotonic())
        self.preferences.save(self.writer.preference)
        self.log.info("user request %s: %s", data.get("request_id", ""), result["detail"])
        self._queue(cmds)
        self.show_local()
        return dict(result)

    def _charger_reading(self, status: ChargerStatus) -> None:
        self.charger_status = status
        self.demand.update(status)
        self.first_status.set()
        self.show_local()
        self._queue(self.writer.on_status(status, time.monotonic()))

    def local_demand(self) -> bool:
        """The EV wants charge and the user hasn't paused this charger."""
        return self.demand.demanding and self.writer.wants_charge

    def show_local(self) -> None:
        """The charger's status to the node (demand, what peers display, the user's max)."""
        st = self.charger_status
        if st is None:
            return
        shown = {
            "amp": st.measured_current or 0.0,
            "voltage": st.voltage or 0.0,
            "pilot": st.offered_current or 0.0,
            "state": wire_state(st),
            "vehicle": 1 if st.vehicle_connected else 0,
        }
        self.local = (self.local_demand(), shown)
        if self.node is not None:
            self.node.set_local(self.local[0], max_current=self.writer.allocation_max(),
                                **shown)

    def set_limit(self, amps: int) -> None:
        """From the node or role (synchronous): the command loop sends it, newest first."""
        self.demand.commanded(amps)
        self._new_limit = amps
        self._kick.set()

    def _queue(self, cmds: list[Command]) -> None:
        if cmds:
            self._outbox.extend(cmds)
            self._kick.set()

    async def _command_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._new_limit is not None:
                amps, self._new_limit = self._new_limit, None
                stop = amps == 0 and self.settings.loadsharing_failsafe_mode == "disable" and (
                    self.node is not None and self.node.mode == FAILSAFE)
                self._outbox.extend(self.writer.set_limit(amps, time.monotonic(), stop=stop))
            while self._outbox:
                await self._command(command(self._outbox.pop(0)))

    async def _command(self, data: dict[str, Any]) -> None:
        data = {**data, "request_id": f"{self.ctx.name}-{next(self._ids)}"}
        counters = self.ctx.counters
        counters.extra["charger_commands"] = int(counters.extra["charger_commands"]) + 1
        self.log.debug("to %s: %s", self.settings.charger, data)
        await self.ctx.emit(COMMAND, data, target=self.settings.charger)

    # -- what a role uses to drive the charger ---------------------------------------------------
    async def wait_first_status(self) -> None:
        """The charger's first status, or ``FIRST_STATUS_WAIT`` s (then the node starts paused)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_STATUS_WAIT):
                await self.first_status.wait()

    @contextlib.asynccontextmanager
    async def driving(self) -> AsyncIterator[None]:
        """While inside, this section drives its charger: supervision set up, limits sent in
        order (the command loop), supervision pulsed."""
        await self._start_supervision()
        workers = [asyncio.create_task(self._command_loop())]
        if self.settings.charger_heartbeat > 0:
            workers.append(asyncio.create_task(self._pulse_loop()))
        try:
            yield
        finally:
            for w in workers:
                w.cancel()

    async def _start_supervision(self) -> None:
        s = self.settings
        if s.charger_heartbeat > 0:
            await self._command(command(Supervise(s.charger_heartbeat,
                                                  int(s.fallback_current))))

    async def _pulse_loop(self) -> None:
        every = max(1.0, self.settings.charger_heartbeat / 3)
        while True:
            await asyncio.sleep(every)
            await self._command(command(Pulse()))

    # -- what this node shows -------------------------------------------------------------------
    async def show(self) -> None:
        assert self.node is not None
        n = self.node
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
        await self.ctx.emit(READING, {
            "loadsharing_mode": n.mode,
            "loadsharing_limit": n.limit,
            "loadsharing_failsafe": n.failsafe_active,
            "loadsharing_online_count": snap["online_count"],
            "loadsharing_offline_count": snap["offline_count"],
        }, info=self.device_info())


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
