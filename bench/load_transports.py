"""Load generators for the bridge benchmark, loaded with ``PGW_PLUGINS=bench.load_transports``.

``bench_source`` emits ``count`` envelopes as fast as the bridge takes them (or at ``rate``
per second); ``bench_sink`` counts them and, once it has ``expect``, writes its figures (first
and last arrival, per-envelope latency from the source's monotonic clock, which on Linux is
one clock for every process) to ``result``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import ClassVar

from gateway.message import READING, Envelope
from gateway.settings import TransportSettings
from transports import register
from transports.base import Transport


class SourceSettings(TransportSettings):
    count: int = 100_000
    rate: float = 0.0  # 0: as fast as possible
    batch: int = 100  # envelopes per emit_many (1: one emit per envelope)


class SinkSettings(TransportSettings):
    expect: int = 100_000
    result: str = "bench_result.json"


@register
class BenchSource(Transport[SourceSettings]):
    kind = "bench_source"
    Settings = SourceSettings

    async def run(self) -> None:
        await asyncio.sleep(0.5)
        s = self.settings
        start = time.monotonic()
        if not s.rate and s.batch > 1:
            for first in range(0, s.count, s.batch):
                now = time.monotonic()
                await self.ctx.emit_many(READING, [
                    {"i": i, "t": now, "power": 1234.5, "voltage": 230.1, "current": 5.4,
                     "soc": 77, "state": "charging", "temp": 31.2, "ok": True, "freq": 50.01}
                    for i in range(first, min(first + s.batch, s.count))])
            await self.ctx.stopping.wait()
            return
        for i in range(s.count):
            await self.ctx.emit(READING, {"i": i, "t": time.monotonic(), "power": 1234.5,
                                          "voltage": 230.1, "current": 5.4, "soc": 77,
                                          "state": "charging", "temp": 31.2, "ok": True,
                                          "freq": 50.01})
            if s.rate:
                delay = start + (i + 1) / s.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 256 == 0:
                await asyncio.sleep(0)
        await self.ctx.stopping.wait()


@register
class BenchSink(Transport[SinkSettings]):
    kind = "bench_sink"
    Settings = SinkSettings
    accepts: ClassVar[frozenset[str]] = frozenset({READING})

    def __init__(self, settings: SinkSettings, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, ctx)
        self.count = 0
        self.first = 0.0
        self.latencies: list[float] = []
        self.done = False

    async def receive_batch(self, envelopes: list[Envelope]) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = min(e.data["t"] for e in envelopes)
        self.count += len(envelopes)
        self.batches = getattr(self, "batches", 0) + 1
        self.latencies.extend(now - e.data["t"] for e in envelopes)
        if self.count >= self.settings.expect and not self.done:
            self.done = True
            lat = sorted(self.latencies)
            with open(self.settings.result, "w") as f:
                json.dump({"count": self.count, "seconds": now - self.first,
                           "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)],
                           "max": lat[-1], "mean_batch": self.count / self.batches}, f)
