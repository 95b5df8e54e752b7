"""Output throughput: envelopes/s into each sink, and what the on-disk buffer costs.

    python bench/outputs.py [--count 10000]

Starts a private Mosquitto, InfluxDB 1.x and VictoriaMetrics on free 127.0.0.1 ports (the
fixtures of pytests/servers.py; a missing binary skips that line), pushes ``--count`` readings
of ten values each through the real transports in batches of 100 (as the runner delivers them)
and prints envelopes/s from the first batch accepted to the last one acknowledged by the sink.
The buffer lines: accepting batches of 100 (one SQLite transaction each), accepting one at a
time (one transaction each), and draining into a sink that does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.buffer import BufferSettings, StoreAndForward  # noqa: E402
from gateway.message import Envelope  # noqa: E402
from pytests.helpers import Harness  # noqa: E402
from transports.base import Counters  # noqa: E402

INFO = {"device_identifier": "inv-1", "device_manufacturer": "EG4", "device_model": "18kPV",
        "device_serial_number": "SN123"}
T0 = time.time() - 3600


def reading(n: int) -> Envelope:
    data = {"n": n, "power": 1234.5, "voltage": 230.1, "current": 5.4, "soc": 77,
            "state": "charging", "temp": 31.2, "ok": True, "freq": 50.01, "energy": 12.5 + n}
    return Envelope(source_transport="inverter", kind="reading", data=data,
                    source_transport_info=dict(INFO), sequence=n, timestamp=T0 + n * 0.001)


def batches(count: int, size: int = 100) -> list[list[Envelope]]:
    items = [reading(n) for n in range(1, count + 1)]
    return [items[i:i + size] for i in range(0, count, size)]


class NullSink:
    async def write(self, batch: Sequence[Envelope]) -> None:
        return None


async def buffer_costs(count: int, folder: Path) -> None:
    log = logging.getLogger("bench")
    settings = BufferSettings(transport="bench", batch_size=100, drain_timeout=60)
    for label, size in (("accept, batches of 100", 100), ("accept, one at a time", 1)):
        saf = StoreAndForward(folder / f"b{size}.sqlite3", settings, log, Counters())
        saf.open()
        work = batches(count, size)
        start = time.perf_counter()
        for batch in work:
            saf.accept(batch)
        took = time.perf_counter() - start
        print(f"buffer {label:<24} {count / took:>10,.0f} envelopes/s  "
              f"({took / count * 1e6:.1f} us each, {saf.commits} commits)")
        if size == 100:
            start = time.perf_counter()
            while saf.queue.count:
                await saf.deliver_once(NullSink())
            took = time.perf_counter() - start
            print(f"buffer {'drain (peek+decode+delete)':<24} {count / took:>10,.0f} envelopes/s")
        await saf.close(None)


async def through(cls: type, settings: Any, count: int, folder: Path, done: Any) -> float:
    harness = Harness(cls, settings, "bench_out", folder)
    await harness.start()
    await asyncio.sleep(0.5)  # connect
    start = time.perf_counter()
    for batch in batches(count):
        await harness.transport.receive_batch(batch)
        await asyncio.sleep(0)
    while harness.transport.buffer.backlog or not done():
        await asyncio.sleep(0.005)
    took = time.perf_counter() - start
    await harness.stop()
    return count / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bench").setLevel(logging.ERROR)  # "kept in the buffer" is expected
    import pytest

    from pytests import servers
    from transports.influxdb_out import InfluxOut, InfluxSettings
    from transports.mqtt import MqttSettings, MqttTransport

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        asyncio.run(buffer_costs(args.count, folder))
        try:
            with servers.Mosquitto(folder / "mosquitto") as broker:
                for qos in (0, 1):
                    s = MqttSettings(transport="mqtt", port=broker.port, qos=qos,
                                     base_topic=f"bench{qos}", discovery=False,
                                     max_inflight=1000, batch_size=100)
                    rate = asyncio.run(through(MqttTransport, s, args.count,
                                               folder / f"m{qos}", lambda: True))
                    print(f"mqtt qos {qos:<27} {rate:>10,.0f} envelopes/s "
                          f"({rate * 10:,.0f} messages/s)")
        except pytest.skip.Exception as exc:
            print(f"mqtt: skipped ({exc})")
        try:
            with servers.InfluxDB1(folder / "influx") as influx:
                influx.create_database("bench")
                s = InfluxSettings(transport="influxdb_out", port=influx.port, database="bench",
                                   username=influx.user, password=influx.password,
                                   batch_size=500, flush_interval=0.05)
                rate = asyncio.run(through(InfluxOut, s, args.count, folder / "i", lambda: True))
                print(f"influxdb 1.x /write {'':<15} {rate:>10,.0f} envelopes/s")
        except pytest.skip.Exception as exc:
            print(f"influxdb: skipped ({exc})")
        try:
            with servers.VictoriaMetrics(folder / "vm") as vm:
                s = InfluxSettings(transport="influxdb_out", url=vm.url, bucket="bench",
                                   org="bench", batch_size=500, flush_interval=0.05)
                rate = asyncio.run(through(InfluxOut, s, args.count, folder / "v", lambda: True))
                print(f"victoriametrics v2 API {'':<12} {rate:>10,.0f} envelopes/s")
        except pytest.skip.Exception as exc:
            print(f"victoria-metrics: skipped ({exc})")


if __name__ == "__main__":
    main()
