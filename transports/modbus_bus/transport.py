"""The ``modbus_bus`` (RS485) and ``modbus_bus_tcp`` (a TCP gateway to RS485) transports,
and ``modbus_tcp``/``modbus_rtu`` (one device) as buses of one member.

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
- a lost connection: the link is reopened at once; if that fails, every device is reported
  unavailable and the link is reopened with backoff (commands are answered meanwhile).

The reconnect loop, its backoff and its one failure and one recovery log are
:class:`~transports.device.DeviceTransport`'s: this gives ``open()``, ``serve(link)`` and
``release(link)``, and tells each device of the bus's outage in ``announce()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, ClassVar

from gateway.backoff import Backoff, FailureLog, RepeatLog
from gateway.message import (
    COMMAND,
    EVENT,
    READING,
    STATUS,
    Envelope,
    ValueSpec,
    describe_event,
)
from protocols.read_plan import ReadRequest
from protocols.registers import RegisterValue, Value
from transports import register
from transports.base import TransportContext, UnknownDevice
from transports.device import DeviceTransport, PeerUnavailable
from transports.modbus.link import (
    Disconnected,
    ExceptionReply,
    LinkDescription,
    ModbusLink,
    RequestFailed,
    SerialLine,
    TcpEndpoint,
)
from transports.modbus.settings import ModbusRtuSettings, ModbusSettings, ModbusTcpSettings
from transports.modbus_bus.blocks import READ, REFUSED, SPLIT, SPLIT_CODES, Learned, walk
from transports.modbus_bus.commands import BusCommands
from transports.modbus_bus.member import Member
from transports.modbus_bus.port_resolve import PortNotFound, resolve_port
from transports.modbus_bus.schedule import BusSchedule, Change, Timing
from transports.modbus_bus.settings import (
    BusDevice,
    BusSettings,
    ModbusBusRtuSettings,
    ModbusBusTcpSettings,
)

if TYPE_CHECKING:  # the server module is imported only by a section that re-exports
    from transports.modbus_bus.reexport import ReexportServer

#: a bus section (``modbus_bus``, ``modbus_bus_tcp``) or one device's (``modbus_tcp``,
#: ``modbus_rtu``): the same transport, the latter a bus of one
AnySettings = BusSettings | ModbusSettings

#: a measured turnaround is worth a hint when a plan for it would be this much cheaper
HINT_GAIN = 0.02
COUNTERS = ("scans", "probes", "requests", "exceptions", "timeouts", "garbled", "writes",
            "writes_rejected", "reconnects", "quarantines", "ranges_learned", "out_of_range")
#: what a block read came to, besides blocks.READ and blocks.SPLIT: another exception reply;
#: no (valid) answer; the link went down
ERROR, SILENT, DOWN = "error", "silent", "down"
ANSWERED = frozenset({READ, SPLIT, ERROR})


def link_description(settings: AnySettings, port: str = "") -> LinkDescription:
    """The bus as a link; ``port``: the serial port it resolved to (for costs: any name)."""
    if isinstance(settings, ModbusBusTcpSettings | ModbusTcpSettings):
        return TcpEndpoint(settings.host, settings.port)
    assert isinstance(settings, ModbusBusRtuSettings | ModbusRtuSettings)
    return SerialLine(port or settings.where(), settings.baudrate, settings.parity,
                      settings.stopbits, settings.bytesize)


def place(settings: AnySettings) -> str:
    """Where the logs say the device (or the bus) is."""
    if isinstance(settings, ModbusSettings):
        return f"{settings.where()} unit {settings.address}"
    return f"bus {settings.where()}"


def sole_device(settings: ModbusSettings) -> BusDevice:
    """A ``modbus_tcp``/``modbus_rtu`` section as the one device of its bus, same keys: a
    device is reported unavailable after ``offline_after`` requests in a row without an
    answer (for a dead device, scans: a scan whose first request gets none ends there), then
    probed with backoff up to ``reconnect_max``."""
    return BusDevice(
        name="device", unit=settings.address,
        protocol_version=settings.protocol_version, read_interval=settings.read_interval,
        timeout=settings.timeout, retries=settings.retries,
        request_delay=settings.request_delay, connect_delay=0.0,
        offline_after=settings.offline_after, quarantine_max=settings.reconnect_max,
        batch_size=settings.batch_size, turnaround=settings.turnaround,
        writable=tuple(settings.writable))


class ModbusBusTransport(DeviceTransport[AnySettings]):
    accepts: ClassVar[frozenset[str]] = frozenset({COMMAND})

    def __init__(self, settings: AnySettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.line = link_description(settings)
        self._where = place(settings)
        if isinstance(settings, ModbusSettings):
            devices, sole = [sole_device(settings)], True
            self._down = "cannot connect"
        else:
            devices, sole = settings.bus_devices(), False
            self._down = "bus not connected"
        self.members = {d.name: Member(d, self.line.cost(d.turnaround), sole=sole)
                        for d in devices}
        self.schedule = BusSchedule(
            {m.name: Timing(m.cfg.read_interval, m.cfg.offline_after, m.cfg.quarantine_max)
             for m in self.members.values()}, time.monotonic())
        self.link: ModbusLink | None = None
        self._had_link = False  # the next open is a reconnect (counted)
        self._silence = {n: FailureLog(self.log, self._where if sole else
                                       f"{self._where} device {n}") for n in self.members}
        self._refusals_seen: set[tuple[str, str, int]] = set()
        self._repeats = RepeatLog(self.log)  # out-of-range values: one line per value, counted
        for key in COUNTERS:
            ctx.counters.extra.setdefault(key, 0)
        self.commands = BusCommands(self, self.members, ctx, self.log, self._where)
        #: the Modbus TCP re-export of what is read (``reexport_listen``), once started
        self.reexport: ReexportServer | None = None

    @property
    def where(self) -> str:
        """The bus (or device) as logs name it."""
        return self._where

    def count(self, key: str, n: int = 1) -> None:
        self.ctx.counters.incr(key, n)

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    async def receive(self, envelope: Envelope) -> None:
        await self.commands.receive(envelope)

    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]]:
        """Every device of the bus, or the one ``device`` names (by name, unit or serial)."""
        members = list(self.members.values())
        if device:
            chosen = self.commands.select(device)
            if isinstance(chosen, str):
                raise UnknownDevice(chosen)
            members = [chosen]
        return [(m.info(self.ctx.name), m.device.specs()) for m in members]

    # ------------------------------------------------------------------ life
    async def connect(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
        demand = 0.0
        for m in self.members.values():
            if m.discovery_due:
                self.log.info("%s: %s unit %d, SunSpec: its models are read before its first "
                              "scan, every %g s after", self._where, m.name, m.unit,
                              m.cfg.read_interval)
                continue
            plan = m.blocks.plan
            self.log.info("%s: %s unit %d, map %s, %d requests per scan every %g s",
                          self._where, m.name, m.unit, m.device.map.name, len(plan),
                          m.cfg.read_interval)
            demand += plan.cost(m.cost) / m.cfg.read_interval
            if m.device.map.meta.get("skipped"):  # a PythonProtocolGateway file's odd rows
                self.log.warning("%s: %s: rows not read (their data type): %s", self._where,
                                 m.name, m.device.map.meta["skipped"])
        if isinstance(self.line, SerialLine):
            self.log.log(logging.WARNING if demand > 1 else logging.INFO,
                         "%s: the planned reads need %.2f s of bus time per second at %d baud "
                         "(turnarounds as set)", self._where, demand, self.line.baudrate)
        if self.settings.reexport_listen and self.reexport is None:
            await self._start_reexport()

    async def _start_reexport(self) -> None:
        """Serve what is read again (imported here: only such a section loads the server)."""
        from gateway.instance import offset_address, split_host_port
        from transports.modbus_bus.reexport import ReexportServer, spans_of

        host, port = split_host_port(offset_address(self.settings.reexport_listen,
                                                    self.ctx.general.instance))
        by_unit = {m.unit: m for m in self.members.values()}
        spans = {m.unit: spans_of(m.device.map, m.discovery_due) for m in self.members.values()}
        server = ReexportServer(host, port, spans,
                                lambda unit: by_unit[unit].available is not False, self.log)
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            self.log.error("%s: Modbus TCP re-export not served: %s", self._where, exc)
            return
        self.reexport = server
        self.log.info("%s: re-exported read-only on Modbus TCP %s:%d (units %s)", self._where,
                      host, port, ", ".join(str(u) for u in by_unit))

    async def close(self) -> None:
        if self.reexport is not None:
            await self.reexport.stop()
            self.reexport = None
        if self.link is not None:
            self.link.close()
            self.link = None

    # -- the reconnect loop and its logs are DeviceTransport's -----------------------------
    def peer_name(self) -> str:
        return f"modbus {place(self.settings)}"

    def backoff(self) -> Backoff:
        return Backoff(initial=min(1.0, self.settings.reconnect_max),
                       maximum=self.settings.reconnect_max)

    async def announce(self, available: bool, reason: str) -> None:
        """The link itself has no status: down, every device is unavailable; up, each device
        says so with its next good scan."""
        if not available:
            await self._all_unavailable(self._down)

    async def wait_retry(self, seconds: float) -> None:
        """Between two attempts, commands are still answered (with an error, at once)."""
        until = time.monotonic() + seconds
        while not self.ctx.stopping.is_set() and (left := until - time.monotonic()) > 0:
            await self.commands.serve()
            await self._idle(left)

    async def open(self) -> ModbusLink:
        if self._had_link:
            self._had_link = False
            self.count("reconnects")
        s = self.settings
        try:
            port = resolve_port(s.port, s.selector()) if isinstance(
                s, ModbusBusRtuSettings) else ""
        except PortNotFound as exc:
            raise PeerUnavailable(str(exc)) from exc
        link = ModbusLink(link_description(s, port),
                          connect_timeout=max(m.cfg.timeout for m in self.members.values()))
        if not await link.connect():
            link.close()
            raise PeerUnavailable(f"cannot open {s.where()}")
        self.link = link
        for m in self.members.values():
            m.described = False
        return link

    async def release(self, link: ModbusLink) -> None:
        link.close()
        self.link = None
        self._had_link = True

    async def serve(self, link: ModbusLink) -> None:
        """Scan the devices in their turns; returns when the link drops (reopened at once:
        a dropped TCP connection usually is only that) or when the transport stops."""
        await self.link_up("connected")
        while not self.ctx.stopping.is_set() and link.connected:
            await self.commands.serve()
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
        if self.commands.pending or self.ctx.stopping.is_set():
            return
        self.commands.wake.clear()
        waiters = {asyncio.ensure_future(self.commands.wake.wait()),
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
        self.count("probes" if probe else "scans")
        if m.discovery_due:  # a SunSpec device: its map first (the import only for one)
            from transports.modbus_bus.sunspec_scan import discover_member

            if not await discover_member(self, m):
                self.schedule.end(m.name, time.monotonic(), time.monotonic() - started,
                                  probe=probe)
                return
        requests = m.ordered()[:1] if probe else m.ordered()
        values: dict[str, Value] = {}
        busy = 0.0
        answered = False
        for request in requests:
            if not self._usable(m, probe):
                break
            await self.commands.serve()
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
        self._report_turnaround(m)
        self.ctx.counters.extra["busy_seconds"] = round(
            float(self.ctx.counters.extra.get("busy_seconds", 0.0)) + busy, 3)
        if values:
            await self._publish(m, values)

    def _report_turnaround(self, m: Member) -> None:
        """The measured turnaround as a health figure; said once at INFO when a plan made
        for it would be cheaper than the plan sent (the installer sets ``turnaround``;
        nothing is replanned on its own: a loaded machine's latency must not reshape plans)."""
        measured = m.measured_turnaround
        if measured is None:
            return
        key = "turnaround_ms" if m.sole else f"{m.name}.turnaround_ms"
        self.ctx.counters.extra[key] = round(measured * 1000, 1)
        if m.turnaround_noted:
            return
        m.turnaround_noted = True  # asked once: the figure settles within the first scans
        gain = m.gain_at(measured)
        if gain > HINT_GAIN:
            self.log.info("%s: %s answers in about %.0f ms, the plan assumes %.0f ms: "
                          "%sturnaround = %.3f would make its scans %.0f%% shorter",
                          self._where, m.name, measured * 1000, m.cfg.turnaround * 1000,
                          "" if m.sole else f"{m.name}.", measured, 100 * gain)

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
                words = await self.read_words(m, current)
                decoded = m.device.decode(current, words)
                for name, why in m.device.out_of_range(decoded).items():
                    del decoded[name]
                    self.count("out_of_range")
                    self.ctx.counters.error(f"{m.name}: {why}")
                    self._repeats.warn(f"{m.name} {name}", "%s: %s: %s (rejected)",
                                       self._where, m.name, why)
                values.update(decoded)
                outcome = READ
            except RequestFailed as exc:
                what = f"read {current.table} {current.address}+{current.count}"
                await self.failed(m, exc, what)
                if isinstance(exc, ExceptionReply):
                    outcome = REFUSED if exc.code in SPLIT_CODES else ERROR
                elif isinstance(exc, Disconnected):
                    outcome = DOWN
                else:
                    outcome = SILENT
            try:
                current = steps.send(outcome)
            except StopIteration as stop:
                result = str(stop.value)
                break
        for item in learned:
            self.count("ranges_learned")
            self.log.warning("%s: %s: %s refused by the device (exception reply); %s", self._where,
                             m.name, item, "left out of later scans" if item.names else
                             "not read through any more")
        return values, result

    def _live_link(self) -> ModbusLink:
        """The link for one more request (counted), or Disconnected."""
        if self.link is None:
            raise Disconnected()
        self.count("requests")
        return self.link

    async def read_words(self, m: Member, request: ReadRequest) -> list[int] | list[bool]:
        """One read from ``m`` with its own pauses, timeout and retries; an answer noted."""
        link = self._live_link()
        words = await link.read(m.unit, request, m.policy)
        if self.reexport is not None:
            self.reexport.record(m.unit, request.table, request.address, words)
        if link.last_exchange is not None:
            m.note_exchange(request, link.last_exchange)
        await self._heard(m)
        return words

    async def write_words(self, m: Member, spec: RegisterValue,
                           words: list[int] | list[bool]) -> None:
        await self._live_link().write(m.unit, spec, words, m.policy)
        await self._heard(m)

    async def heard(self, m: Member) -> None:
        """``m`` answered, if only with a refusal (a SunSpec discovery's probes of bases)."""
        await self._heard(m)

    async def _heard(self, m: Member) -> None:
        await self._change(self.schedule.answered(m.name))
        self._silence[m.name].recovered()

    async def failed(self, m: Member, exc: RequestFailed, what: str) -> None:
        """Count, log and tell the schedule."""
        self.ctx.counters.error(f"{m.name}: {what}: {exc}")
        if isinstance(exc, Disconnected):  # the bus's business, not the device's
            return
        self.count(exc.counter)
        if isinstance(exc, ExceptionReply):
            await self._change(self.schedule.answered(m.name))
            seen = (m.name, what, exc.code)
            level = logging.DEBUG if seen in self._refusals_seen else logging.WARNING
            self._refusals_seen.add(seen)
            self.log.log(level, "%s: %s: %s: %s", self._where, m.name, what, exc)
            return
        self._silence[m.name].failed(f"{what}: {exc}")
        await self._change(self.schedule.failed(m.name))

    async def _change(self, change: Change | None) -> None:
        if change is None:
            return
        m = self.members[change.name]
        if not change.available:
            self.count("quarantines")
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


@register
class ModbusTcpTransport(ModbusBusTransport):
    """One Modbus TCP device: a bus of one (``docs/transports/modbus.md``)."""

    kind: ClassVar[str] = "modbus_tcp"
    Settings: ClassVar[type[ModbusSettings]] = ModbusTcpSettings


@register
class ModbusRtuTransport(ModbusBusTransport):
    """One Modbus RTU device on its own serial line: a bus of one."""

    kind: ClassVar[str] = "modbus_rtu"
    Settings: ClassVar[type[ModbusSettings]] = ModbusRtuSettings
