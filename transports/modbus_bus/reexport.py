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

from protocols.registers import BIT_TABLES, TABLES

#: pymodbus function code -> table
FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 15: "coil",
            6: "holding", 16: "holding", 22: "holding", 23: "holding"}
READ_FC = frozenset({1, 2, 3, 4})
SPAN = 0x10000


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

    def __init__(self, host: str, port: int, units: Mapping[int, tuple[int, int]],
                 available: Callable[[int], bool], log: logging.Logger) -> None:
        """``units``: unit id -> (coils, discrete inputs) its map spans: pymodbus checks a
        bit block in time quadratic in its size, so those are served as far as maps go."""
        self.host, self.port = host, port
        self.bit_spans = dict(units)
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

        coils, discrete = (max(16, -(-n // 16) * 16) for n in self.bit_spans[unit])
        words = [SimData(0, count=SPAN, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(unit, simdata=(
            [SimData(0, count=coils, values=False, datatype=DataType.BITS)],
            [SimData(0, count=discrete, values=False, datatype=DataType.BITS)],
            words, list(words)), action=action)

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
        for _ in range(200):  # until it accepts (or the task failed: port in use)
            if self._task.done():
                self._task.result()
                raise OSError(f"cannot listen on {self.host}:{self.port}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
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

