"""The one place that talks to pymodbus: a link (TCP or serial line), one request at a time.

A link is built from a small description (:class:`TcpEndpoint`, :class:`SerialLine`) and
serves :meth:`ModbusLink.read` and :meth:`ModbusLink.write`, each with its own
:class:`CallPolicy` (timeout, retries, pauses), so that devices of one bus keep their own
figures. A failed request raises one of the :class:`RequestFailed` kinds, which callers tell
apart by type:

- :class:`ExceptionReply`: the device answered with a Modbus exception (``code``);
- :class:`NoReply`: nothing came back, after the retries;
- :class:`GarbledReply`: bytes came back but no valid frame (bad CRC, wrong length, a reply
  of the wrong size); pymodbus drops such frames, so it is told from silence by the raw
  bytes that arrived;
- :class:`Disconnected`: the connection is gone (TCP closed, serial port vanished).

pymodbus would close a TCP link after a few unanswered requests in a row: behind a gateway
that is one dead device, not a dead link, so the link never lets it; whoever owns the link
decides when to close it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from protocols.read_plan import LinkCost, ReadRequest, RtuCost, TcpCost
from protocols.registers import BIT_TABLES, RegisterValue

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "device failure", 5: "acknowledge", 6: "device busy", 8: "memory parity error",
    10: "gateway path unavailable", 11: "gateway target failed to respond",
}
#: unanswered requests in a row after which pymodbus may drop the link: never
NEVER_DISCONNECT = 1 << 30
#: the function code of a successful reply, per read table and per kind of write
READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_COIL, WRITE_REGISTER, WRITE_REGISTERS = 5, 6, 16
#: raw bytes quoted in a failure, at most (a hostile device may send kilobytes)
QUOTE_BYTES = 64

log = logging.getLogger(__name__)


def explain_frame(raw: bytes, tcp: bool, unit: int, function: int, sent: bytes = b"") -> str:
    """What is wrong with a reply pymodbus refused, in words (pure; for the one WARNING).

    ``function`` is the request's function code; ``unit`` the device addressed; ``sent`` the
    request's bytes (for the transaction id over TCP).
    """
    quoted = raw[:QUOTE_BYTES].hex(" ") + (" ..." if len(raw) > QUOTE_BYTES else "")
    problems: list[str] = []
    if tcp:
        if len(raw) < 9:
            return f"{len(raw)} bytes, shorter than a Modbus TCP reply: {quoted}"
        tid, protocol, length, got_unit = struct.unpack(">HHHB", raw[:7])
        pdu = raw[7:]
        if len(sent) >= 2 and tid != int.from_bytes(sent[:2], "big"):
            problems.append(f"transaction id {tid}, expected {int.from_bytes(sent[:2], 'big')}")
        if protocol != 0:
            problems.append(f"protocol id {protocol}, not 0")
        if length != len(pdu) + 1:
            problems.append(f"header length {length} for {len(pdu) + 1} bytes")
    else:
        if len(raw) < 5:
            return f"{len(raw)} bytes, shorter than a Modbus RTU reply: {quoted}"
        got_unit, pdu = raw[0], raw[1:-2]
    if got_unit != unit:
        problems.append(f"unit {got_unit}, expected {unit}")
    got_function = pdu[0] if pdu else 0
    if got_function & 0x7F != function:
        problems.append(f"function code {got_function}, expected {function}")
    elif function in READ_FUNCTION.values() and not got_function & 0x80 and len(pdu) >= 2:
        if pdu[1] != len(pdu) - 2:
            problems.append(f"byte count {pdu[1]} for {len(pdu) - 2} data bytes")
    return "; ".join(problems or ["no valid frame"]) + f" in {quoted}"


class _ProtocolErrors:
    """The loop's exception handler while Modbus links run on it: pymodbus raises inside
    ``data_received`` on some malformed replies, which asyncio would log as "Fatal error:
    protocol.data_received() call failed" with a traceback. For a watched link's protocol the
    error goes to that link (one WARNING from its owner); anything else to the previous
    handler."""

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]
                 | None) -> None:
        self.previous = previous
        self.watched: weakref.WeakKeyDictionary[object, Callable[[BaseException], None]] = (
            weakref.WeakKeyDictionary())

    @classmethod
    def on(cls, loop: asyncio.AbstractEventLoop) -> _ProtocolErrors:
        handler = loop.get_exception_handler()
        if isinstance(handler, cls):
            return handler
        mine = cls(handler)
        loop.set_exception_handler(mine)
        return mine

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        protocol = context.get("protocol")
        notify = self.watched.get(protocol) if protocol is not None else None
        exc = context.get("exception")
        if notify is not None and isinstance(exc, BaseException):
            log.debug("pymodbus failed on a reply: %s", exc)
            notify(exc)
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


# ---------------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class TcpEndpoint:
    """A Modbus TCP device or gateway."""

    host: str
    port: int = 502

    def cost(self, turnaround: float) -> LinkCost:
        """What a read costs here (planning): a round trip per request."""
        return TcpCost(turnaround=turnaround)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SerialLine:
    """An RS485/RS232 line (RTU framing)."""

    port: str
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def bits_per_char(self) -> int:
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def cost(self, turnaround: float) -> LinkCost:
        """What a read costs here (planning): wire time at the line's speed per request."""
        return RtuCost(self.baudrate, self.bits_per_char, turnaround)

    def __str__(self) -> str:
        return self.port


LinkDescription = TcpEndpoint | SerialLine


@dataclass(frozen=True)
class CallPolicy:
    """How one device is asked: seconds per reply, re-sends when none comes, pauses.

    ``quiet``: seconds of silence on the link before each request (slow devices);
    ``settle``: seconds after connecting before the first request.
    """

    timeout: float = 1.0
    retries: int = 1
    quiet: float = 0.0
    settle: float = 0.0


# ---------------------------------------------------------------------- failures
class RequestFailed(Exception):
    """A request that did not come back with data; see the subclasses.

    ``counter``: the transport counter a failure of this kind adds to ("" for none).
    """

    counter: ClassVar[str] = ""


class ExceptionReply(RequestFailed):
    counter = "exceptions"

    def __init__(self, code: int, raw: bytes = b"") -> None:
        self.code = code
        self.raw = raw
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"exception {code} ({name})" + (f" in {raw.hex(' ')}" if raw else ""))


class NoReply(RequestFailed):
    counter = "timeouts"

    def __init__(self, timeout: float, tries: int) -> None:
        self.timeout = timeout
        self.tries = tries
        super().__init__(f"no reply within {timeout:g} s"
                         + (f" ({tries} tries)" if tries > 1 else ""))


class GarbledReply(RequestFailed):
    counter = "garbled"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"garbled reply: {detail}")


class Disconnected(RequestFailed):
    def __init__(self, detail: str = "not connected") -> None:
        self.detail = detail
        super().__init__(f"disconnected: {detail}")


# ---------------------------------------------------------------------- the link
class ModbusLink:
    """One client for one bus or TCP connection, one request at a time (its owner's loop
    makes them one after another)."""

    def __init__(self, description: LinkDescription, *, connect_timeout: float = 3.0) -> None:
        self.description = description
        self.connect_timeout = connect_timeout
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._rx = bytearray()
        self._quiet_from = 0.0
        self._connected_at = 0.0
        self._fault = ""  # what pymodbus choked on inside data_received, if it did
        self._tx = b""  # the last request's bytes
        #: seconds from sending the last successful request to its reply (None if re-sent)
        self.last_exchange: float | None = None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx.clear()
            self._tx = data
        else:
            self._rx += data
        return data

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        d = self.description
        if isinstance(d, TcpEndpoint):
            client: AsyncModbusTcpClient | AsyncModbusSerialClient = AsyncModbusTcpClient(
                d.host, port=d.port, timeout=self.connect_timeout, retries=0,
                reconnect_delay=0, trace_packet=self._trace)
        else:
            client = AsyncModbusSerialClient(
                d.port, baudrate=d.baudrate, parity=d.parity, stopbits=d.stopbits,
                bytesize=d.bytesize, timeout=self.connect_timeout, retries=0,
                reconnect_delay=0, trace_packet=self._trace)
        client.set_max_no_responses(NEVER_DISCONNECT)
        return client

    def _choked(self, exc: BaseException) -> None:
        self._fault = str(exc)[:200]

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> bool:
        self.close()
        self._client = self._make_client()
        _ProtocolErrors.on(asyncio.get_running_loop()).watched[self._client.ctx] = self._choked
        try:
            ok = bool(await self._client.connect()) and self.connected
        except (OSError, ModbusException):
            return False
        self._connected_at = time.monotonic()
        return ok

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, unit: int, request: ReadRequest,
                   policy: CallPolicy) -> list[int] | list[bool]:
        """The request's registers (or bits), exactly ``request.count`` of them."""
        client = await self._ready(policy)
        table, address, count = request.table, request.address, request.count
        if table == "coil":
            call = client.read_coils(address, count=count, device_id=unit)
        elif table == "discrete":
            call = client.read_discrete_inputs(address, count=count, device_id=unit)
        elif table == "holding":
            call = client.read_holding_registers(address, count=count, device_id=unit)
        else:
            call = client.read_input_registers(address, count=count, device_id=unit)
        reply = await self._exchange(call, policy, unit, READ_FUNCTION[table])
        if table in BIT_TABLES:
            bits = list(reply.bits)[:count]
            if len(bits) < count:
                raise GarbledReply(f"{len(bits)} bits for {count}")
            return bits
        words = list(reply.registers)
        if len(words) != count:
            raise GarbledReply(f"{len(words)} registers for {count}")
        return words

    async def write(self, unit: int, spec: RegisterValue, words: list[int] | list[bool],
                    policy: CallPolicy) -> None:
        """Write one value's words (a coil: its bit) to ``spec``'s address."""
        client = await self._ready(policy)
        if spec.table == "coil":
            call = client.write_coil(spec.address, bool(words[0]), device_id=unit)
            function = WRITE_COIL
        elif len(words) == 1:
            call = client.write_register(spec.address, int(words[0]), device_id=unit)
            function = WRITE_REGISTER
        else:
            call = client.write_registers(spec.address, [int(w) for w in words],
                                          device_id=unit)
            function = WRITE_REGISTERS
        await self._exchange(call, policy, unit, function)

    async def _ready(self, policy: CallPolicy) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """The client, once the policy's pauses have passed; its timeout and retries set."""
        if self._client is None or not self._client.connected:
            raise Disconnected()
        ready = max(self._quiet_from + policy.quiet, self._connected_at + policy.settle)
        pause = ready - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        if self._client is None or not self._client.connected:
            raise Disconnected()
        # pymodbus keeps both in its transaction manager: the reply timeout is its
        # ``timeout_connect``, and it re-sends ``retries`` times itself
        self._client.ctx.comm_params.timeout_connect = policy.timeout
        self._client.ctx.retries = policy.retries
        return self._client

    async def _exchange(self, call: Awaitable[ModbusPDU], policy: CallPolicy, unit: int,
                        function: int) -> ModbusPDU:
        """Await one pymodbus call and sort its outcome into data or a failure kind; a reply
        from another unit or with another function code than asked is garbled, not data."""
        self.last_exchange = None
        self._fault = ""
        sent = time.monotonic()
        tcp = isinstance(self.description, TcpEndpoint)
        try:
            reply = await call
        except ConnectionException as exc:
            if self._fault and self._rx:  # pymodbus choked on the reply and dropped the link
                raise GarbledReply(self._garbled(tcp, unit, function)) from None
            raise Disconnected(str(exc)[:200]) from None
        except ModbusIOException:
            if self._rx:
                raise GarbledReply(self._garbled(tcp, unit, function)) from None
            if not self.connected:
                raise Disconnected("connection lost") from None
            raise NoReply(policy.timeout, policy.retries + 1) from None
        except ModbusException as exc:
            raise GarbledReply(str(exc)[:200]) from None
        finally:
            self._quiet_from = time.monotonic()
        if isinstance(reply, ExceptionResponse):
            if reply.function_code & 0x7F != function:
                raise GarbledReply(self._garbled(tcp, unit, function))
            raise ExceptionReply(int(reply.exception_code), bytes(self._rx[:QUOTE_BYTES]))
        if reply.isError():
            raise GarbledReply(f"error reply {str(reply)[:200]}")
        if reply.function_code != function or reply.dev_id != unit:
            raise GarbledReply(self._garbled(tcp, unit, function))
        if not reply.retries:
            self.last_exchange = self._quiet_from - sent
        return reply

    def _garbled(self, tcp: bool, unit: int, function: int) -> str:
        detail = explain_frame(bytes(self._rx), tcp, unit, function, self._tx)
        return f"{self._fault}: {detail}" if self._fault else detail
