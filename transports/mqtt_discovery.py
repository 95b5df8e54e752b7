"""Pure MQTT knowledge: the topic layout, payload encodings and Home Assistant discovery.

No sockets here: the MQTT transport and the tests both use these functions, so the layout the
docs describe is the layout the code publishes (docs/transports/mqtt.md, "Topics").

Home Assistant discovery follows its MQTT discovery schema: one config per value under
``<prefix>/<component>/<node_id>/<object_id>/config``, each with ``unique_id``, a ``device``
block with ``identifiers`` (one HA device per physical device), ``origin`` and an
``availability`` list (the gateway's own topic and the device's, ``availability_mode: all``).
Every device names the gateway's own device (:func:`gateway_config`) as ``via_device``.
The platform is chosen from the value's :class:`ValueSpec` by the table below, in the spirit of
Home Assistant's entity-description tables.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from gateway import __version__
from gateway.message import ValueSpec

ONLINE = "online"
OFFLINE = "offline"
ON = "ON"
OFF = "OFF"
PRESS = "PRESS"
#: Sub-topics of a device that a value's state topic must not shadow.
RESERVED = frozenset({"availability", "result", "event"})

_SLUG_BAD = re.compile(r"[^A-Za-z0-9_-]+")

# What Home Assistant accepts (homeassistant/components/{sensor,number,binary_sensor,...}).
SENSOR_DEVICE_CLASSES = frozenset("""
    absolute_humidity apparent_power aqi area atmospheric_pressure battery
    blood_glucose_concentration carbon_dioxide carbon_monoxide conductivity current data_rate
    data_size date distance duration energy energy_distance energy_storage enum frequency gas
    humidity illuminance irradiance moisture monetary nitrogen_dioxide nitrogen_monoxide
    nitrous_oxide ozone ph pm1 pm10 pm25 power power_factor precipitation
    precipitation_intensity pressure reactive_energy reactive_power signal_strength
    sound_pressure speed sulphur_dioxide temperature timestamp volatile_organic_compounds
    volatile_organic_compounds_parts voltage volume volume_flow_rate volume_storage water
    weight wind_direction wind_speed""".split())
NUMBER_DEVICE_CLASSES = SENSOR_DEVICE_CLASSES - {"date", "enum", "timestamp"}
BINARY_SENSOR_DEVICE_CLASSES = frozenset("""
    battery battery_charging carbon_monoxide cold connectivity door garage_door gas heat light
    lock moisture motion moving occupancy opening plug power presence problem running safety
    smoke sound tamper update vibration window""".split())
SWITCH_DEVICE_CLASSES = frozenset({"outlet", "switch"})
BUTTON_DEVICE_CLASSES = frozenset({"identify", "restart", "update"})
STATE_CLASSES = frozenset({"measurement", "measurement_angle", "total", "total_increasing"})
#: Device classes whose state is text or a date, never a number with a state class.
_NON_NUMERIC = frozenset({"enum", "date", "timestamp"})

#: ValueSpec.kind -> (platform when writable, platform when read-only).
PLATFORMS: dict[str, tuple[str, str]] = {
    "number": ("number", "sensor"),
    "switch": ("switch", "binary_sensor"),
    "binary": ("binary_sensor", "binary_sensor"),
    "select": ("select", "sensor"),
    "text": ("text", "sensor"),
    "button": ("button", "button"),
}


def slug(text: str) -> str:
    """A topic segment / HA object id: letters, digits, ``_`` and ``-`` only, never empty."""
    out = _SLUG_BAD.sub("_", text.strip()).strip("_")
    return out or "_"


def value_slug(name: str) -> str:
    out = slug(name)
    return f"{out}_value" if out in RESERVED else out


def label(name: str) -> str:
    """``battery_voltage`` -> ``Battery voltage``: HA shows it after the device name."""
    words = re.sub(r"[_\s]+", " ", name).strip()
    return words[:1].upper() + words[1:] if words else name


def display(spec: ValueSpec) -> str:
    """The entity's name: the describe's display name (acronyms as the vendor writes them)."""
    return spec.display_name.strip() or label(spec.name)


def entity_name(spec: ValueSpec, device_name: str) -> str:
    """The entity's name without a leading repeat of its device's name: HA shows the two
    together ("Load sharing Mode"), and warns about a name that starts with the device's."""
    name = display(spec)
    prefix = device_name.strip().lower() + " "
    if len(prefix) > 1 and name.lower().startswith(prefix) and len(name) > len(prefix):
        rest = name[len(prefix):].strip()
        return rest[:1].upper() + rest[1:]
    return name


def shorten(text: str, limit: int = 60) -> str:
    """Untrusted text for a log line or a result: at most ``limit`` characters, marked."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass(frozen=True)
class Topics:
    """The documented topic layout, built from ``base_topic`` and ``discovery_prefix``."""

    base: str
    prefix: str = "homeassistant"

    @property
    def gateway_status(self) -> str:
        return f"{self.base}/status"

    @property
    def command_filter(self) -> str:
        return f"{self.base}/+/+/set"

    @property
    def ha_status(self) -> str:
        return f"{self.prefix}/status"

    def availability(self, device: str) -> str:
        return f"{self.base}/{device}/availability"

    def state(self, device: str, value: str) -> str:
        return f"{self.base}/{device}/{value}"

    def command(self, device: str, value: str) -> str:
        return f"{self.base}/{device}/{value}/set"

    def result(self, device: str) -> str:
        return f"{self.base}/{device}/result"

    def event(self, device: str) -> str:
        return f"{self.base}/{device}/event"

    def discovery(self, platform: str, device: str, value: str) -> str:
        return f"{self.prefix}/{platform}/{device}/{value}/config"

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """``<base>/<device>/<value>/set`` -> (device, value); None for anything else."""
        if not topic.startswith(self.base + "/"):
            return None
        parts = topic[len(self.base) + 1 :].split("/")
        if len(parts) != 3 or parts[2] != "set" or not parts[0] or not parts[1]:
            return None
        return parts[0], parts[1]


def platform_for(spec: ValueSpec) -> str:
    writable, read_only = PLATFORMS.get(spec.kind, ("sensor", "sensor"))
    if spec.kind == "select" and spec.writable and not spec.options:
        return "text"  # HA refuses a select without options
    return writable if spec.writable else read_only


def encode_state(value: Any, spec: ValueSpec | None = None) -> str:
    """The state payload: ON/OFF for booleans and switches, plain text for the rest."""
    if spec is not None and spec.kind in ("switch", "binary"):
        if not isinstance(value, str):
            return ON if value else OFF
        word = value.strip().lower()
        on_text = spec.options[1].lower() if len(spec.options) == 2 else ""
        if word in _TRUE or word == on_text:
            return ON
        if word in _FALSE or (len(spec.options) == 2 and word == spec.options[0].lower()):
            return OFF
    if isinstance(value, bool):
        return ON if value else OFF
    if isinstance(value, float):
        return repr(value)
    return str(value)


class CommandError(ValueError):
    """A ``/set`` payload we cannot turn into a write: the message says why, for the user."""

    def __init__(self, result: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


_TRUE = {"on", "true", "1", "yes", "press"}
_FALSE = {"off", "false", "0", "no"}


#: Largest ``/set`` payload looked at; a longer one is refused unread (and never echoed).
MAX_SET_PAYLOAD = 4096


@dataclass(frozen=True)
class SetRequest:
    """A ``/set`` payload turned into a write: the value, the caller's request id and what
    was changed on the way (``note``: a rounding to the value's step), for the result."""

    value: Any
    request_id: str | None = None
    note: str = ""
    requested: Any = None  # the number asked for, when ``value`` is it rounded


def parse_set_payload(payload: bytes, spec: ValueSpec | None) -> SetRequest:
    """``/set`` payload -> :class:`SetRequest`, or :class:`CommandError`.

    Accepted: the bare value as text (``16``, ``ON``, ``eco``), or JSON ``{"value": ...,
    "request_id": "..."}`` to choose the request id echoed on the result topic. Error details
    quote at most 60 characters of the payload.
    """
    if len(payload) > MAX_SET_PAYLOAD:
        raise CommandError("rejected", f"payload of {len(payload)} bytes is over the "
                                       f"{MAX_SET_PAYLOAD}-byte limit; not read")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("malformed", f"payload is not UTF-8: {shorten(repr(payload))}"
                           ) from None
    request_id: str | None = None
    raw: Any = text
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise CommandError("malformed", f"payload is not valid JSON: {shorten(repr(text))}"
                               ) from None
        if not isinstance(obj, dict) or "value" not in obj:
            raise CommandError("malformed", 'a JSON payload needs a "value" key')
        raw = obj["value"]
        if obj.get("request_id") is not None:
            request_id = shorten(str(obj["request_id"]), 100)
    if raw == "":
        raise CommandError("malformed", "empty payload")
    if spec is not None and spec.kind == "number" and spec.writable:
        value, requested = _number(raw, spec)
        if requested is not None:
            note = f"{requested:g} rounded to {value:g} (step {spec.step:g})"
            return SetRequest(value, request_id, note, requested)
        return SetRequest(value, request_id)
    return SetRequest(_convert(raw, spec), request_id)


def _convert(raw: Any, spec: ValueSpec | None) -> Any:
    if spec is None:
        return _guess(raw)
    if not spec.writable:
        raise CommandError("rejected", f"{spec.name} is read-only")
    shown = shorten(repr(raw))
    if spec.kind in ("switch", "binary", "button"):
        word = str(raw).strip().lower() if not isinstance(raw, bool) else str(raw).lower()
        if word in _TRUE:
            on = True
        elif word in _FALSE and spec.kind != "button":
            on = False
        else:
            raise CommandError("malformed", f"{spec.name} expects ON or OFF, got {shown}")
        if spec.kind == "switch" and len(spec.options) == 2:
            return spec.options[1] if on else spec.options[0]  # an Off/On enum register
        return on
    if spec.kind == "select":
        if str(raw) not in spec.options:
            raise CommandError(
                "malformed", f"{spec.name} expects one of {list(spec.options)}, got {shown}"
            )
        return str(raw)
    if spec.kind == "text":
        return str(raw)
    return _number(raw, spec)[0]


def _number(raw: Any, spec: ValueSpec) -> tuple[float | int, float | None]:
    """(the number to write, the number asked for when it had to be rounded to the step)."""
    shown = shorten(repr(raw))
    if isinstance(raw, bool):
        raise CommandError("malformed", f"{spec.name} expects a number, got {shown}")
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise CommandError("malformed", f"{spec.name} expects a number, got {shown}") from None
    if not math.isfinite(number):
        raise CommandError("malformed", f"{spec.name} expects a finite number, got {shown}")
    if spec.minimum is not None and number < spec.minimum:
        raise CommandError("rejected", f"{spec.name} minimum is {spec.minimum:g}, got {shown}")
    if spec.maximum is not None and number > spec.maximum:
        raise CommandError("rejected", f"{spec.name} maximum is {spec.maximum:g}, got {shown}")
    requested = None
    if spec.step is not None and spec.step > 0:
        base = spec.minimum if spec.minimum is not None else 0.0
        steps = math.floor((number - base) / spec.step + 0.5)  # half up: 16.5 -> 17
        snapped = base + steps * spec.step
        snapped = float(f"{snapped:.10g}")  # 0.1 * 3 -> 0.3, not 0.30000000000000004
        if spec.maximum is not None and snapped > spec.maximum:
            snapped -= spec.step
        if not math.isclose(snapped, number, rel_tol=0, abs_tol=spec.step * 1e-6):
            requested = number
        number = snapped
    integral = spec.step is not None and float(spec.step).is_integer()
    return (int(number) if integral and number.is_integer() else number), requested


def _guess(raw: Any) -> Any:
    """No description known: JSON-ish numbers and booleans, else the text itself."""
    if not isinstance(raw, str):
        return raw
    word = raw.lower()
    if word in ("on", "true"):
        return True
    if word in ("off", "false"):
        return False
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        return raw
    return number if math.isfinite(number) else raw


GATEWAY_MANUFACTURER = "protocol-gateway"


@dataclass(frozen=True)
class DeviceIdentity:
    """What HA's device block needs, from an envelope's ``source_transport_info``."""

    node: str  # topic segment and HA node_id
    uid: str  # stable id for unique_id / identifiers
    name: str
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    via: str = ""  # the gateway device's identifier (HA's via_device)

    @classmethod
    def from_info(cls, source: str, info: dict[str, str], via: str = "") -> DeviceIdentity:
        ident = info.get("device_identifier", "") or source
        serial = info.get("device_serial_number", "")
        manufacturer = info.get("device_manufacturer", "")
        model = info.get("device_model", "")
        name = info.get("device_name") or " ".join(p for p in (manufacturer, model) if p)
        return cls(
            node=slug(ident),
            uid=slug(serial or ident),
            name=name or ident,
            manufacturer=manufacturer,
            model=model,
            serial=serial,
            via=via,
        )

    def qualified(self, section: str) -> DeviceIdentity:
        """The same device told apart by its section: for an identifier two sections share
        (two inverters with one serial number); topics and unique ids both get the prefix."""
        return replace(self, node=slug(f"{section}_{self.node}"),
                       uid=slug(f"{section}_{self.uid}"))

    def block(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "identifiers": [f"pgw_{self.uid}"], "name": self.name,
            # HA shows both; a transport that names neither still gets a truthful pair
            "manufacturer": self.manufacturer or GATEWAY_MANUFACTURER,
            "model": self.model or "device",
        }
        if self.serial:
            out["serial_number"] = self.serial
        if self.via:
            out["via_device"] = self.via
        return out


def gateway_identifier(topics: Topics) -> str:
    """The gateway's own HA device: one per ``base_topic`` (one gateway per base topic)."""
    return f"pgw_gateway_{slug(topics.base)}"


def gateway_config(topics: Topics, qos: int = 1) -> tuple[str, dict[str, Any]]:
    """The gateway device (every device's ``via_device``) and its one entity: the bridge's
    connection, from the retained ``<base>/status`` (birth ``online``, last will ``offline``)."""
    ident = gateway_identifier(topics)
    payload: dict[str, Any] = {
        "name": "Connection",
        "unique_id": f"{ident}_connection",
        "device": {"identifiers": [ident], "name": f"protocol-gateway {topics.base}",
                   "manufacturer": GATEWAY_MANUFACTURER, "model": "gateway",
                   "sw_version": __version__},
        "origin": {"name": "protocol-gateway", "sw_version": __version__},
        "state_topic": topics.gateway_status,
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "qos": qos,
    }
    return topics.discovery("binary_sensor", slug(ident), "connection"), payload


def discovery_config(
    topics: Topics, device: DeviceIdentity, spec: ValueSpec, qos: int = 1
) -> tuple[str, dict[str, Any]]:
    """(config topic, payload) announcing ``spec`` of ``device`` to Home Assistant."""
    platform = platform_for(spec)
    value = value_slug(spec.name)
    payload: dict[str, Any] = {
        "name": entity_name(spec, device.name),
        "unique_id": f"pgw_{device.uid}_{value}",
        "device": device.block(),
        "origin": {"name": "protocol-gateway", "sw_version": __version__},
        "availability": [
            {"topic": topics.gateway_status},
            {"topic": topics.availability(device.node)},
        ],
        "availability_mode": "all",
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": qos,
    }
    state = topics.state(device.node, value)
    command = topics.command(device.node, value)
    if platform != "button":
        payload["state_topic"] = state
    if platform in ("number", "switch", "select", "text", "button"):
        payload["command_topic"] = command
    category = spec.entity_category
    if category == "config" and platform in ("sensor", "binary_sensor"):
        category = "diagnostic"  # HA refuses "config" on a read-only entity
    if category in ("config", "diagnostic"):
        payload["entity_category"] = category
    if spec.icon.startswith("mdi:"):
        payload["icon"] = spec.icon
    _PLATFORM_KEYS[platform](payload, spec)
    return topics.discovery(platform, device.node, value), payload


def _keys_sensor(payload: dict[str, Any], spec: ValueSpec) -> None:
    device_class = spec.device_class if spec.device_class in SENSOR_DEVICE_CLASSES else ""
    if spec.kind == "select" and spec.options:
        payload["device_class"] = "enum"
        payload["options"] = list(spec.options)
        return
    if spec.kind == "text" or device_class in _NON_NUMERIC:
        if device_class in ("date", "timestamp"):
            payload["device_class"] = device_class
        return
    if device_class:
        payload["device_class"] = device_class
    if spec.unit:
        payload["unit_of_measurement"] = spec.unit
    if spec.state_class in STATE_CLASSES:
        payload["state_class"] = spec.state_class


def _keys_number(payload: dict[str, Any], spec: ValueSpec) -> None:
    if spec.device_class in NUMBER_DEVICE_CLASSES:
        payload["device_class"] = spec.device_class
    if spec.unit:
        payload["unit_of_measurement"] = spec.unit
    bounded = spec.minimum is not None and spec.maximum is not None
    # HA's defaults are 1..100: a device without bounds still needs a usable range.
    payload["min"] = spec.minimum if spec.minimum is not None else -1e9
    payload["max"] = spec.maximum if spec.maximum is not None else 1e9
    if spec.step is not None and spec.step > 0:
        payload["step"] = spec.step
    payload["mode"] = "auto" if bounded else "box"


def _keys_binary(payload: dict[str, Any], spec: ValueSpec) -> None:
    if spec.device_class in BINARY_SENSOR_DEVICE_CLASSES:
        payload["device_class"] = spec.device_class
    payload["payload_on"] = ON
    payload["payload_off"] = OFF


def _keys_switch(payload: dict[str, Any], spec: ValueSpec) -> None:
    if spec.device_class in SWITCH_DEVICE_CLASSES:
        payload["device_class"] = spec.device_class
    payload.update(payload_on=ON, payload_off=OFF, state_on=ON, state_off=OFF)


def _keys_select(payload: dict[str, Any], spec: ValueSpec) -> None:
    payload["options"] = list(spec.options)


def _keys_text(payload: dict[str, Any], spec: ValueSpec) -> None:
    """A text entity needs nothing beyond its topics."""


def _keys_button(payload: dict[str, Any], spec: ValueSpec) -> None:
    if spec.device_class in BUTTON_DEVICE_CLASSES:
        payload["device_class"] = spec.device_class
    payload["payload_press"] = PRESS


_PLATFORM_KEYS = {
    "sensor": _keys_sensor,
    "number": _keys_number,
    "binary_sensor": _keys_binary,
    "switch": _keys_switch,
    "select": _keys_select,
    "text": _keys_text,
    "button": _keys_button,
}


def default_spec(name: str, value: Any) -> ValueSpec:
    """A read-only description for a value nobody described: a plain sensor (or binary)."""
    if isinstance(value, bool):
        return ValueSpec(name=name, kind="binary")
    if isinstance(value, str):
        return ValueSpec(name=name, kind="text")
    return ValueSpec(name=name)


def spec_from_dict(data: dict[str, Any]) -> ValueSpec:
    """A describe event's ValueSpec dict back into the frozen dataclass (unknown keys dropped)."""
    fields = set(ValueSpec.__dataclass_fields__)
    clean = {k: v for k, v in data.items() if k in fields}
    if "options" in clean:
        clean["options"] = tuple(str(o) for o in clean["options"] or ())
    return ValueSpec(**clean)
