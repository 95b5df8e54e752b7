"""The bus scheduler and the block memory, pure: a fake clock, a simulated bus, no I/O.

The simulated bus charges each scan its bus time and each unanswered request its timeout,
exactly as the transport reports them to the schedule; so these tests check the timing
policy over thousands of simulated seconds in milliseconds of real time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from protocols.read_plan import ReadRequest, RtuCost
from protocols.registers import load_map, parse_map
from transports.modbus_bus.blocks import READ, REFUSED, BlockMemory, walk
from transports.modbus_bus.schedule import BusSchedule, Timing


@dataclass
class Bus:
    """A fake bus: per device, seconds per scan; a dead device costs a timeout per scan."""

    timings: dict[str, Timing]
    cost: dict[str, float]
    timeout: float = 1.0
    dead: set[str] = field(default_factory=set)
    now: float = 0.0
    notices: list[str] = field(default_factory=list)
    changes: list[tuple[float, str, bool]] = field(default_factory=list)
    busy_total: float = 0.0

    def __post_init__(self) -> None:
        self.schedule = BusSchedule(self.timings, self.now)

    def run(self, until: float) -> None:
        s = self.schedule
        while self.now < until:
            slot = s.upcoming()
            self.now = max(self.now, slot.due)
            probe = s.begin(slot.name, self.now)
            busy = 0.0
            if slot.name in self.dead:  # the transport stops a scan at an unanswered start
                busy = self.timeout
                change = s.failed(slot.name)
                if change:
                    self.changes.append((self.now + busy, change.name, change.available))
            else:
                busy = self.cost[slot.name] if not probe else self.cost[slot.name] / 5
                change = s.answered(slot.name)
                if change:
                    self.changes.append((self.now, change.name, change.available))
            self.now += busy
            self.busy_total += busy
            s.end(slot.name, self.now, busy, probe=probe)
            notice = s.load_notice()
            if notice:
                self.notices.append(notice)

    def ratio(self, name: str) -> float:
        achieved = self.schedule[name].achieved_interval
        assert achieved is not None, name
        return achieved / self.timings[name].interval


def test_intervals_hold_when_the_bus_has_the_time() -> None:
    bus = Bus({"inverter": Timing(1.0), "meter1": Timing(2.0), "meter2": Timing(5.0)},
              {"inverter": 0.3, "meter1": 0.2, "meter2": 0.25})
    bus.run(2000)
    for name in bus.timings:
        assert abs(bus.ratio(name) - 1) < 0.005, name
        assert bus.schedule[name].late_max < 0.3 + 0.2 + 0.25 + 1e-9
    assert bus.notices == []
    assert abs((bus.schedule.demand() or 0) - 0.45) < 1e-9  # 0.3 + 0.1 + 0.05


def test_a_dead_device_is_quarantined_and_the_others_keep_their_timing() -> None:
    bus = Bus({"inverter": Timing(2.0), "meter1": Timing(1.0), "dead": Timing(1.0, 3, 60.0)},
              {"inverter": 0.3, "meter1": 0.1, "dead": 0.1}, dead={"dead"})
    bus.run(1200)
    assert bus.changes[0][1:] == ("dead", False)
    assert len(bus.changes) == 1
    assert bus.notices == []  # its timeouts are no measure of the bus time it needs
    slot = bus.schedule["dead"]
    # one probe per backoff step (1, 2, 4, ... 60 s): about 25 in 1200 s, not 1200 scans
    assert 15 <= slot.probes <= 30
    for name in ("inverter", "meter1"):
        assert abs(bus.ratio(name) - 1) < 0.01, name
    bus.dead.clear()
    bus.run(1200 + 61 + 30)
    assert bus.changes[-1][1:] == ("dead", True)
    assert bus.changes[-1][0] <= 1200 + 60 + 1
    assert bus.schedule["dead"].scans >= 25  # scanning at its interval again


def test_an_oversubscribed_bus_says_so_once_with_figures() -> None:
    bus = Bus({"a": Timing(1.0), "b": Timing(1.0), "slow": Timing(30.0)},
              {"a": 0.8, "b": 0.6, "slow": 0.3})
    bus.run(3000)
    assert len(bus.notices) == 1, bus.notices
    text = bus.notices[0]
    assert "need 1.41 s of bus time per second" in text
    assert "a: 0.80 s per scan every 1 s" in text and "slow: 0.30 s per scan every 30 s" in text
    # the two fast devices share what is left fairly; the slow one keeps its interval
    assert abs(bus.ratio("a") - bus.ratio("b")) < 0.05
    assert 1.3 < bus.ratio("a") < 1.5
    assert abs(bus.ratio("slow") - 1) < 0.05
    assert bus.busy_total / bus.now > 0.99


def test_overload_that_clears_is_reported_once_more() -> None:
    bus = Bus({"a": Timing(1.0), "b": Timing(1.0)}, {"a": 0.7, "b": 0.6})
    bus.run(100)
    bus.cost["b"] = 0.05
    bus.run(200)
    assert len(bus.notices) == 2
    assert "no longer oversubscribed" in bus.notices[1]


def test_ties_go_in_listed_order_and_first_scans_start_together() -> None:
    schedule = BusSchedule({"z": Timing(1.0), "a": Timing(1.0)}, 100.0)
    assert schedule.upcoming().name == "z"
    schedule.begin("z", 100.0)
    schedule.end("z", 100.2, 0.2)
    assert schedule.upcoming().name == "a"
    assert schedule["z"].due == 101.0  # phase kept: due + interval, not end + interval


def test_a_device_late_by_more_than_an_interval_gets_no_burst() -> None:
    schedule = BusSchedule({"m": Timing(1.0)}, 0.0)
    schedule.begin("m", 5.0)
    schedule.end("m", 5.1, 0.1)
    assert schedule["m"].due == 5.1


@given(st.lists(st.tuples(st.floats(0.5, 20.0), st.floats(0.001, 0.5)), min_size=1, max_size=6))
def test_any_bus_below_its_capacity_keeps_every_interval(
    devices: list[tuple[float, float]],
) -> None:
    """Below 80 % load, and when any device can wait for one scan of every other without
    missing its turn (scans are not interrupted), every mean interval holds: a start is late
    by at most the other scans' time (< 0.9 of the shortest interval), so over 100 of the
    longest intervals the mean is off by less than 1 %."""
    demand = sum(cost / interval for interval, cost in devices)
    room = 0.9 * min(interval for interval, _ in devices) / sum(cost for _, cost in devices)
    scale = min(1.0, 0.8 / demand, room)
    timings = {f"d{i}": Timing(interval) for i, (interval, _) in enumerate(devices)}
    bus = Bus(timings, {f"d{i}": cost * scale for i, (_, cost) in enumerate(devices)})
    bus.run(max(t.interval for t in timings.values()) * 100)
    for name in timings:
        assert abs(bus.ratio(name) - 1) < 0.01, (name, devices)
    assert bus.notices == []


# --------------------------------------------------------------------------- block memory


def test_split_gives_tight_halves_at_value_boundaries() -> None:
    regmap = load_map("eg4_v58")
    memory = BlockMemory(regmap, regmap.batch_size, RtuCost(turnaround=0.0))
    block = memory.plan.requests[10]  # input 40+31
    left, right = memory.split(block)
    assert left.address == 40 and set(left.names) | set(right.names) == set(block.names)
    assert left.end <= right.address and right.end == block.end
    single = ReadRequest("input", 44, 2, ("pv_energy_total",))
    assert memory.split(single) == []
    shared = ReadRequest("input", 5, 1, ("battery_soc", "battery_soh"))
    assert memory.split(shared) == []  # bit fields of one register travel together


def test_a_refused_value_is_left_out_and_never_read_through() -> None:
    regmap = load_map("eg4_v58")
    memory = BlockMemory(regmap, regmap.batch_size, RtuCost(turnaround=0.0))
    before = len(memory.plan)
    learned = memory.value_refused(ReadRequest("input", 44, 2, ("pv_energy_total",)))
    assert str(learned) == "input 44-45 (pv_energy_total)"
    names = {n for r in memory.plan.requests for n in r.names}
    assert "pv_energy_total" not in names and "pv1_energy_total" in names
    assert not any(r.table == "input" and r.address <= 45 and r.end > 44
                   for r in memory.plan.requests)
    assert len(memory.plan) == before + 1  # the block around it became two


def test_a_refused_gap_is_never_read_through() -> None:
    regmap = load_map("sdm630")
    memory = BlockMemory(regmap, regmap.batch_size, RtuCost(turnaround=0.0))
    block = next(r for r in memory.plan.requests if r.table == "input" and r.address == 70)
    halves = [ReadRequest("input", 70, 10, ()), ReadRequest("input", 84, 4, ())]
    learned = memory.gap_refused(halves)
    assert learned is not None and str(learned) == "input 80-83 (gap)"
    assert not any(r.table == "input" and r.address <= 83 and r.end > 80
                   for r in memory.plan.requests)
    names = {n for r in memory.plan.requests for n in r.names}
    assert set(block.names) <= names  # nothing given up
    assert memory.gap_refused([ReadRequest("input", 0, 4, ()),
                               ReadRequest("input", 4, 2, ())]) is None


def scan(memory: BlockMemory, refused: set[tuple[str, int]]) -> tuple[set[str], int]:
    """One scan against a device that refuses any read touching ``refused`` registers:
    the names read and the number of refusals met (the transport's loop, minus the I/O)."""
    read: set[str] = set()
    refusals = 0
    for request in memory.plan.requests:
        steps = walk(memory, request, [])
        current = next(steps)
        while True:
            if any((current.table, a) in refused for a in range(current.address, current.end)):
                outcome = REFUSED
                refusals += 1
            else:
                outcome = READ
                read.update(current.names)
            try:
                current = steps.send(outcome)
            except StopIteration:
                break
    return read, refusals


@given(st.data())
def test_every_scan_reads_all_that_can_be_read_and_refusals_die_out(
    data: st.DataObject,
) -> None:
    """Whatever a device refuses (values or the filler between them), every scan, the first
    included, reads every value it can. Each scan that meets a refusal learns a refused
    register not known before (a new plan may bridge a gap never read until then), so the
    refusals stop after at most one scan per refused register."""
    addresses = data.draw(st.lists(st.integers(0, 300), min_size=1, max_size=40, unique=True))
    widths = {a: data.draw(st.sampled_from(["u16", "u32"])) for a in addresses}
    rows, used = [], set()
    for a in sorted(addresses):
        span = {a, a + 1} if widths[a] == "u32" else {a}
        if span & used:
            continue
        used |= span
        rows.append(f"v{a},{data.draw(st.sampled_from(['input', 'holding']))},{a},{widths[a]}")
    regmap = parse_map("name,table,address,type\n" + "\n".join(rows) + "\n", "random.csv")
    batch = data.draw(st.integers(4, 125))
    refused = {(t, a) for t, a in data.draw(st.sets(st.tuples(
        st.sampled_from(["input", "holding"]), st.integers(0, 302)), max_size=12))}
    memory = BlockMemory(regmap, batch, RtuCost(turnaround=0.0))
    readable = {v.name for v in regmap.values
                if not any((v.table, a) in refused for a in range(v.address, v.end))}
    for _ in range(len(refused) + 1):
        names, refusals = scan(memory, refused)
        assert names == readable
        if refusals == 0:
            break
    else:
        raise AssertionError(f"still refused after {len(refused) + 1} scans")
    assert memory.dropped == {v.name for v in regmap.values} - readable
    for x in memory.learned:  # nothing is given up without cause
        assert any((x.table, a) in refused for a in range(x.first, x.last + 1)), x
