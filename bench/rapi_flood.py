"""What a RAPI flood becomes: 200 ``$AB`` lines and 2000 ``$AT`` lines from the simulator.

    python bench/rapi_flood.py [--boots 200] [--states 2000] [--interval 1.0]

Prints the boot events (with their counts), the ``$SY`` restores the controller was sent, the
WARNING lines logged, and the readings the ``$AT`` flood became (``event_min_interval``: at
most one per kind per interval, the last value wins).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.rapi import encode_line
from pytests.helpers import Harness, async_wait_for
from simulators.rapi_device import RapiDevice
from transports.rapi_serial import RapiSerialSettings, RapiSerialTransport


class WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.warnings += 1


async def main(args: argparse.Namespace) -> None:
    device = RapiDevice("tcp", tcp_port=0)
    await device.start()
    settings = RapiSerialSettings(transport="rapi_serial", port=device.endpoint,
                                  read_interval=3600, heartbeat_interval=30,
                                  event_min_interval=args.interval)
    h = Harness(RapiSerialTransport, settings, "evse", tempfile.mkdtemp())
    count = WarningCount()
    logging.getLogger("evse").addHandler(count)
    await h.start()
    try:
        await async_wait_for(lambda: h.of_kind("reading"))
        await asyncio.sleep(0.5)
        device.responder.heard.clear()
        warned, emitted = count.warnings, len(h.emitted)
        device.send(b"".join(encode_line("AB", ("00", "8.2.3")) for _ in range(args.boots)))
        await asyncio.sleep(2 + 3 * args.interval)
        boots = [e.data.get("count", 1) for e in h.emitted[emitted:]
                 if e.data.get("event") == "boot"]
        restores = sum(1 for name, _ in device.responder.heard if name == "SY")
        print(f"$AB x{args.boots}: {len(boots)} boot events (counts {boots}), "
              f"{restores} $SY restores, {count.warnings - warned} WARNING lines")
        emitted = len(h.emitted)
        lines = [encode_line("AT", ("01", "01", a, "0000")) for a in range(6, 31)]
        flood = (lines * (args.states // len(lines) + 1))[: args.states]
        device.send(b"".join(flood))
        await asyncio.sleep(5)
        readings = [e for e in h.emitted[emitted:] if e.kind == "reading"]
        print(f"$AT x{len(flood)}: {len(readings)} readings in 5 s; "
              f"rapi_events_coalesced {h.ctx.counters.extra['rapi_events_coalesced']} in all")
    finally:
        await h.stop()
        await device.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boots", type=int, default=200)
    p.add_argument("--states", type=int, default=2000)
    p.add_argument("--interval", type=float, default=1.0)
    asyncio.run(main(p.parse_args()))
