"""The keys of a ``modbus_tcp`` / ``modbus_rtu`` section, checked once at load."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from gateway.settings import (
    ByteSize,
    Parity,
    StopBits,
    StrList,
    TransportSettings,
    serial_identity,
)
from protocols.read_plan import DEFAULT_TURNAROUND
from protocols.registers import MapError, available_maps, check_writable, load_map, map_path
from protocols.sunspec import PROTOCOL as SUNSPEC


def check_listen(value: str) -> str:
    """``host:port`` for a listening socket, or empty (checked once, at load)."""
    value = value.strip()
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected host:port, e.g. 0.0.0.0:1502")
    return value


def check_map(value: str) -> str:
    """A map name or path that exists and loads (checked once, at load; every Modbus kind).

    ``sunspec``: the map is the device's own, found when it is first read."""
    if value == SUNSPEC:
        return value
    if not map_path(value).exists():
        raise ValueError(f"unknown protocol_version {value!r}; available: "
                         f"{', '.join(available_maps())}, {SUNSPEC} (or a path to a .csv map)")
    try:
        load_map(value)
    except MapError as exc:
        raise ValueError(f"register map {value!r} is invalid: {exc}") from None
    return value


class ModbusSettings(TransportSettings):
    """Keys both Modbus kinds share."""

    protocol_version: str = Field(
        description="register map: a shipped map's name (see protocols/maps) or a .csv path"
    )
    address: int = Field(default=1, ge=0, le=247, description="the device's unit id")
    read_interval: float = Field(default=10.0, gt=0, description="seconds between scans")
    timeout: float = Field(default=1.0, gt=0, le=60, description="seconds to wait for a reply")
    retries: int = Field(
        default=1, ge=0, le=10, description="re-sends of a request that got no reply"
    )
    request_delay: float = Field(
        default=0.0, ge=0, le=10, description="seconds of quiet between requests (slow devices)"
    )
    batch_size: int = Field(
        default=0, ge=0, le=125, description="registers per read at most; 0 = the map's limit"
    )
    turnaround: float = Field(
        default=DEFAULT_TURNAROUND, ge=0, le=10,
        description="the device's think time per request (s): what a request costs, for planning"
    )
    offline_after: int = Field(
        default=3, ge=1, description="failed scans in a row before the device counts as gone"
    )
    reconnect_max: float = Field(
        default=30.0, gt=0, description="longest wait between reconnect attempts (seconds)"
    )
    writable: StrList = Field(
        default=(), description="device configuration registers (the map's writable = opt-in: "
        "address, baud rate, ...) that may be written; comma separated; default none"
    )
    reexport_listen: str = Field(
        default="", description="host:port of a Modbus TCP server serving the values read "
        "again (same unit id and addresses, read-only); empty = none"
    )

    @field_validator("reexport_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value)

    def claims(self) -> list[tuple[str, str]]:
        return [("tcp listen", self.reexport_listen)] if self.reexport_listen else []

    @field_validator("protocol_version")
    @classmethod
    def _known_map(cls, value: str) -> str:
        return check_map(value)

    @model_validator(mode="after")
    def _writable_in_map(self) -> ModbusSettings:
        if self.protocol_version != SUNSPEC:  # a SunSpec device's points: patterns, at discovery
            check_writable(load_map(self.protocol_version), self.writable)
        return self

    def where(self) -> str:
        raise NotImplementedError


class ModbusTcpSettings(ModbusSettings):
    host: str = Field(default="127.0.0.1", description="the device's or gateway's host")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus TCP port")

    def where(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusRtuSettings(ModbusSettings):
    port: str = Field(description="serial port, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, gt=0, description="bits per second")
    parity: Parity = Field(default="N", description="N, E or O")
    stopbits: StopBits = Field(default=1, description="1 or 2")
    bytesize: ByteSize = Field(default=8, description="7 or 8")

    def claims(self) -> list[tuple[str, str]]:
        return [("serial port", serial_identity(self.port)), *super().claims()]

    def where(self) -> str:
        return self.port
