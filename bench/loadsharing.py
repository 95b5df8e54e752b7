"""Plug-in to every other charger's new limit, for groups of 2, 4 and 8 real gateways.

Each node is a gateway process with its own RAPI simulator on loopback (pytests/
loadsharing_sites.py). The group shares ``12 A x N``; every EV but one is plugged in, so the
others share the whole breaker. Then the last EV is plugged in (the simulator's HTTP control)
and the clock runs until every *other* simulator reports the lower ``current_capacity``: the
node saw the plug-in ($AT), its report reached every peer over /ws, each peer lowered at once
and wrote ``$SC``. Unplugging lets them rise again (after agreement) before the next round.

Then the controller role (``bench/loadsharing_openevse.py``): plug-in on one simulated OpenEVSE
member to every member's new limit, median and p95.

    python bench/loadsharing.py [--sizes 2,4,8] [--rounds 10] [--controller-rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytests.helpers import wait_for
from pytests.loadsharing_sites import Site, cleanup, form_group, wait_capacities


async def _until_all(urls: list[str], below: int, start: float, timeout: float = 30.0) -> float:
    """Seconds from ``start`` until every simulator at ``urls`` offers at most ``below`` A."""
    pending = set(urls)
    async with aiohttp.ClientSession() as session:
        while pending and time.monotonic() - start < timeout:
            for url in list(pending):
                async with session.get(url) as resp:
                    if (await resp.json())["current_capacity"] <= below:
                        pending.discard(url)
            await asyncio.sleep(0.005)
    if pending:
        raise RuntimeError(f"not lowered within {timeout} s: {sorted(pending)}")
    return time.monotonic() - start


def run(n: int, rounds: int, tmp: Path) -> list[float]:
    group_max = 12 * n
    sites = [Site(tmp / f"n{i}", group_max=group_max, plugged=i != 0) for i in range(n)]
    try:
        for s in sites:
            s.start()
        for s in sites:
            s.wait_up()
        form_group(sites)
        high = min(32, group_max // (n - 1))
        wait_capacities(sites[1:], [high] * (n - 1), timeout=120)
        urls = [f"http://127.0.0.1:{s.sim_http}/state" for s in sites[1:]]
        times = []
        for _ in range(rounds):
            t0 = time.monotonic()
            sites[0].sim_post("plug")
            times.append(asyncio.run(_until_all(urls, 12, t0)))
            wait_capacities(sites, [12] * n, timeout=60)
            sites[0].sim_post("unplug")
            wait_capacities(sites[1:], [high] * (n - 1), timeout=60)
            wait_for(lambda: sites[0].ls()["mode"] == "agreed", 30, 0.1)
        return times
    finally:
        cleanup(sites)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--controller-rounds", type=int, default=10)
    args = ap.parse_args()
    print(f"plug-in on one node -> every other charger's limit lowered ({args.rounds} rounds)")
    print(f"{'nodes':>5}  {'median ms':>9}  {'p95 ms':>7}  {'max ms':>7}")
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"pgw_ls_bench{n}_") as tmp:
            times = sorted(run(n, args.rounds, Path(tmp)))
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        print(f"{n:>5}  {statistics.median(times) * 1000:9.0f}  {p95 * 1000:7.0f}  "
              f"{times[-1] * 1000:7.0f}", flush=True)
    if args.controller_rounds:
        from bench.loadsharing_openevse import report

        report(args.controller_rounds)


if __name__ == "__main__":
    main()
