"""Typed settings: what every section validates into, once, at load.

Transports receive one of these frozen objects and never parse a string themselves. pydantic
does the conversions (``"10"`` -> 10, ``"yes"`` -> True) and collects every error at once;
``gateway/config.py`` turns those errors into messages that name file, section and key.

A transport's settings class subclasses :class:`TransportSettings`, adds its keys with
defaults and ``Field(description=...)`` (the description is the documentation), and may
override :meth:`TransportSettings.claims` so that two sections can't open one serial port or
listen on one TCP port.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr


def _split_list(value: Any) -> Any:
    """``"a, b"`` -> ``("a", "b")``: INI lists are comma separated."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _int_text(value: Any) -> Any:
    """INI gives ``"1"``; an integer ``Literal`` accepts no string, so convert first."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _upper_text(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _existing_file(value: str) -> str:
    """Empty (not set) or a file that exists: a typo is caught at load, not at connect."""
    if value and not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    return value


StrList = Annotated[tuple[str, ...], BeforeValidator(_split_list)]
#: Serial line settings as an INI file writes them.
Parity = Annotated[Literal["N", "E", "O"], BeforeValidator(_upper_text)]
StopBits = Annotated[Literal[1, 2], BeforeValidator(_int_text)]
ByteSize = Annotated[Literal[7, 8], BeforeValidator(_int_text)]
ExistingFile = Annotated[str, AfterValidator(_existing_file)]
Secret = SecretStr
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseModel):
    """Base for every section: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class TransportSettings(Settings):
    """Keys every transport section has."""

    transport: str = Field(description="the transport kind, e.g. modbus_tcp, mqtt, jsonl_out")
    bridge: StrList = Field(
        default=(), description="sections this transport's envelopes go to, comma separated"
    )
    read_interval: float = Field(
        default=0.0,
        description="seconds between readings for an input; 0 or less for a pure output",
    )

    def claims(self) -> list[tuple[str, str]]:
        """Exclusive resources this section uses, as (what, identity) pairs.

        Two sections (or two gateway instances) claiming the same pair is a configuration
        error naming both. Examples: ("serial port", "/dev/ttyUSB0"), ("tcp listen", "0.0.0.0:80").
        """
        return []

    @property
    def is_input(self) -> bool:
        return self.read_interval > 0


def serial_identity(port: str) -> str:
    """The device a serial port name really opens, so that two symlinks to one port collide."""
    if "://" in port:
        return port
    try:
        return str(Path(port).resolve())
    except OSError:
        return os.path.abspath(port)


class GeneralSettings(Settings):
    """The ``[general]`` section: logging, state, the status API and the restart policy."""

    log_level: LogLevel = "INFO"
    log_file: str = Field(default="", description="also log to this file (empty: stderr only)")
    state_dir: str = Field(
        default="./state", description="where buffers and peer lists live (per instance)"
    )
    instance: int = Field(default=0, ge=0, le=99, description="instance number: ports + N*100")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8180, ge=0, le=65535, description="status API; 0 = off")
    restart_backoff_initial: float = Field(default=1.0, gt=0)
    restart_backoff_max: float = Field(default=30.0, gt=0)
    restart_max_count: int = Field(default=5, ge=1)
    restart_window: float = Field(default=60.0, gt=0)
    restart_stable_after: float = Field(
        default=10.0, ge=0, description="a run this long resets the backoff"
    )
    restart_failed_retry: float = Field(
        default=300.0, ge=0, description="seconds before a failed transport is tried again; 0 never"
    )
    shutdown_timeout: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    heartbeat_timeout: float = Field(
        default=30.0, gt=0, description="a transport silent this long is stuck and restarted"
    )
    channel_capacity: int = Field(
        default=10000, ge=100, description="envelopes a transport may hold for the bridge"
    )
    queue_full_policy: Literal["block", "drop_oldest"] = Field(
        default="block",
        description="when a transport's outbox is full: wait (backpressure) or drop the oldest",
    )
    bridge_batch_max: int = Field(
        default=500, ge=1, description="most envelopes per bridge message (1 = no batching)"
    )
    command_window: int = Field(
        default=16, ge=1, description="commands a transport may have unanswered per target; "
        "one more is answered busy at once"
    )
    command_queue: int = Field(
        default=64, ge=1, description="commands a transport holds waiting to run; one more "
        "is answered busy at once"
    )
    command_timeout: float = Field(
        default=60.0, gt=0, description="a command unanswered this long is answered timeout"
    )
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
