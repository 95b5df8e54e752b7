"""Register maps and read planning, pure: loading errors, the codec, the planner's optimality."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.modbus_plan import brute_force_minimum, independent_minimum, useful_registers
from protocols.read_plan import (
    LinkCost,
    PlanError,
    ReadRequest,
    RtuCost,
    TcpCost,
    lower_bound,
    naive_plan,
    plan_reads,
    plan_table,
)
from protocols.register_codec import decode, encode_value, to_raw
from protocols.registers import (
    ORDERS,
    MapError,
    RegisterValue,
    WriteRejected,
    available_maps,
    load_map,
    parse_map,
)
from transports.modbus.device import ModbusDevice

CASES = Path(__file__).parent / "cases" / "modbus"
HEADER = "name,table,address,type,count,order,bits,scale,offset,unit,access,min,max,options\n"


def test_shipped_maps_load_and_plan() -> None:
    assert {"eg4_v58", "sdm630"} <= set(available_maps())
    for name in available_maps():
        regmap = load_map(name)
        assert len(regmap.values) > 30, name
        plan = plan_reads(regmap.values, batch_size=regmap.batch_size,
                          unreadable=regmap.unreadable)
        assert len(plan) < len(naive_plan(regmap.values)) / 3


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("a,holding,1,u16\nb,holding,1,u16\n", 3, "overlaps a (line 2)"),
        ("a,holding,10,u32\nb,holding,11,u16\n", 3, "overlaps a"),
        ("a,holding,65535,u32\n", 2, "runs past register 65535"),
        ("a,holding,1,u24\n", 2, "unknown type 'u24'"),
        ("a,holding,1,u32,3\n", 2, "spans 2 register(s), not 3"),
        ("a,input,1,u16,,,,,,,rw\n", 2, "cannot be written"),
        ("a,holding,1,u16,,XYZW\n", 2, "unknown order"),
        ("a,coil,1,u16\n", 2, "type bool goes with coil"),
        ("a,holding,1,enum\n", 2, "needs options"),
        ("a,holding,1,u16\na,holding,2,u16\n", 3, "already used on line 2"),
        ("a,holding,1,bits,,,0-7\nb,holding,1,bits,,,7-9\n", 3, "overlaps a"),
        ("a,holding,x1,u16\n", 2, "not an integer"),
        ("a,holding,1,string\n", 2, "needs its count"),
    ],
)
def test_map_errors_name_file_and_line(body: str, line: int, words: str) -> None:
    with pytest.raises(MapError) as info:
        parse_map(HEADER + body, "bad.csv")
    assert str(info.value).startswith(f"bad.csv:{line}: ")
    assert words in str(info.value)


def test_unknown_column_and_unreadable_value() -> None:
    with pytest.raises(MapError, match=r"bad.csv:1: unknown column"):
        parse_map("name,table,address,type,colour\n", "bad.csv")
    text = "#! unreadable = holding:5-9\n" + HEADER + "a,holding,8,u16\n"
    with pytest.raises(MapError, match=r"bad.csv:3: a: lies in unreadable range 5-9"):
        parse_map(text, "bad.csv")


def test_disjoint_bit_fields_share_a_register() -> None:
    regmap = parse_map(HEADER + "a,holding,1,bits,,,0-7\nb,holding,1,bits,,,8-15\n")
    assert [v.name for v in regmap.values] == ["a", "b"]


def test_all_types_case_round_trips() -> None:
    regmap = load_map(str(CASES / "all_types" / "map.csv"))
    expected = json.loads((CASES / "all_types" / "expected.json").read_text())
    for spec in regmap.values:
        assert decode(spec, encode_value(spec, expected[spec.name])) == expected[spec.name]


INT_TYPES = {"u16": (0, 2**16 - 1), "s16": (-(2**15), 2**15 - 1), "u32": (0, 2**32 - 1),
             "s32": (-(2**31), 2**31 - 1), "u64": (0, 2**64 - 1), "s64": (-(2**63), 2**63 - 1)}


@given(st.sampled_from(sorted(INT_TYPES)), st.sampled_from(ORDERS), st.data())
def test_integer_codec_round_trip(dtype: str, order: str, data: st.DataObject) -> None:
    low, high = INT_TYPES[dtype]
    value = data.draw(st.integers(low, high))
    width = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "u64": 4, "s64": 4}[dtype]
    spec = RegisterValue("v", "holding", 0, dtype, width, order)
    words = encode_value(spec, value)
    assert len(words) == width and all(0 <= w <= 0xFFFF for w in words)
    assert decode(spec, words) == value


@given(st.sampled_from(ORDERS), st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float_codec_round_trip(order: str, value: float) -> None:
    spec = RegisterValue("v", "input", 0, "float32", 2, order)
    assert decode(spec, encode_value(spec, value)) == float(f"{value:.7g}")


def test_word_orders_put_words_where_documented() -> None:
    value = 0x11223344
    for order, words in {"ABCD": [0x1122, 0x3344], "CDAB": [0x3344, 0x1122],
                         "BADC": [0x2211, 0x4433], "DCBA": [0x4433, 0x2211]}.items():
        assert encode_value(RegisterValue("v", "holding", 0, "u32", 2, order), value) == words


def test_write_checks() -> None:
    regmap = load_map("eg4_v58")
    device = ModbusDevice(1, regmap)
    with pytest.raises(WriteRejected, match="read-only"):
        device.check_write({"pv1_power": 3})
    with pytest.raises(WriteRejected, match="above the maximum 100"):
        device.check_write({"charge_power_percent": 101})
    with pytest.raises(WriteRejected, match="not one of 0=Battery first"):
        device.check_write({"output_priority": "Grid first"})
    with pytest.raises(WriteRejected, match="no such value"):
        device.check_write({"warp_drive": 1})
    with pytest.raises(WriteRejected, match="needs 'values'"):
        device.check_write(["charge_power_percent"])
    with pytest.raises(WriteRejected, match="multiple of the step"):
        to_raw(regmap["start_pv_voltage"], 123.45)
    ops = device.check_write({"output_priority": "PV first", "start_pv_voltage": "123.4"})
    assert [op.raw for op in ops] == [1, 1234]
    assert device.check_write({"output_priority": 2})[0].raw == 2


# --------------------------------------------------------------------------- the planner


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[RegisterValue], list[tuple[str, int, int]], int]:
    """Non-overlapping values on one table, some unreadable gaps, a batch size."""
    n = draw(st.integers(1, 9))
    address, values = 0, []
    for i in range(n):
        address += draw(st.integers(0, 30))
        width = draw(st.sampled_from([1, 1, 2, 2, 4, 6]))
        values.append(RegisterValue(f"v{i}", "holding", address, "string", width))
        address += width
    unreadable = []
    for a, b in itertools.pairwise(values):
        if b.address - a.end >= 1 and draw(st.booleans()) and draw(st.booleans()):
            lo = draw(st.integers(a.end, b.address - 1))
            unreadable.append(("holding", lo, draw(st.integers(lo, b.address - 1))))
    batch = draw(st.integers(6, 60))
    return values, unreadable, batch


def _brute_force(values, unreadable, batch, link) -> float:
    """Every way to cut the ordered values into runs: independent of the planner's DP."""
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(values) - 1):
        runs, run = [], [values[0]]
        for cut, v in zip(cuts, values[1:], strict=True):
            if cut:
                runs.append(run)
                run = [v]
            else:
                run.append(v)
        runs.append(run)
        total = 0.0
        for r in runs:
            start, end = r[0].address, r[-1].end
            if end - start > batch or any(lo < end and start <= hi for _, lo, hi in unreadable):
                total = float("inf")
                break
            total += link.seconds("holding", end - start)
        best = min(best, total)
    return best


def _check_valid(requests: list[ReadRequest], values, unreadable, batch) -> None:
    carried = [n for r in requests for n in r.names]
    assert sorted(carried) == sorted(v.name for v in values)
    by_name = {v.name: v for v in values}
    for r in requests:
        assert 1 <= r.count <= batch
        assert not any(lo < r.end and r.address <= hi for _, lo, hi in unreadable)
        for name in r.names:
            assert r.address <= by_name[name].address and by_name[name].end <= r.end


def links() -> st.SearchStrategy[LinkCost]:
    """RTU lines and TCP links, turnarounds from none to slow."""
    turnaround = st.sampled_from([0.0, 0.005, 0.020, 0.050]) | st.floats(0, 0.2)
    return st.one_of(
        st.builds(RtuCost, st.sampled_from([1200, 9600, 19200, 38400, 115200]),
                  st.sampled_from([10, 11]), turnaround),
        st.builds(TcpCost, turnaround, st.sampled_from([0.0002, 0.001, 0.01])))


@given(tables(), links())
def test_planner_is_the_minimum(case, link: LinkCost) -> None:
    """Against every cut of the values into runs, and the address formulation of the bench."""
    values, unreadable, batch = case
    try:
        requests = plan_table("holding", values, batch_size=batch, unreadable=unreadable,
                              link=link)
    except PlanError:
        assert any(v.count > batch for v in values) or _brute_force(
            values, unreadable, batch, link) == float("inf")
        assert independent_minimum(values, link.seconds, batch_size=batch,
                                   unreadable=unreadable) == float("inf")
        return
    _check_valid(requests, values, unreadable, batch)
    cost = sum(link.seconds("holding", r.count) for r in requests)
    assert cost == pytest.approx(_brute_force(values, unreadable, batch, link), rel=1e-9)
    assert cost == pytest.approx(independent_minimum(values, link.seconds, batch_size=batch,
                                                     unreadable=unreadable), rel=1e-9)
    assert cost >= lower_bound(values, link, batch) - 1e-12


@st.composite
def small_maps(draw: st.DrawFn) -> tuple[list[RegisterValue], list[tuple[str, int, int]], int]:
    """Values within 9 addresses of one table (bit fields sharing a register, coils too)."""
    table = draw(st.sampled_from(["holding", "input", "coil"]))
    values: list[RegisterValue] = []
    address = draw(st.integers(0, 2))
    while address < 8 and len(values) < 7:
        if table == "coil":
            values.append(RegisterValue(f"v{len(values)}", table, address, "bool", 1))
            address += 1
        elif draw(st.booleans()):
            width = draw(st.integers(1, 3))
            values.append(RegisterValue(f"v{len(values)}", table, address, "u16", width))
            address += width
        else:  # two bit fields of one register: one unit, read together
            for start in (0, 8):
                values.append(RegisterValue(f"v{len(values)}", table, address, "bits", 1,
                                            bit_start=start, bit_width=8))
            address += 1
        address += draw(st.integers(0, 3))
    values = [v for v in values if v.end <= 9] or [RegisterValue("v", table, 0, "u16", 1)]
    unreadable = []
    if draw(st.booleans()):
        first = draw(st.integers(0, 9))
        unreadable.append((table, first, first + draw(st.integers(0, 1))))
    return values, unreadable, draw(st.integers(1, 8))


@given(small_maps(), links())
def test_planner_equals_brute_force_on_small_maps(case, link: LinkCost) -> None:
    """Every plan there is (each register skipped, read on, or read in a new request)."""
    values, unreadable, batch = case
    if values[0].table == "coil":
        batch = 125  # bits: the 2000-bit limit holds whatever the batch size
    brute = brute_force_minimum(values, link.seconds, batch_size=batch, unreadable=unreadable)
    try:
        plan = plan_reads(values, batch_size=batch, unreadable=unreadable, link=link)
    except PlanError:
        assert brute == float("inf")
        return
    assert plan.cost(link) == pytest.approx(brute, rel=1e-9)
    assert sorted(n for r in plan.requests for n in r.names) == sorted(v.name for v in values)


def _fewest(values, batch, unreadable) -> float:
    return independent_minimum(values, lambda _t, _n: 1.0, batch_size=batch,
                               unreadable=unreadable)


@given(tables(), st.floats(0, 0.2))
def test_tcp_plans_the_fewest_requests(case, turnaround: float) -> None:
    """Over TCP each request is a round trip: fewer requests always win."""
    values, unreadable, batch = case
    link = TcpCost(turnaround=turnaround)
    try:
        plan = plan_reads(values, batch_size=batch, unreadable=unreadable, link=link)
    except PlanError:
        return
    assert len(plan) == _fewest(values, batch, unreadable)


@pytest.mark.parametrize(("name", "fewest"), [("eg4_v58", 10), ("sdm630", 6)])
def test_shipped_maps_over_tcp_plan_the_fewest_requests(name: str, fewest: int) -> None:
    regmap = load_map(name)
    values = regmap.readable_values()
    plan = plan_reads(values, batch_size=regmap.batch_size, unreadable=regmap.unreadable,
                      link=TcpCost())
    assert len(plan) == _fewest(values, regmap.batch_size, regmap.unreadable) == fewest
    # on a 9600-baud line at no turnaround, skipping gaps pays: more, shorter requests
    rtu = plan_reads(values, batch_size=regmap.batch_size, unreadable=regmap.unreadable,
                     link=RtuCost(9600, turnaround=0.0))
    assert len(rtu) > fewest and rtu.registers_read() < plan.registers_read()


def test_a_register_of_bit_fields_counts_once() -> None:
    assert useful_registers(load_map("eg4_v58").readable_values()) == 125
    fields = [RegisterValue(f"b{i}", "input", 5, "bits", 1, bit_start=4 * i, bit_width=4)
              for i in range(4)]
    assert useful_registers(fields) == 1


def test_never_splits_a_value() -> None:
    values = [RegisterValue("big", "holding", 0, "string", 50)]
    with pytest.raises(PlanError, match="big: 50 registers exceed 40"):
        plan_table("holding", values, batch_size=40)
    values = [RegisterValue(n, "holding", 2 * i, "u32", 2) for i, n in enumerate("abc")]
    requests = plan_table("holding", values, batch_size=5)
    assert [(r.address, r.count) for r in requests] in ([(0, 4), (4, 2)], [(0, 2), (2, 4)])


def test_coils_pack_eight_to_a_byte() -> None:
    values = [RegisterValue(f"c{i}", "coil", i * 40, "bool", 1) for i in range(10)]
    plan = plan_reads(values)
    assert len(plan) == 1 and plan.requests[0].count == 361
