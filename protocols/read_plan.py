"""Read planning: the cheapest set of read requests that covers a map's values.

Pure functions from (values, device limits, link cost) to requests, apart from any client.

The problem. Each value occupies a span of registers (or bits) of one table and must be read
whole by one request. A request reads a contiguous range of at most ``batch_size`` registers
(2000 bits for coils/discrete inputs) that touches no range the device refuses to read. The
cost of a plan is the sum of its requests' times on the link (:class:`RtuCost`,
:class:`TcpCost`): a fixed part per request (the device's turnaround, the RTU silent
intervals or the TCP round trip, frame headers) and a part per byte read. Reading a gap
between two values costs bytes; splitting a request costs one more fixed part.

The minimum. Any optimal plan can be put in a normal form: each request covers a run of values
that are consecutive in address order and reads exactly from the run's first register to its
last (a request covering values a < c but not b in between spans b anyway, so the request that
covered b can be dropped; trimming a request to its values only saves bytes, as every cost
here grows with the count). So the minimum is
``best[j] = min_i best[i-1] + cost(span of values i..j)`` over feasible runs: an exact dynamic
program, O(n^2) per table. :func:`plan_reads` *is* that program, so its plan is the minimum for
the cost model it is given. ``bench/modbus_plan.py`` computes the minimum independently (a
shortest path over register addresses that does not assume the normal form, and brute force
on small maps); ``pytests/test_registers.py`` checks the planner against both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocols.registers import BIT_TABLES, READ_FUNCTION, RegisterValue

MAX_REGISTERS = 125
MAX_BITS = 2000
#: the device's think time per request when the settings do not say (seconds). Meters and
#: inverters answer in roughly 5-50 ms; 20 ms is the middle and what the planner's figures in
#: docs/transports/modbus.md assume. Set ``turnaround`` per device to the measured figure.
DEFAULT_TURNAROUND = 0.020


def payload_bytes(table: str, count: int) -> int:
    """Data bytes of a reply carrying ``count`` registers or bits."""
    return (count + 7) // 8 if table in BIT_TABLES else 2 * count


@dataclass(frozen=True)
class RtuCost:
    """Time of one read transaction on an RTU line (seconds): both frames at the line's
    speed, the 3.5-character silence after each, and the device's turnaround.

    ``bits_per_char``: 10 for 8N1, 11 with parity or two stop bits.
    """

    baudrate: int = 19200
    bits_per_char: int = 10
    turnaround: float = DEFAULT_TURNAROUND

    @property
    def char_time(self) -> float:
        return self.bits_per_char / self.baudrate

    @property
    def silence(self) -> float:
        """The 3.5-character gap that ends an RTU frame (fixed at 1.75 ms above 19200 baud)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time

    @staticmethod
    def frame_bytes(table: str, count: int) -> tuple[int, int]:
        """(request, response) RTU frame sizes for reading ``count`` registers or bits."""
        return 8, 5 + payload_bytes(table, count)

    def seconds(self, table: str, count: int) -> float:
        request, response = self.frame_bytes(table, count)
        return (request + response) * self.char_time + 2 * self.silence + self.turnaround


#: Ethernet (with preamble and gap), IPv4 and TCP (with timestamps) bytes around each segment
TCP_IP_OVERHEAD = 90


@dataclass(frozen=True)
class TcpCost:
    """Time of one read transaction over Modbus TCP (seconds): a round trip, not a bus.

    Every request waits for its answer: the network round trip plus the device's (or the
    gateway's) turnaround, whatever its size. Bytes cost little: ``bytes_per_second`` is a slow
    link's (10 Mbit/s), so that a fixed 1 ms round trip outweighs the most filler any request
    can carry (125 registers, 0.2 ms), and the minimum is the fewest requests, then the
    fewest bytes.
    """

    turnaround: float = DEFAULT_TURNAROUND
    round_trip: float = 0.001
    bytes_per_second: float = 1_250_000.0

    @staticmethod
    def frame_bytes(table: str, count: int) -> tuple[int, int]:
        """(request, response) sizes for reading ``count``: MBAP frames plus TCP/IP framing."""
        return 12 + TCP_IP_OVERHEAD, 9 + payload_bytes(table, count) + TCP_IP_OVERHEAD

    def seconds(self, table: str, count: int) -> float:
        request, response = self.frame_bytes(table, count)
        return self.round_trip + self.turnaround + (request + response) / self.bytes_per_second


LinkCost = RtuCost | TcpCost


@dataclass(frozen=True)
class ReadRequest:
    """One read: a table, a start and a count, and the values it carries."""

    table: str
    address: int
    count: int
    names: tuple[str, ...]

    @property
    def function_code(self) -> int:
        return READ_FUNCTION[self.table]

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True)
class ReadPlan:
    requests: tuple[ReadRequest, ...]

    def __len__(self) -> int:
        return len(self.requests)

    def cost(self, link: LinkCost) -> float:
        return sum(link.seconds(r.table, r.count) for r in self.requests)

    def registers_read(self) -> int:
        return sum(r.count for r in self.requests)


class PlanError(ValueError):
    """The values cannot be read under the device's limits (a value larger than a read)."""


@dataclass(frozen=True)
class _Unit:
    """Values that share registers (bit fields of one word) travel together."""

    start: int
    end: int
    names: tuple[str, ...]


def _units(values: Sequence[RegisterValue]) -> list[_Unit]:
    units: list[_Unit] = []
    for v in sorted(values, key=lambda v: (v.address, v.end)):
        if units and v.address < units[-1].end:
            last = units[-1]
            units[-1] = _Unit(last.start, max(last.end, v.end), (*last.names, v.name))
        else:
            units.append(_Unit(v.address, v.end, (v.name,)))
    return units


def _blocked(table: str, start: int, end: int, unreadable: Iterable[tuple[str, int, int]]) -> bool:
    return any(t == table and lo < end and start <= hi for t, lo, hi in unreadable)


def limit_for(table: str, batch_size: int) -> int:
    return MAX_BITS if table in BIT_TABLES else min(batch_size, MAX_REGISTERS)


def plan_table(
    table: str,
    values: Sequence[RegisterValue],
    *,
    batch_size: int = MAX_REGISTERS,
    unreadable: Sequence[tuple[str, int, int]] = (),
    link: LinkCost | None = None,
) -> list[ReadRequest]:
    """The exact minimum-cost requests for the values of one table (see the module doc)."""
    link = link or RtuCost()
    units = _units(values)
    limit = limit_for(table, batch_size)
    for u in units:
        if u.end - u.start > limit:
            raise PlanError(f"{', '.join(u.names)}: {u.end - u.start} registers exceed {limit}")
    n = len(units)
    best = [0.0] + [float("inf")] * n
    choice = [0] * (n + 1)
    for j in range(1, n + 1):
        end = units[j - 1].end
        for i in range(j, 0, -1):
            start = units[i - 1].start
            if end - start > limit or _blocked(table, start, end, unreadable):
                break
            total = best[i - 1] + link.seconds(table, end - start)
            if total < best[j] - 1e-15:
                best[j], choice[j] = total, i
        if best[j] == float("inf"):
            raise PlanError(f"{', '.join(units[j - 1].names)}: unreadable under the limits")
    requests: list[ReadRequest] = []
    j = n
    while j > 0:
        i = choice[j]
        run = units[i - 1 : j]
        names = tuple(name for u in run for name in u.names)
        requests.append(ReadRequest(table, run[0].start, run[-1].end - run[0].start, names))
        j = i - 1
    requests.reverse()
    return requests


def plan_reads(
    values: Sequence[RegisterValue],
    *,
    batch_size: int = MAX_REGISTERS,
    unreadable: Sequence[tuple[str, int, int]] = (),
    link: LinkCost | None = None,
) -> ReadPlan:
    """Plan a full scan of ``values`` over all tables, in a stable table order."""
    requests: list[ReadRequest] = []
    for table in ("coil", "discrete", "holding", "input"):
        selected = [v for v in values if v.table == table and v.readable]
        if selected:
            requests += plan_table(
                table, selected, batch_size=batch_size, unreadable=unreadable, link=link
            )
    return ReadPlan(tuple(requests))


def naive_plan(values: Sequence[RegisterValue]) -> ReadPlan:
    """One request per value: the baseline a plan is compared with."""
    return ReadPlan(
        tuple(
            ReadRequest(u_table, u.start, u.end - u.start, u.names)
            for u_table in ("coil", "discrete", "holding", "input")
            for u in _units([v for v in values if v.table == u_table and v.readable])
        )
    )


def lower_bound(values: Sequence[RegisterValue], link: LinkCost, batch_size: int) -> float:
    """A floor no plan can beat: every value's bytes once, packed into full-size requests."""
    total = 0.0
    for table in ("coil", "discrete", "holding", "input"):
        units = _units([v for v in values if v.table == table and v.readable])
        if not units:
            continue
        size = sum(u.end - u.start for u in units)
        limit = limit_for(table, batch_size)
        full, rest = divmod(size, limit)
        total += full * link.seconds(table, limit) + (link.seconds(table, rest) if rest else 0)
    return total

