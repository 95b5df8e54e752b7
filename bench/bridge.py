"""Bridge throughput and latency, beside the raw ceiling measured in the same run.

    python bench/bridge.py [--count 200000]

Prints envelopes/s from two input processes into one output process through the real
supervisor (with batching, and with bridge_batch_max = 1), the raw ceiling (one process sending
batches of 100 dicts through a bare multiprocessing.Queue to another) and p50/p99 latency at a
steady 1,000 envelopes/s.
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


def _raw_consumer(q: mp.Queue, total: int, out: mp.Queue) -> None:
    got = 0
    while got < total:
        got += len(q.get())
    out.put(time.monotonic())


def raw_ceiling(total: int) -> float:
    """One producer, one consumer, batches of 100 ~10-key dicts through a bare Queue."""
    ctx = mp.get_context("fork")
    q, done = ctx.Queue(), ctx.Queue()
    consumer = ctx.Process(target=_raw_consumer, args=(q, total, done))
    consumer.start()
    start = time.monotonic()
    for n in range(0, total, 100):
        q.put([dict(PAYLOAD, i=n + k) for k in range(100)])
    end = done.get()
    consumer.join()
    return total / (end - start)


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
        env = dict(os.environ, PGW_PLUGINS="bench.load_transports", PYTHONPATH=str(ROOT))
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
    parser.add_argument("--count", type=int, default=200_000, help="envelopes per input")
    args = parser.parse_args()
    raw = raw_ceiling(2 * args.count)
    print(f"raw ceiling (bare Queue, batches of 100): {raw:,.0f} dicts/s")
    batched = through_gateway(args.count, 500)
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
