"""A Modbus device simulator driven by the register maps (pymodbus server, TCP and RTU on a PTY).

Each simulated unit serves one map from ``protocols/maps`` (or a map file): its registers are
encoded with the same codec the transport decodes with (``protocols.register_codec``), the
gaps between values read as 0 unless the map declares them unreadable, and values move
plausibly (PV following a day curve, the battery's state of charge, a meter's power and
energy: the arithmetic is in ``simulators/modbus_physics.py``).

Faults for tests: an address range answering an exception, silence (no reply, for all requests
or a range), garbled replies (CRC errors on RTU), and a restart (the server goes away and comes
back with the same register contents).

Size: just over the ~400 guide: the physics and the PTY relay are already apart; what is left is
one server with its fault switches and command line, which read best together.

    python -m simulators.modbus_device --map eg4_v58 --tcp-port 5020
    python -m simulators.modbus_device --map sdm630 --pty-link /tmp/ttySIM --unit 1 --unit 2

RTU: two PTY pairs joined by a relay (``simulators/pty_relay.py``); the pymodbus serial server
opens one, the gateway opens the other through the ``--pty-link`` symlink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from protocols.register_codec import decode, encode_value, to_raw
from protocols.registers import (
    BIT_TABLES,
    RegisterMap,
    Value,
    WriteRejected,
    load_map,
)
from simulators.modbus_physics import inverter_step, kwh_after, meter_phases, sunshine, typical
from simulators.pty_relay import PtyRelay
from simulators.serve import serve_until_signal, setup_logging

log = logging.getLogger("simulators.modbus_device")
FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
            16: "holding", 23: "holding", 4: "input"}
WRITE_FC = frozenset({5, 6, 15, 16})
Range = tuple[str, int, int]


class DeviceModel:
    """One simulated unit: a map, a register store, plausible motion, faults.

    ``clock`` is injectable so that tests freeze time (``dynamic=False`` freezes motion).
    """

    def __init__(
        self,
        unit_id: int,
        regmap: RegisterMap,
        *,
        dynamic: bool = True,
        day_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unit_id = unit_id
        self.map = regmap
        self.dynamic = dynamic
        self.day_seconds = day_seconds
        self.clock = clock
        self._acc: dict[str, float] = {}  # integrated values kept finer than their registers
        self.store: dict[str, dict[int, int | bool]] = {t: {} for t in
                                                        ("holding", "input", "coil", "discrete")}
        self.exception_ranges: list[tuple[str, int, int, ExcCodes]] = []
        self.silent_ranges: list[Range] = []
        self.requests = 0
        self._rng = random.Random(unit_id)
        self._last = clock()
        self._start_hour = 9.0
        self.drop_reply: Callable[[], None] = lambda: None
        for spec in regmap.values:
            self.set_value(spec.name, typical(spec))
        serial = regmap.meta.get("serial_number", "")
        if serial in regmap:
            spec = regmap[serial]
            width = spec.count * 2 - 3
            self.set_value(serial, f"SIM{unit_id:0{width}d}" if spec.dtype == "string"
                           else 10_000_000 + unit_id)
        for name, value in (("battery_soc", 55), ("com_address", unit_id),
                            ("modbus_address", unit_id), ("system_type", 3),
                            ("demand_period", 60), ("baud_rate", 2),
                            ("network_parity_stop", 0)):
            if name in regmap:
                self.set_value(name, value)

    # ------------------------------------------------------------------ values
    def set_value(self, name: str, value: Value) -> None:
        """Put an engineering value into the registers (tests, faults, the CLI)."""
        self._acc.pop(name, None)
        self._put(name, value)

    def _put(self, name: str, value: Value) -> None:
        spec = self.map[name]
        table = self.store[spec.table]
        current = int(table.get(spec.address, 0))
        for i, word in enumerate(encode_value(spec, value, current)):
            table[spec.address + i] = word

    def value(self, name: str) -> Value:
        spec = self.map[name]
        table = self.store[spec.table]
        return decode(spec, [table.get(a, 0) for a in range(spec.address, spec.end)])

    # ------------------------------------------------------------------ motion
    def hour(self) -> float:
        return (self._start_hour + 24.0 * (self.clock() / self.day_seconds)) % 24.0

    def refresh(self) -> None:
        """Advance the physics to now (values change only when someone reads)."""
        now = self.clock()
        dt, self._last = max(0.0, now - self._last), now
        if not self.dynamic or dt == 0:
            return
        names = self.map
        noise = self._rng.uniform
        sun = sunshine(self.hour())
        if "pv_total_power" in names:
            sim_dt = dt * 86400.0 / self.day_seconds  # simulated seconds (a compressed day)
            soc = self._acc.setdefault("battery_soc", float(self.value("battery_soc")))
            step = inverter_step(sun, self.hour, soc, sim_dt, noise)
            self._acc["battery_soc"] = step.soc
            for name, value in step.updates.items():
                if name in names:
                    self._put(name, value)
            self._integrate(step.energy, sim_dt)
        if "power_total" in names:
            total = 0.0
            for phase, volts, watts in meter_phases(self.clock, noise):
                total += watts
                for name, value in ((f"voltage_{phase}", volts), (f"power_{phase}", watts),
                                    (f"current_{phase}", abs(watts) / volts)):
                    if name in names:
                        self._put(name, round(value, 2))
            self._put("power_total", round(total, 1))
            self._integrate({"import_energy": total, "total_energy": total}, dt)

    def _integrate(self, watts: dict[str, float], dt: float) -> None:
        for name, power in watts.items():
            if name in self.map:
                kwh = kwh_after(self._acc.setdefault(name, float(self.value(name))), power, dt)
                self._acc[name] = kwh
                self._put(name, kwh)

    # ------------------------------------------------------------------ faults
    def fail_range(self, table: str, first: int, last: int,
                   code: ExcCodes = ExcCodes.ILLEGAL_ADDRESS) -> None:
        self.exception_ranges.append((table, first, last, code))

    def silence_range(self, table: str, first: int, last: int) -> None:
        self.silent_ranges.append((table, first, last))

    def clear_faults(self) -> None:
        self.exception_ranges.clear()
        self.silent_ranges.clear()

    # ------------------------------------------------------------------ pymodbus side
    async def action(  # noqa: PLR0917 - pymodbus's callback signature
        self, fc: int, start: int, address: int, count: int,
        registers: list[int], set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this before serving a request; ``registers`` is its block."""
        self.requests += 1
        table = FC_TABLE.get(fc, "holding")
        bits = table in BIT_TABLES
        span = len(set_values) if (bits and set_values) else count if not bits else count * 16
        end = address + max(1, span)
        for t, lo, hi in self.silent_ranges:
            if t == table and lo < end and address <= hi:
                self.drop_reply()
                return ExcCodes.DEVICE_BUSY  # built, then dropped before it is sent
        for t, lo, hi, code in self.exception_ranges:
            if t == table and lo < end and address <= hi:
                return code
        if not any(v.table == table for v in self.map.values):
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values is not None and fc in WRITE_FC:
            result = self._write(table, address, list(set_values))
            if result is not None:
                return result
        else:
            self.refresh()
        store = self.store[table]
        if bits:
            size = 16 * (len(registers) - 1)
            flat = [bool(store.get(start * 16 + i, False)) for i in range(size)]
            registers[: len(registers) - 1] = SimUtils.bitsToRegisters(flat)
        else:
            for a in range(address, address + count):
                registers[a - start] = int(store.get(a, 0))
        return None

    def _write(self, table: str, address: int, values: list[Any]) -> ExcCodes | None:
        touched = [v for v in self.map.values
                   if v.table == table and v.address < address + len(values) and address < v.end]
        covered = {a for v in touched if v.writable for a in range(v.address, v.end)}
        if any(a not in covered for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        store = self.store[table]
        before = dict(store)
        for i, word in enumerate(values):
            store[address + i] = bool(word) if table in BIT_TABLES else int(word)
        try:
            for spec in touched:
                to_raw(spec, self.value(spec.name))
        except WriteRejected as exc:
            log.info("unit %d refuses a write: %s", self.unit_id, exc)
            self.store[table] = before
            return ExcCodes.ILLEGAL_VALUE
        return None

    def sim_device(self) -> SimDevice:
        blocks: list[list[SimData]] = []
        for table in ("coil", "discrete", "holding", "input"):
            specs = [v for v in self.map.values if v.table == table]
            end = max((v.end for v in specs), default=1)
            bad = sorted((lo, hi) for t, lo, hi in self.map.unreadable if t == table)
            segments, cursor = [], 0
            for lo, hi in bad:
                if lo > cursor:
                    segments.append((cursor, min(lo, end)))
                cursor = max(cursor, hi + 1)
            if cursor < end:
                segments.append((cursor, end))
            segments = [(a, b) for a, b in segments if b > a] or [(0, 1)]
            if table in BIT_TABLES:
                blocks.append([SimData(a, count=b - a, values=False, datatype=DataType.BITS)
                               for a, b in segments])
            else:
                blocks.append([SimData(a, count=b - a, values=0, datatype=DataType.REGISTERS)
                               for a, b in segments])
        return SimDevice(self.unit_id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                         action=self.action)


class ModbusSimulator:
    """Serves one or more :class:`DeviceModel` units over TCP and/or RTU on a PTY."""

    def __init__(
        self,
        regmap: RegisterMap | str,
        unit_ids: tuple[int, ...] = (1,),
        *,
        host: str = "127.0.0.1",
        tcp_port: int | None = None,
        pty_link: str | None = None,
        baudrate: int = 19200,
        dynamic: bool = True,
        day_seconds: float = 600.0,
    ) -> None:
        self.map = load_map(regmap) if isinstance(regmap, str) else regmap
        self.units = {u: DeviceModel(u, self.map, dynamic=dynamic, day_seconds=day_seconds)
                      for u in unit_ids}
        for unit in self.units.values():
            unit.drop_reply = self._drop_next
        self.host, self.tcp_port, self.pty_link, self.baudrate = host, tcp_port, pty_link, baudrate
        self.silent = False
        self.garble = False
        self._drop = 0
        self._servers: list[ModbusTcpServer | ModbusSerialServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._relay: PtyRelay | None = None

    @property
    def server_pty(self) -> str:
        """The PTY the serial server opens ("" without ``pty_link``)."""
        return self._relay.server_pty if self._relay is not None else ""

    @property
    def unit(self) -> DeviceModel:
        return next(iter(self.units.values()))

    def _drop_next(self) -> None:
        self._drop += 1

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self._drop:
            self._drop -= 1
            return b""
        if self.silent:
            return b""
        if self.garble and len(data) > 4:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    async def start(self) -> None:
        """Start serving; returns once the TCP port accepts and the PTY link exists."""
        if self.pty_link and self._relay is None:
            self._relay = PtyRelay(self.pty_link)
            self._relay.open()
        await self._start_servers()

    async def _start_servers(self) -> None:
        devices = [u.sim_device() for u in self.units.values()]
        if self.tcp_port is not None:
            server = ModbusTcpServer(devices, address=(self.host, self.tcp_port),
                                     trace_packet=self._trace)
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve_forever()))
            await self._until_listening()
        if self._relay is not None:
            server = ModbusSerialServer(
                [u.sim_device() for u in self.units.values()], port=self.server_pty,
                baudrate=self.baudrate, trace_packet=self._trace, ignore_missing_devices=True)
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve_forever()))
            await asyncio.sleep(0.1)

    async def _until_listening(self) -> None:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection(self.host, self.tcp_port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise OSError(f"simulator did not listen on {self.host}:{self.tcp_port}")

    async def _stop_servers(self) -> None:
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._servers.clear()
        self._tasks.clear()

    async def restart(self, down_for: float = 1.0) -> None:
        """The device reboots: it stops answering, then comes back with its registers."""
        await self._stop_servers()
        await asyncio.sleep(down_for)
        await self._start_servers()

    async def stop(self) -> None:
        await self._stop_servers()
        if self._relay is not None:
            self._relay.close()
            self._relay = None


def _range(text: str) -> Range:
    table, _, span = text.partition(":")
    first, _, last = span.partition("-")
    return table, int(first, 0), int(last or first, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.modbus_device",
                                     description="Modbus device simulator driven by a map")
    parser.add_argument("--map", default="eg4_v58", help="map name or .csv path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp-port", type=int, help="serve Modbus TCP on this port")
    parser.add_argument("--pty-link", help="serve Modbus RTU on a PTY linked here")
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--unit", type=int, action="append", help="unit id (repeatable)")
    parser.add_argument("--day-seconds", type=float, default=600.0,
                        help="length of a simulated day (PV curve)")
    parser.add_argument("--static", action="store_true", help="values do not move")
    parser.add_argument("--exception-range", action="append", default=[],
                        help="table:first-last answering an exception, e.g. input:50-59")
    parser.add_argument("--silent-range", action="append", default=[],
                        help="table:first-last never answered")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.tcp_port is None and not args.pty_link:
        parser.error("give --tcp-port and/or --pty-link")
    setup_logging(args.log_level)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
    sim = ModbusSimulator(args.map, tuple(args.unit or [1]), host=args.host,
                          tcp_port=args.tcp_port, pty_link=args.pty_link, baudrate=args.baudrate,
                          dynamic=not args.static, day_seconds=args.day_seconds)
    for unit in sim.units.values():
        for text in args.exception_range:
            unit.fail_range(*_range(text))
        for text in args.silent_range:
            unit.silence_range(*_range(text))

    def ready() -> str:
        where = [f"tcp {args.host}:{args.tcp_port}"] if args.tcp_port is not None else []
        if args.pty_link:
            where.append(f"rtu {args.pty_link}")
        return (f"modbus simulator ready: map {sim.map.name}, units {sorted(sim.units)}, "
                + ", ".join(where))

    async def run() -> None:
        await serve_until_signal(sim.start, sim.stop, ready)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
