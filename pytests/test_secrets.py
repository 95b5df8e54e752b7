"""Secrets (MQTT password, InfluxDB token and password) never reach the logs or --print-config,
even at DEBUG while the sinks are failing (the moment a careless log line would print them)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pytests.gateway_proc import GatewayProcess
from pytests.helpers import free_port, wait_for

MQTT_PASSWORD = "mqtt-pw-7f3a91"
INFLUX_TOKEN = "influx-token-c0ffee42"
INFLUX_PASSWORD = "influx-pw-5e5e5e"

SECTIONS = f"""
[sys]
transport = system
read_interval = 0.2
bridge = mqtt, influx_v2, influx_v1

[mqtt]
transport = mqtt
host = 127.0.0.1
port = {{closed}}
username = gateway
password = {MQTT_PASSWORD}

[influx_v2]
transport = influxdb_out
url = http://127.0.0.1:{{closed}}
org = home
bucket = solar
token = {INFLUX_TOKEN}

[influx_v1]
transport = influxdb_out
host = 127.0.0.1
port = {{closed}}
database = solar
username = writer
password = {INFLUX_PASSWORD}
"""


def test_secrets_stay_out_of_logs_and_printed_config(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens: every sink fails and logs why
    sections = SECTIONS.format(closed=closed)
    gw = GatewayProcess(tmp_path, sections, general="log_level = DEBUG\n")
    try:
        gw.wait_all_running()
        wait_for(lambda: "failed" in gw.log_text(), timeout=30)
        time.sleep(1.0)
    finally:
        gw.stop()
    log = gw.log_text()
    for secret in (MQTT_PASSWORD, INFLUX_TOKEN, INFLUX_PASSWORD):
        assert secret not in log
    printed = subprocess.run(
        [sys.executable, str(Path(__file__).parent.parent / "protocol_gateway.py"), "run",
         str(gw.config), "--print-config"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "password = ***" in printed.stdout and "token = ***" in printed.stdout
    for secret in (MQTT_PASSWORD, INFLUX_TOKEN, INFLUX_PASSWORD):
        assert secret not in printed.stdout + printed.stderr
