"""What the register maps tell Home Assistant: names, categories, enums, opt-in writes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocols.registers import MapError, WriteRejected, load_map, parse_map
from transports.modbus.device import ModbusDevice
from transports.modbus.settings import ModbusTcpSettings
from transports.modbus_bus.settings import ModbusBusRtuSettings

SETUP = ("demand_period", "system_type", "pulse_width", "network_parity_stop",
         "modbus_address", "baud_rate")


def test_meter_set_up_registers_need_the_sections_writable_key() -> None:
    meter = ModbusDevice(1, load_map("sdm630"))
    for name in SETUP:
        with pytest.raises(WriteRejected, match="writable ="):
            meter.check_write({name: 1})
    specs = {s.name: s for s in meter.specs()}
    assert not any(specs[n].writable for n in SETUP)
    opened = ModbusDevice(1, load_map("sdm630"), writable={"demand_period"})
    assert opened.check_write({"demand_period": 15})[0].spec.name == "demand_period"
    assert {s.name: s for s in opened.specs()}["demand_period"].writable
    with pytest.raises(WriteRejected):
        opened.check_write({"modbus_address": 2})


def test_writable_key_is_checked_against_the_map_at_load() -> None:
    base = {"transport": "modbus_tcp", "protocol_version": "sdm630"}
    assert ModbusTcpSettings(**base, writable="demand_period, pulse_width").writable == (
        "demand_period", "pulse_width")
    with pytest.raises(ValidationError, match="not a value of map sdm630"):
        ModbusTcpSettings(**base, writable="no_such_value")
    with pytest.raises(ValidationError, match="read-only"):
        ModbusTcpSettings(**base, writable="voltage_l1")
    bus = ModbusBusRtuSettings.model_validate({
        "transport": "modbus_bus", "port": "/dev/null", "devices": "m1",
        "m1.unit": "2", "m1.protocol_version": "sdm630", "m1.writable": "baud_rate"})
    assert bus.bus_devices()[0].writable == ("baud_rate",)
    with pytest.raises(ValidationError, match="m1"):
        ModbusBusRtuSettings.model_validate({
            "transport": "modbus_bus", "port": "/dev/null", "devices": "m1",
            "m1.unit": "2", "m1.protocol_version": "sdm630", "m1.writable": "voltage_l1"})


def test_inverter_describe_keeps_enums_switches_names_and_categories() -> None:
    specs = {s.name: s for s in ModbusDevice(1, load_map("eg4_v58")).specs()}
    state = specs["inverter_state"]
    assert (state.kind, state.writable, state.device_class) == ("select", False, "")
    assert "Standby" in state.options  # an enum sensor in HA, not plain text
    for name in ("ac_charge_enable", "forced_discharge_enable", "feed_in_grid_enable"):
        assert specs[name].kind == "switch" and specs[name].options == ("Off", "On")
    assert specs["battery_soc"].display_name == "Battery SOC"
    assert specs["eps_l1_voltage"].display_name == "EPS L1 voltage"
    assert specs["serial_number"].entity_category == "diagnostic"
    assert specs["charge_current_limit"].entity_category == "config"
    lower = [s.display_name for s in specs.values()
             if any(w in s.display_name.split() for w in ("soc", "pv", "eps", "ac", "bms"))]
    assert not lower


def test_map_columns_are_checked() -> None:
    header = "name,table,address,type,access,entity_category,writable\n"
    with pytest.raises(MapError, match=r"m\.csv:2: x: entity_category 'settings'"):
        parse_map(header + "x,holding,0,u16,rw,settings,\n", "m.csv")
    with pytest.raises(MapError, match="opt-in needs access rw"):
        parse_map(header + "x,holding,0,u16,r,,opt-in\n", "m.csv")
    with pytest.raises(MapError, match="leave it empty or write opt-in"):
        parse_map(header + "x,holding,0,u16,rw,,yes\n", "m.csv")
    ok = parse_map(header + "x,holding,0,u16,rw,config,opt-in\n", "m.csv")
    assert ok["x"].opt_in and ok["x"].entity_category == "config"
