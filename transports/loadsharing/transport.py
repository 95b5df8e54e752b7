"""``transport = loadsharing``: a load-sharing node wired to its charger over the bridge.

The protocol is :class:`~transports.loadsharing.node.Node`; this module only moves things:

- readings from the ``charger`` section (a ``rapi_serial`` transport: ``state_code``,
  ``pilot_current``, ``charging_current``, ``voltage``, ``vehicle_connected``) become the node's
  local status;
- the node's limit becomes commands to that section: ``set_current`` (volatile), ``sleep`` for
  0 (``disable`` when the group is in disable-mode failsafe) and ``enable`` to resume; a lower
  limit goes out at once, a command only when the limit changes;
- ``$SY`` supervision: ``heartbeat`` configured with the fallback current and pulsed from here,
  so a dead gateway *or* a dead load-sharing process leaves the charger at the safe current;
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
from typing import Any, ClassVar

from gateway.backoff import FailureLog
from gateway.instance import offset_address
from gateway.message import COMMAND, EVENT, READING, STATUS, Envelope, ValueSpec, describe_event
from transports import register
from transports.base import Transport, TransportContext
from transports.loadsharing import allocation as al
from transports.loadsharing.messages import MessageError, Report, decode, encode
from transports.loadsharing.network import NetworkNode
from transports.loadsharing.networked import run_networked
from transports.loadsharing.node import FAILSAFE, DemandTracker, Node, NodeConfig
from transports.loadsharing.runtime_role import RoleStore
from transports.loadsharing.settings import LoadSharingSettings, parse_address

#: seconds to wait for the charger's first reading before starting paused
FIRST_STATUS_WAIT = 5.0
READING_EVERY = 30.0


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


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


def node_config(s: LoadSharingSettings, instance: int = 0) -> NodeConfig:
    """The node's configuration; with a link, a member's id is its address after the offset."""
    me = offset_address(s.listen, instance) if s.listen else s.member_id
    members = tuple(sorted({me, *s.peers}))
    return NodeConfig(
        node_id=me,
        members=members,
        limits=al.Limits(
            s.loadsharing_group_max_current, s.loadsharing_safety_factor,
            s.loadsharing_failsafe_peer_assumed_current,
        ),
        timeout=s.loadsharing_heartbeat_timeout,
        fallback=s.fallback_current,
        disable_mode=s.loadsharing_failsafe_mode == "disable",
        min_current=s.loadsharing_min_current,
        max_current=s.loadsharing_max_current,
        priority=s.loadsharing_priority,
        response_time=s.loadsharing_response_time,
        rho=s.loadsharing_clock_tolerance,
        heartbeat_interval=s.loadsharing_heartbeat_interval,
        group_id=s.loadsharing_group_id,
    )


@register
class LoadSharing(Transport[LoadSharingSettings]):
    kind = "loadsharing"
    Settings = LoadSharingSettings
    accepts: ClassVar[frozenset[str]] = frozenset({READING, EVENT, STATUS})

    def __init__(self, settings: LoadSharingSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.node: Node | None = None
        self.net: NetworkNode | None = None  # with node_listen: the HTTP/WS side (part 2)
        self.demand = DemandTracker()
        self.link_failure = FailureLog(self.log, "load-sharing peer link")
        self.charger_failure = FailureLog(self.log, f"charger {settings.charger!r} commands")
        self._udp: UdpLink | None = None
        self._commands: asyncio.Queue[int] = asyncio.Queue()
        self._first_status = asyncio.Event()
        self._charger_limit: int | None = None  # what the charger offers, as it reports
        self._charger_paused = False
        self._sent_limit: int | None = None
        self._paused = False
        self._ids = itertools.count(1)
        self._last_reading = 0.0
        self._last_shown: tuple[Any, ...] = ()
        self._local: tuple[bool, dict[str, Any]] | None = None  # the latest charger status
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_status.wait(), FIRST_STATUS_WAIT)
        initial = 0
        if self._charger_limit is not None and not self._charger_paused:
            initial = self._charger_limit  # the node lowers it to the fallback at once
        link = self._udp if self._udp is not None else NoLink()
        self.node = Node(
            node_config(s, self.ctx.general.instance), MonotonicClock(), link, self._on_limit,
            epoch=self._next_epoch(), initial_limit=initial,
            demanding=self._local is not None and self._local[0],
        )
        self.log.info(
            "node %s in a group of %d; fallback %g A; view hold %.0f s",
            self.node.config.node_id, len(self.node.config.members), s.fallback_current,
            self.node.config.view_hold,
        )
        if self._local is not None:
            self.node.set_local(self._local[0], **self._local[1])
        await self._start_supervision()
        workers = [asyncio.create_task(self._command_loop())]
        if s.charger_heartbeat > 0:
            workers.append(asyncio.create_task(self._pulse_loop()))
        try:
            while not self.ctx.stopping.is_set():
                self.node.tick()
                await self._show()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.stopping.wait(), 0.5)
        finally:
            for w in workers:
                w.cancel()

    def device_info(self) -> dict[str, str]:
        """Who the describe is about: the same node id as the readings' (HA's device)."""
        if self.settings.node_listen:
            from transports.loadsharing.openevse_roles import _address

            me = _address(self)[2]
        else:
            me = node_config(self.settings, self.ctx.general.instance).node_id
        return {"transport_name": self.ctx.name, "device_identifier": me,
                "device_name": f"Load sharing {me}", "device_manufacturer": "protocol-gateway",
                "device_model": "load-sharing node"}

    async def _run_on_http(self) -> None:
        """OpenEVSE's wire: the masterless node (``network.py``), or a role in an OpenEVSE group
        (``openevse_roles.py``): set in the file, or taken at run time from a controller's push
        and left when it resets the role (``runtime_role.py``)."""
        from transports.loadsharing.openevse_roles import run_openevse_role

        configured = self.settings.loadsharing_role
        while not self.ctx.stopping.is_set():
            self.switch_role.clear()
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

    def _next_epoch(self) -> int:
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
    async def receive(self, envelope: Envelope) -> None:
        if envelope.source_transport != self.settings.charger:
            return
        data = envelope.data
        if envelope.kind == READING:
            self._charger_reading(data)
        elif envelope.kind == EVENT and data.get("event") == "command_result":
            if data.get("ok"):
                self.charger_failure.recovered()
            else:
                self.charger_failure.failed(f"{data.get('command')}: {data.get('result')} "
                                            f"{data.get('detail', '')}")
                if data.get("command") == "heartbeat" and data.get("trigger") == 2:
                    await self._acknowledge_missed_heartbeat()

    def _charger_reading(self, data: dict[str, Any]) -> None:
        state = data.get("state_code")
        if state is not None and (isinstance(state, bool) or not isinstance(state, int)):
            self.ctx.counters.error(f"charger state_code is not an integer: {state!r}")
            self.log.warning("charger reading with a bad state_code: %r", state)
            return
        pilot = _number(data.get("pilot_current"))
        if pilot is not None:
            self._charger_limit = int(pilot)
        if state is not None:
            self._charger_paused = state in (0xFE, 0xFF)
        demanding = self.demand.update(state, data.get("vehicle_connected"))
        self._first_status.set()
        vehicle = data.get("vehicle_connected")
        shown = {
            "amp": _number(data.get("charging_current")) or 0.0,
            "voltage": _number(data.get("voltage")) or 0.0,
            "pilot": pilot or 0.0,
            "state": state if isinstance(state, int) else 0,
            "vehicle": 1 if vehicle in (1, True) else 0,
        }
        self._local = (demanding, shown)
        if self.node is not None:
            self.node.set_local(demanding, **shown)

    def _on_limit(self, amps: int) -> None:
        """From the node (synchronous): queue it; the command loop sends in order."""
        self.demand.commanded(amps)
        self._commands.put_nowait(amps)

    async def _command_loop(self) -> None:
        while True:
            amps = await self._commands.get()
            while not self._commands.empty():  # only the newest limit matters
                amps = self._commands.get_nowait()
            if amps == self._sent_limit:
                continue
            await self._apply(amps)

    async def _apply(self, amps: int) -> None:
        if amps == 0:
            disable = self.settings.loadsharing_failsafe_mode == "disable" and (
                self.node is not None and self.node.mode == FAILSAFE
            )
            await self._command({"command": "disable" if disable else "sleep"})
            self._paused = True
        else:
            await self._command({"command": "set_current", "amps": amps, "volatile": True})
            if self._paused or self._sent_limit is None:
                await self._command({"command": "enable"})
                self._paused = False
        self._sent_limit = amps

    async def _command(self, data: dict[str, Any]) -> None:
        data = {**data, "request_id": f"{self.ctx.name}-{next(self._ids)}"}
        counters = self.ctx.counters
        counters.extra["charger_commands"] = int(counters.extra["charger_commands"]) + 1
        self.log.debug("to %s: %s", self.settings.charger, data)
        await self.ctx.emit(COMMAND, data, target=self.settings.charger)

    async def _start_supervision(self) -> None:
        s = self.settings
        if s.charger_heartbeat > 0:
            await self._command({
                "command": "heartbeat", "interval": s.charger_heartbeat,
                "amps": int(s.fallback_current), "self_pulse": False,
            })

    async def _pulse_loop(self) -> None:
        every = max(1.0, self.settings.charger_heartbeat / 3)
        while True:
            await asyncio.sleep(every)
            await self._command({"command": "heartbeat"})

    async def _acknowledge_missed_heartbeat(self) -> None:
        """$SY 165 restores the configured max: re-send our limit right after."""
        await self._command({"command": "heartbeat", "acknowledge": True})
        if self._sent_limit is not None:
            limit, self._sent_limit = self._sent_limit, None
            await self._apply(limit)

    # -- what this node shows -------------------------------------------------------------------
    async def _show(self) -> None:
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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


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
