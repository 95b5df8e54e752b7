"""``influxdb_out``: readings as InfluxDB points, through the store-and-forward buffer.

Two wire APIs, chosen by which keys are set: ``database`` writes to the InfluxDB 1.x
``/write`` endpoint (HTTP basic auth with ``username``/``password``); ``bucket`` (with ``org``
and ``token``) writes through influxdb-client's v2 API, which InfluxDB 2.x/3.x and
VictoriaMetrics accept. Either way the lines come from ``protocols/line_protocol.py``: one
point per reading, tags from the device's identity, fields from its values, the reading's own
timestamp.

Memory: aiohttp (~12 MB) is imported when the transport connects, not with this module;
``PRELOAD`` has the forkserver import it once for the child. influxdb-client (15 MB, 25 MB
where numpy is installed) is imported only by a v2 output, in its own process: the 1.x API
needs none of it (protocols/line_protocol.py says why the lines are not its ``Point``).

Failures are sorted for the buffer: a sink that is down, overloaded or refusing our
credentials is retried (``SinkUnavailable``: fix the token, the data is still waiting); a
batch the server calls malformed (HTTP 400, 413, 422) is dropped, counted and logged
(``Rejected``), since sending it again cannot succeed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from gateway.buffer import Rejected, SinkUnavailable
from gateway.buffered import BufferedOutput
from gateway.message import READING, Envelope
from protocols import line_protocol
from protocols.line_protocol import FieldValue
from transports import register
from transports.base import TransportContext
from transports.influxdb_settings import InfluxSettings

if TYPE_CHECKING:
    import aiohttp
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

#: Imported lazily by the transport; the forkserver imports it before forking its child.
PRELOAD = ("aiohttp",)

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


def to_line(envelope: Envelope, settings: InfluxSettings) -> str:
    """One reading as one line of line protocol; "" when it holds no writable field."""
    info = envelope.source_transport_info or {}
    tags = {"transport": envelope.source_transport}
    tags.update({tag: str(info[key]) for key, tag in TAGS.items() if info.get(key)})
    for item in settings.tags:
        key, _, value = item.partition("=")
        tags[key.strip()] = value.strip()
    fields: dict[str, FieldValue] = {}
    for name, raw in envelope.data.items():
        if raw is None:
            continue
        value: FieldValue = raw
        if isinstance(raw, int) and not isinstance(raw, bool) and settings.integers_as_float:
            value = float(raw)
        elif not isinstance(raw, (bool, int, float, str)):
            value = str(raw)
        fields[name] = value
    stamp = round(envelope.timestamp * _SCALE[settings.precision])
    return line_protocol.encode(settings.measurement, tags, fields, stamp)


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
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

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
        lines = [line for line in (to_line(e, self.settings) for e in batch) if line]
        if not lines:
            return
        if self.settings.database:
            await self._write_v1(lines)
        else:
            await self._write_v2(lines)

    async def _write_v1(self, lines: list[str]) -> None:
        import aiohttp

        s = self.settings
        if self._session is None:
            await self.open_sink()
        assert self._session is not None
        body = "\n".join(lines).encode()
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

    async def _write_v2(self, lines: list[str]) -> None:
        import aiohttp
        from influxdb_client.rest import ApiException

        s = self.settings
        if self._client is None:
            await self.open_sink()
        assert self._client is not None
        try:
            await self._client.write_api().write(
                bucket=s.bucket, org=s.org or None, record=lines,
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
