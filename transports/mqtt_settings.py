"""The keys of an ``mqtt`` section (docs/transports/mqtt.md).

Apart from the transport so that the supervisor validates a section without importing
paho-mqtt and the bridge's code (transports/__init__.py ``KINDS``).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from gateway.buffer_settings import BufferSettings
from gateway.settings import ExistingFile, Secret


class MqttSettings(BufferSettings):
    host: str = Field(default="127.0.0.1", description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port (8883 for TLS)")
    username: str = Field(default="", description="user name; empty = anonymous")
    password: Secret = Field(default=Secret(""), description="password (never logged)")
    client_id: str = Field(
        default="", description="MQTT client id; empty = pgw-<hostname>-<instance>-<section>"
    )
    base_topic: str = Field(default="protocol-gateway", description="first level of all topics")
    discovery: bool = Field(default=True, description="publish Home Assistant discovery")
    discovery_prefix: str = Field(default="homeassistant", description="HA discovery prefix")
    qos: int = Field(default=1, ge=0, le=2, description="QoS of published messages")
    retain: bool = Field(default=True, description="retain state messages")
    keepalive: int = Field(default=60, ge=5, le=65535, description="MQTT keepalive, seconds")
    commands: bool = Field(default=True, description="accept writes on <base>/<device>/<value>/set")
    tls: bool = Field(default=False, description="TLS to the broker (implied by ca_file)")
    ca_file: ExistingFile = Field(default="", description="CA certificate file; empty = system CAs")
    cert_file: ExistingFile = Field(default="", description="client certificate (with key_file)")
    key_file: ExistingFile = Field(default="", description="client private key")
    tls_insecure: bool = Field(
        default=False, description="skip the broker host name check (testing only)"
    )
    reconnect_min: float = Field(default=1.0, gt=0, description="first reconnect delay, s")
    reconnect_max: float = Field(default=30.0, gt=0, description="longest reconnect delay, s")
    publish_timeout: float = Field(
        default=15.0, gt=0, description="seconds to wait for the broker's acknowledgements"
    )
    max_inflight: int = Field(default=100, ge=1, description="unacknowledged messages at once")

    @field_validator("base_topic", "discovery_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or (
            value.endswith("/") or "//" in value
        ):
            raise ValueError("a topic prefix without wildcards, empty levels or edge slashes")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> MqttSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        return self

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.ca_file or self.cert_file)
