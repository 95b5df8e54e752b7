"""The read plans the Modbus transports send, against a minimum computed independently.

For every shipped map, on three links (RTU 9600 and 19200 baud 8N1, Modbus TCP) and at a
device turnaround of 0, 20 and 50 ms:

- ``sent``: the plan the transport sends with its default settings (turnaround
  ``DEFAULT_TURNAROUND``), its requests, registers read and time on that link at the true
  turnaround (what a wrong turnaround setting costs shows as ``time/min`` above 1);
- ``min``: the fewest requests, the fewest registers and the least time any valid plan can
  take, each computed here by :func:`independent_minimum`: a shortest path over register
  addresses in which a request may start and end anywhere, so it does not rely on the
  planner's normal form nor share its code;
- ``exact``: whether the plan made *for* that turnaround takes the least time (the planner's
  claim), and on random small maps whether it equals :func:`brute_force_minimum`, which tries
  every way to read every register or not and cut the reads into requests.

Exit status 1 when a plan misses its minimum, or when eg4_v58 over TCP does not plan the
fewest requests. Random maps: ``BENCH_PLAN_MAPS`` (default 300) and ``BENCH_PLAN_SEED``.
Run: ``python bench/modbus_plan.py``.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.read_plan import (
    DEFAULT_TURNAROUND,
    MAX_BITS,
    MAX_REGISTERS,
    LinkCost,
    ReadPlan,
    RtuCost,
    TcpCost,
    plan_reads,
)
from protocols.registers import BIT_TABLES, RegisterValue, available_maps, load_map

TABLES = ("coil", "discrete", "holding", "input")
TURNAROUNDS = (0.0, 0.020, 0.050)
Objective = Callable[[str, int], float]
Unreadable = Sequence[tuple[str, int, int]]


def _links(turnaround: float) -> dict[str, LinkCost]:
    return {"rtu 9600": RtuCost(9600, turnaround=turnaround),
            "rtu 19200": RtuCost(19200, turnaround=turnaround),
            "tcp": TcpCost(turnaround=turnaround)}


def useful_registers(values: Sequence[RegisterValue]) -> int:
    """Registers (or bits) that hold data, each counted once however many fields share it."""
    return sum(len({a for v in values if v.table == t for a in range(v.address, v.end)})
               for t in TABLES)


def _table_limit(table: str, batch_size: int) -> int:
    return MAX_BITS if table in BIT_TABLES else min(batch_size, MAX_REGISTERS)


def _table_minimum(table: str, values: Sequence[RegisterValue], limit: int,
                   unreadable: Unreadable, objective: Objective) -> float:
    """Shortest path over addresses p (every value ending by p read, none cut at p).

    From p: skip register p if it holds no value (free), or read [p, q) for any q up to
    p + limit that cuts no value and touches no unreadable range (cost ``objective``).
    Addresses farther than ``limit`` from every value are jumped over: a request there
    would carry nothing, and dropping it costs nothing.
    """
    used = sorted({a for v in values for a in range(v.address, v.end)})
    used_set = set(used)
    inside = {a for v in values for a in range(v.address + 1, v.end)}  # p that cuts a value
    refused = [(lo, hi) for t, lo, hi in unreadable if t == table]

    def readable(start: int, end: int) -> bool:
        return not any(lo < end and start <= hi for lo, hi in refused)

    near = sorted({p for a in used for p in range(a - limit, a + limit + 1)} | {used[-1] + 1})
    goal = used[-1] + 1
    best = dict.fromkeys(near, float("inf"))
    best[near[0]] = 0.0
    for k, p in enumerate(near):
        here = best[p]
        if here == float("inf") or p == goal:
            continue
        if p not in used_set:  # skip register p (to the next address worth a state)
            nxt = near[k + 1]
            best[nxt] = min(best[nxt], here)
        if p in inside:
            continue
        for q in range(p + 1, min(p + limit, goal) + 1):
            if q in inside or q not in best:
                continue
            if readable(p, q):
                best[q] = min(best[q], here + objective(table, q - p))
    return best[goal]


def independent_minimum(values: Sequence[RegisterValue], objective: Objective, *,
                        batch_size: int, unreadable: Unreadable = ()) -> float:
    """The least total ``objective`` over requests of any valid plan (inf if none exists)."""
    total = 0.0
    for table in TABLES:
        selected = [v for v in values if v.table == table and v.readable]
        if selected:
            total += _table_minimum(table, selected, _table_limit(table, batch_size),
                                    unreadable, objective)
    return total


def brute_force_minimum(values: Sequence[RegisterValue], objective: Objective, *,
                        batch_size: int, unreadable: Unreadable = (), max_span: int = 10) -> float:
    """Every plan of one small table: each register skipped, read on, or read in a new request.

    3**span candidate plans; each kept if every value lies whole inside one request, no
    request is longer than the limit or touches an unreadable range.
    """
    total = 0.0
    for table in TABLES:
        selected = [v for v in values if v.table == table and v.readable]
        if not selected:
            continue
        lo, hi = min(v.address for v in selected), max(v.end for v in selected)
        if hi - lo > max_span:
            raise ValueError(f"span {hi - lo} is too long to try every plan")
        limit = _table_limit(table, batch_size)
        best = float("inf")
        for marks in itertools.product((0, 1, 2), repeat=hi - lo):  # skip, continue, start
            requests: list[list[int]] = []
            ok = True
            for offset, mark in enumerate(marks):
                if mark == 2 or (mark == 1 and (offset == 0 or marks[offset - 1] == 0)):
                    requests.append([lo + offset, lo + offset + 1])
                elif mark == 1:
                    requests[-1][1] += 1
            for v in selected:
                if not any(a <= v.address and v.end <= b for a, b in requests):
                    ok = False
                    break
            if not ok:
                continue
            cost = 0.0
            for a, b in requests:
                if b - a > limit or any(t == table and r_lo < b and a <= r_hi
                                        for t, r_lo, r_hi in unreadable):
                    cost = float("inf")
                    break
                cost += objective(table, b - a)
            best = min(best, cost)
        total += best
    return total


def random_small_map(rng: random.Random, span: int = 9) -> tuple[list[RegisterValue], int,
                                                                  list[tuple[str, int, int]]]:
    """A few values (some bit fields sharing a register) on one register table, a batch size
    and maybe an unreadable range, all inside ``span`` addresses."""
    table = rng.choice(("holding", "input"))
    values: list[RegisterValue] = []
    address = rng.randrange(3)
    while address < span - 1:
        width = rng.choice((1, 1, 2, 2, 3))
        if address + width > span:
            break
        if rng.random() < 0.25:
            values.append(RegisterValue(f"v{len(values)}", table, address, "bits", 1,
                                        bit_start=0, bit_width=8))
            values.append(RegisterValue(f"v{len(values)}", table, address, "bits", 1,
                                        bit_start=8, bit_width=8))
            address += 1
        else:
            values.append(RegisterValue(f"v{len(values)}", table, address, "u16", width))
            address += width
        address += rng.choice((0, 0, 1, 2, 3))
    unreadable = []
    if rng.random() < 0.3:
        first = rng.randrange(span)
        unreadable.append((table, first, first + rng.randrange(2)))
    return values, rng.randint(2, 8), unreadable


def _count(_table: str, _count: int) -> float:
    return 1.0


def _registers(_table: str, count: int) -> float:
    return float(count)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def check_random_maps(n: int, seed: int) -> int:
    """Planner vs brute force vs the address formulation on ``n`` random small maps;
    returns how many disagree."""
    rng = random.Random(seed)
    wrong = 0
    for _ in range(n):
        values, batch, unreadable = random_small_map(rng)
        if not values:
            continue
        link = rng.choice(list(_links(rng.choice(TURNAROUNDS)).values()))
        try:
            plan = plan_reads(values, batch_size=batch, unreadable=unreadable, link=link)
            got = plan.cost(link)
        except ValueError:
            got = float("inf")
        brute = brute_force_minimum(values, link.seconds, batch_size=batch,
                                    unreadable=unreadable)
        other = independent_minimum(values, link.seconds, batch_size=batch,
                                    unreadable=unreadable)
        if not (_same(got, brute) or got == brute) or not (_same(other, brute) or other == brute):
            wrong += 1
            print(f"  DISAGREE: {values} batch {batch} unreadable {unreadable} {link}: "
                  f"plan {got}, brute force {brute}, addresses {other}")
    return wrong


def main() -> int:
    failures: list[str] = []
    for name in available_maps():
        regmap = load_map(name)
        values = regmap.readable_values()
        kwargs = {"batch_size": regmap.batch_size, "unreadable": regmap.unreadable}
        min_requests = independent_minimum(values, _count, **kwargs)
        min_registers = independent_minimum(values, _registers, **kwargs)
        print(f"\n{name}: {len(values)} values, {useful_registers(values)} registers of data, "
              f"batch {regmap.batch_size}; min {min_requests:.0f} requests, "
              f"min {min_registers:.0f} registers")
        print(f"  {'link':<10} {'turn':>5} {'sent req':>8} {'regs':>5} {'sent ms':>8} "
              f"{'min ms':>8} {'time/min':>8} {'exact':>6}")
        for turnaround in TURNAROUNDS:
            for label, link in _links(turnaround).items():
                default = _links(DEFAULT_TURNAROUND)[label]
                sent: ReadPlan = plan_reads(values, link=default, **kwargs)
                tuned = plan_reads(values, link=link, **kwargs)
                best = independent_minimum(values, link.seconds, **kwargs)
                exact = _same(tuned.cost(link), best)
                if not exact:
                    failures.append(f"{name} {label} at {turnaround * 1000:g} ms: plan "
                                    f"{tuned.cost(link) * 1000:.3f} ms, minimum {best * 1000:.3f}")
                if label == "tcp" and len(sent) != min_requests:
                    failures.append(f"{name} over TCP: {len(sent)} requests, "
                                    f"{min_requests:.0f} suffice")
                print(f"  {label:<10} {turnaround * 1000:>5g} {len(sent):>8} "
                      f"{sent.registers_read():>5} {sent.cost(link) * 1000:>8.1f} "
                      f"{best * 1000:>8.1f} {sent.cost(link) / best:>8.3f} "
                      f"{'yes' if exact else 'NO':>6}")
    n = int(os.environ.get("BENCH_PLAN_MAPS", "300"))
    seed = int(os.environ.get("BENCH_PLAN_SEED", "1"))
    wrong = check_random_maps(n, seed)
    print(f"\nrandom small maps (seed {seed}): {n - wrong} of {n} plans equal the brute-force "
          "minimum")
    if wrong:
        failures.append(f"{wrong} random maps off their brute-force minimum")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
