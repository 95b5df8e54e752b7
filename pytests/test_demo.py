"""The newcomer's first command: the demo starts every simulator and reads each of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.demo import (
    MQTT_BASE,
    PARTS,
    _wait_ready,
    free_instance,
    port_free,
    refusal,
)
from gateway.demo_view import render_view
from pytests.gateway_proc import read_jsonl
from pytests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _openevse_led(port: int, controller: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/state", timeout=5) as r:
            state = json.loads(r.read())
    except (OSError, ValueError):
        return False
    return bool(state["controller_host"] == controller and state["frames"] > 0)


def _api_state(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return {}


class _Topics:
    """Every topic seen on the demo's broker."""

    def __init__(self, port: int) -> None:
        self.seen: set[str] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe("#")
        self.client.on_message = lambda c, u, m: self.seen.add(m.topic)
        self.port = port

    def start(self) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port)
        except OSError:
            return False
        self.client.loop_start()
        return True

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_demo_reads_every_simulated_device(tmp_path: Path) -> None:
    env = dict(os.environ, PGW_RUN_DIR=str(tmp_path / "run"))
    # an instance whose ports are free now, away from other checkouts' runs of this test
    n = free_instance(10 + os.getpid() % 80, own_broker=True)
    assert n is not None
    o = n * 100
    log = open(tmp_path / "demo.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "protocol_gateway.py"), "demo", "--dir", str(tmp_path),
         "--instance", str(n), "--refresh", "2"], stdout=log, stderr=subprocess.STDOUT, env=env)
    readings = tmp_path / "readings.jsonl"
    expected = {part.name for part in PARTS if part.section(o, tmp_path)}
    topics = _Topics(MQTT_BASE + o)
    try:
        wait_for(lambda: expected <= {r["source_transport"] for r in read_jsonl(readings)
                                      if r["kind"] == "reading"}, timeout=90, interval=0.5)
        # the simulated OpenEVSE charger (no section of its own) is led by the demo's
        # load-sharing node: it names it as its controller and obeys its frames
        wait_for(lambda: _openevse_led(8081 + o, f"127.0.0.1:{8190 + o}"), timeout=60,
                 interval=0.5)
        # every device reaches the demo's own broker, announced to Home Assistant
        wait_for(topics.start, timeout=30, interval=0.5)
        base = f"protocol-gateway-demo-{n}/"
        wait_for(lambda: len({t.split("/")[1] for t in topics.seen if t.startswith(base)})
                 >= len(expected) and any(t.startswith("homeassistant/") for t in topics.seen),
                 timeout=60, interval=0.5)
        # no two simulated devices share an identity (Home Assistant would merge them)
        identities: dict[str, set[str]] = {}
        for r in read_jsonl(readings):
            if r["kind"] == "reading":
                info = r["source_transport_info"]
                identities.setdefault(info.get("device_identifier", ""), set()).add(
                    r["source_transport"] + "/" + info.get("device", ""))
        assert all(len(users) == 1 for users in identities.values()), identities
        # the status page's picture: a device per reading source, the group within its breaker
        state = wait_for(lambda: (s := _api_state(8180 + o)) and s["groups"] and
                         s["groups"][0]["reachable"] and len(s["groups"][0]["members"]) == 2
                         and s, timeout=60, interval=0.5)
        group = state["groups"][0]
        assert group["breaker"] == 32 and 0 < group["allocated"] <= 32
        # what the group draws: this node's charger plus the OpenEVSE charger it leads
        assert isinstance(group["drawn"], (int, float)) and group["drawn"] > 0
        assert expected <= {d["transport"] for d in state["devices"]}
        # a second demo as the same instance refuses before starting anything, names the
        # instance that would work, and leaves the first one alone
        second = subprocess.run(
            [sys.executable, str(ROOT / "protocol_gateway.py"), "demo", "--dir",
             str(tmp_path / "second"), "--instance", str(n)], capture_output=True, text=True,
            env=env, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "protocol-gateway demo --instance " in second.stderr
        assert f"--instance {n}\n" not in second.stderr
        assert "running" not in second.stdout
        after = _api_state(8180 + o)
        assert all(t["restarts"] == 0 and t["state"] == "running"
                   for t in after["transports"]), after["transports"]
        # the live view was printed
        wait_for(lambda: "load sharing [loadsharing]" in (tmp_path / "demo.log").read_text(),
                 timeout=30, interval=0.5)
    finally:
        topics.stop()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.close()
    text = (tmp_path / "demo.log").read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    assert "first reading" in text


def test_a_simulator_that_exits_is_not_ready(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert not _wait_ready(proc, 0, tmp_path / "never", timeout=20)
    assert proc.returncode == 3


def test_a_busy_port_refuses_and_suggests_the_next_instance() -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 8180 + 4200))
        holder.listen()
        assert not port_free(8180 + 4200)
        lines = refusal(42, own_broker=True)
    assert any("12380 (status page)" in line for line in lines), lines
    assert lines[-1].startswith("start this demo beside it with: protocol-gateway demo "
                                "--instance ")
    assert "--instance 42" not in lines[-1]


def test_view_shows_devices_problems_and_the_group() -> None:
    state = {
        "transports": [{"name": "charger", "state": "running", "restarts": 0},
                       {"name": "meter", "state": "restarting", "restarts": 2,
                        "last_error": "killed by signal SIGKILL"}],
        "devices": [{"transport": "charger", "device": "charger", "age": 3.2, "available": True,
                     "key_values": {"state": "charging", "power": 3840.0}}],
        "groups": [{"section": "ls", "reachable": True, "breaker": 32.0, "allocated": 24.0,
                    "failsafe": False, "members": [
                        {"id": "a", "target_current": 16, "reason": "equal_share"},
                        {"id": "b", "target_current": 8, "reason": "ev_limit"}]}],
    }
    text = "\n".join(render_view(state))
    assert "1/2 transports running" in text
    assert "meter: restarting, 2 restarts, last error: killed by signal SIGKILL" in text
    assert "state charging" in text and "power 3840" in text
    assert "24 A allocated of a 32 A breaker [###############-----]" in text
    assert "b 8 A (ev_limit)" in text


def test_a_simulator_that_fails_is_reported_as_failed(tmp_path: Path) -> None:
    script = f"""
import sys
import gateway.demo as demo
broken = demo.DemoPart("broken", "json.tool", lambda o, d: ["/nonexistent/file.json"],
                       lambda o, d: "", wait_port=8023, ports=(8023,))
demo.PARTS[:] = [demo.PARTS[0], broken]
sys.exit(demo.run_demo(8, {str(tmp_path)!r}, 23, refresh=0))
"""
    env = dict(os.environ, PGW_RUN_DIR=str(tmp_path / "run"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken simulator: FAILED (exited with code 2)" in done.stdout, done.stdout
    assert "broken-simulator.log" in done.stdout
    assert "broken: simulator json.tool running" not in done.stdout
    assert "FAILED to start: broken" in done.stdout


def test_mqtt_option_names_the_users_broker(tmp_path: Path) -> None:
    from gateway.demo import demo_ports, mqtt_section

    assert "host = 192.168.1.10\nport = 1883\n" in mqtt_section("192.168.1.10", 1883, 0)
    assert "base_topic = protocol-gateway-demo-3\n" in mqtt_section("h", 1883, 3)
    assert MQTT_BASE + 300 in demo_ports(300, own_broker=True)
    assert MQTT_BASE + 300 not in demo_ports(300, own_broker=False)
    done = subprocess.run(
        [sys.executable, str(ROOT / "protocol_gateway.py"), "demo", "--dir", str(tmp_path),
         "--instance", "44", "--mqtt", "no-port-here"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, PGW_RUN_DIR=str(tmp_path / "run")))
    assert done.returncode == 2
    assert "--mqtt 'no-port-here': expected host:port" in done.stderr


def test_the_embedded_broker_carries_retained_messages(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Mosquitto is not installed the demo runs amqtt's broker: it must be a broker."""
    from gateway.demo_broker import BROKER_ENV, broker_command
    from pytests.helpers import free_port

    monkeypatch.setenv(BROKER_ENV, "amqtt")
    port = free_port()
    argv, kind = broker_command(port, tmp_path)
    assert kind == "amqtt"
    broker = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        assert _wait_ready(broker, port, None, timeout=60)
        client.connect("127.0.0.1", port)
        client.loop_start()
        sent = client.publish("homeassistant/sensor/x/config", b"{}", qos=1, retain=True)
        sent.wait_for_publish(10)
        client.on_message = lambda c, u, m: got.append(m.payload)
        client.subscribe("homeassistant/#", qos=1)
        wait_for(lambda: got == [b"{}"], timeout=30, interval=0.2)
    finally:
        client.loop_stop()
        client.disconnect()
        broker.terminate()
        broker.wait(10)
