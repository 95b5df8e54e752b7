"""Microseconds per allocation for groups of 2, 8 and 64 members (all demanding, scarce budget).

Run: ``python bench/allocation.py`` (prints one line per size).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transports.loadsharing.allocation import Limits, Member, allocate


def bench(n: int, rounds: int) -> float:
    members = [
        Member(f"node{i:03d}", online=i % 7 != 3, demanding=True, max_current=16 + i % 17,
               priority=i % 3)
        for i in range(n)
    ]
    limits = Limits(group_max=20.0 * n, safety_factor=0.9, peer_assumed_current=6.0)
    allocate(members, limits)
    started = time.perf_counter()
    for _ in range(rounds):
        allocate(members, limits)
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    for n, rounds in ((2, 20000), (8, 10000), (64, 2000)):
        print(f"{n:3d} members: {bench(n, rounds):8.1f} us per allocation")


if __name__ == "__main__":
    main()
