"""PythonProtocolGateway protocol files, read as they are.

``pytests/ppg/acme_hybrid.*`` are files written here in PPG's documented format (a made-up
device; none of PPG's own files are copied): an input table with a high/low pair, a signed
16-bit and a signed 32-bit value, an ASCII range, named flag bits, a 3-bit field at a bit
offset, a read-disabled row and a hexadecimal register; a ``;``-delimited holding table with
writable rows; a JSON with ``batch_size`` and ``<documented name>_codes``. Decoded values are
checked against a register image whose values were worked out by hand; then a modbus_tcp
section pointed at the file reads pymodbus's server serving that map.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocols.registers import MapError, load_map
from pytests.helpers import Harness, async_wait_for, free_port
from simulators.modbus_device import ModbusSimulator
from transports.modbus.device import ModbusDevice
from transports.modbus.settings import ModbusTcpSettings
from transports.modbus_bus.transport import ModbusTcpTransport

HERE = Path(__file__).resolve().parent / "ppg"
INPUT = str(HERE / "acme_hybrid.input_registry_map.csv")
BOTH = str(HERE / "acme_hybrid.json")


def decode_image(path: str, tables: dict[str, dict[int, int]]) -> dict[str, object]:
    device = ModbusDevice(1, load_map(path))
    out: dict[str, object] = {}
    for request in device.plan.requests:
        image = tables[request.table]
        words = [image.get(a, 0) for a in range(request.address, request.address + request.count)]
        out.update(device.decode(request, words))
    return out


def test_an_input_table_decodes_to_the_values_worked_out_by_hand() -> None:
    image = {
        0: 1,  # Status 1 -> "Normal" (the JSON's status_codes)
        1: 0x0001, 2: 0x86A0,  # Ppv H/L: 100000 * 0.1 W = 10000.0 W, one value
        3: 2345,  # 234.5 V
        4: 0xFF9C,  # SHORT -100 * 0.1 A = -10.0 A
        5: 0xFFFF, 6: 0xFC18,  # INT -1000 W
        7: 0x4142, 8: 0x3132, 9: 0x3334, 10: 0x3536, 11: 0,  # "AB123456"
        12: 0b1001,  # b0 Grid Lost, b3 Over Temp
        13: 0x0020,  # bits 4-6 = 2 -> "Discharge"
        14: 0xDEAD,  # read-disabled: never read
        15: 452,  # 45.2 degrees C
        16: 123,  # register x10: 12.3 kWh
    }
    values = decode_image(INPUT, {"input": image})
    assert values == {
        "status": "Normal", "pv_watts": 10000.0, "pv1_voltage": 234.5,
        "battery_current": -10.0, "grid_watts": -1000, "serial": "AB123456",
        "fault_flags_grid_lost": "On", "fault_flags_over_temp": "On", "mode": "Discharge",
        "temperature": 45.2, "energy_today": 12.3,
    }
    regmap = load_map(INPUT)
    assert regmap.batch_size == 40  # from the JSON beside it
    assert (regmap["pv_watts"].unit, regmap["pv_watts"].device_class) == ("W", "power")
    assert regmap["temperature"].unit == "°C"
    assert regmap["energy_today"].state_class == "total_increasing"
    assert "debug" not in regmap  # RD: not read
    assert regmap.meta["skipped"] == ("acme_hybrid.input_registry_map.csv: checksum (HEX, line "
                                      "14); acme_hybrid.input_registry_map.csv: signed_bits "
                                      "(4SBIT, line 15)")
    assert not any(v.writable for v in regmap.values)  # input registers never are


def test_the_json_brings_both_tables_and_holding_writes() -> None:
    regmap = load_map(BOTH)
    assert {v.table for v in regmap.values} == {"input", "holding"}
    assert regmap["charge_limit"].writable and regmap["charge_limit"].maximum == 100
    assert regmap["output_priority"].options == ((0, "Solar first"), (1, "Grid first"))
    assert not regmap["firmware"].writable and regmap["firmware"].count == 3  # ASCII.6
    device = ModbusDevice(1, regmap)
    with pytest.raises(ValueError, match="above the maximum"):
        device.check_write({"charge_limit": 101})
    assert device.check_write({"output_priority": "Grid first"})[0].raw == 1


def test_a_broken_file_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.input_registry_map.csv"
    bad.write_text("variable name,register,documented name\nfoo,12a,Foo\n")
    with pytest.raises(MapError, match=r"broken.input_registry_map.csv:2: .*12a"):
        load_map(str(bad))
    not_ppg = tmp_path / "other.input_registry_map.csv"
    not_ppg.write_text("name,table,address,type\n")
    with pytest.raises(MapError, match="not a PythonProtocolGateway registry map"):
        load_map(str(not_ppg))


def test_a_modbus_tcp_section_reads_a_device_through_the_ppg_file(tmp_path: Path) -> None:
    port = free_port()
    sim = ModbusSimulator(load_map(BOTH), (1,), tcp_port=port, dynamic=False)
    sim.unit.set_value("pv_watts", 4321.5)
    sim.unit.set_value("battery_current", -12.5)
    sim.unit.set_value("grid_watts", -800)
    sim.unit.set_value("output_priority", "Grid first")
    settings = ModbusTcpSettings(transport="modbus_tcp", port=port, protocol_version=BOTH,
                                 read_interval=0.3)

    async def main() -> None:
        await sim.start()
        h = Harness(ModbusTcpTransport, settings, "growatt", tmp_path / "state")
        try:
            await h.start()
            await async_wait_for(lambda: h.of_kind("reading"))
            values = h.of_kind("reading")[-1].data
            assert values["pv_watts"] == 4321.5
            assert values["battery_current"] == -12.5 and values["grid_watts"] == -800
            assert values["output_priority"] == "Grid first"
            for name, value in values.items():
                assert sim.unit.value(name) == value, name
            assert h.of_kind("reading")[-1].source_transport_info["device_model"] == (
                "acme_hybrid")
        finally:
            await h.stop()
            await sim.stop()

    asyncio.run(main())
