"""Modbus TCP re-export: what the gateway reads from its devices, served again (pymodbus's
server) so that a second client (Home Assistant's modbus integration, evcc) can read a device
that accepts one client only, or one on an RS485 line the client cannot reach.

Each device answers on its own unit id with its own register addresses and tables, holding
the words of its last scan (the bus records every answered read here). A register never read
is an exception 2 (illegal address) rather than a made-up 0; a device the bus reports
unavailable answers exception 11 (gateway target failed to respond), as a Modbus gateway does.
Read-only: a write is refused with exception 1 (illegal function); writes go through the
gateway's own commands, where the map's checks and the ``writable`` keys apply.

Imported only by a section with ``reexport_listen`` set: other Modbus processes never load
pymodbus's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.backoff import Backoff
from gateway.reconnect import retry
from protocols.registers import BIT_TABLES, TABLES, RegisterMap
from protocols.sunspec import BASES

#: pymodbus function code -> table
FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 15: "coil",
            6: "holding", 16: "holding", 22: "holding", 23: "holding"}
READ_FC = frozenset({1, 2, 3, 4})
SPAN = 0x10000
#: registers served after each SunSpec base address for a device whose chain is found later
SUNSPEC_WINDOW = 4000
#: table -> the (first, end) register blocks a unit is served with
Spans = dict[str, tuple[tuple[int, int], ...]]


def spans_of(regmap: RegisterMap, sunspec_pending: bool = False) -> Spans:
    """The blocks to serve for a map: from its first to its last register, per table (what
    the server holds costs memory per register: not the whole 65536); for a SunSpec device
    not found yet, windows at the base addresses. Bit tables start at 0 (pymodbus checks a
    bit block in time quadratic in its size: as far as the map goes, in whole registers)."""
    spans: Spans = {}
    for table in TABLES:
        values = [v for v in regmap.values if v.table == table]
        if table in BIT_TABLES:
            end = max((v.end for v in values), default=0)
            spans[table] = ((0, max(16, -(-end // 16) * 16)),)
        elif table == "holding" and sunspec_pending:
            spans[table] = tuple((b, min(SPAN, b + SUNSPEC_WINDOW)) for b in sorted(BASES))
        elif values:
            spans[table] = ((min(v.address for v in values), max(v.end for v in values)),)
        else:
            spans[table] = ((0, 1),)
    return spans


class RegisterImage:
    """One unit's last-read words per table (address -> word, or bit for coil/discrete)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[int, int | bool]] = {t: {} for t in TABLES}

    def record(self, table: str, address: int, words: Sequence[int] | Sequence[bool]) -> None:
        store = self.tables[table]
        for i, word in enumerate(words):
            store[address + i] = bool(word) if table in BIT_TABLES else int(word)

    def has(self, table: str, address: int, count: int) -> bool:
        store = self.tables[table]
        return all(a in store for a in range(address, address + count))


class ReexportServer:
    """A Modbus TCP server of the units' images; ``available(unit)`` says whether the bus
    currently hears that device."""

    def __init__(self, host: str, port: int, units: Mapping[int, Spans],
                 available: Callable[[int], bool], log: logging.Logger) -> None:
        """``units``: unit id -> the blocks it is served with (:func:`spans_of`)."""
        self.host, self.port = host, port
        self.spans = dict(units)
        self.images: dict[int, RegisterImage] = {u: RegisterImage() for u in units}
        self.available = available
        self.log = log
        self.served = 0
        self.refused = 0
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None

    def record(self, unit: int, table: str, address: int,
               words: Sequence[int] | Sequence[bool]) -> None:
        image = self.images.get(unit)
        if image is not None:
            image.record(table, address, words)

    def _device(self, unit: int) -> SimDevice:
        async def action(fc: int, start: int, address: int, count: int,  # noqa: PLR0917
                         registers: list[int], set_values: list[int] | list[bool] | None,
                         ) -> ExcCodes | None:
            return self._serve(unit, fc, start, address, count, registers, set_values)

        blocks = [[SimData(lo, count=hi - lo, values=False if t in BIT_TABLES else 0,
                           datatype=DataType.BITS if t in BIT_TABLES else DataType.REGISTERS)
                   for lo, hi in self.spans[unit][t]]
                  for t in ("coil", "discrete", "holding", "input")]
        return SimDevice(unit, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                         action=action)

    def _serve(self, unit: int, fc: int, start: int, address: int, count: int,  # noqa: PLR0917
               registers: list[int], set_values: list[int] | list[bool] | None,
               ) -> ExcCodes | None:
        if fc not in READ_FC or set_values is not None:
            self.refused += 1
            return ExcCodes.ILLEGAL_FUNCTION
        if not self.available(unit):
            self.refused += 1
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = FC_TABLE[fc]
        image = self.images[unit]
        span = count * 16 if table in BIT_TABLES else count
        if not image.has(table, address, min(span, SPAN - address)):
            self.refused += 1
            return ExcCodes.ILLEGAL_ADDRESS
        store = image.tables[table]
        if table in BIT_TABLES:  # pymodbus hands the block as packed registers
            from pymodbus.simulator.simutils import SimUtils

            size = 16 * (len(registers) - 1)
            flat = [bool(store.get(start * 16 + i, False)) for i in range(size)]
            registers[: len(registers) - 1] = SimUtils.bitsToRegisters(flat)
        else:
            for a in range(address, address + count):
                registers[a - start] = int(store[a])
        self.served += 1
        return None

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
        server = ModbusTcpServer([self._device(u) for u in self.images],
                                 address=(self.host, self.port))
        self._server = server
        self._task = asyncio.create_task(server.serve_forever())
        task = self._task

        async def accepts() -> bool | None:
            if task.done():
                return False  # the server stopped: no use trying
            _, writer = await asyncio.open_connection(self.host, self.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

        # until it accepts (or the task failed: port in use), for 4 s at most
        if not await retry(accepts, attempts=200, backoff=Backoff(0.02, 0.02),
                           retry_on=(OSError,)):
            if task.done():
                task.result()
            raise OSError(f"cannot listen on {self.host}:{self.port}")

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._server = self._task = None

