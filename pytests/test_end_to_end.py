"""Across real processes: a Home Assistant-style write on MQTT reaches the simulated charger.

Mosquitto, the OpenEVSE simulator and the gateway (rapi_serial + mqtt, each in its own
process) are all real: the command travels MQTT -> mqtt transport -> supervisor -> rapi_serial
-> RAPI `$SC` -> simulated EV, and the result comes back to MQTT.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from pytests.gateway_proc import GatewayProcess
from pytests.helpers import wait_for
from pytests.rigs import MqttListener, rapi_simulator
from pytests.servers import Mosquitto


def sim_state(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=5) as reply:
            return json.load(reply)
    except OSError:
        return {"draw_a": 0, "current_capacity": None}  # not up yet


def test_mqtt_write_reaches_the_simulated_ev(tmp_path: Path) -> None:
    with rapi_simulator() as (rapi_port, control_port), \
            Mosquitto(tmp_path / "broker") as broker, \
            MqttListener(broker.port, "e2e-test") as listener:
        client, messages = listener.client, listener.messages
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
