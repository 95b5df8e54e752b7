"""Across real processes: a Home Assistant-style write on MQTT reaches the simulated charger.

Mosquitto, the OpenEVSE simulator and the gateway (rapi_serial + mqtt, each in its own
process) are all real: the command travels MQTT -> mqtt transport -> supervisor -> rapi_serial
-> RAPI `$SC` -> simulated EV, and the result comes back to MQTT.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from pytests.gateway_proc import GatewayProcess
from pytests.helpers import free_port, wait_for
from pytests.servers import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def sim_state(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=5) as reply:
            return json.load(reply)
    except OSError:
        return {"draw_a": 0, "current_capacity": None}  # not up yet


def test_mqtt_write_reaches_the_simulated_ev(tmp_path: Path) -> None:
    rapi_port, control_port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.rapi_device", "--mode", "tcp", "--tcp-port",
         str(rapi_port), "--http-port", str(control_port), "--plugged"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        with Mosquitto(tmp_path / "broker") as broker:
            messages: dict[str, str] = {}
            lock = threading.Lock()
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-test")

            def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
                with lock:
                    messages[msg.topic] = msg.payload.decode(errors="replace")

            client.on_message = on_message
            client.connect("127.0.0.1", broker.port)
            client.subscribe("pgw/#", qos=1)
            client.loop_start()
            gw = GatewayProcess(tmp_path, f"""
[evse]
transport = rapi_serial
port = socket://127.0.0.1:{rapi_port}
read_interval = 1
bridge = mqtt

[mqtt]
transport = mqtt
host = 127.0.0.1
port = {broker.port}
base_topic = pgw
""")
            try:
                wait_for(lambda: sim_state(control_port)["draw_a"] > 0, timeout=30)
                topic = wait_for(lambda: next((t for t in list(messages)
                                               if t.endswith("/pilot_current")), None),
                                 timeout=60)
                device = topic.split("/")[1]
                client.publish(f"pgw/{device}/pilot_current/set",
                               json.dumps({"value": 10, "request_id": "e2e-1"}), qos=1)
                wait_for(lambda: sim_state(control_port)["current_capacity"] == 10, timeout=30)
                wait_for(lambda: abs(sim_state(control_port)["draw_a"] - 10) < 0.5, timeout=30)
                result = json.loads(wait_for(lambda: messages.get(f"pgw/{device}/result"),
                                             timeout=30))
                assert result["request_id"] == "e2e-1" and result["ok"] is True
                client.publish(f"pgw/{device}/pilot_current/set", "lots", qos=1)
                wait_for(lambda: '"ok": false' in messages.get(f"pgw/{device}/result", "")
                         or '"ok":false' in messages.get(f"pgw/{device}/result", ""), timeout=30)
                assert sim_state(control_port)["current_capacity"] == 10  # bad payload: no change
                assert gw.transports()["mqtt"]["state"] == "running"
            finally:
                assert gw.stop() == 0
                client.loop_stop()
                client.disconnect()
    finally:
        sim.terminate()
        sim.wait(10)
