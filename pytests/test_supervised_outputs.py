"""Outputs under the real supervisor: a sink down for a while and the output process killed -9
mid-run, and still every reading arrives (counted against a jsonl_out fed the same readings)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from pytests.gateway_proc import GatewayProcess, read_jsonl
from pytests.helpers import wait_for
from pytests.servers import InfluxDB1

SECTIONS = """
[in_a]
transport = system
read_interval = 0.05
bridge = influx, jsonl

[in_b]
transport = system
read_interval = 0.07
bridge = influx, jsonl

[influx]
transport = influxdb_out
host = 127.0.0.1
port = {port}
database = solar
measurement = host
precision = ns
flush_interval = 0.2
retry_initial = 0.2
retry_max = 1

[jsonl]
transport = jsonl_out
path = {jsonl}
"""


def stamps_in_jsonl(path: Path) -> set[tuple[str, int]]:
    return {(r["source_transport"], int(r["timestamp"] * 1000))
            for r in read_jsonl(path) if r["kind"] == "reading"}


def stamps_in_influx(influx: InfluxDB1) -> set[tuple[str, int]]:
    try:
        rows = influx.points("solar", "host")
    except (OSError, KeyError, json.JSONDecodeError):
        return set()
    return {(r["transport"], int(r["time"])) for r in rows}


def test_sink_outage_and_killed_output_lose_nothing(tmp_path: Path) -> None:
    with InfluxDB1(tmp_path / "influx", auth=False) as influx:
        influx.create_database("solar")
        jsonl = tmp_path / "readings.jsonl"
        gw = GatewayProcess(tmp_path, SECTIONS.format(port=influx.port, jsonl=jsonl))
        try:
            pid = gw.wait_all_running()["influx"]["pid"]
            wait_for(lambda: len(stamps_in_influx(influx)) >= 20)
            import os

            os.kill(pid, signal.SIGKILL)  # the output dies mid-run
            wait_for(lambda: (t := gw.try_transports()) and t["influx"]["pid"] not in (None, pid))
            influx.stop()  # and then the sink goes away for a while
            time.sleep(2.0)
            influx.start()
            before = len(stamps_in_jsonl(jsonl))
            wait_for(lambda: len(stamps_in_jsonl(jsonl)) > before + 20)
        finally:
            assert gw.stop() == 0
        sent = stamps_in_jsonl(jsonl)

        def missing() -> list[tuple[str, int]]:
            got = stamps_in_influx(influx)
            # float seconds -> ms may floor one way in JSON and the other in InfluxDB
            return sorted(s for s in sent if not {s, (s[0], s[1] - 1), (s[0], s[1] + 1)} & got)

        try:
            wait_for(lambda: not missing(), timeout=30)
        except AssertionError:
            got = stamps_in_influx(influx)
            lost = missing()
            raise AssertionError(f"{len(lost)} of {len(sent)} readings never reached InfluxDB"
                                 f", e.g. {lost[:5]}; extra {sorted(got - sent)[:5]}; "
                                 f"log: {gw.log_text()[-3000:]}") from None
        assert {s for s, _ in sent} == {"in_a", "in_b"}
