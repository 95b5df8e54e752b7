"""The bus side: a pymodbus async client, one request at a time, failures sorted by kind.

A failed request raises :class:`RequestFailed` with ``kind``:

- ``exception``: the device answered with a Modbus exception (code in the detail);
- ``timeout``: nothing came back (after the client's retries);
- ``garbled``: bytes came back but no valid frame (bad CRC, wrong length); pymodbus drops such
  frames, so we tell this from silence by watching the raw bytes that arrived;
- ``disconnected``: the connection is gone (TCP closed, serial port vanished).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from protocols.read_plan import ReadRequest
from protocols.registers import BIT_TABLES, RegisterValue
from transports.modbus.settings import ModbusRtuSettings, ModbusSettings, ModbusTcpSettings

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "device failure", 5: "acknowledge", 6: "device busy", 8: "memory parity error",
    10: "gateway path unavailable", 11: "gateway target failed to respond",
}


class RequestFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


class ModbusLink:
    """One client for one bus or TCP connection; callers serialise use with ``lock``."""

    def __init__(self, settings: ModbusSettings) -> None:
        self.settings = settings
        self.lock = asyncio.Lock()
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._rx = bytearray()
        self._last_request = 0.0

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx.clear()
        else:
            self._rx += data
        return data

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        s = self.settings
        common: dict[str, Any] = {
            "timeout": s.timeout, "retries": s.retries, "reconnect_delay": 0,
            "trace_packet": self._trace,
        }
        if isinstance(s, ModbusTcpSettings):
            return AsyncModbusTcpClient(s.host, port=s.port, **common)
        assert isinstance(s, ModbusRtuSettings)
        return AsyncModbusSerialClient(
            s.port, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits,
            bytesize=s.bytesize, **common,
        )

    @property
    def connected(self) -> bool:
        return self.client is not None and bool(self.client.connected)

    async def connect(self) -> bool:
        self.close()
        self.client = self._make_client()
        try:
            return bool(await self.client.connect()) and self.connected
        except (OSError, ModbusException):
            return False

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def _pace(self) -> None:
        delay = self.settings.request_delay
        if delay > 0:
            wait = self._last_request + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.connected:
            raise RequestFailed("disconnected", "not connected")
        await self._pace()
        assert self.client is not None
        try:
            reply = await getattr(self.client, method)(*args, **kwargs)
        except ConnectionException as exc:
            raise RequestFailed("disconnected", str(exc)) from None
        except ModbusIOException:
            if self._rx:
                raise RequestFailed("garbled", f"no valid frame in {bytes(self._rx).hex(' ')}") \
                    from None
            if not self.connected:
                raise RequestFailed("disconnected", "connection lost") from None
            raise RequestFailed("timeout", f"no reply within {self.settings.timeout} s") from None
        except ModbusException as exc:
            raise RequestFailed("garbled", str(exc)) from None
        finally:
            self._last_request = time.monotonic()
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise RequestFailed(
                "exception", f"exception {code} ({name}) in {bytes(self._rx).hex(' ')}"
            )
        return reply

    async def read(self, unit: int, request: ReadRequest) -> list[int] | list[bool]:
        method = {
            "coil": "read_coils", "discrete": "read_discrete_inputs",
            "holding": "read_holding_registers", "input": "read_input_registers",
        }[request.table]
        reply = await self._call(method, request.address, count=request.count, device_id=unit)
        if request.table in BIT_TABLES:
            bits = list(reply.bits)[: request.count]
            if len(bits) < request.count:
                raise RequestFailed("garbled", f"{len(bits)} bits for {request.count}")
            return bits
        words = list(reply.registers)
        if len(words) != request.count:
            raise RequestFailed("garbled", f"{len(words)} registers for {request.count}")
        return words

    async def write(self, unit: int, spec: RegisterValue, words: list[int] | list[bool]) -> None:
        if spec.table == "coil":
            await self._call("write_coil", spec.address, bool(words[0]), device_id=unit)
        elif len(words) == 1:
            await self._call("write_register", spec.address, int(words[0]), device_id=unit)
        else:
            await self._call(
                "write_registers", spec.address, [int(w) for w in words], device_id=unit
            )
