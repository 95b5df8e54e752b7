"""The real parts several end-to-end tests put together: the OpenEVSE simulator on TCP, and an
MQTT subscriber of the test's own (beside a Mosquitto from pytests/servers.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt

from pytests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def rapi_simulator(*extra: str) -> Iterator[tuple[int, int]]:
    """simulators.rapi_device in TCP mode, an EV plugged in: (RAPI port, HTTP control port).
    ``extra``: more of its arguments (``--reply-delay 0.02``)."""
    rapi_port, control_port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.rapi_device", "--mode", "tcp", "--tcp-port",
         str(rapi_port), "--http-port", str(control_port), "--plugged", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield rapi_port, control_port
    finally:
        sim.terminate()
        sim.wait(10)


class MqttListener:
    """Subscribed to ``topic`` while in its ``with``: the last payload of every topic in
    ``messages`` (under ``lock``), and each message to ``on_message`` too when given."""

    def __init__(self, port: int, client_id: str, topic: str = "pgw/#",
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None) -> None:
        self.port = port
        self.topic = topic
        self.messages: dict[str, str] = {}
        self.lock = threading.Lock()
        self._also = on_message
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._message

    def _message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages[msg.topic] = msg.payload.decode(errors="replace")
            if self._also is not None:
                self._also(msg)

    def __enter__(self) -> MqttListener:
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe(self.topic, qos=1)
        self.client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.loop_stop()
        self.client.disconnect()
