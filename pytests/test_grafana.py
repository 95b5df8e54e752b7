"""The Grafana dashboard's queries, run against a real InfluxDB 1.x that a real gateway fills.

Every panel query and the template variable's query is sent as Grafana would send it (its
macros expanded: ``$timeFilter``, ``$__interval``, the variables), and must return data: a
field renamed in a transport, or a typo in the dashboard, fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytests.gateway_proc import ROOT, GatewayProcess
from pytests.helpers import free_port, wait_for
from pytests.servers import InfluxDB1

DASHBOARD = ROOT / "docs" / "grafana" / "protocol-gateway-influxdb.json"


def expand(query: str) -> str:
    """Grafana's macros and this dashboard's variables at their defaults ("All")."""
    return (query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "5s")
            .replace("$measurement", ".*").replace("$transport", ".*"))


def queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = [(f"panel {p['title']!r}", t["query"]) for p in board["panels"]
             for t in p["targets"]]
    found += [(f"variable {v['name']!r}", v["query"]) for v in board["templating"]["list"]
              if v["type"] == "query"]
    return found


@pytest.fixture()
def simulators(tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {"rapi": free_port(), "meter": free_port(), "inverter": free_port()}
    argv = [
        ["simulators.rapi_device", "--mode", "tcp", "--tcp-port", str(ports["rapi"]),
         "--http-port", "0", "--plugged", "--soc", "0.4"],
        ["simulators.modbus_device", "--map", "sdm630", "--tcp-port", str(ports["meter"])],
        ["simulators.modbus_device", "--map", "eg4_v58", "--tcp-port", str(ports["inverter"])],
    ]
    procs = [subprocess.Popen([sys.executable, "-m", *a], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for a in argv]
    try:
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def _series(influx: InfluxDB1, query: str) -> list[dict[str, Any]]:
    result = influx.query(expand(query), db="solar")["results"][0]
    assert "error" not in result, f"{query}: {result['error']}"
    return list(result.get("series") or [])


def test_every_dashboard_query_returns_data(tmp_path: Path, simulators: dict[str, int]) -> None:
    with InfluxDB1(tmp_path / "influxdb", auth=False) as influx:
        influx.create_database("solar")
        out = (f"[influx]\ntransport = influxdb_out\nport = {influx.port}\ndatabase = solar\n"
               "flush_interval = 0.2\n")
        gw = GatewayProcess(tmp_path, f"""
[charger]
transport = rapi_serial
port = socket://127.0.0.1:{simulators['rapi']}
read_interval = 1
bridge = influx, loadsharing

[loadsharing]
transport = loadsharing
loadsharing_enabled = true
charger = charger
loadsharing_group_max_current = 32
bridge = influx

[meter]
transport = modbus_tcp
protocol_version = sdm630
host = 127.0.0.1
port = {simulators['meter']}
read_interval = 1
bridge = influx

# its serial_number is text, the meter's a number: one measurement cannot hold both
[inverter]
transport = modbus_tcp
protocol_version = eg4_v58
host = 127.0.0.1
port = {simulators['inverter']}
read_interval = 1
bridge = influx_inverter

[influx_inverter]
transport = influxdb_out
port = {influx.port}
database = solar
measurement = inverters
flush_interval = 0.2

[host]
transport = system
read_interval = 1
bridge = influx

{out}""")
        try:
            todo = queries()
            assert len(todo) >= 8

            def all_answer() -> bool:
                return all(_series(influx, q) for _, q in todo)

            try:
                wait_for(all_answer, timeout=90, interval=1)
            except AssertionError:
                empty = [name for name, q in todo if not _series(influx, q)]
                raise AssertionError(f"no data for {empty}\n{gw.log_text()[-2000:]}") from None
            transports = {v[1] for name, q in todo if name == "variable 'transport'"
                          for s in _series(influx, q) for v in s["values"]}
            assert {"charger", "loadsharing", "meter", "inverter", "host"} <= transports
        finally:
            assert gw.stop() == 0
