"""Bring-up commands: --version, read, ports, and what status shows (counters, recovery, hints)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gateway
from gateway.cli import last_error_text
from pytests.gateway_proc import ROOT, GatewayProcess
from pytests.helpers import free_port, wait_for


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"protocol-gateway {gateway.__version__}"


def test_last_error_clears_on_recovery() -> None:
    t = {"last_error": "not connected to the MQTT broker", "last_error_at": 1000.0}
    assert last_error_text(t).startswith("not connected to the MQTT broker (")
    recovered = last_error_text(dict(t, recovered_at=1005.0))
    assert recovered.startswith("recovered ") and "(was: not connected" in recovered
    # a new error after the recovery is an error again
    again = last_error_text(dict(t, recovered_at=1005.0, last_error_at=1010.0))
    assert again.startswith("not connected")
    assert last_error_text({"last_error": ""}) == ""


def test_status_shows_counters_and_the_kill(tmp_path: Path) -> None:
    import os
    import signal

    gw = GatewayProcess(tmp_path, f"""
[house]
transport = system
read_interval = 0.5
bridge = out

[out]
transport = jsonl_out
path = {tmp_path}/out.jsonl
""")
    try:
        table = gw.wait_all_running(timeout=60)
        os.kill(table["house"]["pid"], signal.SIGKILL)
        wait_for(lambda: (t := gw.try_transports()) and t["house"]["restarts"] == 1
                 and t["house"]["state"] == "running", timeout=60, interval=0.3)
        done = _cli("status", str(gw.config))
        assert done.returncode == 0, done.stderr
        house = next(line for line in done.stdout.splitlines() if line.startswith("house "))
        assert "killed by signal SIGKILL" in house
        assert "counters" in done.stdout and "  out: errors 0" in done.stdout
    finally:
        assert gw.stop() == 0


def test_last_error_of_a_broker_outage_reads_recovered_once_it_is_back(tmp_path: Path) -> None:
    """End to end: the broker is not there at start (LAST ERROR names it), then comes up;
    status then says "recovered" (the runner's counters, not a stale error)."""
    from pytests.servers import Mosquitto

    port = free_port()
    gw = GatewayProcess(tmp_path, f"""
[house]
transport = system
read_interval = 0.5
bridge = mqtt

[mqtt]
transport = mqtt
host = 127.0.0.1
port = {port}
reconnect_min = 0.5
reconnect_max = 1
""")
    try:
        gw.wait_all_running(timeout=60)
        wait_for(lambda: "MQTT broker" in gw.transports()["mqtt"]["last_error"], timeout=60,
                 interval=0.3)
        assert not gw.transports()["mqtt"]["recovered_at"]
        with Mosquitto(tmp_path / "broker", port=port):
            wait_for(lambda: (t := gw.transports()["mqtt"])["recovered_at"]
                     >= t["last_error_at"] > 0, timeout=60, interval=0.3)
            done = _cli("status", str(gw.config))
            assert done.returncode == 0, done.stderr
            line = next(row for row in done.stdout.splitlines() if row.startswith("mqtt "))
            assert "recovered" in line, done.stdout
    finally:
        assert gw.stop() == 0


def test_status_without_a_gateway_hints_at_instances(tmp_path: Path) -> None:
    config = tmp_path / "c.ini"
    config.write_text(f"[general]\nhttp_port = {free_port()}\n[s]\ntransport = system\n")
    done = _cli("status", str(config))
    assert done.returncode == 1
    assert "Errno" not in done.stderr and "no gateway answering" in done.stderr
    assert "--instance N" in done.stderr


def test_read_prints_a_devices_values_once(tmp_path: Path) -> None:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "simulators.modbus_device", "--map", "sdm630",
                            "--tcp-port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    config = tmp_path / "c.ini"
    config.write_text(f"""[general]\nstate_dir = {tmp_path}/state\n
[meter]\ntransport = modbus_tcp\nprotocol_version = sdm630\nhost = 127.0.0.1\nport = {port}
address = 1\nbridge = out\n
[out]\ntransport = jsonl_out\npath = {tmp_path}/out.jsonl\n""")
    try:
        def answered() -> subprocess.CompletedProcess[str] | None:
            done = _cli("read", str(config), "--timeout", "10")
            return done if done.returncode == 0 else None

        done = wait_for(answered, timeout=90, interval=1)
    finally:
        sim.terminate()
        sim.wait(10)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[meter] modbus_tcp: first reading after")
    assert any(line.split()[:1] == ["voltage_l1"] and line.endswith(" V") for line in lines)
    assert "[out]" not in done.stdout  # outputs are not read
    assert not (tmp_path / "out.jsonl").exists()  # nothing is sent anywhere


def test_read_reports_a_device_that_does_not_answer(tmp_path: Path) -> None:
    config = tmp_path / "c.ini"
    config.write_text(f"[general]\nstate_dir = {tmp_path}/state\n[meter]\n"
                      f"transport = modbus_tcp\nprotocol_version = sdm630\nhost = 127.0.0.1\n"
                      f"port = {free_port()}\naddress = 1\n")
    done = _cli("read", str(config), "meter", "--timeout", "3")
    assert done.returncode == 1
    assert done.stdout.startswith("[meter] modbus_tcp: ")
    assert "first reading" not in done.stdout


def test_ports_lists_without_failing() -> None:
    done = _cli("ports")
    assert done.returncode == 0
    assert done.stdout.strip()
