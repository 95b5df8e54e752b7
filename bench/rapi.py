"""RAPI transport figures: commands per second, and plug-in -> envelope latency.

    python bench/rapi.py [--seconds 3] [--plugs 30] [--mode tcp|pty|both]

The simulator runs on its own event loop in a thread of this process (as the tests run it), the
transport in the main loop; both share one GIL, so the figures are a floor for a real device,
whose serial line (115200 baud: ~1.5 ms per 20-byte line) is the true limit.
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
from pytests.helpers import Harness, async_wait_for
from simulators.rapi_device import RapiDevice
from transports.rapi_serial import RapiSerialSettings, RapiSerialTransport


class TimedHarness(Harness):
    """Records the monotonic time each envelope leaves the transport."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.times: list[float] = []

    async def _emit(self, envelope: Envelope) -> None:
        self.times.append(time.monotonic())
        self.emitted.append(envelope)


async def bench(mode: str, seconds: float, plugs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rapi_bench_"))
    device = RapiDevice(mode, tcp_port=0, pty_link=str(tmp / "pty") if mode == "pty" else None)
    device.start_in_thread()
    s = RapiSerialSettings(transport="rapi_serial", port=device.endpoint, read_interval=3600)
    h = TimedHarness(RapiSerialTransport, s, "evse", tmp)
    await h.start()
    try:
        await async_wait_for(lambda: h.of_kind("reading"))
        t = h.transport
        # raw request/reply round trips
        count, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            await t._request("GS")
            count += 1
        raw = count / (time.monotonic() - start)
        # whole command envelopes: plan, send, reply, command_result envelope
        count, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            amps = 6 + count % 20
            await h.send(Envelope("bench", "command", {"command": "set_current", "amps": amps}))
            count += 1
        commands = count / (time.monotonic() - start)
        # plug-in to the envelope that says so
        latencies: list[float] = []
        for _ in range(plugs):
            before = len(h.emitted)
            t0 = time.monotonic()
            device.call(device.plug)

            def seen(since: int = before) -> int | None:
                for i in range(since, len(h.emitted)):
                    if h.emitted[i].data.get("vehicle_connected") is True:
                        return i
                return None

            index = await async_wait_for(lambda: seen() is not None, interval=0.001)
            index = seen()
            assert index is not None
            latencies.append((h.times[index] - t0) * 1000)
            device.call(device.unplug)
            await async_wait_for(
                lambda: h.of_kind("reading")[-1].data.get("vehicle_connected") is False
            )
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        print(f"{mode}: {raw:7.0f} RAPI requests/s   {commands:7.0f} command envelopes/s")
        print(
            f"{mode}: plug-in -> envelope ms: median {statistics.median(latencies):.2f}  "
            f"p95 {p95:.2f}  max {latencies[-1]:.2f}  (n={len(latencies)})"
        )
    finally:
        await h.stop()
        device.stop_thread()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--plugs", type=int, default=30)
    p.add_argument("--mode", choices=("tcp", "pty", "both"), default="both")
    args = p.parse_args()
    for mode in ("pty", "tcp") if args.mode == "both" else (args.mode,):
        asyncio.run(bench(mode, args.seconds, args.plugs))


if __name__ == "__main__":
    main()
