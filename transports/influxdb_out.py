"""``influxdb_out``: readings as InfluxDB points, through the store-and-forward buffer.

Two wire APIs, chosen by which keys are set: ``database`` writes to the InfluxDB 1.x
``/write`` endpoint (HTTP basic auth with ``username``/``password``); ``bucket`` (with ``org``
and ``token``) writes through influxdb-client's v2 API, which InfluxDB 2.x/3.x and
VictoriaMetrics accept. Either way the line protocol comes from ``influxdb_client.Point``:
one point per reading, tags from the device's identity, fields from its values, the reading's
own timestamp.

Memory: aiohttp and influxdb-client (~30 MB together) are imported when the transport
connects, not with this module, so that the supervisor, which imports it only to validate the
section, does not carry them; ``PRELOAD`` has the forkserver import them once for the child.

Failures are sorted for the buffer: a sink that is down, overloaded or refusing our
credentials is retried (``SinkUnavailable``: fix the token, the data is still waiting); a
batch the server calls malformed (HTTP 400, 413, 422) is dropped, counted and logged
(``Rejected``), since sending it again cannot succeed.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.buffer import BufferSettings, Rejected, SinkUnavailable
from gateway.message import READING, Envelope
from gateway.settings import ExistingFile, Secret, StrList
from transports import register
from transports.base import TransportContext
from transports.buffered import BufferedOutput

if TYPE_CHECKING:
    import aiohttp
    from influxdb_client import Point
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

#: Imported lazily by the transport; the forkserver imports them before forking its child.
PRELOAD = ("aiohttp", "influxdb_client", "influxdb_client.client.influxdb_client_async")

#: source_transport_info key -> tag key.
TAGS = {
    "transport_name": "transport",
    "device_identifier": "device",
    "device_manufacturer": "manufacturer",
    "device_model": "model",
    "device_serial_number": "serial",
    "device_name": "name",
}
_SCALE = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_V1_PRECISION = {"s": "s", "ms": "ms", "us": "u", "ns": "n"}
_V2_PRECISION = {"s": "s", "ms": "ms", "us": "us", "ns": "ns"}  # WritePrecision's values
_HOPELESS = frozenset({400, 413, 422})


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


def to_point(envelope: Envelope, settings: InfluxSettings) -> Point | None:
    """One reading as a Point; None when it holds no writable field."""
    from influxdb_client import Point

    point = Point(settings.measurement)
    info = envelope.source_transport_info or {}
    tags = {"transport": envelope.source_transport}
    tags.update({tag: info[key] for key, tag in TAGS.items() if info.get(key)})
    for item in settings.tags:
        key, _, value = item.partition("=")
        tags[key.strip()] = value.strip()
    for key, value in tags.items():
        point.tag(key, value)
    fields = 0
    for name, raw in envelope.data.items():
        if raw is None or (isinstance(raw, float) and not math.isfinite(raw)):
            continue
        value: bool | int | float | str = raw
        if isinstance(raw, int) and not isinstance(raw, bool) and settings.integers_as_float:
            value = float(raw)
        elif not isinstance(raw, (bool, int, float, str)):
            value = str(raw)
        point.field(name, value)
        fields += 1
    if not fields:
        return None
    stamp = round(envelope.timestamp * _SCALE[settings.precision])
    return point.time(stamp, _V2_PRECISION[settings.precision])


@register
class InfluxOut(BufferedOutput[InfluxSettings]):
    kind = "influxdb_out"
    Settings = InfluxSettings
    accepts: ClassVar[frozenset[str]] = frozenset({READING})
    buffer_file = "influxdb-buffer.sqlite3"

    def __init__(self, settings: InfluxSettings, ctx: TransportContext) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._client: InfluxDBClientAsync | None = None
        super().__init__(settings, ctx)

    def sink_name(self) -> str:
        return f"delivery to InfluxDB {self.settings.base_url}"

    def keep(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return [e for e in envelopes if e.kind == READING and e.data]

    async def open_sink(self) -> None:
        import aiohttp
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        s = self.settings
        if s.database and self._session is None:
            headers = {}
            if s.username:
                pair = f"{s.username}:{s.password.get_secret_value()}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=s.timeout),
                connector=aiohttp.TCPConnector(ssl=None if s.verify_tls else False),
            )
        elif s.bucket and self._client is None:
            self._client = InfluxDBClientAsync(
                url=s.base_url, token=s.resolve_token() or None, org=s.org or None,
                timeout=int(s.timeout * 1000), verify_ssl=s.verify_tls,
            )

    async def close_sink(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- the sink the buffer writes to ---------------------------------------------------
    async def write(self, batch: Sequence[Envelope]) -> None:
        points = [p for p in (to_point(e, self.settings) for e in batch) if p is not None]
        if not points:
            return
        if self.settings.database:
            await self._write_v1(points)
        else:
            await self._write_v2(points)

    async def _write_v1(self, points: list[Point]) -> None:
        import aiohttp

        s = self.settings
        if self._session is None:
            await self.open_sink()
        assert self._session is not None
        body = "\n".join(p.to_line_protocol() for p in points).encode()
        params = {"db": s.database, "precision": _V1_PRECISION[s.precision]}
        if s.retention_policy:
            params["rp"] = s.retention_policy
        try:
            async with self._session.post(f"{s.base_url}/write", params=params, data=body) as r:
                if r.status == 204:
                    return
                text = (await r.text())[:300]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._refused(r.status, text)

    async def _write_v2(self, points: list[Point]) -> None:
        import aiohttp
        from influxdb_client.rest import ApiException

        s = self.settings
        if self._client is None:
            await self.open_sink()
        assert self._client is not None
        try:
            await self._client.write_api().write(
                bucket=s.bucket, org=s.org or None, record=points,
                write_precision=_V2_PRECISION[s.precision],
            )
        except ApiException as exc:
            self._refused(int(exc.status or 0), str(exc.body or exc.reason)[:300])
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _refused(self, status: int, text: str) -> None:
        if status in _HOPELESS:
            raise Rejected(f"HTTP {status}: {text}")
        hint = " (check username/password or token)" if status in (401, 403) else ""
        raise SinkUnavailable(f"HTTP {status}{hint}: {text}")
