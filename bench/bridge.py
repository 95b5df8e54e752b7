"""Bridge throughput and latency, beside the raw ceiling measured in the same run.

    python bench/bridge.py [--count 1000000] [--ceiling-seconds 2]

Prints envelopes/s from two input processes into one output process through the real
supervisor (with batching, and with bridge_batch_max = 1), the raw ceiling (one process sending
batches of 100 dicts through a bare multiprocessing.Queue to another) and p50/p99 latency at a
steady 1,000 envelopes/s. The ceiling is measured for ``--ceiling-seconds`` (at least 2 s)
right before and right after the batched gateway run, and their mean is the denominator: on a
shared machine a half-second ceiling swung 2.5x between runs. The batched gateway run is as
long (``--count`` envelopes per input, about 2 s here): a half-second run measured the start
(first frames, the interpreter specializing the hot code) more than the bridge, 0.44-0.48 of
the ceiling where 2 s give 0.49-0.51 on the same machine and code. The gateways run with a run
directory of their own (``PGW_RUN_DIR``), so another gateway on this machine is no obstacle.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = {"i": 0, "t": 0.0, "power": 1234.5, "voltage": 230.1, "current": 5.4, "soc": 77,
           "state": "charging", "temp": 31.2, "ok": True, "freq": 50.01}


def _raw_consumer(q: mp.Queue, out: mp.Queue) -> None:
    got = 0
    while (batch := q.get()) is not None:
        got += len(batch)
    out.put((time.monotonic(), got))


def raw_ceiling(seconds: float) -> float:
    """One producer, one consumer, batches of 100 ~10-key dicts through a bare Queue, for
    ``seconds``; a bounded queue, so the producer cannot run ahead of the consumer."""
    ctx = mp.get_context("fork")
    q, done = ctx.Queue(64), ctx.Queue()
    consumer = ctx.Process(target=_raw_consumer, args=(q, done))
    consumer.start()
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        q.put([dict(PAYLOAD, i=n + k) for k in range(100)])
        n += 100
    q.put(None)
    end, got = done.get()
    consumer.join()
    return got / (end - start)


def through_gateway(count_each: int, batch_max: int, rate: float = 0.0, batch: int = 100
                    ) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        config = Path(tmp) / "bench.ini"
        config.write_text(f"""[general]
http_port = 0
state_dir = {tmp}
log_level = WARNING
bridge_batch_max = {batch_max}
channel_capacity = 20000

[in_a]
transport = bench_source
count = {count_each}
rate = {rate}
batch = {batch}
bridge = out

[in_b]
transport = bench_source
count = {count_each}
rate = {rate}
batch = {batch}
bridge = out

[out]
transport = bench_sink
expect = {2 * count_each}
result = {result}
""")
        env = dict(os.environ, PGW_PLUGINS="bench.load_transports", PYTHONPATH=str(ROOT),
                   PGW_RUN_DIR=str(Path(tmp) / "run"))
        proc = subprocess.Popen([sys.executable, str(ROOT / "protocol_gateway.py"), str(config)],
                                env=env, cwd=tmp)
        try:
            deadline = time.monotonic() + 600
            while not result.exists() or not result.read_text().strip():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the gateway did not deliver every envelope")
                time.sleep(0.1)
            time.sleep(0.05)
            return json.loads(result.read_text())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000, help="envelopes per input")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0)
    args = parser.parse_args()
    seconds = max(2.0, args.ceiling_seconds)
    before = raw_ceiling(seconds)
    batched = through_gateway(args.count, 500)
    after = raw_ceiling(seconds)
    raw = (before + after) / 2
    print(f"raw ceiling (bare Queue, batches of 100, {seconds:g} s before and after): "
          f"{raw:,.0f} dicts/s (before {before:,.0f}, after {after:,.0f})")
    rate = batched["count"] / batched["seconds"]
    print(f"gateway, 2 inputs -> 1 output, batched (emit_many of 100): {rate:,.0f} envelopes/s "
          f"({rate / raw:.2f} of the raw ceiling)")
    each = through_gateway(args.count // 2, 500, batch=1)
    rate_each = each["count"] / each["seconds"]
    print(f"gateway, 2 inputs -> 1 output, batched bridge, one emit per envelope: "
          f"{rate_each:,.0f} envelopes/s ({rate_each / raw:.2f} of the raw ceiling)")
    single = through_gateway(max(args.count // 10, 1000), 1, batch=1)
    rate1 = single["count"] / single["seconds"]
    print(f"gateway, 2 inputs -> 1 output, unbatched: {rate1:,.0f} envelopes/s "
          f"({rate1 / raw:.2f} of the raw ceiling)")
    steady = through_gateway(5000, 500, rate=500.0)
    print(f"latency at a steady 1,000 envelopes/s (2 x 500/s): p50 {steady['p50'] * 1e3:.2f} ms, "
          f"p99 {steady['p99'] * 1e3:.2f} ms, max {steady['max'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
