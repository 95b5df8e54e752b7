"""What a device refuses to read, learned from its exception replies, and the plan that avoids it.

The planner joins neighbouring values into one read and reads through small gaps when that is
cheaper (``protocols/read_plan.py``). A device that answers "illegal data address" for one
register inside such a block would, left alone, lose every value of the block on every scan.
Instead the block is split in two halves (at value boundaries) and each half is read at once;
recursion finds a culprit in about 2 log2(values) extra requests:

- a single value that still fails is unreadable: it is left out of the plan and its registers
  become an unreadable range, so no later block reads through them;
- when both halves read fine, the registers between them (read only as filler) are the culprit
  and become an unreadable range.

:func:`walk` is the search as a generator: it yields the requests to read and is sent each
read's outcome, so the transport does the I/O and the tests drive it with a fake device.
The learned ranges are added to the map's own ``unreadable`` ranges and the plan is made again
by the same exact planner, so the next scans are as cheap as the device allows. (A new plan
may join blocks across a gap never read before; a refusal there is learned in its turn, so
refusals die out after at most one scan per refused range.) Pure: the transport does the
reads and tells this module what happened. Learned ranges last for the process's life (a
restart relearns them, without losing values).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from protocols.read_plan import LinkCost, ReadPlan, ReadRequest, plan_reads
from protocols.registers import RegisterMap

#: exception codes that mean "not here" (2) or, from some devices, "not this many" (3)
SPLIT_CODES = frozenset({2, 3})
#: outcomes of one read, as :func:`walk` is told them: read fine, or refused (exception 2/3);
#: any other word (no answer, link down, another exception) ends the walk with that word
READ, REFUSED = "ok", "refused"
#: what :func:`walk` returns for a block it had to split (something was learned)
SPLIT = "split"
Range = tuple[str, int, int]


@dataclass(frozen=True)
class Learned:
    """One thing learned, for the log: the range and the values given up (if any)."""

    table: str
    first: int
    last: int
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        what = f"{self.table} {self.first}" + (f"-{self.last}" if self.last != self.first else "")
        return f"{what} ({', '.join(self.names)})" if self.names else f"{what} (gap)"


class BlockMemory:
    def __init__(self, regmap: RegisterMap, batch_size: int, link: LinkCost | None = None) -> None:
        self.map = regmap
        self.batch_size = batch_size or regmap.batch_size
        self.link = link
        self.learned: list[Learned] = []
        self.dropped: set[str] = set()
        self.plan: ReadPlan = self._make_plan()

    def _make_plan(self) -> ReadPlan:
        return self.plan_with(self.link)

    def plan_with(self, link: LinkCost | None) -> ReadPlan:
        """The plan for another cost model, under everything learned so far."""
        values = [v for v in self.map.values if v.name not in self.dropped]
        unreadable = (*self.map.unreadable, *((x.table, x.first, x.last) for x in self.learned))
        return plan_reads(values, batch_size=self.batch_size, unreadable=unreadable, link=link)

    def _units(self, request: ReadRequest) -> list[tuple[int, int, tuple[str, ...]]]:
        """The request's values as (start, end, names), values sharing a register together."""
        units: list[tuple[int, int, tuple[str, ...]]] = []
        for spec in sorted((self.map[n] for n in request.names), key=lambda v: (v.address, v.end)):
            if units and spec.address < units[-1][1]:
                start, end, names = units[-1]
                units[-1] = (start, max(end, spec.end), (*names, spec.name))
            else:
                units.append((spec.address, spec.end, (spec.name,)))
        return units

    def split(self, request: ReadRequest) -> list[ReadRequest]:
        """Two tight halves of a refused block, or [] when it holds one value only."""
        units = self._units(request)
        if len(units) < 2:
            return []
        middle = len(units) // 2
        halves = []
        for part in (units[:middle], units[middle:]):
            names = tuple(n for _, _, group in part for n in group)
            halves.append(ReadRequest(request.table, part[0][0], part[-1][1] - part[0][0], names))
        return halves

    def value_refused(self, request: ReadRequest) -> Learned:
        """A one-value request was refused: leave the value out from now on."""
        learned = Learned(request.table, request.address, request.end - 1, request.names)
        self.dropped.update(request.names)
        self.learned.append(learned)
        self.plan = self._make_plan()
        return learned

    def gap_refused(self, halves: list[ReadRequest]) -> Learned | None:
        """Both halves of a refused block read fine: the filler between them is refused."""
        left, right = halves[0], halves[-1]
        if right.address <= left.end:
            return None
        learned = Learned(left.table, left.end, right.address - 1)
        self.learned.append(learned)
        self.plan = self._make_plan()
        return learned


def walk(memory: BlockMemory, request: ReadRequest,
         learned: list[Learned]) -> Generator[ReadRequest, str, str]:
    """Read ``request``, splitting it where the device refuses; learned ranges go to ``learned``.

    Yields each request to read and expects its outcome (:data:`READ`, :data:`REFUSED`, or
    another word that stops the walk and is returned). Returns :data:`READ` when the block
    read whole, :data:`SPLIT` when it was split (every readable value of it read, the refused
    range learned), or the stopping word.
    """
    outcome = yield request
    if outcome != REFUSED:
        return outcome
    halves = memory.split(request)
    if not halves:
        learned.append(memory.value_refused(request))
        return SPLIT
    results = []
    for half in halves:
        result = yield from walk(memory, half, learned)
        if result not in (READ, SPLIT):
            return result
        results.append(result)
    if results == [READ, READ]:
        gap = memory.gap_refused(halves)
        if gap is not None:
            learned.append(gap)
    return SPLIT
