"""The live picture's pure parts: the bridge tap, the key values, the group summary."""

from __future__ import annotations

import time

from gateway import channel
from gateway.live import (
    GroupPoller,
    GroupSource,
    LatestReadings,
    LiveState,
    key_values,
    summarize_group,
)
from gateway.message import Envelope
from gateway.metrics import render


def _frame(*envelopes: Envelope) -> bytes:
    return channel.envelope_frame("out", [channel.row(e) for e in envelopes])


def test_tap_keeps_each_devices_latest_reading_and_availability() -> None:
    latest = LatestReadings(max_rate=1e9)
    bus = {"device": "grid_meter", "device_name": "grid_meter"}
    latest.tap("bus", _frame(Envelope("bus", "reading", {"power_total": 1.0}, None, bus, 100.0),
                             Envelope("bus", "reading", {"power_total": 2.0}, None,
                                      {"device": "heatpump"}, 101.0)))
    latest.tap("bus", _frame(Envelope("bus", "reading", {"power_total": 3.0}, None, bus, 102.0)))
    latest.tap("bus", _frame(Envelope("bus", "status", {"available": False,
                                                         "reason": "no answer"}, None, bus)))
    latest.tap("inv", _frame(Envelope("inv", "event", {"event": "describe"}, None, {}, 103.0)))
    rows = {(d["transport"], d["device"]): d for d in latest.snapshot(now=110.0)}
    assert set(rows) == {("bus", "grid_meter"), ("bus", "heatpump")}
    grid = rows[("bus", "grid_meter")]
    assert grid["values"] == {"power_total": 3.0} and grid["age"] == 8.0
    assert grid["available"] is False and grid["reason"] == "no answer"


def test_tap_survives_a_garbled_frame_and_limits_its_rate() -> None:
    latest = LatestReadings(max_rate=1.0)
    latest.tap("x", b"Eout\nnot a pickle")
    assert latest.snapshot() == []
    latest = LatestReadings(max_rate=0.001, burst=1)  # one decode, then none for a long while
    for n in range(5):
        latest.tap("x", _frame(Envelope("x", "reading", {"n": n}, None, {}, 100.0)))
    assert [d["values"] for d in latest.snapshot(now=100.0)] == [{"n": 0}]


def test_tap_lets_a_burst_through() -> None:
    """A describe event, a status and the first reading arrive together: none is skipped."""
    latest = LatestReadings()
    latest.tap("sys", _frame(Envelope("sys", "event", {"event": "describe"}, None, {}, 1.0)))
    latest.tap("sys", _frame(Envelope("sys", "status", {"available": True}, None, {}, 1.0)))
    latest.tap("sys", _frame(Envelope("sys", "reading", {"load": 1.0}, None, {}, 1.0)))
    assert [d["values"] for d in latest.snapshot(now=2.0)] == [{"load": 1.0}]


def test_key_values_prefer_telling_names() -> None:
    chosen = dict(key_values({"charge_power_percent": 50, "max_grid_input_power": 3,
                              "inverter_state": "on-grid", "pv_total_power": 1200,
                              "battery_soc": 80}))
    assert list(chosen) == ["pv_total_power", "battery_soc", "inverter_state",
                            "max_grid_input_power"]


def test_group_summary_adds_allocations_and_marks_this_node() -> None:
    source = GroupSource("ls", "http://127.0.0.1:8190/loadsharing/status", 32.0,
                         "127.0.0.1:8190")
    status = {"failsafe_active": False, "limit": 16, "mode": "agreed",
              "allocations": [{"id": "127.0.0.1:8081", "target_current": 10, "reason": "ev_limit"},
                              {"id": "127.0.0.1:8190", "target_current": 22,
                               "pgw_reason": "equal_share"}],
              "openevse_members": [{"host": "127.0.0.1:8081", "state": "online"}]}
    group = summarize_group(source, status)
    assert group["allocated"] == 32.0 and group["breaker"] == 32.0
    states = {m["id"]: (m["state"], m["reason"]) for m in group["members"]}
    assert states == {"127.0.0.1:8081": ("online", "ev_limit"),
                      "127.0.0.1:8190": ("this node", "equal_share")}
    down = summarize_group(source, None, "connection refused")
    assert down["reachable"] is False and down["error"] == "connection refused"


def test_drawn_current_adds_the_led_openevse_members() -> None:
    source = GroupSource("ls", "http://127.0.0.1:8190/loadsharing/status", 32.0,
                         "127.0.0.1:8190")
    assert source.node_status_url == "http://127.0.0.1:8190/status"
    status = {"allocations": [], "openevse_members": [{"host": "a", "amp": 15500},
                                                      {"host": "b", "amp": None}]}
    group = summarize_group(source, status, node={"loadsharing_group_current_total": 16.0})
    assert group["drawn"] == 31.5
    assert summarize_group(source, status)["drawn"] is None


def test_metrics_give_the_age_of_an_outputs_oldest_waiting_envelope() -> None:
    def row(name: str, rows: int, oldest_at: float) -> dict[str, object]:
        return {"name": name, "kind": "influxdb_out", "state": "running", "restarts": 0,
                "envelopes_in": 0, "envelopes_out": 0, "dropped": 0, "errors": 0,
                "last_error": "", "pid": 1, "uptime": 1.0,
                "counters": {"buffer_rows": rows, "buffer_oldest_at": oldest_at}}

    live = LiveState(lambda: [row("down", 30, time.time() - 120.0), row("up", 0, 0.0)],
                     LatestReadings(), GroupPoller([]))
    text = render(live).decode()
    ages = {line.split('transport="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("pgw_buffer_oldest_age_seconds{")}
    assert 119 <= ages["down"] < 180
    assert ages["up"] == 0.0
