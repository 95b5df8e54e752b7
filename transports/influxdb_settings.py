"""The keys of an ``influxdb_out`` section (docs/transports/influxdb_out.md).

Apart from the transport so that the supervisor validates a section without importing the
buffer, aiohttp or influxdb-client (transports/__init__.py ``KINDS``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.buffer_settings import BufferSettings
from gateway.settings import ExistingFile, Secret, StrList


class InfluxSettings(BufferSettings):
    url: str = Field(default="", description="http(s)://host:port; overrides host and port")
    host: str = Field(default="127.0.0.1", description="server host (when url is empty)")
    port: int = Field(default=8086, ge=1, le=65535, description="server port (when url is empty)")
    database: str = Field(default="", description="InfluxDB 1.x database: selects the /write API")
    retention_policy: str = Field(default="", description="1.x retention policy; empty = default")
    username: str = Field(default="", description="1.x user name (HTTP basic auth)")
    password: Secret = Field(default=Secret(""), description="1.x password (never logged)")
    bucket: str = Field(default="", description="v2 API bucket: selects the v2 write API")
    org: str = Field(default="", description="v2 API organisation")
    token: Secret = Field(default=Secret(""), description="v2 API token (never logged)")
    token_file: ExistingFile = Field(default="", description="read the v2 token from this file")
    token_env: str = Field(default="", description="read the v2 token from this env variable")
    measurement: str = Field(default="protocol_gateway", description="measurement name")
    tags: StrList = Field(default=(), description="extra tags, e.g. site=garage, rack=2")
    precision: Literal["s", "ms", "us", "ns"] = Field(default="ms", description="time precision")
    integers_as_float: bool = Field(
        default=True, description="write integers as floats, so a value that is sometimes "
        "230 and sometimes 230.5 never hits a field type conflict"
    )
    timeout: float = Field(default=10.0, gt=0, description="HTTP timeout per write, seconds")
    verify_tls: bool = Field(default=True, description="check the server certificate (https)")
    batch_size: int = Field(default=500, ge=1, description="envelopes per write")
    flush_interval: float = Field(
        default=1.0, ge=0, description="seconds to wait for a full batch before writing a "
        "partial one"
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, sep, val = item.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ValueError(f"tags are key=value pairs, got {item!r}")
        return value

    @model_validator(mode="after")
    def _one_api(self) -> InfluxSettings:
        if bool(self.database) == bool(self.bucket):
            raise ValueError("set database (InfluxDB 1.x /write) or bucket (v2 API), not both")
        sources = [bool(self.token.get_secret_value()), bool(self.token_file),
                   bool(self.token_env)]
        if sum(sources) > 1:
            raise ValueError("token, token_file and token_env are alternatives: set one")
        if self.token_env and self.token_env not in os.environ:
            raise ValueError(f"token_env: environment variable {self.token_env} is not set")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return self

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") if self.url else f"http://{self.host}:{self.port}"

    def resolve_token(self) -> str:
        if self.token_file:
            return Path(self.token_file).read_text(encoding="utf-8").strip()
        if self.token_env:
            return os.environ.get(self.token_env, "").strip()
        return self.token.get_secret_value()
