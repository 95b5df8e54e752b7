"""The keys of a ``modbus_bus`` / ``modbus_bus_tcp`` section: one bus and the devices on it.

INI is flat, so a device's keys are prefixed with its name::

    devices = inverter, meter1
    inverter.unit = 1
    inverter.protocol_version = eg4_v58
    meter1.unit = 2
    meter1.protocol_version = sdm630
    meter1.read_interval = 5

A key without a prefix (``timeout = 1.0``) is the bus-wide default for every device;
``meter1__read_interval`` spells ``meter1.read_interval`` for environment variables and
``--set`` (whose keys cannot carry a dot). The config loader lower-cases keys and hands the
section over as a dict of strings; a wrap ``model_validator`` regroups the dotted keys into
one :class:`BusDeviceSettings` per device and re-raises each problem under the dotted key the
user wrote (``meter1.unit``), together with the bus's own problems, so the loader's message
names file, section and that key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.settings import (
    ByteSize,
    Parity,
    Settings,
    StopBits,
    StrList,
    TransportSettings,
    serial_identity,
)
from protocols.read_plan import DEFAULT_TURNAROUND
from protocols.registers import check_writable, load_map
from protocols.sunspec import PROTOCOL as SUNSPEC
from transports.modbus.settings import check_listen, check_map
from transports.modbus_bus.port_resolve import UsbSelector

_DEVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
#: keys a device may set for itself; the same keys without prefix are the bus defaults
DEVICE_DEFAULTS = ("read_interval", "timeout", "retries", "request_delay", "connect_delay",
                   "offline_after", "quarantine_max", "batch_size", "turnaround")


class BusDeviceSettings(Settings):
    """One device on the bus; a key left out takes the bus-wide value."""

    unit: int = Field(ge=1, le=247, description="the device's unit id (slave address) on the bus")
    protocol_version: str = Field(description="register map: shipped map name or .csv path")
    read_interval: float | None = Field(default=None, gt=0, description="seconds between scans")
    timeout: float | None = Field(default=None, gt=0, le=60, description="seconds per reply")
    retries: int | None = Field(default=None, ge=0, le=10, description="re-sends on no reply")
    request_delay: float | None = Field(default=None, ge=0, le=10,
                                        description="quiet on the bus before each request")
    connect_delay: float | None = Field(default=None, ge=0, le=60,
                                        description="pause after connecting, before the first "
                                        "request to this device")
    offline_after: int | None = Field(default=None, ge=1, le=100,
                                      description="requests in a row unanswered -> quarantine")
    quarantine_max: float | None = Field(default=None, gt=0,
                                         description="longest wait between quarantine probes")
    batch_size: int | None = Field(default=None, ge=0, le=125,
                                   description="registers per read at most; 0 = the map's")
    turnaround: float | None = Field(default=None, ge=0, le=10,
                                     description="the device's think time per request (s)")
    writable: StrList = Field(default=(), description="configuration registers (the map's "
                              "writable = opt-in) this device may have written; default none")

    @field_validator("protocol_version")
    @classmethod
    def _known_map(cls, value: str) -> str:
        return check_map(value)

    @model_validator(mode="after")
    def _writable_in_map(self) -> BusDeviceSettings:
        if self.protocol_version != SUNSPEC:  # a SunSpec device's points: patterns, at discovery
            check_writable(load_map(self.protocol_version), self.writable)
        return self


@dataclass(frozen=True)
class BusDevice:
    """A device's settings with the bus defaults filled in: what the transport uses."""

    name: str
    unit: int
    protocol_version: str
    read_interval: float
    timeout: float
    retries: int
    request_delay: float
    connect_delay: float
    offline_after: int
    quarantine_max: float
    batch_size: int
    turnaround: float
    writable: tuple[str, ...] = ()


def _custom(kind: str, message: str, key: str, given: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=(key,), input=given)


def _parse_devices(listed: list[str], grouped: dict[str, dict[str, Any]],
                   errors: list[InitErrorDetails]) -> dict[str, BusDeviceSettings]:
    """Each listed device's keys -> its settings; problems go to ``errors`` as dotted keys."""
    known = sorted(BusDeviceSettings.model_fields)
    parsed: dict[str, BusDeviceSettings] = {}
    for name in listed:
        try:
            parsed[name] = BusDeviceSettings.model_validate(grouped.get(name, {}))
        except ValidationError as exc:
            for err in exc.errors():
                sub = str(err["loc"][0]) if err["loc"] else ""
                key = f"{name}.{sub}"
                if err["type"] == "extra_forbidden":
                    errors.append(_custom("device_key", f"unknown device key {sub!r}; "
                                          f"known: {', '.join(known)}", key, err["input"]))
                elif err["type"] == "missing":
                    errors.append(_custom("device_key", "missing: every device needs "
                                          f"{name}.unit and {name}.protocol_version", key, None))
                else:
                    errors.append(InitErrorDetails(type=err["type"], loc=(key,),
                                                   input=err["input"], ctx=err.get("ctx", {})))
    owners: dict[int, str] = {}
    for name, dev in parsed.items():
        if dev.unit in owners:
            errors.append(_custom(
                "duplicate_unit", f"unit {dev.unit} is already used by device "
                f"{owners[dev.unit]!r} on this bus", f"{name}.unit", str(dev.unit)))
        owners.setdefault(dev.unit, name)
    return parsed


class BusSettings(TransportSettings):
    """Keys both bus kinds share (the devices and their defaults)."""

    devices: StrList = Field(description="the devices on this bus, by name, comma separated")
    read_interval: float = Field(default=10.0, gt=0, description="default seconds between scans")
    timeout: float = Field(default=1.0, gt=0, le=60, description="default seconds per reply")
    retries: int = Field(default=1, ge=0, le=10, description="default re-sends on no reply")
    request_delay: float = Field(default=0.0, ge=0, le=10,
                                 description="default quiet on the bus before each request")
    connect_delay: float = Field(default=0.0, ge=0, le=60,
                                 description="default pause after connecting")
    offline_after: int = Field(default=3, ge=1, le=100,
                               description="requests in a row unanswered before a device is "
                               "quarantined and reported unavailable")
    quarantine_max: float = Field(default=300.0, gt=0,
                                  description="longest wait between probes of a quarantined "
                                  "device (backoff from its read_interval, doubling)")
    batch_size: int = Field(default=0, ge=0, le=125,
                            description="default registers per read; 0 = each map's limit")
    turnaround: float = Field(default=DEFAULT_TURNAROUND, ge=0, le=10,
                              description="default think time of a device per request (s), "
                              "for planning reads")
    reconnect_max: float = Field(default=30.0, gt=0,
                                 description="longest wait between reconnects of the bus")
    reexport_listen: str = Field(default="", description="host:port of a Modbus TCP server "
                                 "serving every device's values again (each on its unit id, "
                                 "read-only); empty = none")
    device_settings: dict[str, BusDeviceSettings] = Field(
        default_factory=dict, description="(filled from the dotted keys; not an INI key)")

    @field_validator("reexport_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value)

    def claims(self) -> list[tuple[str, str]]:
        return [("tcp listen", self.reexport_listen)] if self.reexport_listen else []

    @model_validator(mode="wrap")
    @classmethod
    def _regroup(cls, data: Any, handler: ModelWrapValidatorHandler[BusSettings]) -> BusSettings:
        """``name.key = value`` -> ``device_settings[name][key]``; errors keep the dotted key.

        A wrap validator, so that device errors and the bus's own errors come out together.
        """
        if not isinstance(data, dict) or not isinstance(data.get("device_settings", {}), dict):
            return handler(data)
        data = dict(data)
        grouped: dict[str, dict[str, Any]] = {
            name: dict(values) for name, values in dict(data.pop("device_settings", {})).items()}
        errors: list[InitErrorDetails] = []
        listed_raw = data.get("devices", ())
        listed = [str(p).strip().lower() for p in (
            listed_raw.split(",") if isinstance(listed_raw, str) else listed_raw) if str(p).strip()]
        for name in listed:
            if not _DEVICE_NAME.match(name):
                errors.append(_custom("device_name", f"device name {name!r}: letters, digits, _ "
                                      "and - only, starting with a letter", "devices", name))
        if len(set(listed)) != len(listed):
            errors.append(_custom("device_name", "a device is listed twice", "devices",
                                  listed_raw))
        for key in [k for k in data if "." in k or "__" in k]:
            name, _, sub = key.partition("." if "." in key else "__")
            value = data.pop(key)
            if name not in listed:
                errors.append(_custom(
                    "device_unknown", f"device {name!r} is not listed in devices = "
                    f"{', '.join(listed) or '(none)'}", key, value))
                continue
            grouped.setdefault(name, {})[sub] = value
        parsed = _parse_devices(listed, grouped, errors)
        errors += cls._bus_problems(data)
        data["devices"] = tuple(listed)
        data["device_settings"] = parsed
        try:
            model = handler(data)
        except ValidationError as exc:
            errors += [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]),
                                        loc=e["loc"], input=e["input"]) for e in exc.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return model

    @classmethod
    def _bus_problems(cls, data: dict[str, Any]) -> list[InitErrorDetails]:
        """Checks across bus keys, reported together with the device errors."""
        return []

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one device, e.g. devices = inverter, meter1")
        return value

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """Devices come out as the dotted keys they were written as, so that a dump (the
        ``--print-config`` view) reads like the INI section and loads back."""
        out = super().model_dump(**kwargs)
        for name, values in (out.pop("device_settings", None) or {}).items():
            out.update({f"{name}.{key}": value for key, value in values.items()
                        if value is not None})
        return out

    def bus_devices(self) -> list[BusDevice]:
        """Every device with the bus defaults filled in, in the listed order."""
        out = []
        for name in self.devices:
            dev = self.device_settings[name]
            own = {k: getattr(dev, k) for k in DEVICE_DEFAULTS}
            merged = {k: (getattr(self, k) if own[k] is None else own[k]) for k in own}
            out.append(BusDevice(name=name, unit=dev.unit,
                                 protocol_version=dev.protocol_version, writable=dev.writable,
                                 **merged))
        return out

    def where(self) -> str:
        raise NotImplementedError


class ModbusBusRtuSettings(BusSettings):
    port: str = Field(default="", description="serial port: /dev/ttyUSB0, /dev/serial/by-id/...")
    usb: str = Field(default="", description="or choose the adapter by USB id: VID:PID in hex")
    usb_serial: str = Field(default="", description="with usb: the adapter's serial number")
    usb_location: str = Field(default="", description="with usb: the USB path, e.g. 1-1.2")
    baudrate: int = Field(default=9600, gt=0, description="bits per second")
    parity: Parity = Field(default="N", description="N, E or O")
    stopbits: StopBits = Field(default=1, description="1 or 2")
    bytesize: ByteSize = Field(default=8, description="7 or 8")

    @field_validator("usb")
    @classmethod
    def _usb_id(cls, value: str) -> str:
        if value:
            UsbSelector.parse(value)
        return value

    @classmethod
    def _bus_problems(cls, data: dict[str, Any]) -> list[InitErrorDetails]:
        port, usb = (str(data.get(k) or "").strip() for k in ("port", "usb"))
        if bool(port) == bool(usb):
            return [_custom("port_or_usb", "give either port (a path such as "
                            "/dev/serial/by-id/...) or usb (VID:PID, with usb_serial or "
                            "usb_location to tell twins apart)", "port", port)]
        if not usb and any(str(data.get(k) or "").strip() for k in ("usb_serial",
                                                                    "usb_location")):
            return [_custom("port_or_usb", "usb_serial and usb_location go with usb", "usb",
                            usb)]
        return []

    def selector(self) -> UsbSelector | None:
        if not self.usb:
            return None
        return UsbSelector.parse(self.usb, self.usb_serial, self.usb_location)

    def claims(self) -> list[tuple[str, str]]:
        selector = self.selector()
        if selector is None:
            return [("serial port", serial_identity(self.port)), *super().claims()]
        claims = [("serial port", str(selector)), *super().claims()]
        resolved = selector.find()  # the adapter present now, if any: collides with a path
        if resolved:
            claims.append(("serial port", serial_identity(resolved)))
        return claims

    def where(self) -> str:
        return self.port or str(self.selector())


class ModbusBusTcpSettings(BusSettings):
    host: str = Field(default="127.0.0.1", description="the Modbus TCP gateway's host")
    port: int = Field(default=502, ge=1, le=65535, description="the gateway's TCP port")

    def where(self) -> str:
        return f"{self.host}:{self.port}"
