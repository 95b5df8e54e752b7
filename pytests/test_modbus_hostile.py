"""Modbus replies that lie: a small asyncio TCP server on loopback answers every request with a
crafted frame (wrong byte count, header length, function code, unit, transaction id). Each is a
GarbledReply naming what was wrong, never data; one WARNING per device; no library traceback.
Values outside the map's declared range are counted rejections."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway import logs
from protocols.read_plan import ReadRequest
from pytests.helpers import Harness, async_wait_for
from transports.modbus.link import (
    CallPolicy,
    GarbledReply,
    ModbusLink,
    SerialLine,
    TcpEndpoint,
    explain_frame,
)
from transports.modbus.settings import ModbusTcpSettings
from transports.modbus_bus.transport import ModbusTcpTransport

Craft = Callable[[int, int, int, int], bytes]  # (transaction id, unit, function, count) -> frame


def reply(tid: int, unit: int, function: int, count: int, *, byte_count: int | None = None,
          length_extra: int = 0, value: int = 100) -> bytes:
    data = b"".join(struct.pack(">H", value + i) for i in range(count))
    pdu = bytes([function, len(data) if byte_count is None else byte_count]) + data
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1 + length_extra, unit) + pdu


BAD: dict[str, tuple[Craft, str]] = {
    "byte count": (lambda t, u, f, n: reply(t, u, f, n, byte_count=2 * n + 2), "byte count"),
    "header length": (lambda t, u, f, n: reply(t, u, f, n, length_extra=3), "header length"),
    "function code": (lambda t, u, f, n: reply(t, u, 4 if f == 3 else 3, n), "function code 4"),
    "unit": (lambda t, u, f, n: reply(t, u + 1, f, n), "unit 2, expected 1"),
    "transaction": (lambda t, u, f, n: reply(t + 7, u, f, n), "transaction id"),
}


@asynccontextmanager
async def lying_server(craft: Craft) -> AsyncIterator[int]:
    """A Modbus TCP 'device' on a free loopback port answering every request with craft()."""

    writers: list[asyncio.StreamWriter] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                body = await reader.readexactly(length - 1)
                count = struct.unpack(">H", body[3:5])[0] if len(body) >= 5 else 1
                writer.write(craft(tid, unit, body[0], min(count, 125)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:  # the handlers see EOF and end before the loop does
            writer.close()
        await asyncio.sleep(0.1)


def test_explain_frame_names_what_is_wrong() -> None:
    good = reply(1, 1, 3, 2)
    sent = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 2)
    assert explain_frame(good, True, 1, 3, sent).startswith("no valid frame")
    assert "unit 9, expected 1" in explain_frame(reply(1, 9, 3, 2), True, 1, 3, sent)
    assert "byte count 6 for 4" in explain_frame(reply(1, 1, 3, 2, byte_count=6), True, 1, 3)
    assert "header length 10 for 7" in explain_frame(reply(1, 1, 3, 2, length_extra=3), True, 1, 3)
    assert "transaction id 5, expected 1" in explain_frame(reply(5, 1, 3, 2), True, 1, 3, sent)
    assert "shorter than" in explain_frame(b"\x00\x01", True, 1, 3)
    long = explain_frame(b"\x01\x03" + b"\xff" * 5000, False, 1, 3)
    assert len(long) < 300 and long.endswith("...")


@pytest.mark.parametrize("kind", list(BAD))
def test_a_lying_reply_is_garbled_with_a_reason_and_no_traceback(
    kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    craft, words = BAD[kind]
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.setup("modbus_test", "INFO")  # the gateway's own handlers and filters, to stderr

    async def main() -> None:
        async with lying_server(craft) as port:
            link = ModbusLink(TcpEndpoint("127.0.0.1", port), connect_timeout=2.0)
            for _ in range(3):
                if not link.connected:
                    assert await link.connect()
                with pytest.raises(GarbledReply) as caught:
                    await link.read(1, ReadRequest("holding", 0, 2, ("a", "b")),
                                    CallPolicy(timeout=0.3, retries=0))
                assert words in str(caught.value), str(caught.value)
            link.close()

    try:
        asyncio.run(main())
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Fatal error" not in err, err
    assert "pymodbus" not in err, err


MAP = """#! manufacturer = Test
name,table,address,type,unit,min,max
soc,holding,0,u16,%,0,100
power,holding,1,u16,W,,
"""


def test_wrong_function_code_and_out_of_range_values_never_become_readings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "test_map.csv"
    path.write_text(MAP)
    answers = {"craft": BAD["function code"][0]}

    def switchable(t: int, u: int, f: int, n: int) -> bytes:
        return answers["craft"](t, u, f, n)

    async def main() -> None:
        async with lying_server(switchable) as port:
            settings = ModbusTcpSettings(transport="modbus_tcp", protocol_version=str(path),
                                         port=port, read_interval=0.2, timeout=0.3, retries=0)
            h = Harness(ModbusTcpTransport, settings, "meter", tmp_path / "state")
            await h.start()
            try:
                extra = h.ctx.counters.extra
                await async_wait_for(lambda: extra.get("garbled", 0) >= 3, 15)
                assert not [e for e in h.of_kind("reading") if "soc" in e.data]
                # now an honest frame, but soc = 300 %: power is read, soc rejected
                answers["craft"] = lambda t, u, f, n: reply(t, u, f, n, value=300)
                await async_wait_for(lambda: extra.get("out_of_range", 0) >= 3, 15)
                read = [e.data for e in h.of_kind("reading") if "power" in e.data]
                assert read and all("soc" not in r for r in read) and read[-1]["power"] == 301
            finally:
                await h.stop()

    asyncio.run(main())
    garbled = [r for r in caplog.records if "function code 4, expected 3" in r.getMessage()
               and r.levelno == logging.WARNING]
    assert len(garbled) == 1, [r.getMessage() for r in garbled]
    assert "meter" in garbled[0].getMessage() or "127.0.0.1" in garbled[0].getMessage()
    ranged = [r.getMessage() for r in caplog.records
              if "outside the map's range" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(ranged) == 1 and "soc = 300" in ranged[0], ranged
    assert not [r for r in caplog.records if r.exc_info]


def _crc(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


@pytest.mark.parametrize(("kind", "words"), [("function code", "function code 4, expected 3"),
                                             ("unit", "unit 2, expected 1"),
                                             ("byte count", "byte count 6 for 4")])
def test_a_lying_rtu_reply_on_a_real_pty_is_garbled(kind: str, words: str) -> None:
    """The same lies over RTU (valid CRC, so only the content is wrong), on a PTY pair."""
    import os
    import tty

    def lie(unit: int, function: int, count: int) -> bytes:
        data = b"".join(struct.pack(">H", 100 + i) for i in range(count))
        body = bytes([unit + (kind == "unit"), 4 if kind == "function code" else function,
                      len(data) + 2 * (kind == "byte count")]) + data
        return body + _crc(body)

    async def main() -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            request = os.read(master, 256)
            if len(request) >= 8:
                os.write(master, lie(request[0], request[1], struct.unpack(">H", request[4:6])[0]))

        loop.add_reader(master, readable)
        link = ModbusLink(SerialLine(os.ttyname(slave), 115200), connect_timeout=2.0)
        try:
            assert await link.connect()
            for _ in range(2):
                with pytest.raises(GarbledReply) as caught:
                    await link.read(1, ReadRequest("holding", 0, 2, ("a", "b")),
                                    CallPolicy(timeout=0.3, retries=0))
                assert words in str(caught.value), str(caught.value)
        finally:
            link.close()
            loop.remove_reader(master)
            os.close(master)
            os.close(slave)

    asyncio.run(main())
