"""influxdb_out against a real InfluxDB 1.x (/write) and VictoriaMetrics (v2 write API)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.message import Envelope
from pytests.helpers import Harness, async_wait_for
from pytests.servers import InfluxDB1, VictoriaMetrics
from transports.influxdb_out import InfluxOut, InfluxSettings, to_line

INFO = {"transport_name": "inverter", "device_identifier": "inv-1", "device_manufacturer": "EG4",
        "device_model": "18kPV", "device_serial_number": "SN123"}
T0 = round(time.time()) - 3600  # an hour ago, on a whole second


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    with InfluxDB1(tmp_path_factory.mktemp("influxdb")) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria")) as server:
        yield server  # type: ignore[misc]


def reading(n: int, **extra: Any) -> Envelope:
    data: dict[str, Any] = {"n": n, "grid_power": 1000 + n / 4, "soc": 50 + n % 50,
                            "charging": n % 2 == 0, "mode": "eco"}
    data.update(extra)
    return Envelope(source_transport="inverter", kind="reading", data=data,
                    source_transport_info=dict(INFO), sequence=n, timestamp=T0 + n * 0.01)


def v1_settings(server: InfluxDB1, db: str, **over: Any) -> InfluxSettings:
    base: dict[str, Any] = {
        "transport": "influxdb_out", "host": "127.0.0.1", "port": server.port, "database": db,
        "username": server.user, "password": server.password, "measurement": "eg4_data",
        "flush_interval": 0.05, "batch_size": 50, "retry_initial": 0.1, "retry_max": 0.5,
    }
    base.update(over)
    return InfluxSettings(**base)


async def started(settings: InfluxSettings, state_dir: Path, name: str = "influx") -> Harness:
    harness = Harness(InfluxOut, settings, name, state_dir)
    await harness.start()
    await async_wait_for(lambda: harness.transport.buffer._opened)
    return harness


def test_v1_write_endpoint_values_read_back(influx: InfluxDB1, tmp_path: Path) -> None:
    influx.create_database("solar")
    s = v1_settings(influx, "solar", tags="site=garage, rack=2")

    async def main() -> None:
        h = await started(s, tmp_path)
        for n in range(1, 121):
            await h.send(reading(n))
        await async_wait_for(lambda: len(influx.points("solar", "eg4_data")) == 120)
        await h.stop()

    asyncio.run(main())
    rows = sorted(influx.points("solar", "eg4_data"), key=lambda r: r["n"])
    assert [r["n"] for r in rows] == list(range(1, 121))
    for row in rows:
        n = int(row["n"])
        assert row["time"] == round((T0 + n * 0.01) * 1000)
        assert row["grid_power"] == 1000 + n / 4 and row["soc"] == 50 + n % 50
        assert row["charging"] is (n % 2 == 0) and row["mode"] == "eco"
        assert (row["transport"], row["device"], row["manufacturer"], row["model"],
                row["serial"], row["site"], row["rack"]) == (
            "inverter", "inv-1", "EG4", "18kPV", "SN123", "garage", "2")


def test_v1_bad_batch_is_rejected_and_counted_good_ones_flow(influx: InfluxDB1,
                                                            tmp_path: Path) -> None:
    influx.create_database("conflict")
    s = v1_settings(influx, "conflict", batch_size=1, flush_interval=0)

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(reading(1, x=1.5))
        await async_wait_for(lambda: len(influx.points("conflict", "eg4_data")) == 1)
        await h.send(reading(2, x="text"))  # field type conflict: HTTP 400, never retryable
        await h.send(reading(3, x=2.5))
        await async_wait_for(lambda: len(influx.points("conflict", "eg4_data")) == 2)
        await async_wait_for(lambda: h.transport.buffer.backlog == 0)
        assert h.ctx.counters.extra["buffer_rejected"] == 1
        assert "400" in h.ctx.counters.last_error
        await h.stop()

    asyncio.run(main())


def test_v1_wrong_password_keeps_the_data_waiting(influx: InfluxDB1, tmp_path: Path) -> None:
    influx.create_database("locked")
    s = v1_settings(influx, "locked", password="wrong-password")

    async def main() -> None:
        h = await started(s, tmp_path)
        for n in range(1, 11):
            await h.send(reading(n))
        await async_wait_for(lambda: h.ctx.counters.errors >= 2)
        assert "401" in h.ctx.counters.last_error
        assert "wrong-password" not in h.ctx.counters.last_error
        assert h.transport.buffer.backlog == 10
        assert h.ctx.counters.extra["buffer_rejected"] == 0
        await h.stop()

    asyncio.run(main())
    fixed = v1_settings(influx, "locked")

    async def again() -> None:
        h = await started(fixed, tmp_path)  # same state dir: the ten are still there
        await async_wait_for(lambda: len(influx.points("locked", "eg4_data")) == 10)
        await h.stop()

    asyncio.run(again())


def test_sink_outage_during_steady_input_loses_nothing(tmp_path: Path) -> None:
    with InfluxDB1(tmp_path / "server") as server:
        server.create_database("steady")
        s = v1_settings(server, "steady")
        total = 300

        async def main() -> None:
            h = await started(s, tmp_path / "state")
            for n in range(1, total + 1):
                await h.send(reading(n))
                await asyncio.sleep(0.003)
                if n == 80:
                    await asyncio.to_thread(server.stop)
                if n == 200:
                    assert h.transport.buffer.backlog >= 100  # held while the sink was down
                    await asyncio.to_thread(server.start)
            await async_wait_for(lambda: h.transport.buffer.backlog == 0, timeout=30)
            assert h.transport.buffer.failure.failures == 0  # recovered
            assert h.ctx.counters.errors >= 1
            await h.stop()

        asyncio.run(main())
        ns = sorted(int(r["n"]) for r in server.points("steady", "eg4_data"))
        assert ns == list(range(1, total + 1))


def test_transport_restart_redelivers_from_the_buffer(tmp_path: Path) -> None:
    with InfluxDB1(tmp_path / "server") as server:
        server.create_database("restart")
        s = v1_settings(server, "restart")

        async def main() -> None:
            server.stop()
            h = await started(s, tmp_path / "state")
            for n in range(1, 41):
                await h.send(reading(n))
            await async_wait_for(lambda: h.ctx.counters.errors >= 1)
            await h.stop()
            server.start()
            again = await started(s, tmp_path / "state")
            await async_wait_for(lambda: len(server.points("restart", "eg4_data")) == 40)
            await again.stop()

        asyncio.run(main())


def test_victoriametrics_through_the_v2_api(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-checked-by-victoria\n")
    s = InfluxSettings(
        transport="influxdb_out", url=victoria.url, bucket="solar", org="home",
        token_file=str(token_file), measurement="eg4_data", flush_interval=0.05,
        batch_size=20,
    )

    def series(field: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for item in victoria.export(f'{{__name__="eg4_data_{field}",device="inv-1"}}'):
            out.update(zip(item["timestamps"], item["values"], strict=True))
        return out

    async def main() -> None:
        h = await started(s, tmp_path / "state")
        for n in range(1, 51):
            await h.send(reading(n))
        await async_wait_for(lambda: h.transport.buffer.backlog == 0)
        await async_wait_for(lambda: len(series("n")) == 50, timeout=30)
        await h.stop()

    asyncio.run(main())
    values = series("grid_power")
    for n in range(1, 51):
        assert values[round((T0 + n * 0.01) * 1000)] == 1000 + n / 4
    labels = victoria.export('{__name__="eg4_data_soc"}')[0]["metric"]
    assert labels["manufacturer"] == "EG4" and labels["serial"] == "SN123"


def test_settings_pick_one_api_and_keep_secrets(tmp_path: Path, monkeypatch: Any) -> None:
    with pytest.raises(ValidationError, match="database"):
        InfluxSettings(transport="influxdb_out")
    with pytest.raises(ValidationError, match="not both"):
        InfluxSettings(transport="influxdb_out", database="a", bucket="b")
    with pytest.raises(ValidationError, match="alternatives"):
        InfluxSettings(transport="influxdb_out", bucket="b", token="t", token_env="X")
    with pytest.raises(ValidationError, match="key=value"):
        InfluxSettings(transport="influxdb_out", database="a", tags="site")
    with pytest.raises(ValidationError, match="PGW_NO_SUCH_TOKEN"):
        InfluxSettings(transport="influxdb_out", bucket="b", token_env="PGW_NO_SUCH_TOKEN")
    monkeypatch.setenv("PGW_TEST_TOKEN", "tok-from-env")
    s = InfluxSettings(transport="influxdb_out", bucket="b", token_env="PGW_TEST_TOKEN")
    assert s.resolve_token() == "tok-from-env"
    secret = InfluxSettings(transport="influxdb_out", bucket="b", token="hush-hush")
    assert "hush-hush" not in repr(secret) and "hush-hush" not in str(secret.model_dump())
    assert secret.resolve_token() == "hush-hush"


def test_point_from_reading() -> None:
    s = InfluxSettings(transport="influxdb_out", database="x", measurement="m")
    text = to_line(reading(3, bad=float("nan"), none=None), s)
    assert text.startswith("m,device=inv-1,manufacturer=EG4,model=18kPV,serial=SN123,")
    assert "n=3" in text and "soc=53" in text and "charging=false" in text
    assert 'mode="eco"' in text and "bad" not in text and "none" not in text
    assert text.endswith(str(round((T0 + 0.03) * 1000)))
    empty = Envelope(source_transport="x", kind="reading", data={"v": None})
    assert to_line(empty, s) == ""
