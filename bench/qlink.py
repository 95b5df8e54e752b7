"""QLink transport figures against the simulator on 127.0.0.1 (prints them; no pass/fail).

- commands/s through the transport at the configured pacing (``--gap``, default 0.12 s as a
  real IP-Enabler wants) with the simulator's reply latency (``--latency``, default 40 ms);
- event latency: from the simulator writing an ``LO`` line to the transport emitting the
  reading envelope;
- bytes on the link per command (both directions, events included).

    python bench/qlink.py [--commands 50] [--events 50] [--gap 0.12] [--latency 0.04]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.message import Envelope
from pytests.helpers import Harness, async_wait_for, free_port
from simulators.qlink_controller import (
    DEMO_KEYPADS,
    DEMO_LOADS,
    QLinkControllerSimulator,
    build_model,
)
from transports.qlink import QLinkTransport
from transports.qlink_config import QLinkSettings


async def bench(args: argparse.Namespace) -> None:
    port = free_port()
    sim = QLinkControllerSimulator(build_model(DEMO_LOADS, DEMO_KEYPADS), [port],
                                   latency=args.latency)
    await sim.start()
    settings = QLinkSettings(transport="qlink", port=port, loads=DEMO_LOADS, keypads=DEMO_KEYPADS,
                             writable_loads="*", command_gap=args.gap, read_interval=0,
                             ping_interval=600, reply_format=args.reply_format,
                             queue_limit=max(args.commands, 64))
    h = Harness(QLinkTransport, settings, "qlink", tempfile.mkdtemp())
    emitted_at: list[tuple[float, Any]] = []
    original = h._emit

    async def timed(envelope: Envelope) -> None:
        emitted_at.append((time.monotonic(), envelope))
        await original(envelope)

    h.ctx._emitter = timed
    await h.start()
    await async_wait_for(lambda: any(e.kind == "status" for _, e in emitted_at))
    stats = h.transport.stats

    # commands/s and bytes per command
    before = (stats.commands, stats.bytes_out + stats.bytes_in)
    start = time.monotonic()
    for i in range(args.commands):
        await h.send(Envelope("bench", "command", {"command": "write", "request_id": str(i),
                                                   "values": {"porch": i % 101}}))

    def answered() -> int:
        return sum(1 for _, e in emitted_at if e.data.get("event") == "command_result")

    await async_wait_for(lambda: answered() >= args.commands, timeout=600)
    elapsed = time.monotonic() - start
    ok = sum(1 for _, e in emitted_at if e.data.get("event") == "command_result" and e.data["ok"])
    commands = stats.commands - before[0]
    link_bytes = stats.bytes_out + stats.bytes_in - before[1]

    # event latency: simulator writes LO -> transport emits the reading
    latencies = []
    for i in range(args.events):
        level = 1 + i % 99
        mark = len(emitted_at)
        sent = time.monotonic()
        await sim.set_level("hall", level)
        await async_wait_for(lambda lv=level, m=mark: any(  # type: ignore[misc]
            e.data.get("hall") == lv for _, e in emitted_at[m:]), interval=0.0005)
        got = next(t for t, e in emitted_at[mark:] if e.data.get("hall") == level)
        latencies.append((got - sent) * 1000)
    await h.stop()
    await sim.stop()

    print(f"pacing: command_gap {args.gap} s, simulator latency {args.latency} s, "
          f"reply format {args.reply_format}")
    print(f"commands: {args.commands} writes in {elapsed:.2f} s = "
          f"{args.commands / elapsed:.1f} commands/s ({ok} ok, link commands {commands})")
    print(f"bytes on the link per command: {link_bytes / max(commands, 1):.1f} "
          f"(both directions, LO/LE events included)")
    print(f"event latency simulator -> envelope: median {statistics.median(latencies):.2f} ms, "
          f"max {max(latencies):.2f} ms over {len(latencies)} events")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=50)
    ap.add_argument("--events", type=int, default=50)
    ap.add_argument("--gap", type=float, default=0.12)
    ap.add_argument("--latency", type=float, default=0.04)
    ap.add_argument("--reply-format", choices=["detailed", "regular"], default="detailed")
    asyncio.run(bench(ap.parse_args()))


if __name__ == "__main__":
    main()
