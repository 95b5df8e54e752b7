"""Home Assistant's rules for MQTT discovery configs, as a test-side auditor.

Written from Home Assistant's documentation, not from the gateway's code, so that the two can
disagree: the sensor and number device classes with their units
(https://www.home-assistant.io/integrations/sensor/#device-class,
https://www.home-assistant.io/integrations/number/#device-class), the state classes each device
class allows (https://developers.home-assistant.io/docs/core/entity/sensor/#available-device-classes
and #available-state-classes: energy is total or total_increasing, power is measurement, ...),
the binary sensor, switch and button classes, the MQTT platforms' keys
(https://www.home-assistant.io/integrations/sensor.mqtt/ and siblings) and the entity naming
rule (an entity's name must not repeat its device's, https://developers.home-assistant.io/docs/
core/entity/#entity-naming). HA accepts a config that breaks a unit or state-class rule but logs
a warning and keeps no long-term statistics for it: here every such case is a breach.

:func:`audit` takes every retained message of a run (topic -> payload) and returns the breaches
as sentences; an empty list is a clean run.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

NONE = None  # "no unit" where HA allows it

#: sensor device class -> allowed units (None = no unit)
SENSOR_UNITS: dict[str, set[str | None]] = {
    "apparent_power": {"VA", "mVA", "kVA"},
    "aqi": {None},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "battery": {"%"},
    "carbon_dioxide": {"ppm"},
    "carbon_monoxide": {"ppm", "mg/m³", "μg/m³"},
    "current": {"A", "mA"},
    "data_rate": {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s",
                  "KiB/s", "MiB/s", "GiB/s"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB",
                  "YB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"},
    "date": {None},
    "distance": {"km", "m", "cm", "mm", "mi", "nmi", "yd", "in", "ft"},
    "duration": {"d", "h", "min", "s", "ms", "µs"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal",
               "Mcal", "Gcal"},
    "energy_storage": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh"},
    "enum": {None},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "gas": {"m³", "ft³", "CCF", "L"},
    "humidity": {"%"},
    "illuminance": {"lx"},
    "irradiance": {"W/m²", "BTU/(h⋅ft²)"},
    "moisture": {"%"},
    "monetary": set(),  # an ISO 4217 currency: checked apart
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "power_factor": {"%", None},
    "pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "reactive_energy": {"varh", "kvarh"},
    "reactive_power": {"var", "kvar", "mvar"},
    "signal_strength": {"dB", "dBm"},
    "speed": {"ft/s", "in/d", "in/h", "in/s", "km/h", "kn", "m/s", "mph", "mm/d", "mm/s"},
    "temperature": {"°C", "°F", "K"},
    "timestamp": {None},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "volume": {"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"},
    "water": {"L", "gal", "m³", "ft³", "CCF"},
    "weight": {"kg", "g", "mg", "µg", "oz", "lb", "st"},
}
ALL_STATE_CLASSES = {"measurement", "total", "total_increasing"}
#: sensor device class -> allowed state classes (absent class: any; empty set: none at all)
SENSOR_STATE_CLASSES: dict[str, set[str]] = {
    "apparent_power": {"measurement"},
    "aqi": {"measurement"},
    "atmospheric_pressure": {"measurement"},
    "battery": {"measurement"},
    "carbon_dioxide": {"measurement"},
    "carbon_monoxide": {"measurement"},
    "current": {"measurement"},
    "data_rate": {"measurement"},
    "data_size": ALL_STATE_CLASSES,
    "date": set(),
    "distance": ALL_STATE_CLASSES,
    "duration": ALL_STATE_CLASSES,
    "energy": {"total", "total_increasing"},
    "energy_storage": {"measurement"},
    "enum": set(),
    "frequency": {"measurement"},
    "gas": {"total", "total_increasing"},
    "humidity": {"measurement"},
    "illuminance": {"measurement"},
    "irradiance": {"measurement"},
    "moisture": {"measurement"},
    "monetary": {"total"},
    "power": {"measurement"},
    "power_factor": {"measurement"},
    "pressure": {"measurement"},
    "reactive_energy": {"total", "total_increasing"},
    "reactive_power": {"measurement"},
    "signal_strength": {"measurement"},
    "speed": {"measurement"},
    "temperature": {"measurement"},
    "timestamp": set(),
    "voltage": {"measurement"},
    "volume": {"total", "total_increasing"},
    "water": {"total", "total_increasing"},
    "weight": {"total", "total_increasing"},
}
#: number device classes: the sensor ones that hold a number
NUMBER_UNITS = {k: v for k, v in SENSOR_UNITS.items() if k not in ("date", "enum", "timestamp")}
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window"}
SWITCH_CLASSES = {"outlet", "switch"}
BUTTON_CLASSES = {"identify", "restart", "update"}

COMMON_KEYS = {"name", "unique_id", "device", "origin", "availability", "availability_mode",
               "payload_available", "payload_not_available", "qos", "icon", "entity_category",
               "enabled_by_default", "json_attributes_topic", "encoding", "object_id"}
#: platform -> (required keys, optional keys)
PLATFORM_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "sensor": ({"state_topic"}, {"device_class", "unit_of_measurement", "state_class",
                                 "options", "expire_after", "force_update",
                                 "suggested_display_precision", "value_template",
                                 "last_reset_value_template"}),
    "binary_sensor": ({"state_topic"}, {"device_class", "payload_on", "payload_off",
                                        "expire_after", "force_update", "value_template"}),
    "number": ({"command_topic"}, {"state_topic", "min", "max", "step", "mode",
                                   "unit_of_measurement", "device_class", "retain",
                                   "optimistic", "value_template", "command_template"}),
    "switch": ({"command_topic"}, {"state_topic", "payload_on", "payload_off", "state_on",
                                   "state_off", "device_class", "retain", "optimistic",
                                   "value_template"}),
    "select": ({"command_topic", "options"}, {"state_topic", "retain", "optimistic",
                                              "value_template", "command_template"}),
    "text": ({"command_topic"}, {"state_topic", "min", "max", "mode", "pattern", "retain",
                                 "value_template", "command_template"}),
    "button": ({"command_topic"}, {"payload_press", "device_class", "retain",
                                   "command_template"}),
}
#: words HA users read as acronyms: written in lower case in a name they are a breach
ACRONYMS = {"soc", "soh", "pv", "pv1", "pv2", "pv3", "eps", "ac", "dc", "bms", "gfi", "cpu",
            "ct", "l1", "l2", "l3", "ev", "evse", "id"}
_ID = re.compile(r"[A-Za-z0-9_-]+")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def audit(retained: dict[str, bytes], prefix: str = "homeassistant") -> list[str]:
    """Every breach of HA's rules in one run's retained messages (empty: clean)."""
    problems: list[str] = []
    configs: dict[str, dict[str, Any]] = {}
    for topic, payload in retained.items():
        if topic.startswith(prefix + "/") and topic.endswith("/config") and payload:
            try:
                configs[topic] = json.loads(payload)
            except ValueError:
                problems.append(f"{topic}: config is not JSON")
    if not configs:
        return ["no discovery config at all"]
    unique: dict[str, str] = {}
    devices: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for topic, config in configs.items():
        problems += _check_config(topic, config, retained, prefix)
        uid = str(config.get("unique_id", ""))
        if uid in unique:
            problems.append(f"{topic}: unique_id {uid!r} also used by {unique[uid]}")
        unique[uid] = topic
        ident = tuple(config.get("device", {}).get("identifiers") or ())
        if ident:
            devices[ident[0]].append((topic, config))
    # the gateway's device: the one every other names as via_device, and it must exist
    vias = {c["device"].get("via_device") for c in configs.values() if "device" in c}
    vias.discard(None)
    if len(vias) != 1:
        problems.append(f"devices name {len(vias)} different via_device (want one gateway)")
    for via in vias:
        if via not in devices:
            problems.append(f"via_device {via!r} is not a device of any config")
    for ident, entries in devices.items():
        names = {json.dumps(c["device"], sort_keys=True) for _, c in entries}
        if len(names) > 1:
            problems.append(f"device {ident}: its configs disagree on the device block")
        if ident not in vias and not any("via_device" in c["device"] for _, c in entries):
            problems.append(f"device {ident}: no via_device")
    return problems


def _check_config(topic: str, config: dict[str, Any], retained: dict[str, bytes],
                  prefix: str) -> list[str]:
    out: list[str] = []
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != prefix or not all(_ID.fullmatch(p) for p in parts[2:4]):
        return [f"{topic}: not <prefix>/<platform>/<node>/<object>/config"]
    platform = parts[1]
    if platform not in PLATFORM_KEYS:
        return [f"{topic}: unknown platform {platform}"]
    required, optional = PLATFORM_KEYS[platform]
    if missing := required - config.keys():
        out.append(f"{topic}: missing {sorted(missing)}")
    if extra := config.keys() - required - optional - COMMON_KEYS:
        out.append(f"{topic}: keys {platform} does not know: {sorted(extra)}")
    # the device: what HA's device page shows
    device = config.get("device") or {}
    for key in ("identifiers", "name", "manufacturer", "model"):
        if not device.get(key):
            out.append(f"{topic}: device has no {key}")
    name = str(config.get("name") or "")
    device_name = str(device.get("name") or "")
    if not name:
        out.append(f"{topic}: no name")
    elif device_name and name.lower().startswith(device_name.lower()):
        out.append(f"{topic}: name {name!r} repeats its device's {device_name!r}")
    low = [w for w in re.split(r"[\s()/,-]+", name) if w.lower() in ACRONYMS and w.islower()]
    if low:
        out.append(f"{topic}: name {name!r} has acronyms in lower case: {low}")
    category = config.get("entity_category")
    if category not in (None, "diagnostic", "config"):
        out.append(f"{topic}: entity_category {category!r}")
    if category == "config" and platform in ("sensor", "binary_sensor"):
        out.append(f"{topic}: a read-only entity cannot be entity_category config")
    # availability: every topic must hold the "available" payload (else: a ghost device)
    available = str(config.get("payload_available", "online"))
    for item in config.get("availability", []):
        got = retained.get(item.get("topic", ""))
        want = item.get("payload_available", available)
        if got is None:
            out.append(f"{topic}: availability {item.get('topic')} never written (ghost)")
        elif got.decode(errors="replace") != want:
            out.append(f"{topic}: availability {item.get('topic')} is {got!r}, not {want!r}")
    state_topic = config.get("state_topic")
    state = retained.get(state_topic) if state_topic else None
    if state_topic and state is None:
        out.append(f"{topic}: state topic {state_topic} never written")
    text = state.decode(errors="replace") if state is not None else None
    out += _class_rules(topic, platform, config, text)
    return out


def _class_rules(topic: str, platform: str, config: dict[str, Any],
                 state: str | None) -> list[str]:
    out: list[str] = []
    device_class = config.get("device_class")
    unit = config.get("unit_of_measurement")
    state_class = config.get("state_class")
    if platform == "sensor":
        if device_class is not None and device_class not in SENSOR_UNITS:
            out.append(f"{topic}: sensor device_class {device_class!r} unknown to HA")
        elif device_class is not None and device_class != "monetary" and (
                unit not in SENSOR_UNITS[device_class]):
            out.append(f"{topic}: unit {unit!r} is not one of {device_class}'s "
                       f"{sorted(map(str, SENSOR_UNITS[device_class]))}")
        if state_class is not None:
            if state_class not in ALL_STATE_CLASSES:
                out.append(f"{topic}: state_class {state_class!r} unknown")
            allowed = SENSOR_STATE_CLASSES.get(device_class or "", ALL_STATE_CLASSES)
            if state_class not in allowed:
                out.append(f"{topic}: state_class {state_class} not allowed for "
                           f"{device_class}: {sorted(allowed) or 'none'}")
            if state_class == "total" and "last_reset_value_template" not in config:
                out.append(f"{topic}: state_class total without a last_reset: statistics "
                           "go wrong at each reset (use total_increasing)")
        if "options" in config or device_class == "enum":
            if device_class != "enum" or not config.get("options"):
                out.append(f"{topic}: options go with device_class enum, and enum needs them")
            if unit is not None or state_class is not None:
                out.append(f"{topic}: an enum has no unit or state_class")
            if state is not None and state not in config.get("options", []):
                out.append(f"{topic}: state {state!r} is not one of its options")
        elif state is not None and (unit is not None or state_class is not None) and (
                not _number(state)):
            out.append(f"{topic}: numeric sensor with state {state[:40]!r}")
    elif platform == "number":
        if device_class is not None:
            if device_class not in NUMBER_UNITS:
                out.append(f"{topic}: number device_class {device_class!r} unknown to HA")
            elif unit not in NUMBER_UNITS[device_class]:
                out.append(f"{topic}: unit {unit!r} is not one of {device_class}'s units")
        low, high = config.get("min", 1), config.get("max", 100)
        if not low < high:
            out.append(f"{topic}: min {low} is not below max {high}")
        if config.get("step", 1) <= 0:
            out.append(f"{topic}: step must be positive")
        if state is not None and not _number(state):
            out.append(f"{topic}: number with state {state[:40]!r}")
        elif state is not None and not low <= float(state) <= high:
            out.append(f"{topic}: state {state} outside {low}..{high}")
    elif platform in ("binary_sensor", "switch"):
        classes = BINARY_SENSOR_CLASSES if platform == "binary_sensor" else SWITCH_CLASSES
        if device_class is not None and device_class not in classes:
            out.append(f"{topic}: {platform} device_class {device_class!r} unknown to HA")
        on = config.get("state_on", config.get("payload_on", "ON"))
        off = config.get("state_off", config.get("payload_off", "OFF"))
        if state is not None and state not in (on, off):
            out.append(f"{topic}: state {state!r} is neither {on!r} nor {off!r}")
    elif platform == "select":
        if not config.get("options"):
            out.append(f"{topic}: a select needs options")
        elif state is not None and state not in config["options"]:
            out.append(f"{topic}: state {state!r} is not one of its options")
    elif platform == "button":
        if device_class is not None and device_class not in BUTTON_CLASSES:
            out.append(f"{topic}: button device_class {device_class!r} unknown to HA")
    return out
