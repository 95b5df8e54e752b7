"""The ``modbus_tcp`` and ``modbus_rtu`` transports: scan, write, describe, report availability.

One scan = the device's read plan, request by request. A request that fails (exception reply,
timeout, garbled reply) is logged and counted and the scan goes on; the values that were read
go out as one reading. ``offline_after`` scans in a row with nothing read mark the device
unavailable, close the link and reconnect with backoff; the first good scan marks it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, ClassVar

from gateway.backoff import Backoff
from gateway.message import (
    COMMAND,
    EVENT,
    READING,
    Envelope,
    ValueSpec,
    command_result,
    describe_event,
)
from protocols.read_plan import LinkCost
from protocols.registers import Value, WriteRejected, load_map
from transports import register
from transports.base import TransportContext
from transports.device import DeviceTransport, PeerUnavailable
from transports.modbus.device import ModbusDevice
from transports.modbus.link import ModbusLink, RequestFailed
from transports.modbus.settings import ModbusRtuSettings, ModbusSettings, ModbusTcpSettings


class ModbusTransport(DeviceTransport[ModbusSettings]):
    accepts: ClassVar[frozenset[str]] = frozenset({COMMAND})

    def __init__(self, settings: ModbusSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        regmap = load_map(settings.protocol_version)
        cost = LinkCost(baudrate=settings.baudrate) if isinstance(
            settings, ModbusRtuSettings) else LinkCost()
        self.device = ModbusDevice(
            settings.address, regmap, batch_size=settings.batch_size, link=cost
        )
        self.link = ModbusLink(settings)
        self.serial = ""
        self._failed_scans = 0
        self._described = False
        self._ever_connected = False
        self._scan_errors = 0
        self._where = f"{settings.where()} unit {settings.address}"
        for key in ("scans", "requests", "exceptions", "timeouts", "garbled", "writes",
                    "writes_rejected", "reconnects"):
            ctx.counters.extra.setdefault(key, 0)

    @property
    def info(self) -> dict[str, str]:
        return self.device.info(self.ctx.name, self.serial)

    def _count(self, key: str) -> None:
        self.ctx.counters.incr(key)

    # ------------------------------------------------------------------ life
    async def connect(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
        self.log.info(
            "%s: map %s, %d values in %d requests per scan", self._where,
            self.device.map.name, len(self.device.map.values), len(self.device.plan),
        )

    # the reconnect loop, its logs and the status envelopes are DeviceTransport's
    def peer_name(self) -> str:
        return f"modbus device {self.settings.where()} unit {self.settings.address}"

    def backoff(self) -> Backoff:
        return Backoff(initial=min(1.0, self.settings.reconnect_max),
                       maximum=self.settings.reconnect_max)

    def device_info(self) -> dict[str, str]:
        return self.info

    def describe(self) -> list[tuple[dict[str, str], list[ValueSpec]]]:
        return [(self.info, self.device.specs())]

    async def open(self) -> ModbusLink:
        if self._ever_connected:
            self._count("reconnects")
        async with self.link.lock:
            ok = await self.link.connect()
        if not ok:
            raise PeerUnavailable(f"cannot connect to {self.settings.where()}")
        self._described = False
        self._ever_connected = True
        return self.link

    async def release(self, link: ModbusLink) -> None:
        link.close()

    async def serve(self, link: ModbusLink) -> None:
        """Scan every read_interval; ``offline_after`` empty scans in a row: link lost."""
        next_scan = time.monotonic()
        self._failed_scans = 0
        while not self.ctx.stopping.is_set():
            values = await self.scan()
            if values:
                self._failed_scans = 0
                await self.link_up("answering")
                if not self._described:
                    self._described = True
                    await self.ctx.emit(EVENT, describe_event(self.device.specs()),
                                        info=self.info)
                await self.ctx.emit(READING, values, info=self.info)
            else:
                self._failed_scans += 1
                self._failure.failed("no value could be read")
                if self._failed_scans >= self.settings.offline_after:
                    raise PeerUnavailable("not answering")
            next_scan += self.settings.read_interval
            now = time.monotonic()
            next_scan = max(next_scan, now)
            await self._sleep(next_scan - now)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), timeout=max(0.0, seconds))

    async def close(self) -> None:
        self.link.close()

    # ------------------------------------------------------------------ reading
    async def scan(self) -> dict[str, Value]:
        """Read the whole plan; failed requests are logged, counted and skipped."""
        self._count("scans")
        self._scan_errors = 0
        values: dict[str, Value] = {}
        for request in self.device.plan.requests:
            if self.ctx.stopping.is_set():
                break
            async with self.link.lock:
                try:
                    self._count("requests")
                    words = await self.link.read(self.device.unit_id, request)
                except RequestFailed as exc:
                    self._request_failed(exc, f"read {request.table} {request.address}"
                                              f"+{request.count}")
                    if exc.kind == "disconnected":
                        break
                    continue
            values.update(self.device.decode(request, words))
        serial_name = self.device.map.meta.get("serial_number", "")
        if serial_name in values and not self.serial:
            self.serial = str(values[serial_name]).strip()
        return values

    def _request_failed(self, exc: RequestFailed, what: str) -> None:
        key = {"exception": "exceptions", "timeout": "timeouts", "garbled": "garbled"}.get(
            exc.kind, "timeouts")
        self._count(key)
        self.ctx.counters.error(f"{what}: {exc}")
        quiet = self._failure.failing or self._scan_errors > 0
        self._scan_errors += 1
        self.log.log(logging.DEBUG if quiet else logging.WARNING, "%s: %s failed: %s",
                     self._where, what, exc)

    # ------------------------------------------------------------------ commands
    async def receive(self, envelope: Envelope) -> None:
        data = envelope.data if isinstance(envelope.data, dict) else {}
        command = data.get("command")
        reply_to = envelope.source_transport
        if "device" in data and str(data["device"]) not in (
            str(self.device.unit_id), self.info["device_identifier"], self.ctx.name
        ):
            await self._result(reply_to, data, False, "rejected",
                               f"no device {data['device']!r} here")
            return
        if command == "write":
            await self._write(reply_to, data)
        else:
            self.ctx.counters.error(f"unsupported command {command!r}")
            await self._result(reply_to, data, False, "unsupported",
                               f"unknown command {command!r}; known: write, describe")

    async def _result(self, target: str, command: dict[str, Any], ok: bool, result: str,
                      detail: str = "", **extra: Any) -> None:
        await self.ctx.emit(EVENT, command_result(command, ok, result, detail, **extra),
                            target=target, info=self.info)

    async def _write(self, reply_to: str, data: dict[str, Any]) -> None:
        try:
            ops = self.device.check_write(data.get("values"))
        except WriteRejected as exc:
            self._count("writes_rejected")
            self.ctx.counters.error(f"write rejected: {exc}")
            self.log.warning("%s: write rejected: %s", self._where, exc)
            await self._result(reply_to, data, False, "rejected", str(exc))
            return
        unit = self.device.unit_id
        readback: dict[str, Value] = {}
        async with self.link.lock:
            try:
                for op in ops:
                    current = 0
                    if op.needs_current:
                        words = await self.link.read(unit, self.device.single_read(op.spec))
                        current = int(words[0])
                    await self.link.write(unit, op.spec, op.words(current))
                    self._count("writes")
                for op in ops:
                    if not op.spec.readable:
                        continue
                    request = self.device.single_read(op.spec)
                    readback.update(self.device.decode(request, await self.link.read(unit,
                                                                                    request)))
            except RequestFailed as exc:
                self._request_failed(exc, "write")
                result = "timeout" if exc.kind == "timeout" else "error"
                await self._result(reply_to, data, False, result, str(exc), values=readback)
                return
        self.log.info("%s: wrote %s", self._where, readback)
        await self._result(reply_to, data, True, "ok", values=readback)


@register
class ModbusTcpTransport(ModbusTransport):
    kind: ClassVar[str] = "modbus_tcp"
    Settings: ClassVar[type[ModbusSettings]] = ModbusTcpSettings


@register
class ModbusRtuTransport(ModbusTransport):
    kind: ClassVar[str] = "modbus_rtu"
    Settings: ClassVar[type[ModbusSettings]] = ModbusRtuSettings
