"""The ``modbus_bus`` (RS485) and ``modbus_bus_tcp`` (a TCP gateway to RS485) transports.

One process owns the serial port (or the gateway connection) and polls every device on it:
one request at a time, the device to serve next chosen by :mod:`.schedule`, commands served
between two requests so that a write never waits for a whole scan of another device. Per
request, the device's own timeout, retries and pauses apply. What the bus does per request:

- an answer: the device is there (ends a quarantine);
- an exception 2/3 reply: the block is split and the refused range learned (:mod:`.blocks`);
  other exception codes are counted and the values of that block skipped this scan;
- no answer or a garbled one: counted; that block is read last next time, and a scan whose
  first request goes unanswered ends there; ``offline_after`` in a row quarantine the device
  (status unavailable), the others keep their timing;
- a lost connection: every device is reported unavailable and the bus reopens with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any, ClassVar

from gateway.backoff import Backoff, FailureLog
from gateway.message import (
    COMMAND,
    EVENT,
    READING,
    STATUS,
    describe_event,
)
from protocols.read_plan import LinkCost, ReadRequest
from protocols.registers import Value
from transports import register
from transports.base import TransportContext
from transports.device import DeviceTransport, PeerUnavailable
from transports.modbus.link import ModbusLink, RequestFailed
from transports.modbus.settings import ModbusRtuSettings, ModbusSettings, ModbusTcpSettings
from transports.modbus_bus.blocks import READ, REFUSED, SPLIT, SPLIT_CODES, Learned, walk
from transports.modbus_bus.commands import BusCommands, Queued
from transports.modbus_bus.member import Member
from transports.modbus_bus.port_resolve import PortNotFound, resolve_port
from transports.modbus_bus.schedule import BusSchedule, Change, Timing
from transports.modbus_bus.settings import BusSettings, ModbusBusRtuSettings, ModbusBusTcpSettings

#: a silent device is not a dead bus: never let pymodbus drop the link for missed replies
NEVER_DISCONNECT = 1 << 30
_CODE = re.compile(r"exception (\d+)")
COUNTERS = ("scans", "probes", "requests", "exceptions", "timeouts", "garbled", "writes",
            "writes_rejected", "reconnects", "quarantines", "ranges_learned")
#: what a block read came to, besides blocks.READ and blocks.SPLIT: another exception reply;
#: no (valid) answer; the link went down
ERROR, SILENT, DOWN = "error", "silent", "down"
ANSWERED = frozenset({READ, SPLIT, ERROR})


def exception_code(exc: RequestFailed) -> int:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(exc.detail)
    return int(match.group(1)) if match else 0


def link_cost(settings: BusSettings) -> LinkCost | None:
    """The RTU line's cost model (planning and the load estimate); TCP plans as 19200 8N1."""
    if not isinstance(settings, ModbusBusRtuSettings):
        return LinkCost()
    bits = 1 + settings.bytesize + (settings.parity != "N") + settings.stopbits
    return LinkCost(baudrate=settings.baudrate, bits_per_char=bits)


class ModbusBusTransport(BusCommands, DeviceTransport[BusSettings]):
    accepts: ClassVar[frozenset[str]] = frozenset({COMMAND})

    def __init__(self, settings: BusSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.cost = link_cost(settings)
        self.members = {d.name: Member(d, self.cost) for d in settings.bus_devices()}
        self.schedule = BusSchedule(
            {m.name: Timing(m.cfg.read_interval, m.cfg.offline_after, m.cfg.quarantine_max)
             for m in self.members.values()}, time.monotonic())
        self.link: ModbusLink | None = None
        self._commands: asyncio.Queue[Queued] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._connected_at = 0.0
        self._quiet_from = 0.0
        self._had_link = False  # the next open is a reconnect (counted)
        self._where = f"bus {settings.where()}"
        self._silence = {n: FailureLog(self.log, f"{self._where} device {n}")
                         for n in self.members}
        self._refusals_seen: set[tuple[str, str, int]] = set()
        for key in COUNTERS:
            ctx.counters.extra.setdefault(key, 0)

    def _count(self, key: str, n: int = 1) -> None:
        self.ctx.counters.extra[key] = int(self.ctx.counters.extra.get(key, 0)) + n

    # ------------------------------------------------------------------ life
    async def connect(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
        demand = 0.0
        for m in self.members.values():
            plan = m.blocks.plan
            self.log.info("%s: %s unit %d, map %s, %d requests per scan every %g s",
                          self._where, m.name, m.unit, m.device.map.name, len(plan),
                          m.cfg.read_interval)
            if self.cost is not None:
                demand += plan.cost(self.cost) / m.cfg.read_interval
        if isinstance(self.settings, ModbusBusRtuSettings) and self.cost is not None:
            self.log.log(logging.WARNING if demand > 1 else logging.INFO,
                         "%s: wire time alone needs %.2f s of bus time per second at %d baud",
                         self._where, demand, self.cost.baudrate)

    async def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _link_settings(self) -> ModbusSettings:
        s = self.settings
        common: dict[str, Any] = {
            "protocol_version": next(iter(self.members.values())).cfg.protocol_version,
            "timeout": max(m.cfg.timeout for m in self.members.values()), "retries": 0,
        }
        if isinstance(s, ModbusBusTcpSettings):
            return ModbusTcpSettings(transport="modbus_tcp", host=s.host, port=s.port, **common)
        assert isinstance(s, ModbusBusRtuSettings)
        return ModbusRtuSettings(
            transport="modbus_rtu", port=resolve_port(s.port, s.selector()),
            baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits, bytesize=s.bytesize,
            **common)

    # the reconnect loop and its logs are DeviceTransport's; members report their own status
    def peer_name(self) -> str:
        return f"modbus bus {self.settings.where()}"

    def backoff(self) -> Backoff:
        return Backoff(initial=min(1.0, self.settings.reconnect_max),
                       maximum=self.settings.reconnect_max)

    async def announce(self, available: bool, reason: str) -> None:
        """The bus itself has no status: down, every device is unavailable; up, each device
        says so with its next good scan."""
        if not available:
            await self._all_unavailable("bus not connected")

    async def wait_retry(self, seconds: float) -> None:
        """Between two attempts, commands are still answered (with an error, at once)."""
        until = time.monotonic() + seconds
        while not self.ctx.stopping.is_set() and (left := until - time.monotonic()) > 0:
            await self._serve_commands()
            await self._idle(left)

    async def open(self) -> ModbusLink:
        if self._had_link:
            self._had_link = False
            self._count("reconnects")
        try:
            link = ModbusLink(self._link_settings())
        except PortNotFound as exc:
            raise PeerUnavailable(str(exc)) from exc
        if not await link.connect():
            link.close()
            raise PeerUnavailable(f"cannot open {self.settings.where()}")
        assert link.client is not None
        # pymodbus 3.16 (pinned) closes a TCP link after retries+3 unanswered requests in a
        # row, counting from the connect: behind a gateway that is one dead device, not a
        # dead link. Timeouts and retries are set per request in _request (ctx is the client's
        # transaction manager, which owns both).
        link.client.set_max_no_responses(NEVER_DISCONNECT)
        link.client.ctx.count_until_disconnect = NEVER_DISCONNECT
        self.link = link
        self._connected_at = time.monotonic()
        for m in self.members.values():
            m.described = False
        return link

    async def release(self, link: ModbusLink) -> None:
        link.close()
        self._had_link = True

    async def serve(self, link: ModbusLink) -> None:
        """Scan the devices in their turns; returns when the link drops (reopened at once,
        as a dropped TCP connection to a gateway usually is only that) or we stop."""
        await self.link_up("bus connected")
        while not self.ctx.stopping.is_set() and link.connected:
            await self._serve_commands()
            slot = self.schedule.upcoming()
            wait = slot.due - time.monotonic()
            if wait > 0:
                await self._idle(wait)
                continue
            await self._scan(self.members[slot.name])
            notice = self.schedule.load_notice()
            if notice:
                self.log.warning("%s: %s", self._where, notice)
            demand = self.schedule.demand()
            if demand is not None:
                self.ctx.counters.extra["bus_demand"] = round(demand, 3)

    async def _idle(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a command arrives or the transport stops."""
        if not self._commands.empty() or self.ctx.stopping.is_set():
            return
        self._wake.clear()
        waiters = {asyncio.ensure_future(self._wake.wait()),
                   asyncio.ensure_future(self.ctx.stopping.wait())}
        try:
            await asyncio.wait(waiters, timeout=max(0.0, seconds),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    def _usable(self, m: Member, probe: bool = False) -> bool:
        """May the scan of ``m`` go on (bus up, not stopping, not just quarantined)?"""
        return (self.link is not None and self.link.connected
                and not self.ctx.stopping.is_set()
                and (probe or not self.schedule.quarantined(m.name)))

    # ------------------------------------------------------------------ scanning
    async def _scan(self, m: Member) -> None:
        """One scan (or probe). A first request without answer ends it: the device is
        probably gone, and each further timeout would hold the line from the others; the
        quarantine then comes after ``offline_after`` such scans, spread over its interval."""
        started = time.monotonic()
        probe = self.schedule.begin(m.name, started)
        self._count("probes" if probe else "scans")
        requests = m.ordered()[:1] if probe else m.ordered()
        values: dict[str, Value] = {}
        busy = 0.0
        answered = False
        for request in requests:
            if not self._usable(m, probe):
                break
            await self._serve_commands()
            begun = time.monotonic()
            got, outcome = await self._read_block(m, request)
            busy += time.monotonic() - begun
            values.update(got)
            key = (request.table, request.address)
            if outcome == SILENT:
                m.slow.add(key)
                if not answered:
                    break
            else:
                m.slow.discard(key)
                answered = answered or outcome in ANSWERED
        self.schedule.end(m.name, time.monotonic(), busy, probe=probe)
        self.ctx.counters.extra["busy_seconds"] = round(
            float(self.ctx.counters.extra.get("busy_seconds", 0.0)) + busy, 3)
        if values:
            await self._publish(m, values)

    async def _publish(self, m: Member, values: dict[str, Value]) -> None:
        m.note_serial(values)
        info = m.info(self.ctx.name)
        if m.change(True):
            await self.ctx.emit(STATUS, {"available": True, "reason": "answering"}, info=info)
        if not m.described:
            m.described = True
            await self.ctx.emit(EVENT, describe_event(m.device.specs()), info=info)
        await self.ctx.emit(READING, values, info=info)

    async def _read_block(self, m: Member, request: ReadRequest) -> tuple[dict[str, Value], str]:
        """Read one block; a refused one is split and read in halves (``blocks.walk``)."""
        values: dict[str, Value] = {}
        learned: list[Learned] = []
        steps = walk(m.blocks, request, learned)
        current = next(steps)
        while True:
            if current is not request and not self._usable(m):
                steps.close()
                return values, DOWN
            try:
                words = await self._request(m, "read", current)
                values.update(m.device.decode(current, words))
                outcome = READ
            except RequestFailed as exc:
                what = f"read {current.table} {current.address}+{current.count}"
                await self._failed(m, exc, what)
                if exc.kind == "exception":
                    outcome = REFUSED if exception_code(exc) in SPLIT_CODES else ERROR
                else:
                    outcome = DOWN if exc.kind == "disconnected" else SILENT
            try:
                current = steps.send(outcome)
            except StopIteration as stop:
                result = str(stop.value)
                break
        for item in learned:
            self._count("ranges_learned")
            self.log.warning("%s: %s: %s refused by the device (exception reply); %s", self._where,
                             m.name, item, "left out of later scans" if item.names else
                             "not read through any more")
        return values, result

    async def _request(self, m: Member, what: str, *args: Any) -> Any:
        """One request to ``m`` with its pauses, timeout and retries; the outcome is noted."""
        link = self.link
        if link is None or link.client is None:
            raise RequestFailed("disconnected", "not connected")
        ready = max(self._quiet_from + m.cfg.request_delay,
                    self._connected_at + m.cfg.connect_delay)
        pause = ready - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        link.client.ctx.comm_params.timeout_connect = m.cfg.timeout
        link.client.ctx.retries = m.cfg.retries
        self._count("requests")
        try:
            result = await getattr(link, what)(m.unit, *args)
        finally:
            self._quiet_from = time.monotonic()
        await self._change(self.schedule.answered(m.name))
        self._silence[m.name].recovered()
        return result

    async def _failed(self, m: Member, exc: RequestFailed, what: str) -> RequestFailed:
        """Count, log and tell the schedule; returns the failure as worded for ``m``."""
        key = {"exception": "exceptions", "timeout": "timeouts", "garbled": "garbled"}.get(
            exc.kind)
        if exc.kind == "timeout":  # the link's text names the bus-wide ceiling, not m's own
            exc = RequestFailed("timeout", f"no reply within {m.cfg.timeout:g} s"
                                + (f" ({m.cfg.retries + 1} tries)" if m.cfg.retries else ""))
        self.ctx.counters.error(f"{m.name}: {what}: {exc}")
        if key is None:  # disconnected: the bus's business, not the device's
            return exc
        self._count(key)
        if exc.kind == "exception":
            await self._change(self.schedule.answered(m.name))
            seen = (m.name, what, exception_code(exc))
            level = logging.DEBUG if seen in self._refusals_seen else logging.WARNING
            self._refusals_seen.add(seen)
            self.log.log(level, "%s: %s: %s: %s", self._where, m.name, what, exc)
            return exc
        self._silence[m.name].failed(f"{what}: {exc}")
        await self._change(self.schedule.failed(m.name))
        return exc

    async def _change(self, change: Change | None) -> None:
        if change is None:
            return
        m = self.members[change.name]
        if not change.available:
            self._count("quarantines")
            self.log.warning("%s: %s quarantined (%s); probing with backoff up to %g s",
                             self._where, m.name, change.reason, m.cfg.quarantine_max)
        else:
            self.log.warning("%s: %s answers again", self._where, m.name)
        if m.change(change.available):
            await self.ctx.emit(STATUS, {"available": change.available, "reason": change.reason},
                                info=m.info(self.ctx.name))

    async def _all_unavailable(self, reason: str) -> None:
        for m in self.members.values():
            if m.change(False):
                await self.ctx.emit(STATUS, {"available": False, "reason": reason},
                                    info=m.info(self.ctx.name))


@register
class ModbusBusRtuTransport(ModbusBusTransport):
    kind: ClassVar[str] = "modbus_bus"
    Settings: ClassVar[type[BusSettings]] = ModbusBusRtuSettings


@register
class ModbusBusTcpTransport(ModbusBusTransport):
    kind: ClassVar[str] = "modbus_bus_tcp"
    Settings: ClassVar[type[BusSettings]] = ModbusBusTcpSettings
