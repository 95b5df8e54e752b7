"""Figures for the OpenEVSE controller role: ``python bench/loadsharing_openevse.py``.

- ``plan()`` for 8 members (the allocation from what the controller knows), in microseconds;
- on loopback, with simulated OpenEVSE members: the time from a plug-in on one member to the
  decrease frames reaching the others (one status push plus one frame, not a 5 s tick).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators.openevse_node import OpenEvseNode
from transports.loadsharing.openevse_controller import (
    GroupSettings,
    MemberLink,
    OpenEvseController,
    plan,
)


class _Open:
    closed = False


def bench_plan() -> float:
    s = GroupSettings(group_max=80, heartbeat_timeout=30)
    now = 1000.0
    links = []
    for i in range(8):
        x = MemberLink(f"127.0.0.1:{8000 + i}", status={"state": 3, "vehicle": 1,
                                                        "loadsharing_min_current": 6,
                                                        "loadsharing_max_current": 32})
        x.joined, x.last_text, x.ws = True, now, _Open()  # type: ignore[assignment]
        links.append(x)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        plan(links, s, now)
    return (time.perf_counter() - t0) / n * 1e6


async def bench_reshare(rounds: int = 5) -> list[float]:
    nodes = [OpenEvseNode(http_port=0, plugged=i < 2, heartbeat_timeout=30, idle_push=1.0)
             for i in range(3)]
    for n in nodes:
        await n.start()
    ctl = OpenEvseController("127.0.0.1:1", GroupSettings(group_max=30, heartbeat_timeout=30,
                                                          response_time=1.0))
    await ctl.start()
    out: list[float] = []
    try:
        for n in nodes:
            await ctl.add_member(n.host)
        while [round(n.model.ev.draw_a) for n in nodes] != [15, 15, 0]:
            await asyncio.sleep(0.02)
        for _ in range(rounds):
            seen = len(nodes[0].frames)
            t0 = time.monotonic()
            nodes[2].plug()
            while not (len(nodes[0].frames) > seen and nodes[0].frames[-1]["target_current"] < 15):
                await asyncio.sleep(0.002)
            out.append((time.monotonic() - t0) * 1000)
            while [round(n.model.ev.draw_a) for n in nodes] != [10, 10, 10]:
                await asyncio.sleep(0.02)
            nodes[2].unplug()
            while [round(n.model.ev.draw_a) for n in nodes] != [15, 15, 0]:
                await asyncio.sleep(0.02)
    finally:
        await ctl.stop()
        for n in nodes:
            await n.stop()
    return out


def main() -> None:
    print(f"plan() for 8 members: {bench_plan():.1f} us")
    ms = asyncio.run(bench_reshare())
    print(f"plug-in -> decrease frame at another member: median {statistics.median(ms):.0f} ms, "
          f"max {max(ms):.0f} ms over {len(ms)} rounds (the simulator pushes status every 0.1 s)")


if __name__ == "__main__":
    main()
