"""Modbus TCP re-export: a bus of two devices (pymodbus's server as the devices) read by the
gateway, whose ``reexport_listen`` server is then read by pymodbus's client: same unit ids,
same addresses, the words of the last scan; writes and unread registers refused; a silenced
device answers "gateway target failed to respond"; the port is claimed like any other."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.claims import effective_claims
from gateway.config import ConfigError, load_config
from pytests.helpers import Harness, async_wait_for, free_port
from simulators.modbus_bus import BusSimulator
from simulators.sunspec_device import SunSpecSimulator
from transports.modbus.settings import ModbusTcpSettings
from transports.modbus_bus.settings import ModbusBusTcpSettings
from transports.modbus_bus.transport import ModbusBusTcpTransport, ModbusTcpTransport


def test_a_bus_is_served_again_unit_by_unit(tmp_path: Path) -> None:
    device_port, export_port = free_port(), free_port()
    sim = BusSimulator({1: "eg4_v58", 2: "sdm630"}, tcp_port=device_port, dynamic=False)
    settings = ModbusBusTcpSettings(
        transport="modbus_bus_tcp", host="127.0.0.1", port=device_port,
        devices="inverter, meter", reexport_listen=f"127.0.0.1:{export_port}",
        timeout=0.3, retries=0, offline_after=1, read_interval=0.3,
        **{"inverter.unit": "1", "inverter.protocol_version": "eg4_v58",
           "meter.unit": "2", "meter.protocol_version": "sdm630"})

    async def main() -> None:
        await sim.start()
        h = Harness(ModbusBusTcpTransport, settings, "bus", tmp_path / "state")
        client = AsyncModbusTcpClient("127.0.0.1", port=export_port, timeout=2, retries=0)
        try:
            await h.start()
            await async_wait_for(lambda: {e.source_transport_info.get("device")
                                          for e in h.of_kind("reading")} >= {"inverter", "meter"})
            assert await client.connect()
            inverter, meter = sim.units[1], sim.units[2]
            request = h.transport.members["inverter"].blocks.plan.requests[0]
            table = request.table
            read = (client.read_input_registers if table == "input"
                    else client.read_holding_registers)
            reply = await read(request.address, count=request.count, device_id=1)
            assert not reply.isError(), reply
            assert reply.registers == [int(inverter.store[table].get(a, 0)) for a in range(
                request.address, request.address + request.count)]
            spec = meter.map["voltage_l1"]
            reply = await client.read_input_registers(spec.address, count=spec.count,
                                                      device_id=2)
            assert not reply.isError() and reply.registers == [
                meter.store["input"][spec.address], meter.store["input"][spec.address + 1]]
            # read-only, and nothing made up
            refused = await client.write_register(request.address, 1, device_id=1)
            assert refused.isError() and refused.exception_code == 1
            never_read = await client.read_holding_registers(60000, count=2, device_id=2)
            assert never_read.isError() and never_read.exception_code == 2
            # a device the bus no longer hears: exception 11, as a Modbus gateway answers
            sim.silence(2)
            members = h.transport.members
            await async_wait_for(lambda: members["meter"].available is False, timeout=30)
            gone = await client.read_input_registers(spec.address, count=2, device_id=2)
            assert gone.isError() and gone.exception_code == 11
        finally:
            client.close()
            await h.stop()
            await sim.stop()

    asyncio.run(main())


def test_a_sunspec_device_is_served_at_its_own_addresses(tmp_path: Path) -> None:
    device_port, export_port = free_port(), free_port()
    sim = SunSpecSimulator({1: "inverter"}, tcp_port=device_port, dynamic=False)
    settings = ModbusTcpSettings(transport="modbus_tcp", port=device_port,
                                 protocol_version="sunspec", read_interval=0.3,
                                 reexport_listen=f"127.0.0.1:{export_port}")

    async def main() -> None:
        await sim.start()
        h = Harness(ModbusTcpTransport, settings, "pv", tmp_path / "state")
        client = AsyncModbusTcpClient("127.0.0.1", port=export_port, timeout=2, retries=0)
        try:
            await h.start()
            await async_wait_for(lambda: h.of_kind("reading"))
            assert await client.connect()
            marker = await client.read_holding_registers(40000, count=4, device_id=1)
            assert not marker.isError()  # discovery's reads are served too: SunS, ID 1
            assert marker.registers == [0x5375, 0x6E53, 1, 66]
            w = sim.units[1].map["inverter_three_phase_W"]
            reply = await client.read_holding_registers(w.address, count=1, device_id=1)
            assert reply.registers == [sim.units[1].store["holding"][w.address]]
        finally:
            client.close()
            await h.stop()
            await sim.stop()

    asyncio.run(main())


def test_the_reexport_port_is_claimed(tmp_path: Path) -> None:
    text = ("[a]\ntransport = modbus_tcp\nprotocol_version = sdm630\n"
            "reexport_listen = 127.0.0.1:1502\n"
            "[b]\ntransport = modbus_bus_tcp\ndevices = m\nm.unit = 1\n"
            "m.protocol_version = sunspec\nreexport_listen = 127.0.0.1:1502\n")
    path = tmp_path / "g.ini"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"tcp listen 127.0.0.1:1502 is already used by \[a\]"):
        load_config(path, environ={})
    path.write_text(text.replace("127.0.0.1:1502\n[b]", "127.0.0.1:1503\n[b]"))
    config = load_config(path, environ={})
    assert ("tcp listen", "127.0.0.1:1502") in config.transports["b"].settings.claims()
    held = {(c.what, c.identity, c.section) for c in effective_claims(config)}
    assert ("tcp listen", "127.0.0.1:1503", "a") in held  # as every listening port
    path.write_text(text.replace("127.0.0.1:1502\n[b]", "1502\n[b]"))
    with pytest.raises(ConfigError, match="expected host:port"):
        load_config(path, environ={})
