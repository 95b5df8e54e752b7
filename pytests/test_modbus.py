"""The modbus_tcp / modbus_rtu transports against the map-driven simulator: real pymodbus
servers on 127.0.0.1 and on a real PTY, real clients, no mocks."""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from gateway.message import Envelope
from protocols.read_plan import ReadPlan, ReadRequest, RtuCost
from protocols.registers import load_map
from pytests.helpers import Harness, async_wait_for, free_port, wait_for
from simulators.modbus_device import DeviceModel, ModbusSimulator
from transports import get
from transports.modbus.link import (
    CallPolicy,
    Disconnected,
    ExceptionReply,
    GarbledReply,
    ModbusLink,
    NoReply,
    SerialLine,
    TcpEndpoint,
)
from transports.modbus.settings import ModbusRtuSettings, ModbusTcpSettings
from transports.modbus_bus.transport import ModbusRtuTransport, ModbusTcpTransport

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).parent / "cases" / "modbus"
ALL_TYPES = str(CASES / "all_types" / "map.csv")
FAST = {"timeout": 0.3, "retries": 0, "read_interval": 0.2, "reconnect_max": 0.5}


def _settings(link: str, sim: ModbusSimulator, protocol: str, **extra: Any):
    if link == "tcp":
        return ModbusTcpTransport, ModbusTcpSettings(
            transport="modbus_tcp", protocol_version=protocol, host="127.0.0.1",
            port=sim.tcp_port, **{**FAST, **extra})
    return ModbusRtuTransport, ModbusRtuSettings(
        transport="modbus_rtu", protocol_version=protocol, port=sim.pty_link, baudrate=115200,
        **{**FAST, **extra})


def run_with(
    link: str, protocol: str, tmp_path: Path, body: Callable[[ModbusSimulator, Harness],
                                                             Awaitable[None]],
    *, dynamic: bool = False, units: tuple[int, ...] = (1,), **extra: Any,
) -> None:
    """Start a simulator (TCP or RTU on a PTY) and a transport on it, run ``body``, stop."""

    async def main() -> None:
        sim = ModbusSimulator(
            protocol, units, tcp_port=free_port() if link == "tcp" else None,
            pty_link=str(tmp_path / "ttySIM") if link == "rtu" else None, baudrate=115200,
            dynamic=dynamic)
        await sim.start()
        cls, settings = _settings(link, sim, protocol, **extra)
        harness = Harness(cls, settings, "transport.0", tmp_path / "state")
        try:
            await harness.start()
            await body(sim, harness)
        finally:
            await harness.stop()
            await sim.stop()

    asyncio.run(main())


def sole_plan(h: Harness) -> ReadPlan:
    """The read plan of the one device (a modbus_tcp/rtu section is a bus of one)."""
    (member,) = h.transport.members.values()
    return member.blocks.plan


def readings(h: Harness) -> list[dict[str, Any]]:
    return [e.data for e in h.of_kind("reading")]


def results(h: Harness) -> dict[str, dict[str, Any]]:
    return {e.data["request_id"]: e.data for e in h.of_kind("event")
            if e.data.get("event") == "command_result"}


CASE_DIRS = sorted(p.parent.name for p in CASES.glob("*/expected.json"))


@pytest.mark.parametrize("case", CASE_DIRS)
@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_cases_decode(case: str, link: str, tmp_path: Path) -> None:
    """Each pytests/cases/modbus/<name>/ holds map.csv and expected.json: the simulator serves
    the expected values, the transport must read them back exactly (a new case is new files)."""
    expected = json.loads((CASES / case / "expected.json").read_text())

    async def body(sim: ModbusSimulator, h: Harness) -> None:
        for name, value in expected.items():
            sim.unit.set_value(name, value)
        await async_wait_for(lambda: any(len(r) == len(expected) for r in readings(h)))
        reading = next(r for r in readings(h) if len(r) == len(expected))
        assert reading == expected
        assert h.ctx.counters.extra["exceptions"] == 0  # unreadable gaps were never bridged
        if case != "all_types":
            return
        info = h.of_kind("reading")[-1].source_transport_info
        assert info["device_serial_number"] == "SN0042"
        assert info["transport_name"] == "transport.0"
        status = [e.data for e in h.of_kind("status")]
        assert status[0] == {"available": True, "reason": "answering"}
        describe = next(e.data for e in h.of_kind("event") if e.data["event"] == "describe")
        assert describe["values"]["mode"]["options"] == ["Off", "Eco", "Boost"]
        assert describe["values"]["relay"]["kind"] == "switch"
        assert describe["values"]["s16_neg"]["minimum"] == -50

    run_with(link, str(CASES / case / "map.csv"), tmp_path, body)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_shipped_maps_read_whole(link: str, tmp_path: Path) -> None:
    for protocol in ("eg4_v58", "sdm630"):
        regmap = load_map(protocol)

        async def body(sim: ModbusSimulator, h: Harness, regmap=regmap) -> None:
            await async_wait_for(lambda: len(readings(h)) >= 2)
            reading = readings(h)[-1]
            assert set(reading) == {v.name for v in regmap.values}
            for spec in regmap.values:
                assert reading[spec.name] == sim.unit.value(spec.name), spec.name
            plan = sole_plan(h)
            assert h.ctx.counters.extra["requests"] >= 2 * len(plan)

        run_with(link, protocol, tmp_path, body)


def test_second_unit_on_one_server_with_request_delay(tmp_path: Path) -> None:
    async def body(sim: ModbusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: readings(h))
        info = h.of_kind("reading")[-1].source_transport_info
        assert info["device_serial_number"] == "SIM0000002"
        assert readings(h)[-1]["com_address"] == 2
        assert h.ctx.counters.errors == 0

    run_with("rtu", "eg4_v58", tmp_path, body, units=(1, 2), address=2, request_delay=0.02)


def test_simulated_values_move() -> None:
    clock = [0.0]
    unit = DeviceModel(1, load_map("eg4_v58"), day_seconds=240, clock=lambda: clock[0])
    seen: dict[str, set[Any]] = {"pv_total_power": set(), "battery_soc": set()}
    for _ in range(24):
        clock[0] += 10
        unit.refresh()
        for name, values in seen.items():
            values.add(unit.value(name))
    assert 0 in seen["pv_total_power"] and max(seen["pv_total_power"]) > 3000  # night and noon
    assert len(seen["battery_soc"]) > 5
    energy = float(unit.value("pv_energy_total"))
    meter = DeviceModel(1, load_map("sdm630"), clock=lambda: clock[0])
    powers = set()
    for _ in range(5):
        clock[0] += 10
        meter.refresh()
        powers.add(meter.value("power_total"))
    assert len(powers) == 5 and float(unit.value("pv_energy_total")) == energy


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_125_registers_in_one_request(link: str, tmp_path: Path) -> None:
    """pymodbus 3.16.1 reads the protocol's maximum in one request on both links."""

    async def body(sim: ModbusSimulator, h: Harness) -> None:
        if link == "tcp":
            client = AsyncModbusTcpClient("127.0.0.1", port=sim.tcp_port, timeout=2, retries=0)
        else:
            client = AsyncModbusSerialClient(sim.pty_link, baudrate=115200, timeout=2, retries=0)
        plan = sole_plan(h)
        assert max(r.count for r in plan.requests) == 125
        await async_wait_for(lambda: len(readings(h)) >= 1)
        assert len(readings(h)[0]) == 125 and h.ctx.counters.extra["requests"] == 1
        await h.stop()  # one client on the line at a time (RTU)
        assert await client.connect()
        try:
            reply = await client.read_input_registers(0, count=125, device_id=1)
            assert not reply.isError() and len(reply.registers) == 125
            assert reply.registers[124] == sim.unit.store["input"][124]
        finally:
            client.close()

    block = tmp_path / "block125.csv"
    block.write_text("name,table,address,type,unit\n" + "".join(
        f"r{i},input,{i},u16,W\n" for i in range(125)))
    run_with(link, str(block), tmp_path, body, batch_size=125)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_exceptions_and_silence_mid_scan_do_not_stop_the_scan(
        link: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A refused register inside a block: the block is split, its other values still read and
    the refused value left out from then on (as on a bus); a silent block is read last and
    counted, and the device stays available."""

    async def body(sim: ModbusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: readings(h))
        sim.unit.fail_range("input", 45, 45)  # inside the 2nd input request
        sim.unit.silence_range("holding", 101, 101)  # one holding request gets no reply
        seen = len(readings(h))
        await async_wait_for(lambda: len(readings(h)) >= seen + 2)
        reading = readings(h)[-1]
        assert "pv_energy_total" not in reading and "charge_current_limit" not in reading
        assert "pv1_voltage" in reading and "discharge_cutoff_soc" not in reading
        assert "charge_power_percent" in reading and "load_power" in reading
        assert "inverter_energy_total" in reading  # beside the refused one, in its block
        extra = h.ctx.counters.extra
        assert extra["exceptions"] >= 2 and extra["timeouts"] >= 2
        assert extra["ranges_learned"] == 1
        assert "exception 2 (illegal data address) in " in caplog.text
        assert [e.data["available"] for e in h.of_kind("status")] == [True]
        sim.unit.clear_faults()
        count = len(readings(h))
        await async_wait_for(lambda: len(readings(h)) > count + 1
                             and "charge_current_limit" in readings(h)[-1])
        assert "pv_energy_total" not in readings(h)[-1]  # refused once: left out for good

    run_with(link, "eg4_v58", tmp_path, body)


def test_a_slow_device_s_turnaround_is_measured_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The device takes 60 ms per request where the settings say 0: the health counters show
    the measured figure, and the log says once that a plan for it would be cheaper (at 9600
    baud, 10 requests instead of 14). Lower bounds only."""

    async def main() -> None:
        sim = ModbusSimulator("eg4_v58", (1,), pty_link=str(tmp_path / "ttySIM"),
                              baudrate=9600, dynamic=False)
        serve = sim.unit.action

        async def slow(*args: Any) -> Any:
            await asyncio.sleep(0.060)
            return await serve(*args)

        sim.unit.action = slow  # type: ignore[method-assign]
        await sim.start()
        settings = ModbusRtuSettings(transport="modbus_rtu", protocol_version="eg4_v58",
                                     port=sim.pty_link, baudrate=9600, turnaround=0.0,
                                     **{**FAST, "timeout": 2.0})
        h = Harness(ModbusRtuTransport, settings, "inverter", tmp_path / "state")
        try:
            await h.start()
            assert len(sole_plan(h)) == 14
            extra = h.ctx.counters.extra
            await async_wait_for(lambda: "turnaround_ms" in extra, timeout=30)
            # the model takes the 9600-baud wire time off; a PTY has none, so the figure is
            # 60 ms less up to the longest request's modelled wire time
            wire = max(RtuCost(9600, turnaround=0.0).seconds(r.table, r.count)
                       for r in sole_plan(h).requests)
            assert extra["turnaround_ms"] >= (0.060 - wire) * 1000 - 1
            await async_wait_for(lambda: "answers in about" in caplog.text)
            assert "the plan assumes 0 ms: turnaround = 0.0" in caplog.text
            await async_wait_for(lambda: len(readings(h)) >= 3, timeout=30)
            assert caplog.text.count("answers in about") == 1
        finally:
            await h.stop()
            await sim.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())


def test_garbled_replies_are_counted_on_rtu(tmp_path: Path) -> None:
    async def body(sim: ModbusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: readings(h))
        sim.garble = True
        await async_wait_for(lambda: h.ctx.counters.extra["garbled"] >= 3)
        assert "no valid frame in" in h.ctx.counters.last_error
        sim.garble = False
        count = len(readings(h))
        await async_wait_for(lambda: len(readings(h)) > count)

    run_with("rtu", "sdm630", tmp_path, body)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_link_failures_come_typed_with_their_figures(link: str, tmp_path: Path) -> None:
    """Against pymodbus's server: each failure kind is its own type, per-call timeouts and
    retries hold (lower bounds only), and silence never costs the connection."""

    async def main() -> None:
        sim = ModbusSimulator("sdm630", (1,), tcp_port=free_port() if link == "tcp" else None,
                              pty_link=str(tmp_path / "ttySIM") if link == "rtu" else None,
                              baudrate=115200, dynamic=False)
        await sim.start()
        description = (TcpEndpoint("127.0.0.1", sim.tcp_port) if link == "tcp"
                       else SerialLine(sim.pty_link, 115200))
        modbus = ModbusLink(description, connect_timeout=2.0)
        fast, slow = CallPolicy(timeout=0.2, retries=0), CallPolicy(timeout=0.3, retries=2)
        voltage = ReadRequest("input", 0, 2, ("l1_voltage",))
        try:
            assert await modbus.connect()
            assert len(await modbus.read(1, voltage, fast)) == 2
            sim.unit.fail_range("input", 0, 1, ExcCodes.DEVICE_BUSY)
            with pytest.raises(ExceptionReply) as refused:
                await modbus.read(1, voltage, fast)
            assert refused.value.code == 6 and "device busy" in str(refused.value)
            sim.unit.clear_faults()
            sim.unit.silence_range("input", 0, 1)
            for _ in range(6):  # pymodbus alone would drop a TCP link after retries + 3
                with pytest.raises(NoReply):
                    await modbus.read(1, voltage, fast)
            assert modbus.connected
            began = time.monotonic()
            with pytest.raises(NoReply) as silent:
                await modbus.read(1, voltage, slow)
            assert time.monotonic() - began >= 0.9 - 0.05  # 3 tries of 0.3 s
            assert (silent.value.timeout, silent.value.tries) == (0.3, 3)
            assert str(silent.value) == "no reply within 0.3 s (3 tries)"
            sim.unit.clear_faults()
            if link == "rtu":
                sim.garble = True
                with pytest.raises(GarbledReply):
                    await modbus.read(1, voltage, fast)
                sim.garble = False
            assert len(await modbus.read(1, voltage, fast)) == 2
            if link == "tcp":
                await sim.stop()
                await async_wait_for(lambda: not modbus.connected)
                with pytest.raises(Disconnected):
                    await modbus.read(1, voltage, fast)
        finally:
            modbus.close()
            await sim.stop()
        with pytest.raises(Disconnected):
            await modbus.read(1, voltage, fast)

    asyncio.run(main())


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_write_round_trip_and_rejections(link: str, tmp_path: Path) -> None:
    async def body(sim: ModbusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: readings(h))

        async def command(request_id: str, **data: Any) -> dict[str, Any]:
            await h.send(Envelope("mqtt_out", "command", {**data, "request_id": request_id}))
            return await async_wait_for(lambda: results(h).get(request_id))

        bits_low = sim.unit.value("bits_low")
        ok = await command("w1", command="write", values={
            "s16_neg": -7.5, "mode": "Eco", "bits_high": 3, "relay": True, "text_abcd": "abc",
            "u64_abcd": 12345678901234, "f32_abcd": 0.5})
        assert ok["ok"] and ok["result"] == "ok", ok
        assert ok["values"] == {"s16_neg": -7.5, "mode": "Eco", "bits_high": 3, "relay": True,
                                "text_abcd": "abc", "u64_abcd": 12345678901234, "f32_abcd": 0.5}
        assert sim.unit.value("mode") == "Eco" and sim.unit.value("relay") is True
        assert sim.unit.value("bits_high") == 3
        assert sim.unit.value("bits_low") == bits_low  # its neighbour in the same register
        assert ok["command"] == "write"
        target = next(e for e in h.of_kind("event") if e.data.get("request_id") == "w1")
        assert target.target_transport == "mqtt_out"
        rejected = {
            "r1": {"readonly_u16": 1}, "r2": {"s16_neg": 1000}, "r3": {"mode": "Turbo"},
            "r4": {"nope": 1}, "r5": {},
        }
        for request_id, values in rejected.items():
            reply = await command(request_id, command="write", values=values)
            assert not reply["ok"] and reply["result"] == "rejected", reply
        assert "read-only" in results(h)["r1"]["detail"]
        assert "above the maximum 100" in results(h)["r2"]["detail"]
        assert h.ctx.counters.extra["writes_rejected"] == 5
        assert sim.unit.value("readonly_u16") != 1
        reply = await command("x1", command="self_destruct")
        assert reply["result"] == "unsupported"
        reply = await command("d1", command="describe")
        assert reply["ok"]
        assert any(e.data.get("event") == "describe" and e.target_transport == "mqtt_out"
                   for e in h.of_kind("event"))

    run_with(link, ALL_TYPES, tmp_path, body)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_device_restart_mid_run(link: str, tmp_path: Path) -> None:
    async def body(sim: ModbusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: readings(h))
        await sim.restart(down_for=3.0)  # longer than a scan of timeouts (6 x 0.3 s)
        await async_wait_for(lambda: [e.data["available"] for e in h.of_kind("status")]
                             == [True, False, True])
        count = len(readings(h))
        await async_wait_for(lambda: len(readings(h)) > count)
        assert h.running
        # TCP: the connection dropped and was made again; RTU: the line stayed open and the
        # silent device was quarantined, then probed until it answered
        assert h.ctx.counters.extra["reconnects" if link == "tcp" else "quarantines"] >= 1

    run_with(link, "sdm630", tmp_path, body, offline_after=1)


def test_unreachable_device_reports_unavailable_and_keeps_trying(tmp_path: Path) -> None:
    async def main() -> None:
        settings = ModbusTcpSettings(transport="modbus_tcp", protocol_version="sdm630",
                                     port=free_port(), **FAST)
        h = Harness(ModbusTcpTransport, settings, "meter", tmp_path)
        await h.start()
        await async_wait_for(lambda: h.of_kind("status"))
        await asyncio.sleep(1.0)
        assert [e.data["available"] for e in h.of_kind("status")] == [False]
        assert h.running
        await h.stop()

    asyncio.run(main())


def test_device_that_comes_up_later_one_failure_log_one_recovery(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reconnect loop is DeviceTransport's: while nothing listens the device is
    unavailable once, writes are answered "error" and describe by the runner at once; when
    it comes up, one recovery line, available, readings; no line per retry."""
    caplog.set_level(logging.DEBUG, logger="meter")

    async def main() -> None:
        port = free_port()
        settings = ModbusTcpSettings(transport="modbus_tcp", protocol_version="sdm630",
                                     port=port, writable="demand_period", **FAST)
        h = Harness(ModbusTcpTransport, settings, "meter", tmp_path)
        await h.start()
        await async_wait_for(lambda: h.of_kind("status"))
        await h.send(Envelope("mqtt_out", "command", {"command": "write", "request_id": "w",
                                                      "values": {"demand_period": 15}}))
        await h.send(Envelope("mqtt_out", "command", {"command": "describe",
                                                      "request_id": "d"}))
        reply = await async_wait_for(lambda: results(h).get("w"))
        assert not reply["ok"] and reply["result"] == "error", reply
        assert results(h)["d"]["ok"]
        await asyncio.sleep(1.5)  # several attempts with a 0.5 s backoff ceiling
        sim = ModbusSimulator("sdm630", (1,), tcp_port=port)
        await sim.start()
        try:
            await async_wait_for(lambda: readings(h))
            assert [e.data["available"] for e in h.of_kind("status")] == [False, True]
            assert h.running
        finally:
            await h.stop()
            await sim.stop()

    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "failed: cannot open" in w]) == 1, warnings
    assert len([w for w in warnings if "recovered after" in w]) == 1, warnings


def test_settings_validation() -> None:
    with pytest.raises(ValidationError) as info:
        ModbusTcpSettings(transport="modbus_tcp", protocol_version="eg4_v99")
    text = str(info.value)
    assert "unknown protocol_version 'eg4_v99'" in text and "eg4_v58, " in text and "sdm630" in text
    with pytest.raises(ValidationError):
        ModbusRtuSettings(transport="modbus_rtu", protocol_version="eg4_v58", port="/dev/x",
                          parity="X")
    rtu = ModbusRtuSettings(transport="modbus_rtu", protocol_version="eg4_v58",
                            port="/dev/ttyUSB0")
    assert rtu.claims() == [("serial port", "/dev/ttyUSB0")]
    assert get("modbus_tcp") is ModbusTcpTransport and get("modbus_rtu") is ModbusRtuTransport


def test_reference_config_section_and_doc_samples() -> None:
    ref = ModbusRtuSettings(transport="modbus_rtu", protocol_version="eg4_v58", address="1",
                            port="/dev/ttyUSB0", baudrate="19200", bridge="influxdb_output",
                            read_interval="10")
    assert ref.bridge == ("influxdb_output",) and ref.address == 1
    for kind in ("modbus_tcp", "modbus_rtu"):
        parser = configparser.ConfigParser()
        parser.read(ROOT / "docs" / "transports" / f"{kind}.ini")
        sections = [s for s in parser.sections() if parser[s].get("transport") == kind]
        assert sections, kind
        for section in sections:
            get(kind).Settings(**dict(parser[section]))


def test_simulator_command_line(tmp_path: Path) -> None:
    port = free_port()
    link = tmp_path / "ttyCLI"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_device", "--map", "sdm630", "--tcp-port",
         str(port), "--pty-link", str(link), "--unit", "1", "--unit", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert "modbus simulator ready" in proc.stdout.readline()

        async def main() -> None:
            for unit in (1, 2):
                client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
                assert await client.connect()
                reply = await client.read_input_registers(0x34, count=2, device_id=unit)
                client.close()
                assert not reply.isError()
            client = AsyncModbusSerialClient(str(link), baudrate=19200, timeout=2, retries=0)
            assert await client.connect()
            reply = await client.read_input_registers(0, count=80, device_id=2)
            client.close()
            assert not reply.isError() and len(reply.registers) == 80

        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    wait_for(lambda: not link.exists())


def test_rtu_line_settings_from_ini_text(tmp_path: Path) -> None:
    """Every key as an INI file gives it: text, converted at load."""
    from gateway.config import load_config

    ini = tmp_path / "c.ini"
    ini.write_text("[m]\ntransport = modbus_rtu\nprotocol_version = sdm630\nport = /tmp/x\n"
                   "baudrate = 19200\nparity = e\nstopbits = 2\nbytesize = 7\n")
    settings = load_config(ini, environ={}).transports["m"].settings
    assert (settings.parity, settings.stopbits, settings.bytesize) == ("E", 2, 7)
