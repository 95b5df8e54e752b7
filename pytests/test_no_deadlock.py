"""No traffic pattern stalls the bridge: a flood of MQTT commands at a charger, beside an input.

Everything is real: Mosquitto, the OpenEVSE simulator (answering in 20 ms, like a real
controller: it runs ~50 commands a second), the gateway's processes. A client
publishes ``PGW_FLOOD_RATE`` (default 2000) ``/set`` commands per second for
``PGW_FLOOD_SECONDS`` (default 10) at the simulated charger while a ``system`` input writes
to a ``jsonl_out`` beside it. Before the command windows and the control pipe
(docs/architecture.md "No deadlock") 1000/s for 3 s got the charger, MQTT and the unrelated
input killed as stuck and lost ~350 of that input's readings. Here: no transport restarts,
the other input's sequence has no gap, and every command gets exactly one answer (ok, or
busy, or an error), none left unanswered.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from pytests.gateway_proc import GatewayProcess, read_jsonl
from pytests.helpers import wait_for
from pytests.rigs import MqttListener, rapi_simulator
from pytests.servers import Mosquitto

RATE = float(os.environ.get("PGW_FLOOD_RATE", "2000"))
SECONDS = float(os.environ.get("PGW_FLOOD_SECONDS", "10"))


def test_command_flood_stalls_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ticks.jsonl"
    topics: set[str] = set()
    answers: dict[str, int] = {}
    results: dict[str, int] = {}

    def on_message(msg: mqtt.MQTTMessage) -> None:  # called under the listener's lock
        topics.add(msg.topic)
        if msg.topic.endswith("/result"):
            body = json.loads(msg.payload)
            rid = body.get("request_id", "")
            answers[rid] = answers.get(rid, 0) + 1
            results[body["result"]] = results.get(body["result"], 0) + 1

    with rapi_simulator("--reply-delay", "0.02") as (rapi_port, _control), \
            Mosquitto(tmp_path / "broker") as broker, \
            MqttListener(broker.port, "flood-test", on_message=on_message) as listener:
        client = listener.client
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

[tick]
transport = system
read_interval = 0.05
bridge = out

[out]
transport = jsonl_out
path = {out}
""", general="heartbeat_timeout = 10\n")
        try:
            topic = wait_for(lambda: next((t for t in list(topics)
                                           if t.endswith("/pilot_current")), None),
                             timeout=60)
            set_topic = f"pgw/{topic.split('/')[1]}/pilot_current/set"
            client.publish(set_topic, json.dumps({"value": 10, "request_id": "warm"}), 1)
            wait_for(lambda: "warm" in answers, timeout=30)
            table = gw.transports()
            total = int(RATE * SECONDS)
            start = time.monotonic()
            for i in range(total):
                client.publish(set_topic, json.dumps(
                    {"value": 10 + i % 4, "request_id": f"flood-{i}"}), 0)
                delay = start + (i + 1) / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sent_for = time.monotonic() - start
            wanted = {f"flood-{i}" for i in range(total)}
            wait_for(lambda: wanted <= set(answers), timeout=120 + 2 * SECONDS)
            after = gw.transports()
            for name, row in after.items():
                assert row["restarts"] == table[name]["restarts"] == 0, (name, row)
                assert row["state"] == "running", (name, row)
            assert all(answers[rid] == 1 for rid in wanted), "a command answered twice"
            assert results.get("ok", 0) >= 1, results
            print(f"\n{total} commands in {sent_for:.1f} s: {results}")
            ticks = wait_for(lambda: (r := read_jsonl(out)) and len(r) > 10 and r)
        finally:
            assert gw.stop() == 0
        numbers = [r["sequence"] for r in read_jsonl(out)
                   if r["source_transport"] == "tick"]
        assert len(numbers) >= len(ticks)
        assert numbers == list(range(1, len(numbers) + 1)), "a reading of tick was lost"
        assert "stuck" not in gw.log_text()
