"""Figures for the OpenEVSE controller role: ``python bench/loadsharing_openevse.py``.

- ``plan()`` for 8 members (the allocation from what the controller knows), in microseconds;
- on loopback, with simulated OpenEVSE members: the time from a plug-in on one member to the
  decrease frames reaching every other member (one status push plus one frame, not a 5 s tick),
  and to every member holding its new limit (the plugged one's raise waits ``response_time``).
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


async def bench_reshare(rounds: int = 5) -> tuple[list[float], list[float]]:
    """(plug-in -> every other member's decrease frame, plug-in -> every member at its new
    limit) in ms; the second includes the raise wait (``response_time``, 1 s here)."""
    nodes = [OpenEvseNode(http_port=0, plugged=i < 2, heartbeat_timeout=30, idle_push=1.0)
             for i in range(3)]
    for n in nodes:
        await n.start()
    ctl = OpenEvseController("127.0.0.1:1", GroupSettings(group_max=30, heartbeat_timeout=30,
                                                          response_time=1.0))
    await ctl.start()
    lowered: list[float] = []
    settled: list[float] = []

    def limits() -> list[float | None]:
        return [n.frames[-1]["target_current"] if n.frames else None for n in nodes]

    try:
        for n in nodes:
            await ctl.add_member(n.host)
        while [round(n.model.ev.draw_a) for n in nodes] != [15, 15, 0]:
            await asyncio.sleep(0.02)
        for _ in range(rounds):
            t0 = time.monotonic()
            nodes[2].plug()
            while not all(x is not None and x < 15 for x in limits()[:2]):
                await asyncio.sleep(0.002)
            lowered.append((time.monotonic() - t0) * 1000)
            while limits() != [10, 10, 10]:
                await asyncio.sleep(0.002)
            settled.append((time.monotonic() - t0) * 1000)
            while [round(n.model.ev.draw_a) for n in nodes] != [10, 10, 10]:
                await asyncio.sleep(0.02)
            nodes[2].unplug()
            while [round(n.model.ev.draw_a) for n in nodes] != [15, 15, 0]:
                await asyncio.sleep(0.02)
    finally:
        await ctl.stop()
        for n in nodes:
            await n.stop()
    return lowered, settled


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def report(rounds: int = 10) -> None:
    """The controller-role figures (``bench/loadsharing.py`` prints them too)."""
    lowered, settled = asyncio.run(bench_reshare(rounds))
    print(f"controller role, 3 simulated OpenEVSE members, {rounds} rounds:")
    print(f"  plug-in -> every other member's decrease frame: median "
          f"{statistics.median(lowered):.0f} ms, p95 {p95(lowered):.0f} ms")
    print(f"  plug-in -> every member's new limit (raise after the 1 s response-time wait): "
          f"median {statistics.median(settled):.0f} ms, p95 {p95(settled):.0f} ms")


def main() -> None:
    print(f"plan() for 8 members: {bench_plan():.1f} us")
    report()


if __name__ == "__main__":
    main()
