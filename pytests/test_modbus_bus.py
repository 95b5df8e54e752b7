"""The modbus_bus / modbus_bus_tcp transports against pymodbus's server serving several unit ids
with different maps on one RTU line (a real PTY pair) and on one TCP port. No mocks.

Timing checks are ratios of mean intervals measured over many scans, with a stated generous
tolerance (``INTERVAL_TOLERANCE``); waits poll a condition with a deadline.

Size: over the ~400-line guide on purpose: one bus fixture serves every scenario of the issue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from serial.tools.list_ports_common import ListPortInfo

from gateway.config import ConfigError, effective_settings, load_config, render_ini
from gateway.message import Envelope
from gateway.settings import GeneralSettings
from protocols.registers import load_map
from pytests.helpers import Harness, async_wait_for, free_port, wait_for
from simulators.modbus_bus import BusSimulator
from transports import get
from transports.base import TransportContext
from transports.modbus_bus.commands import MAX_QUEUED
from transports.modbus_bus.port_resolve import PortNotFound, UsbSelector
from transports.modbus_bus.settings import ModbusBusRtuSettings, ModbusBusTcpSettings
from transports.modbus_bus.transport import ModbusBusRtuTransport, ModbusBusTcpTransport

ROOT = Path(__file__).resolve().parent.parent
#: a device's mean interval between readings, over >= 8 intervals, is within 25 % of its
#: read_interval while another device on the bus is silent (timeouts of 0.2 s block the bus)
INTERVAL_TOLERANCE = 0.25
THREE = {1: "eg4_v58", 2: "sdm630", 3: "sdm630"}
KEYS = {
    "devices": "inverter, meter1, meter2",
    "inverter.unit": "1", "inverter.protocol_version": "eg4_v58", "inverter.read_interval": "0.5",
    "meter1.unit": "2", "meter1.protocol_version": "sdm630", "meter1.read_interval": "0.4",
    "meter1.quarantine_max": "1.5",
    "meter2.unit": "3", "meter2.protocol_version": "sdm630", "meter2.read_interval": "0.8",
    "timeout": "0.2", "retries": "0", "reconnect_max": "0.5",
}
Body = Callable[[BusSimulator, Harness], Awaitable[None]]


def bus_settings(link: str, sim: BusSimulator, port: str | None = None,
                 keys: dict[str, Any] | None = None) -> tuple[type, Any]:
    merged = keys or KEYS
    if link == "tcp":
        return ModbusBusTcpTransport, ModbusBusTcpSettings(
            transport="modbus_bus_tcp", host="127.0.0.1", port=sim.tcp_port, **merged)
    return ModbusBusRtuTransport, ModbusBusRtuSettings(
        transport="modbus_bus", port=port or sim.pty_link, baudrate=115200, **merged)


def run_bus(link: str, tmp_path: Path, body: Body, *, devices: dict[int, Any] | None = None,
            port: str | None = None, prepare: Callable[[BusSimulator], None] | None = None,
            keys: dict[str, Any] | None = None) -> None:
    async def main() -> None:
        sim = BusSimulator(devices or THREE, tcp_port=free_port() if link == "tcp" else None,
                           pty_link=str(tmp_path / "ttyBUS") if link == "rtu" else None,
                           baudrate=115200, dynamic=False)
        if prepare is not None:
            prepare(sim)
        await sim.start()
        cls, settings = bus_settings(link, sim, port, keys)
        harness = Harness(cls, settings, "bus", tmp_path / "state")
        try:
            await harness.start()
            await body(sim, harness)
        finally:
            await harness.stop()
            await sim.stop()

    asyncio.run(main())


def readings(h: Harness, device: str) -> list[Envelope]:
    return [e for e in h.of_kind("reading") if e.source_transport_info.get("device") == device]


def statuses(h: Harness, device: str) -> list[bool]:
    return [e.data["available"] for e in h.of_kind("status")
            if e.source_transport_info.get("device") == device]


def results(h: Harness) -> dict[str, dict[str, Any]]:
    return {e.data["request_id"]: e.data for e in h.of_kind("event")
            if e.data.get("event") == "command_result"}


def mean_interval(envelopes: list[Envelope]) -> float:
    assert len(envelopes) >= 9, len(envelopes)
    return (envelopes[-1].timestamp - envelopes[0].timestamp) / (len(envelopes) - 1)


def by_id_link(tmp_path: Path, target: str) -> str:
    """A udev-style /dev/serial/by-id name (a symlink) for the simulator's PTY."""
    folder = tmp_path / "serial" / "by-id"
    folder.mkdir(parents=True)
    link = folder / "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    link.symlink_to(target)
    return str(link)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_three_devices_and_one_silenced(link: str, tmp_path: Path) -> None:
    port = by_id_link(tmp_path, str(tmp_path / "ttyBUS")) if link == "rtu" else None

    async def body(sim: BusSimulator, h: Harness) -> None:
        names = {"inverter": 1, "meter1": 2, "meter2": 3}
        await async_wait_for(lambda: all(len(readings(h, n)) >= 2 for n in names))
        identities = set()
        for name, unit in names.items():
            reading = readings(h, name)[-1].data
            regmap = sim.units[unit].map
            assert set(reading) == {v.name for v in regmap.values}, name
            for spec in regmap.values:
                assert reading[spec.name] == sim.units[unit].value(spec.name), (name, spec.name)
            info = readings(h, name)[-1].source_transport_info
            assert info["transport_name"] == "bus" and info["device_name"] == name
            identities.add(info["device_identifier"])
            assert statuses(h, name) == [True]
            assert any(e.data.get("event") == "describe" and
                       e.source_transport_info["device"] == name for e in h.of_kind("event"))
        assert len(identities) == 3
        # meter1 goes silent: quarantined, while the others keep their read intervals
        sim.silence(2)
        await async_wait_for(lambda: statuses(h, "meter1") == [True, False])
        start = {n: len(readings(h, n)) for n in ("inverter", "meter2")}
        await async_wait_for(lambda: len(readings(h, "meter2")) >= start["meter2"] + 10,
                             timeout=30)
        for name, interval in (("inverter", 0.5), ("meter2", 0.8)):
            ratio = mean_interval(readings(h, name)[start[name]:]) / interval
            assert abs(ratio - 1) < INTERVAL_TOLERANCE, (name, ratio)
        probes = h.ctx.counters.extra["probes"]
        assert probes >= 2 and h.ctx.counters.extra["quarantines"] == 1
        # back on the line: it recovers within its probe backoff (at most 1.5 s)
        seen = len(readings(h, "meter1"))
        sim.unsilence(2)
        await async_wait_for(lambda: statuses(h, "meter1") == [True, False, True])
        await async_wait_for(lambda: len(readings(h, "meter1")) >= seen + 5)
        assert h.running and h.ctx.counters.extra["reconnects"] == 0

    run_bus(link, tmp_path, body, port=port)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_125_registers_in_one_request_beside_other_devices(link: str, tmp_path: Path) -> None:
    block = tmp_path / "block125.csv"
    block.write_text("name,table,address,type,unit\n" + "".join(
        f"r{i},input,{i},u16,W\n" for i in range(125)))

    async def body(sim: BusSimulator, h: Harness) -> None:
        for i in range(125):
            sim.units[5].set_value(f"r{i}", 1000 + i)
        member = h.transport.members["big"]
        assert [(r.address, r.count) for r in member.blocks.plan.requests] == [(0, 125)]
        await async_wait_for(lambda: len(readings(h, "big")) >= 3 and readings(h, "meter"))
        reading = readings(h, "big")[-1].data
        assert reading == {f"r{i}": 1000 + i for i in range(125)}
        extra = h.ctx.counters.extra
        assert extra["exceptions"] == extra["timeouts"] == extra["garbled"] == 0
        scans = len(readings(h, "big"))
        assert scans <= sim.requests(5) <= scans + 1  # one request per scan

    keys = {"devices": "big, meter", "big.unit": "5", "big.protocol_version": str(block),
            "big.read_interval": "0.2", "meter.unit": "2", "meter.protocol_version": "sdm630",
            "timeout": "1", "read_interval": "0.5"}
    run_bus(link, tmp_path, body, devices={5: str(block), 2: "sdm630"}, keys=keys)


def test_exception_inside_a_coalesced_block_splits_it_and_is_remembered(tmp_path: Path) -> None:
    """Exception 2 inside joined reads: split, nothing else lost, remembered; and a block
    that never answers (no exception either) is read last without losing the device."""
    def prepare(sim: BusSimulator) -> None:
        sim.units[1].fail_range("input", 21, 22)  # filler inside the input 0+40 block
        sim.units[1].fail_range("input", 44, 44)  # pv_energy_total, inside input 40+31
        sim.units[3].fail_range("input", 80, 83)  # filler inside the meter's input 70+18
        sim.units[2].silence_range("holding", 2, 29)  # meter1's first block never answers

    async def body(sim: BusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: all(len(readings(h, n)) >= 1 for n in
                                         ("inverter", "meter1", "meter2")))
        first = readings(h, "inverter")[0].data
        expected = {v.name for v in load_map("eg4_v58").values} - {"pv_energy_total"}
        assert set(first) == expected  # nothing else lost, in the very first scan
        assert set(readings(h, "meter2")[0].data) == {v.name for v in load_map("sdm630").values}
        inverter = h.transport.members["inverter"].blocks
        assert sorted(str(x) for x in inverter.learned) == [
            "input 21-22 (gap)", "input 44-45 (pv_energy_total)"]
        assert [str(x) for x in h.transport.members["meter2"].blocks.learned] == [
            "input 80-83 (gap)"]
        assert h.ctx.counters.extra["ranges_learned"] == 3
        exceptions = h.ctx.counters.extra["exceptions"]
        seen = {n: len(readings(h, n)) for n in ("inverter", "meter2")}
        await async_wait_for(lambda: all(len(readings(h, n)) >= seen[n] + 3 for n in seen))
        assert h.ctx.counters.extra["exceptions"] == exceptions  # the plan avoids them now
        assert set(readings(h, "inverter")[-1].data) == expected
        assert statuses(h, "inverter") == [True]
        # an unanswered block goes last and does not make a live device count as gone
        await async_wait_for(lambda: len(readings(h, "meter1")) >= 3)
        meter1 = readings(h, "meter1")[-1].data
        assert "voltage_l1" in meter1 and "demand_period" not in meter1
        assert statuses(h, "meter1") == [True] and h.ctx.counters.extra["quarantines"] == 0

    run_bus("tcp", tmp_path, body, prepare=prepare)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_writes_to_one_device_while_the_others_are_polled(link: str, tmp_path: Path) -> None:
    async def body(sim: BusSimulator, h: Harness) -> None:
        await async_wait_for(lambda: all(readings(h, n) for n in ("inverter", "meter2")))

        async def command(request_id: str, **data: Any) -> dict[str, Any]:
            await h.send(Envelope("mqtt_out", "command", {**data, "request_id": request_id}))
            return await async_wait_for(lambda: results(h).get(request_id))

        before = {n: len(readings(h, n)) for n in ("meter1", "meter2")}
        for i, percent in enumerate((10, 20, 30, 40, 50, 60)):
            values = {"charge_power_percent": percent, "ac_charge_enable": "On"}
            reply = await command(f"w{i}", command="write", device="inverter", values=values)
            assert reply["ok"] and reply["values"] == {"charge_power_percent": percent,
                                                       "ac_charge_enable": "On"}, reply
            assert reply["device"] == "inverter"
            assert sim.units[1].value("charge_power_percent") == percent
            await asyncio.sleep(0.15)
        assert all(len(readings(h, n)) > before[n] for n in before)  # polled meanwhile
        answer = next(e for e in h.of_kind("event") if e.data.get("request_id") == "w0")
        assert answer.target_transport == "mqtt_out"
        assert answer.source_transport_info["device"] == "inverter"
        by_unit = await command("u1", command="write", device="1",
                                values={"discharge_power_percent": 55})
        assert by_unit["ok"] and sim.units[1].value("discharge_power_percent") == 55
        rejected = {
            "r1": {"command": "write", "values": {"charge_power_percent": 5}},
            "r2": {"command": "write", "device": "meter9", "values": {"x": 1}},
            "r3": {"command": "write", "device": "inverter", "values": {"pv1_power": 5}},
            "r4": {"command": "write", "device": "inverter",
                   "values": {"charge_power_percent": 500}},
        }
        for request_id, data in rejected.items():
            reply = await command(request_id, **data)
            assert not reply["ok"] and reply["result"] == "rejected", reply
        assert "name one with 'device'" in results(h)["r1"]["detail"]
        assert "no device 'meter9' on this bus" in results(h)["r2"]["detail"]
        assert "read-only" in results(h)["r3"]["detail"]
        reply = await command("d1", command="describe", device="meter2")
        assert reply["ok"]
        described = [e for e in h.of_kind("event") if e.data.get("event") == "describe"
                     and e.target_transport == "mqtt_out"]
        assert [e.source_transport_info["device"] for e in described] == ["meter2"]
        reply = await command("d2", command="describe", device="meter9")
        assert not reply["ok"] and reply["result"] == "rejected", reply
        assert "no device 'meter9' on this bus (devices: inverter, meter1, meter2)" in \
            reply["detail"]
        reply = await command("d3", command="describe")  # no device: the whole bus
        assert reply["ok"]
        described = [e for e in h.of_kind("event") if e.data.get("event") == "describe"
                     and e.target_transport == "mqtt_out"]
        assert sorted(e.source_transport_info["device"] for e in described[1:]) == [
            "inverter", "meter1", "meter2"]

    run_bus(link, tmp_path, body)


def test_a_silent_line_behind_the_gateway_does_not_cost_the_gateway_link(tmp_path: Path) -> None:
    """pymodbus drops a TCP link after a few unanswered requests in a row; behind a gateway
    that is silent devices (here: all of them, the RS485 side unplugged), not a dead link."""

    async def body(sim: BusSimulator, h: Harness) -> None:
        names = ("inverter", "meter1", "meter2")
        await async_wait_for(lambda: all(statuses(h, n) == [False] for n in names))
        extra = h.ctx.counters.extra
        assert extra["timeouts"] >= 9 and extra["quarantines"] == 3
        await h.send(Envelope("mqtt_out", "command", {
            "command": "write", "device": "inverter", "request_id": "w",
            "values": {"charge_power_percent": 50}}))
        reply = await async_wait_for(lambda: results(h).get("w"))
        assert (reply["result"], reply["detail"]) == ("timeout", "no reply within 0.2 s")
        sim.unsilence(2)
        await async_wait_for(lambda: statuses(h, "meter1") == [False, True])
        await async_wait_for(lambda: len(readings(h, "meter1")) >= 2)
        assert extra["reconnects"] == 0 and readings(h, "inverter") == []

    def prepare(sim: BusSimulator) -> None:
        for unit in (1, 2, 3):
            sim.silence(unit)

    run_bus("tcp", tmp_path, body, prepare=prepare)


def test_pauses_after_connect_and_before_requests_are_kept(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Lower bounds only (a busy machine makes gaps longer, never shorter); and a bus asked
    for more than it can carry says so once, with figures."""
    arrivals: list[tuple[float, int]] = []

    def prepare(sim: BusSimulator) -> None:
        for unit, model in sim.units.items():
            async def record(*args: Any, _unit: int = unit, _real: Any = model.action) -> Any:
                arrivals.append((time.monotonic(), _unit))
                return await _real(*args)
            model.action = record  # type: ignore[method-assign]

    async def body(sim: BusSimulator, h: Harness) -> None:
        started = time.monotonic()  # the bus connects after this
        await async_wait_for(lambda: all(len(readings(h, n)) >= 3 for n in
                                         ("inverter", "meter1", "meter2")))
        first_inverter = next(t for t, unit in arrivals if unit == 1)
        assert first_inverter - started >= 0.5
        gaps = [t - arrivals[i - 1][0] for i, (t, unit) in enumerate(arrivals)
                if i and unit == 2]
        assert len(gaps) >= 14 and min(gaps) >= 0.15
        await async_wait_for(lambda: "bus oversubscribed" in caplog.text)
        notice = next(r.getMessage() for r in caplog.records if "oversubscribed" in r.getMessage())
        assert "s of bus time per second, 1 s is available (inverter: " in notice
        assert "meter1: " in notice and "s per scan every 0.05 s" in notice
        assert sum("oversubscribed" in r.getMessage() for r in caplog.records) == 1

    keys = {**KEYS, "inverter.connect_delay": "0.5", "meter1.request_delay": "0.15",
            "read_interval": "0.05", "inverter.read_interval": "0.05",
            "meter1.read_interval": "0.05", "meter2.read_interval": "0.05"}
    caplog.set_level(logging.WARNING, logger="bus")
    run_bus("tcp", tmp_path, body, prepare=prepare, keys=keys)


def test_bus_down_marks_every_device_unavailable_and_reconnects(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        settings = ModbusBusTcpSettings(transport="modbus_bus_tcp", port=port, **KEYS,
                                        **{"meter2.writable": "demand_period"})  # a set-up reg
        h = Harness(ModbusBusTcpTransport, settings, "bus", tmp_path / "state")
        await h.start()
        names = ("inverter", "meter1", "meter2")
        await async_wait_for(lambda: all(statuses(h, n) == [False] for n in names))
        await h.send(Envelope("mqtt_out", "command", {"command": "write", "device": "meter2",
                                                      "values": {"demand_period": 15},
                                                      "request_id": "x"}))
        reply = await async_wait_for(lambda: results(h).get("x"))
        assert reply["result"] == "error" and reply["detail"] == "bus not connected"
        sim = BusSimulator(THREE, tcp_port=port, dynamic=False)
        await sim.start()
        try:
            await async_wait_for(lambda: all(statuses(h, n) == [False, True] for n in names))
            assert h.running
        finally:
            await h.stop()
            await sim.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- configuration


def write_ini(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bus.ini"
    path.write_text(text)
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    return str(info.value)


GOOD = """\
[bus]
transport = modbus_bus
port = {port}
devices = Inverter, meter1
inverter.unit = 1
inverter.protocol_version = eg4_v58
meter1.unit = 2
meter1.protocol_version = sdm630
meter1.read_interval = 5
timeout = 0.5
"""


def test_the_ini_syntax_loads_with_defaults_filled_in(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path, GOOD.format(port="/dev/ttyUSB7")), environ={})
    settings = config.transports["bus"].settings
    assert isinstance(settings, ModbusBusRtuSettings)
    inverter, meter = settings.bus_devices()
    assert (inverter.name, inverter.unit, inverter.read_interval, inverter.timeout) == (
        "inverter", 1, 10.0, 0.5)
    assert (meter.name, meter.unit, meter.read_interval, meter.protocol_version) == (
        "meter1", 2, 5.0, "sdm630")
    assert settings.claims() == [("serial port", "/dev/ttyUSB7")]
    # environment and --set spell the dot as "__" (their keys cannot carry a dot)
    config = load_config(write_ini(tmp_path, GOOD.format(port="/dev/ttyUSB7")),
                         environ={"PGW_BUS_METER1__UNIT": "9"},
                         sets=["bus.inverter__read_interval=2.5"])
    inverter, meter = config.transports["bus"].settings.bus_devices()
    assert (inverter.read_interval, meter.unit) == (2.5, 9)


def test_the_effective_settings_read_back_as_the_same_section(tmp_path: Path) -> None:
    """``--print-config`` shows the devices as dotted keys, and that text loads back."""
    text = GOOD.format(port="/dev/ttyUSB7") + "stopbits = 2\nbytesize = 7\nparity = E\n"
    config = load_config(write_ini(tmp_path, text), environ={})
    shown = effective_settings(config)["bus"]
    assert shown["meter1.read_interval"] == 5.0 and "meter1.timeout" not in shown
    assert (shown["stopbits"], shown["bytesize"]) == (2, 7)
    again = load_config(write_ini(tmp_path, render_ini({"bus": shown})), environ={})
    assert again.transports["bus"].settings == config.transports["bus"].settings


@pytest.mark.parametrize(("extra", "key", "message"), [
    ("meter1.unit = 1\n", "meter1.unit", "unit 1 is already used by device 'inverter'"),
    ("meter1.protocol_version = sdm999\n", "meter1.protocol_version",
     "unknown protocol_version 'sdm999'; available: eg4_v58"),
    ("meter1.colour = blue\n", "meter1.colour", "unknown device key 'colour'; known:"),
    ("meter3.unit = 3\n", "meter3.unit", "device 'meter3' is not listed in devices"),
    ("inverter.read_interval = -1\n", "inverter.read_interval", "greater than 0"),
    ("inverter.timeout = soon\n", "inverter.timeout",
     "a valid number, unable to parse string as a number, got 'soon'"),
])
def test_device_errors_name_file_section_and_dotted_key(tmp_path: Path, extra: str, key: str,
                                                       message: str) -> None:
    text = GOOD.format(port="/dev/ttyUSB7")
    text = "\n".join(line for line in text.splitlines()
                     if line.split("=")[0].strip() != key) + "\n" + extra
    path = write_ini(tmp_path, text)
    report = problems(path)
    assert f"{path}:" in report and f"[bus] {key}: " in report, report
    assert message in report, report


def test_a_device_without_its_keys_and_a_bus_without_port(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[bus]\ntransport = modbus_bus\ndevices = a\na.unit = 3\n")
    report = problems(path)
    assert "[bus] a.protocol_version: missing: every device needs a.unit and " in report
    assert "[bus] port: give either port" in report
    path = write_ini(tmp_path, GOOD.format(port="x") + "usb = 0403\n")
    assert "[bus] usb: Value error, usb '0403': expected VID:PID in hex" in problems(path)


def test_a_second_transport_on_the_same_serial_port_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "ttyUSB0"
    real.touch()
    alias = by_id_link(tmp_path, str(real))
    text = GOOD.format(port=alias) + (
        f"\n[meter_alone]\ntransport = modbus_rtu\nprotocol_version = sdm630\nport = {real}\n")
    report = problems(write_ini(tmp_path, text))
    assert f"serial port {real} is already used by [bus]" in report, report


# --------------------------------------------------------------------------- stable port names


def usb_port(device: str, vid: int, pid: int, serial: str | None, location: str) -> ListPortInfo:
    port = ListPortInfo(device, skip_link_detection=True)
    port.vid, port.pid, port.serial_number, port.location = vid, pid, serial, location
    port.apply_usb_info()
    return port


def test_the_adapter_is_found_by_usb_identity_whatever_its_tty_number() -> None:
    # two FTDI adapters and two serial-less CH340 twins, as enumerated after some reboot
    ports = [usb_port("/dev/ttyUSB1", 0x0403, 0x6001, "A50285BI", "1-1.2:1.0"),
             usb_port("/dev/ttyUSB0", 0x0403, 0x6001, "B7731XQ2", "1-1.3:1.0"),
             usb_port("/dev/ttyUSB2", 0x1A86, 0x7523, None, "1-1.4:1.0"),
             usb_port("/dev/ttyUSB3", 0x1A86, 0x7523, None, "1-1.5:1.0"),
             ListPortInfo("/dev/ttyS0", skip_link_detection=True)]
    assert UsbSelector.parse("0403:6001", "A50285BI").choose(ports) == "/dev/ttyUSB1"
    assert UsbSelector.parse("0403:6001", "B7731XQ2").choose(reversed(ports)) == "/dev/ttyUSB0"
    assert UsbSelector.parse("1a86:7523", location="1-1.5").choose(ports) == "/dev/ttyUSB3"
    with pytest.raises(PortNotFound, match="2 adapters match usb 1a86:7523: /dev/ttyUSB2, "):
        UsbSelector.parse("1a86:7523").choose(ports)
    with pytest.raises(PortNotFound) as info:
        UsbSelector.parse("0403:6015", "X").choose(ports)
    assert "no serial adapter matches usb 0403:6015 serial X" in str(info.value)
    assert "/dev/ttyUSB1 = usb 0403:6001 serial A50285BI at 1-1.2:1.0" in str(info.value)


def test_an_absent_usb_adapter_is_an_outage_not_a_crash(tmp_path: Path) -> None:
    async def main() -> None:
        settings = ModbusBusRtuSettings(transport="modbus_bus", usb="0403:6001",
                                        usb_serial="NOSUCHADAPTER", **KEYS)
        assert settings.claims() == [("serial port", "usb 0403:6001 serial NOSUCHADAPTER")]
        h = Harness(ModbusBusRtuTransport, settings, "bus", tmp_path / "state")
        await h.start()
        await async_wait_for(lambda: statuses(h, "meter2") == [False])
        assert h.running
        await h.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- docs and simulator


def test_the_documented_sample_runs_against_the_simulator_command_line(tmp_path: Path) -> None:
    sample = ROOT / "docs" / "transports" / "modbus_bus.ini"
    config = load_config(sample, environ={})
    kinds = {cfg.kind for cfg in config.transports.values()}
    assert kinds == {"modbus_bus", "modbus_bus_tcp"}
    section = next(n for n, c in config.transports.items() if c.kind == "modbus_bus_tcp")
    port = free_port()
    link = tmp_path / "ttyCLI"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_bus", "--device", "1:eg4_v58", "--device",
         "2:sdm630", "--device", "3:sdm630", "--tcp-port", str(port), "--pty-link", str(link)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert "modbus bus simulator ready" in proc.stdout.readline()
        overrides = [f"{section}.port={port}"]
        for name, cfg in config.transports.items():
            if cfg.kind == "modbus_bus":
                overrides.append(f"{name}.port={link}")
        config = load_config(sample, environ={}, sets=overrides)

        async def main() -> None:
            for name, cfg in config.transports.items():
                h = Harness(get(cfg.kind), cfg.settings, name, tmp_path / "state")
                await h.start()
                try:
                    wanted = set(cfg.settings.devices)
                    await async_wait_for(lambda h=h, wanted=wanted: wanted <= {
                        e.source_transport_info["device"] for e in h.of_kind("reading")})
                finally:
                    await h.stop()

        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    wait_for(lambda: not link.exists())


def test_writes_waiting_for_the_line_are_bounded(tmp_path: Path) -> None:
    """A burst of writes while the bus cannot serve them: the queue holds MAX_QUEUED, the
    rest are answered "busy" at once, and nothing is lost silently."""
    answers: list[dict[str, Any]] = []

    async def emit(envelope: Envelope) -> None:
        if envelope.data.get("event") == "command_result":
            answers.append(envelope.data)

    async def main() -> None:
        settings = ModbusBusTcpSettings(transport="modbus_bus_tcp", port=free_port(), **KEYS)
        ctx = TransportContext("bus", GeneralSettings(state_dir=str(tmp_path)), emit,
                               logging.getLogger("test"))
        transport = ModbusBusTcpTransport(settings, ctx)  # never connected: nothing is served
        for i in range(MAX_QUEUED + 3):
            await transport.receive(Envelope("mqtt_out", "command", {
                "command": "write", "device": "inverter", "request_id": f"w{i}",
                "values": {"charge_power_percent": 50}}))
        assert [a["request_id"] for a in answers] == [f"w{i}" for i in range(MAX_QUEUED,
                                                                              MAX_QUEUED + 3)]
        assert {a["result"] for a in answers} == {"busy"}
        await transport.commands.serve()  # the bus is down: each queued write gets its answer
        assert len(answers) == MAX_QUEUED + 3
        assert {a["result"] for a in answers[3:]} == {"error"}

    asyncio.run(main())
