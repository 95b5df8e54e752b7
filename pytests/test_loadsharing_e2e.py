"""Through the supervisor (issue 17): Home Assistant's slider on MQTT never raises a grouped charger
above its allocation; the result message says what was applied and why; a current changed at
the charger itself is put back.

Real processes: Mosquitto, the RAPI simulator, and the gateway (rapi_serial + loadsharing +
mqtt, each in its own process). The command goes MQTT -> mqtt -> supervisor -> rapi_serial
(the charger's section, which forwards it to its owner) -> loadsharing (the one writer) ->
rapi_serial -> ``$SC`` -> the simulated charger, and the answer comes back to MQTT.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from pytests.gateway_proc import GatewayProcess
from pytests.helpers import wait_for
from pytests.loadsharing_sites import http
from pytests.rigs import MqttListener, rapi_simulator
from pytests.servers import Mosquitto

GROUP_MAX = 16


class Sampler:
    """The simulated charger's offered current, every 50 ms, with the times it was tampered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, int]] = []
        self.tampered: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                cap = http("GET", f"http://127.0.0.1:{self.port}/state")[1]["current_capacity"]
                self.samples.append((time.monotonic(), int(cap)))
            except (OSError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.05)

    def capacity(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    def over(self, limit: int, since: float, window: float) -> list[tuple[float, int]]:
        """Samples above ``limit`` after ``since``, outside ``window`` s after a tamper."""
        return [(round(t - since, 2), c) for t, c in self.samples
                if t >= since and c > limit
                and not any(0 <= t - x <= window for x in self.tampered)]


def test_mqtt_set_above_the_allocation_never_raises_the_charger(tmp_path: Path) -> None:
    with rapi_simulator() as (rapi_port, control_port), \
            Mosquitto(tmp_path / "broker") as broker, \
            MqttListener(broker.port, "ls-e2e") as listener:
        sampler = Sampler(control_port)
        try:
            client, messages, lock = listener.client, listener.messages, listener.lock
            gw = GatewayProcess(tmp_path, f"""
[openevse]
transport = rapi_serial
port = socket://127.0.0.1:{rapi_port}
read_interval = 0.5
bridge = loadsharing, mqtt

[loadsharing]
transport = loadsharing
loadsharing_enabled = true
loadsharing_group_max_current = {GROUP_MAX}
loadsharing_response_time = 2
charger = openevse
charger_heartbeat = 0
bridge = mqtt

[mqtt]
transport = mqtt
host = 127.0.0.1
port = {broker.port}
base_topic = pgw
""")
            try:
                wait_for(lambda: sampler.capacity() == GROUP_MAX, timeout=60)
                started = time.monotonic()
                topic = wait_for(lambda: next((t for t in list(messages)
                                               if t.endswith("/pilot_current")
                                               and "openevse" in t), None), timeout=60)
                device = topic.split("/")[1]
                result_topic = f"pgw/{device}/result"

                def result(request_id: str) -> dict[str, object] | None:
                    with lock:
                        text = messages.get(result_topic, "")
                    body = json.loads(text) if text else {}
                    return body if body.get("request_id") == request_id else None

                # Home Assistant's slider at 32 A: 16 A is what the group allows
                client.publish(f"pgw/{device}/pilot_current/set",
                               json.dumps({"value": 32, "request_id": "ha-1"}), qos=1)
                answer = wait_for(lambda: result("ha-1"), timeout=30)
                assert answer["ok"] is True and answer["result"] == "limited", answer
                assert answer["detail"] == \
                    f"applied {GROUP_MAX} A: the group allows {GROUP_MAX} A of the 32 A asked"
                # and the state Home Assistant shows is the applied value
                wait_for(lambda: messages.get(topic) == str(GROUP_MAX), timeout=10)
                time.sleep(3.0)  # give a wrong write every chance to land
                assert sampler.capacity() == GROUP_MAX
                # lower than the allocation: taken, kept as the user's maximum
                client.publish(f"pgw/{device}/pilot_current/set",
                               json.dumps({"value": 10, "request_id": "ha-2"}), qos=1)
                answer = wait_for(lambda: result("ha-2"), timeout=30)
                assert answer["result"] == "ok" and "applied 10 A" in str(answer["detail"])
                wait_for(lambda: sampler.capacity() == 10, timeout=20)
                # changed at the charger itself: put back within the response time (+ a poll)
                sampler.tampered.append(time.monotonic())
                code, st = http("POST", f"http://127.0.0.1:{control_port}/capacity",
                                {"amps": 32})
                assert code == 200 and st["current_capacity"] == 32
                landed = time.monotonic()
                back = wait_for(lambda: next((t for t, c in list(sampler.samples)
                                              if t > landed and c == 10), None),
                                timeout=20) - sampler.tampered[-1]
                # a bad payload changes nothing; a pause goes through the node too
                client.publish(f"pgw/{device}/pilot_current/set", "lots", qos=1)
                time.sleep(2.0)
                assert sampler.capacity() == 10
                client.publish(f"pgw/{device}/pilot_current/set",
                               json.dumps({"value": 32, "request_id": "ha-3"}), qos=1)
                wait_for(lambda: result("ha-3"), timeout=30)
                wait_for(lambda: sampler.capacity() == GROUP_MAX, timeout=20)
                time.sleep(2.0)
                # never above the allocation, except while a change at the charger was put back
                assert sampler.over(GROUP_MAX, started, window=2.0 + 1.0) == []
                assert back < 2.0 + 1.0 + 2.0, back  # response time + a poll + this machine
                log = gw.log_text()
                assert log.count("above this node's limit") == 1, log[-3000:]
                assert gw.transports()["loadsharing"]["state"] == "running"
            finally:
                assert gw.stop() == 0
        finally:
            sampler.stop.set()
