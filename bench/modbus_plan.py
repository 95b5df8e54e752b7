"""Read planning against the bus's physical limit, for every shipped register map.

For each map: requests per full scan, registers and bytes on the wire (RTU frames), and the
RTU bus time at 9600/19200/115200 baud (8N1, 3.5-character gaps, 1.75 ms above 19200 baud,
no device turnaround) of:

- ``sent``: the plan the transport sends at that baud (it plans for its own link);
- ``19200-plan``: a plan made for 19200 baud used at this speed (what a fixed plan loses);
- ``minimum``: the exact optimum for that baud under the same constraints (batch size,
  unreadable ranges, values never split): the dynamic program of protocols/read_plan.py,
  checked against brute force in pytests/test_registers.py;
- ``naive``: one request per value; ``floor``: every value's bytes once in full-size requests,
  ignoring gaps and unreadable ranges (no plan can beat it, most maps cannot reach it).

The transport plans with the same program for its own baud rate, so ``sent/min`` is 1 by
construction; the brute-force test is what makes that claim checkable.
Run: ``python bench/modbus_plan.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.read_plan import (
    LinkCost,
    lower_bound,
    minimum_cost,
    naive_plan,
    plan_reads,
)
from protocols.registers import available_maps, load_map

BAUDS = (9600, 19200, 115200)


def main() -> int:
    worst = 0.0
    for name in available_maps():
        regmap = load_map(name)
        values = regmap.readable_values()
        kwargs = {"batch_size": regmap.batch_size, "unreadable": regmap.unreadable}
        plan = plan_reads(values, **kwargs)
        naive = naive_plan(values)
        useful = sum(v.count for v in values)
        print(f"\n{name}: {len(values)} values, {useful} registers of data, "
              f"batch {regmap.batch_size}")
        print(f"  plan (19200): {len(plan)} requests, {plan.registers_read()} registers read, "
              f"{plan.wire_bytes()} bytes on the wire")
        print(f"  naive:        {len(naive)} requests, {naive.registers_read()} registers read, "
              f"{naive.wire_bytes()} bytes on the wire")
        print(f"  {'baud':>7} {'sent ms':>9} {'min ms':>9} {'sent/min':>9} {'19200-plan':>11} "
              f"{'naive ms':>9} {'floor ms':>9}")
        for baud in BAUDS:
            link = LinkCost(baudrate=baud)
            sent = plan_reads(values, link=link, **kwargs)  # what the transport sends
            best = minimum_cost(values, link, **kwargs)
            ratio = sent.cost(link) / best
            worst = max(worst, ratio)
            print(f"  {baud:>7} {sent.cost(link) * 1000:>9.1f} {best * 1000:>9.1f} "
                  f"{ratio:>9.3f} {plan.cost(link) / best:>10.3f}x "
                  f"{naive.cost(link) * 1000:>9.1f} "
                  f"{lower_bound(values, link, regmap.batch_size) * 1000:>9.1f}")
    print(f"\nworst plan/minimum over maps and bauds: {worst:.3f} "
          f"({'within' if worst <= 1.05 else 'OVER'} the 5% bound)")
    return 0 if worst <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
