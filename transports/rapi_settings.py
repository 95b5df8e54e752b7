"""The keys of a ``rapi_serial`` section (docs/transports/rapi_serial.md).

Apart from the transport so that the supervisor validates a section without importing the
serial link and the transport's code (transports/__init__.py ``KINDS``).
"""

from __future__ import annotations

from pydantic import Field

from gateway.settings import TransportSettings, serial_identity
from transports.charger import ChargerSettings


class RapiSerialSettings(ChargerSettings, TransportSettings):
    port: str = Field(description="serial device, PTY path or socket://host:port")
    baudrate: int = Field(default=115200, gt=0, description="serial speed (ignored for TCP)")
    read_interval: float = Field(default=5.0, gt=0, description="seconds between status polls")
    command_timeout: float = Field(default=0.5, gt=0, description="seconds to wait for a reply")
    use_sequence_ids: bool = Field(default=True, description="tag commands with :ss ids")
    reconnect_backoff_ms: int = Field(default=1000, gt=0, description="first reconnect wait")
    reconnect_timeout_sec: float = Field(
        default=60.0, ge=0, description="give up (crash, supervisor restarts) after; 0 = never"
    )
    heartbeat_interval: int = Field(
        default=0, ge=0, le=65535, description="$SY supervision interval we pulse; 0 = off"
    )
    heartbeat_amps: int = Field(default=6, ge=0, le=255, description="$SY fallback current")
    event_min_interval: float = Field(
        default=1.0, ge=0, le=3600,
        description="seconds: at most one envelope per kind of device event ($AT, $AB, $AN) "
        "this often; a flood in between is folded into the last value and counted",
    )

    def claims(self) -> list[tuple[str, str]]:
        if "://" in self.port:
            return []
        return [("serial port", serial_identity(self.port))]
