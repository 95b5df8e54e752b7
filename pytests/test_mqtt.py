"""The mqtt transport against a real Mosquitto: state, discovery, commands, TLS, outages.

Size: over the ~400-line guide on purpose: one broker fixture serves every MQTT scenario of the
issue.
"""


from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.message import Envelope, ValueSpec, command_result, describe_event
from pytests import servers
from pytests.helpers import Harness, async_wait_for, wait_for
from pytests.servers import Mosquitto, TlsFiles, make_tls
from transports import mqtt as mqtt_module
from transports.mqtt import MqttSettings, MqttTransport
from transports.mqtt_discovery import DeviceIdentity, Topics, discovery_config, parse_set_payload

INFO = {"transport_name": "inverter", "device_identifier": "inv-1", "device_manufacturer": "EG4",
        "device_model": "18kPV", "device_serial_number": "SN123"}
SPECS = [
    ValueSpec("grid_power", unit="W", device_class="power", state_class="measurement"),
    ValueSpec("energy_today", unit="kWh", device_class="energy", state_class="total_increasing"),
    ValueSpec("battery_voltage", unit="V", device_class="voltage", state_class="measurement"),
    ValueSpec("max_charge_current", unit="A", device_class="current", writable=True,
              minimum=0, maximum=200, step=1),
    ValueSpec("charger_enabled", kind="switch", writable=True),
    ValueSpec("grid_connected", kind="binary", device_class="connectivity"),
    ValueSpec("work_mode", kind="select", writable=True, options=("eco", "backup", "sell")),
    ValueSpec("status_text", kind="text"),
    ValueSpec("label", kind="text", writable=True),
    ValueSpec("restart", kind="button", writable=True, device_class="restart"),
    ValueSpec("mode_readonly", kind="select", options=("a", "b")),
]
_counter = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as server:
        yield server  # type: ignore[misc]


class Collector:
    """A plain paho subscriber recording everything it receives (thread-safe)."""

    def __init__(self, port: int, topics: list[str], *, client_id: str = "", clean: bool = True,
                 tls: TlsFiles | None = None, auth: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
                             clean_session=clean)
        if tls is not None:
            client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert),
                           keyfile=str(tls.client_key))
        if auth is not None:
            client.username_pw_set(*auth)
        client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 1)
        client.connect("127.0.0.1", port, 30)
        client.loop_start()
        self.client = client
        assert self._subscribed.wait(10), "collector could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def matching(self, pattern: str) -> dict[str, bytes]:
        """Last payload per topic matching the regular expression."""
        with self._lock:
            return {t: p for t, p, _ in self.messages if re.fullmatch(pattern, t)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_settings(port: int, **over: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "transport": "mqtt", "host": "127.0.0.1", "port": port,
        "base_topic": f"pgw-test-{next(_counter)}-{uuid.uuid4().hex[:6]}",
        "discovery_prefix": f"ha-{uuid.uuid4().hex[:6]}", "reconnect_min": 1,
        "reconnect_max": 1, "retry_initial": 0.1, "retry_max": 0.5, "publish_timeout": 5,
    }
    base.update(over)
    return MqttSettings(**base)


def reading(n: int, **values: Any) -> Envelope:
    return Envelope(source_transport="inverter", kind="reading", data={"n": n, **values},
                    source_transport_info=dict(INFO), sequence=n, timestamp=1.7e9 + n)


#: a value for every described value but the button (a button has no state)
ALL_VALUES = {"grid_power": 5.0, "energy_today": 1.5, "battery_voltage": 52.1,
              "max_charge_current": 16, "charger_enabled": True, "grid_connected": True,
              "work_mode": "eco", "status_text": "fine", "label": "garage", "mode_readonly": "a"}


def describe(info: dict[str, str] | None = None) -> Envelope:
    return Envelope(source_transport="inverter", kind="event",
                    data=describe_event([*SPECS, ValueSpec("n", state_class="measurement")]),
                    source_transport_info=dict(info or INFO))


async def started(settings: MqttSettings, state_dir: Path, name: str = "mqtt_out") -> Harness:
    harness = Harness(MqttTransport, settings, name, state_dir)
    await harness.start()
    link = lambda: harness.transport.link  # noqa: E731
    await async_wait_for(lambda: link() is not None and link().connected)
    return harness


# -- state and availability ---------------------------------------------------------------
def test_state_retained_availability_and_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    s = make_settings(broker.port)
    t = Topics(s.base_topic, s.discovery_prefix)
    watcher = Collector(broker.port, [f"{s.base_topic}/#"])

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(describe())
        await h.send(reading(1, grid_power=1234.5, charger_enabled=True, work_mode="eco"))
        await async_wait_for(lambda: watcher.on(t.state("inv-1", "work_mode")))
        assert watcher.on(t.state("inv-1", "grid_power")) == [b"1234.5"]
        assert watcher.on(t.state("inv-1", "charger_enabled")) == [b"ON"]
        assert watcher.on(t.availability("inv-1"))[-1] == b"online"
        assert watcher.on(t.gateway_status)[-1] == b"online"
        await h.send(Envelope(source_transport="inverter", kind="status",
                              data={"available": False, "reason": "no reply"},
                              source_transport_info=dict(INFO)))
        await async_wait_for(lambda: watcher.on(t.availability("inv-1"))[-1:] == [b"offline"])
        late = Collector(broker.port, [f"{s.base_topic}/#"])  # retained state for newcomers
        wait_for(lambda: late.on(t.state("inv-1", "grid_power")))
        assert all(r for tp, _, r in late.messages if tp.endswith("grid_power"))
        late.close()
        await h.stop()
        await async_wait_for(lambda: watcher.on(t.gateway_status)[-1:] == [b"offline"])

    asyncio.run(main())
    watcher.close()


def test_last_will_marks_the_gateway_offline_when_it_dies(broker: Mosquitto,
                                                         tmp_path: Path) -> None:
    """A transport that vanishes without closing: the broker publishes our will."""
    s = make_settings(broker.port, keepalive=5)
    t = Topics(s.base_topic, s.discovery_prefix)
    watcher = Collector(broker.port, [t.gateway_status])

    async def main() -> None:
        h = await started(s, tmp_path)
        await async_wait_for(lambda: watcher.on(t.gateway_status)[-1:] == [b"online"])
        link = h.transport.link
        assert link is not None and link._client is not None
        client = link._client
        await asyncio.to_thread(client.loop_stop)  # paho's thread stops, no DISCONNECT sent
        sock = client.socket()
        assert sock is not None
        sock.close()  # the connection dies as in a crash
        await async_wait_for(lambda: watcher.on(t.gateway_status)[-1:] == [b"offline"])
        h.transport.link = None
        await h.stop()

    asyncio.run(main())
    watcher.close()


# -- Home Assistant discovery ---------------------------------------------------------------
COMMON = {"name", "unique_id", "device", "origin", "availability", "availability_mode",
          "payload_available", "payload_not_available", "qos", "icon", "entity_category",
          "enabled_by_default", "json_attributes_topic", "encoding"}
PLATFORM: dict[str, tuple[set[str], set[str]]] = {  # required, optional (HA's schemas)
    "sensor": ({"state_topic"}, {"device_class", "unit_of_measurement", "state_class",
                                 "options", "expire_after", "force_update",
                                 "suggested_display_precision", "value_template"}),
    "binary_sensor": ({"state_topic"}, {"device_class", "payload_on", "payload_off",
                                        "expire_after", "force_update", "value_template"}),
    "number": ({"command_topic"}, {"state_topic", "min", "max", "step", "mode",
                                   "unit_of_measurement", "device_class", "retain",
                                   "optimistic", "value_template", "command_template"}),
    "switch": ({"command_topic"}, {"state_topic", "payload_on", "payload_off", "state_on",
                                   "state_off", "device_class", "retain", "optimistic",
                                   "value_template"}),
    "select": ({"command_topic", "options"}, {"state_topic", "retain", "optimistic",
                                              "value_template", "command_template"}),
    "text": ({"command_topic"}, {"state_topic", "min", "max", "mode", "pattern", "retain",
                                 "value_template", "command_template"}),
    "button": ({"command_topic"}, {"payload_press", "device_class", "retain",
                                   "command_template"}),
}
UNITS = {"power": {"W", "kW"}, "energy": {"Wh", "kWh", "MWh"}, "voltage": {"V", "mV"},
         "current": {"A", "mA"}}
SENSOR_CLASSES = {"power", "energy", "voltage", "current", "enum", "temperature", "battery"}
BINARY_CLASSES = {"connectivity", "problem", "running", "power", "plug"}
_ID = re.compile(r"[A-Za-z0-9_-]+")


def check_home_assistant_config(topic: str, config: dict[str, Any], prefix: str) -> str:
    """What Home Assistant's MQTT discovery would refuse, as assertions. Returns the platform."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == prefix and parts[4] == "config", topic
    platform, node, obj = parts[1], parts[2], parts[3]
    assert _ID.fullmatch(node) and _ID.fullmatch(obj), topic
    required, optional = PLATFORM[platform]
    assert required <= config.keys(), f"{topic}: missing {required - config.keys()}"
    extra = config.keys() - required - optional - COMMON
    assert not extra, f"{topic}: keys HA does not know for {platform}: {extra}"
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    device = config["device"]
    assert device["identifiers"] and all(isinstance(i, str) for i in device["identifiers"])
    assert all(isinstance(device[k], str) for k in device if k != "identifiers")
    assert config["origin"]["name"]
    assert config.get("availability_mode", "latest") in {"all", "any", "latest"}
    for item in config.get("availability", []):
        assert set(item) <= {"topic", "payload_available", "payload_not_available",
                             "value_template"}
        assert "+" not in item["topic"] and "#" not in item["topic"]
    for key in ("state_topic", "command_topic"):
        if key in config:
            assert config[key] and not set(config[key]) & {"+", "#"}
    assert config.get("qos", 0) in (0, 1, 2)
    device_class = config.get("device_class")
    if platform == "sensor":
        if "options" in config:
            assert config["options"] and device_class == "enum"
            assert "state_class" not in config and "unit_of_measurement" not in config
        if device_class is not None:
            assert device_class in SENSOR_CLASSES
        if device_class in UNITS:
            assert config["unit_of_measurement"] in UNITS[device_class]
        if device_class == "energy":
            assert config["state_class"] in {"total", "total_increasing"}
        assert config.get("state_class", "measurement") in {"measurement", "total",
                                                            "total_increasing"}
    if platform == "binary_sensor" and device_class is not None:
        assert device_class in BINARY_CLASSES
    if platform == "number":
        assert config["min"] < config["max"] and config.get("step", 1) >= 0.001
        assert config.get("mode", "auto") in {"auto", "box", "slider"}
    if platform == "switch":
        assert device_class in (None, "outlet", "switch")
    if platform == "button":
        assert device_class in (None, "identify", "restart", "update")
    return platform


def test_discovery_configs_satisfy_home_assistant(broker: Mosquitto, tmp_path: Path) -> None:
    s = make_settings(broker.port)
    configs = Collector(broker.port, [f"{s.discovery_prefix}/#"])
    second = {**INFO, "device_identifier": "inv-2", "device_serial_number": "SN456"}

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(describe())
        await h.send(reading(1, **ALL_VALUES))
        await h.send(describe(second))
        await h.send(Envelope(source_transport="inverter", kind="reading",
                              data={"n": 1, **ALL_VALUES}, source_transport_info=second))
        want = 2 * (len(SPECS) + 1) + 1  # and the gateway's own device
        await async_wait_for(lambda: len(configs.matching(rf"{s.discovery_prefix}/.*")) >= want)
        await h.stop()

    asyncio.run(main())
    found = {t: json.loads(p) for t, p in configs.matching(rf"{s.discovery_prefix}/.*").items()}
    platforms = {check_home_assistant_config(t, c, s.discovery_prefix) for t, c in found.items()}
    assert platforms == set(PLATFORM)
    assert len({c["unique_id"] for c in found.values()}) == len(found)
    devices = {tuple(c["device"]["identifiers"]) for c in found.values()}
    assert len(devices) == 3  # one HA device per physical device, and the gateway
    one = found[f"{s.discovery_prefix}/number/inv-1/max_charge_current/config"]
    via = f"pgw_gateway_{s.base_topic}"
    assert one["device"] == {"identifiers": ["pgw_SN123"], "name": "EG4 18kPV",
                             "manufacturer": "EG4", "model": "18kPV", "serial_number": "SN123",
                             "via_device": via}
    gateway = found[f"{s.discovery_prefix}/binary_sensor/{via}/connection/config"]
    assert gateway["device"]["identifiers"] == [via]
    assert one["command_topic"] == f"{s.base_topic}/inv-1/max_charge_current/set"
    assert (one["min"], one["max"], one["step"], one["unit_of_measurement"]) == (0, 200, 1, "A")
    assert found[f"{s.discovery_prefix}/sensor/inv-1/energy_today/config"]["state_class"] == (
        "total_increasing")
    assert found[f"{s.discovery_prefix}/select/inv-1/work_mode/config"]["options"] == [
        "eco", "backup", "sell"]
    configs.close()


def test_rediscovery_when_home_assistant_restarts(broker: Mosquitto, tmp_path: Path) -> None:
    s = make_settings(broker.port)
    topic = f"{s.discovery_prefix}/sensor/inv-1/grid_power/config"
    configs = Collector(broker.port, [topic])

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(describe())
        await h.send(reading(1, grid_power=5.0))
        await async_wait_for(lambda: len(configs.on(topic)) == 1)
        configs.client.publish(f"{s.discovery_prefix}/status", "online", qos=1)
        await async_wait_for(lambda: len(configs.on(topic)) == 2)
        await h.stop()

    asyncio.run(main())
    configs.close()


def test_platform_change_removes_the_old_config(broker: Mosquitto, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An undescribed value is announced as a plain sensor; its description replaces it."""
    monkeypatch.setattr(mqtt_module, "DESCRIBE_GRACE", 0.0)
    s = make_settings(broker.port)
    sensor = f"{s.discovery_prefix}/sensor/inv-1/max_charge_current/config"
    number = f"{s.discovery_prefix}/number/inv-1/max_charge_current/config"
    configs = Collector(broker.port, [f"{s.discovery_prefix}/#"])

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(reading(1, max_charge_current=16))
        await h.send(reading(2, max_charge_current=16))
        await async_wait_for(lambda: configs.on(sensor))
        assert json.loads(configs.on(sensor)[0])["state_topic"].endswith("/max_charge_current")
        await h.send(describe())
        await async_wait_for(lambda: configs.on(number) and configs.on(sensor)[-1] == b"")
        await h.stop()

    asyncio.run(main())
    configs.close()


def test_discovery_edge_cases() -> None:
    t = Topics("base", "ha")
    device = DeviceIdentity.from_info("modbus", {})
    assert (device.node, device.uid, device.name) == ("modbus", "modbus", "modbus")
    topic, unbounded = discovery_config(t, device, ValueSpec("setpoint", writable=True))
    assert topic == "ha/number/modbus/setpoint/config"
    assert unbounded["mode"] == "box" and unbounded["min"] < unbounded["max"]
    topic, free = discovery_config(t, device, ValueSpec("mode", kind="select", writable=True))
    assert topic.startswith("ha/text/")  # a select without options would be refused by HA
    assert check_home_assistant_config(topic, free, "ha") == "text"
    _, odd = discovery_config(t, device, ValueSpec("p", device_class="not_a_class", unit="W"))
    assert "device_class" not in odd and odd["unit_of_measurement"] == "W"
    _, reserved = discovery_config(t, device, ValueSpec("result"))
    assert reserved["state_topic"] == "base/modbus/result_value"
    for spec in SPECS:
        topic, config = discovery_config(t, device, spec)
        check_home_assistant_config(topic, config, "ha")


# -- commands ---------------------------------------------------------------------------
class FakeDevice:
    """Plays the device transport: answers each write command with a command_result."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.done = 0
        self.writes: list[dict[str, Any]] = []

    async def serve(self) -> None:
        while True:
            commands = self.h.of_kind("command")[self.done:]
            for cmd in commands:
                self.done += 1
                if cmd.data["command"] != "write":
                    continue
                self.writes.append(cmd.data)
                assert cmd.target_transport == "inverter"
                await self.h.send(Envelope(
                    source_transport="inverter", kind="event", target_transport="mqtt_out",
                    data=command_result(cmd.data, True, "ok"), source_transport_info=dict(INFO)))
            await asyncio.sleep(0.01)


def test_command_round_trip_and_malformed_payloads(broker: Mosquitto, tmp_path: Path) -> None:
    s = make_settings(broker.port)
    t = Topics(s.base_topic, s.discovery_prefix)
    results = Collector(broker.port, [t.result("+")])

    def answers(node: str = "inv-1") -> list[dict[str, Any]]:
        return [json.loads(p) for p in results.on(t.result(node))]

    async def main() -> None:
        h = await started(s, tmp_path)
        device = FakeDevice(h)
        server = asyncio.create_task(device.serve())
        await h.send(reading(1, max_charge_current=16))
        describes = await async_wait_for(
            lambda: [c for c in h.of_kind("command") if c.data["command"] == "describe"])
        assert describes[0].target_transport == "inverter"
        await h.send(describe())

        pub = results.client.publish
        pub(t.command("inv-1", "max_charge_current"), "32", qos=1)
        await async_wait_for(lambda: len(answers()) == 1)
        assert device.writes[0]["values"] == {"max_charge_current": 32}
        assert device.writes[0]["device"] == "inv-1"
        first = answers()[0]
        assert first["ok"] and first["result"] == "ok"
        assert first["request_id"] == device.writes[0]["request_id"]
        assert first["value"] == "max_charge_current"

        pub(t.command("inv-1", "work_mode"), json.dumps({"value": "backup", "request_id": "r7"}))
        pub(t.command("inv-1", "charger_enabled"), "OFF", qos=1)
        await async_wait_for(lambda: len(answers()) == 3)
        assert {"r7"} <= {a["request_id"] for a in answers()}
        assert {"work_mode": "backup"} in [w["values"] for w in device.writes]
        assert {"charger_enabled": False} in [w["values"] for w in device.writes]

        bad = [("max_charge_current", b"lots", "malformed"),
               ("max_charge_current", b"500", "rejected"),
               ("work_mode", b"turbo", "malformed"),
               ("grid_power", b"3", "rejected"),
               ("max_charge_current", b"\xff\xfe", "malformed"),
               ("work_mode", b"{not json", "malformed")]
        for value, payload, _ in bad:
            pub(t.command("inv-1", value), payload, qos=1)
        await async_wait_for(lambda: len(answers()) == 3 + len(bad))
        errors = [a for a in answers() if not a["ok"]]
        assert [(e["value"], e["result"]) for e in errors] == [(v, r) for v, _, r in bad]
        assert all(e["detail"] for e in errors)
        pub(t.command("nobody", "x"), b"1", qos=1)
        await async_wait_for(lambda: answers("nobody"))
        assert answers("nobody")[0]["result"] == "unknown_device"
        assert len(device.writes) == 3 and h.running
        assert h.ctx.counters.extra["command_errors"] == len(bad) + 1
        server.cancel()
        await h.stop()

    asyncio.run(main())
    results.close()


def test_retained_command_is_not_replayed_on_connect(broker: Mosquitto, tmp_path: Path) -> None:
    s = make_settings(broker.port)
    t = Topics(s.base_topic, s.discovery_prefix)
    results = Collector(broker.port, [t.result("+")])
    command = t.command("inv-1", "max_charge_current")
    results.client.publish(command, b"10", qos=1, retain=True).wait_for_publish(10)

    async def main() -> None:
        h = await started(s, tmp_path)  # subscribing delivers the retained /set
        await async_wait_for(lambda: results.on(t.result("inv-1")))
        answer = json.loads(results.on(t.result("inv-1"))[0])
        assert answer["result"] == "rejected" and "retained" in answer["detail"]
        assert not h.of_kind("command")
        await h.stop()

    asyncio.run(main())
    results.client.publish(command, b"", qos=1, retain=True).wait_for_publish(10)
    results.close()


def test_set_payload_parsing_table() -> None:
    number = ValueSpec("amps", writable=True, minimum=6, maximum=32, step=1)
    cases: list[tuple[bytes, ValueSpec | None, Any]] = [
        (b"16", number, 16), (b" 16.0 ", number, 16), (b'{"value": 20}', number, 20),
        (b"ON", ValueSpec("s", kind="switch", writable=True), True),
        (b"false", ValueSpec("s", kind="switch", writable=True), False),
        (b"PRESS", ValueSpec("b", kind="button", writable=True), True),
        (b"2.5", None, 2.5), (b"7", None, 7), (b"on", None, True), (b"eco", None, "eco"),
    ]
    for payload, spec, expected in cases:
        value = parse_set_payload(payload, spec).value
        assert value == expected and type(value) is type(expected), payload


# -- TLS and passwords ----------------------------------------------------------------------
@pytest.mark.parametrize("maker", ["openssl", "cryptography"])
def test_tls_client_certificate_and_password(tmp_path: Path, maker: str) -> None:
    if maker == "cryptography":
        pytest.importorskip("cryptography")
    tls = (make_tls if maker == "cryptography" else servers._make_tls_openssl)(tmp_path / "tls")
    users = {"gateway": "pa55word", "watcher": "w4tch"}
    with Mosquitto(tmp_path / "broker", tls=tls, users=users) as broker:
        secure = {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert),
                  "key_file": str(tls.client_key), "username": "gateway"}
        s = make_settings(broker.port, password="pa55word", **secure)
        t = Topics(s.base_topic, s.discovery_prefix)
        watcher = Collector(broker.port, [f"{s.base_topic}/#"], tls=tls,
                            auth=("watcher", "w4tch"))

        async def main() -> None:
            h = await started(s, tmp_path / "good")
            await h.send(reading(1))
            await async_wait_for(lambda: watcher.on(t.state("inv-1", "n")) == [b"1"])
            await h.stop()

            wrong = make_settings(broker.port, password="nope", **secure)
            bad = Harness(MqttTransport, wrong, "mqtt_bad", tmp_path / "bad")
            await bad.start()
            await bad.send(reading(2))
            await async_wait_for(lambda: bad.transport.link is not None)
            await async_wait_for(lambda: bad.transport.link.failure.failing)
            await asyncio.sleep(0.3)
            assert not bad.transport.link.connected and bad.transport.buffer.backlog == 1
            assert "pa55word" not in repr(wrong) and "nope" not in repr(wrong)
            await bad.stop()
            assert watcher.on(t.state("inv-1", "n")) == [b"1"], watcher.messages

        asyncio.run(main())
        watcher.close()


# -- outages --------------------------------------------------------------------------------
def test_broker_restart_mid_run_loses_nothing_at_qos1(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        s = make_settings(broker.port, qos=1)
        t = Topics(s.base_topic, s.discovery_prefix)
        topic = t.state("inv-1", "n")
        watcher = Collector(broker.port, [topic], client_id=f"w-{uuid.uuid4().hex[:6]}",
                            clean=False)
        total = 400

        def seen() -> set[int]:
            return {int(p) for p in watcher.on(topic)}

        async def main() -> None:
            h = await started(s, tmp_path / "state")
            for n in range(1, total + 1):
                await h.send(reading(n))
                await asyncio.sleep(0.004)
                if n == 120:
                    await asyncio.to_thread(broker.stop)
                if n == 250:
                    assert h.transport.buffer.backlog >= 100  # held while the broker was away
                    await asyncio.to_thread(broker.start)
            await async_wait_for(lambda: seen() == set(range(1, total + 1)), timeout=30)
            await async_wait_for(lambda: h.transport.buffer.backlog == 0)
            await h.stop()

        asyncio.run(main())
        watcher.close()


def test_transport_restart_redelivers_from_the_buffer(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        s = make_settings(broker.port)
        topic = Topics(s.base_topic, s.discovery_prefix).state("inv-1", "n")

        async def main() -> None:
            h = await started(s, tmp_path / "state")
            await asyncio.to_thread(broker.stop)
            for n in range(1, 61):
                await h.send(reading(n))
            await h.stop()  # cannot deliver: everything stays on disk
            await asyncio.to_thread(broker.start)
            watcher = Collector(broker.port, [topic])
            again = await started(s, tmp_path / "state")
            await async_wait_for(lambda: {int(p) for p in watcher.on(topic)} == set(
                range(1, 61)))
            order = [int(p) for p in watcher.on(topic)]
            assert order == sorted(order)
            await again.stop()
            watcher.close()

        asyncio.run(main())


# -- issue 18: entities right after every restart, commands that say what happened ----------
def config_messages(collector: Collector, prefix: str) -> list[str]:
    return [t for t, p, _ in collector.messages if t.startswith(prefix + "/") and p]


def test_re_describe_publishes_only_changes_and_reconnect_republishes_all(
        tmp_path: Path) -> None:
    """A source re-describing itself (a Modbus reconnect) costs no discovery traffic; a broker
    that lost its retained messages gets discovery, availability and states back at once."""
    with Mosquitto(tmp_path / "broker") as broker:
        s = make_settings(broker.port)
        t = Topics(s.base_topic, s.discovery_prefix)
        live = Collector(broker.port, [f"{s.discovery_prefix}/#", f"{s.base_topic}/#"])

        async def main() -> None:
            h = await started(s, tmp_path / "state")
            await h.send(describe())
            await h.send(reading(1, grid_power=5.0))
            topic = f"{s.discovery_prefix}/sensor/inv-1/grid_power/config"
            await async_wait_for(lambda: live.on(topic) and live.on(t.state("inv-1", "n")))
            first = len(config_messages(live, s.discovery_prefix))
            await h.send(describe())  # unchanged: nothing goes out
            await h.send(reading(2, grid_power=6.0))
            await async_wait_for(lambda: live.on(t.state("inv-1", "n"))[-1:] == [b"2"])
            assert len(config_messages(live, s.discovery_prefix)) == first
            changed = [ValueSpec("grid_power", unit="kW", device_class="power",
                                 state_class="measurement")]
            await h.send(Envelope(source_transport="inverter", kind="event",
                                  data=describe_event(changed), source_transport_info=INFO))
            await async_wait_for(lambda: len(live.on(topic)) == 2)
            assert json.loads(live.on(topic)[-1])["unit_of_measurement"] == "kW"

            await asyncio.to_thread(broker.stop)  # and it forgets everything retained
            for leftover in broker.workdir.glob("*.db"):
                leftover.unlink()
            await asyncio.to_thread(broker.start)
            await async_wait_for(lambda: h.transport.link.connected, timeout=30)
            fresh = Collector(broker.port, [f"{s.discovery_prefix}/#", f"{s.base_topic}/#"])
            want = {topic, t.availability("inv-1"), t.state("inv-1", "grid_power"),
                    t.gateway_status}
            await async_wait_for(lambda: want <= {tp for tp, _, r in fresh.messages if r},
                                 timeout=30)
            assert fresh.on(t.availability("inv-1"))[-1] == b"online"
            assert fresh.on(t.state("inv-1", "grid_power"))[-1] == b"6.0"
            fresh.close()
            await h.stop()

        asyncio.run(main())
        live.close()


def test_descriptions_survive_a_transport_restart(broker: Mosquitto, tmp_path: Path) -> None:
    """The restarted transport announces the described class before any new describe."""
    s = make_settings(broker.port)
    topic = f"{s.discovery_prefix}/sensor/inv-1/grid_power/config"
    configs = Collector(broker.port, [topic])

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(describe())
        await h.send(reading(1, grid_power=5.0))
        await async_wait_for(lambda: configs.on(topic))
        await h.stop()
        again = await started(s, tmp_path)  # no describe this time
        await again.send(reading(2, grid_power=7.0))
        await async_wait_for(lambda: len(configs.on(topic)) == 2)
        await again.stop()

    asyncio.run(main())
    before, after = (json.loads(p) for p in configs.on(topic))
    assert after == before and after["device_class"] == "power"
    assert after["unit_of_measurement"] == "W" and after["state_class"] == "measurement"
    configs.close()


def test_one_device_id_in_two_sections_gives_two_devices(broker: Mosquitto, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    s = make_settings(broker.port)
    configs = Collector(broker.port, [f"{s.discovery_prefix}/#"])

    def from_(source: str, n: int) -> Envelope:
        return Envelope(source_transport=source, kind="reading", data={"grid_power": n},
                        source_transport_info=dict(INFO))

    async def main() -> None:
        h = await started(s, tmp_path)
        for source in ("inverter", "rs485"):
            await h.send(Envelope(source_transport=source, kind="event",
                                  data=describe_event(SPECS), source_transport_info=INFO))
        for n in range(3):
            await h.send(from_("inverter", n))
            await h.send(from_("rs485", n))
        await async_wait_for(lambda: len(configs.matching(r".*/grid_power/config")) == 2,
                             timeout=30)
        await h.stop()

    with caplog.at_level("WARNING"):
        asyncio.run(main())
    found = {t: json.loads(p) for t, p in configs.matching(r".*/grid_power/config").items()}
    assert {c["unique_id"] for c in found.values()} == {"pgw_SN123_grid_power",
                                                       "pgw_rs485_SN123_grid_power"}
    assert {c["state_topic"].split("/")[1] for c in found.values()} == {"inv-1", "rs485_inv-1"}
    warnings = [r for r in caplog.records if "already used by section" in r.getMessage()]
    assert len(warnings) == 1, warnings  # logged once, not per reading
    configs.close()


class ReadBackDevice(FakeDevice):
    """Answers writes as a Modbus device does: with the value read back after the write."""

    def __init__(self, harness: Harness, readback: dict[str, Any] | None) -> None:
        super().__init__(harness)
        self.readback = readback

    async def serve(self) -> None:
        while True:
            for cmd in self.h.of_kind("command")[self.done:]:
                self.done += 1
                if cmd.data["command"] != "write":
                    continue
                self.writes.append(cmd.data)
                extra = {} if self.readback is None else {"values": self.readback}
                await self.h.send(Envelope(
                    source_transport="inverter", kind="event", target_transport="mqtt_out",
                    data=command_result(cmd.data, True, "ok", **extra),
                    source_transport_info=dict(INFO)))
            await asyncio.sleep(0.01)


def test_set_limits_rounding_readback_and_retained(broker: Mosquitto, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    s = make_settings(broker.port)
    t = Topics(s.base_topic, s.discovery_prefix)
    watch = Collector(broker.port, [t.result("+"), f"{s.base_topic}/inv-1/max_charge_current"])
    state = t.state("inv-1", "max_charge_current")

    def answers() -> list[dict[str, Any]]:
        return [json.loads(p) for p in watch.on(t.result("inv-1"))]

    async def main() -> None:
        h = await started(s, tmp_path)
        device = ReadBackDevice(h, {"max_charge_current": 17})
        server = asyncio.create_task(device.serve())
        await h.send(describe())
        await h.send(reading(1, max_charge_current=10))
        await async_wait_for(lambda: watch.on(state) == [b"10"])
        pub = watch.client.publish

        pub(t.command("inv-1", "max_charge_current"), "16.5", qos=1)  # step 1
        await async_wait_for(lambda: len(answers()) == 1)
        assert device.writes[-1]["values"] == {"max_charge_current": 17}
        first = answers()[0]
        assert first["ok"] and first["requested"] == 16.5
        assert "16.5 rounded to 17" in first["detail"]
        # the read-back is the state at once, not at the next scan
        await async_wait_for(lambda: watch.on(state)[-1:] == [b"17"])

        huge = b"9" * (1 << 20)
        pub(t.command("inv-1", "max_charge_current"), huge, qos=1)
        await async_wait_for(lambda: len(answers()) == 2)
        refused = answers()[1]
        assert refused["result"] == "rejected" and "4096" in refused["detail"]
        assert len(json.dumps(refused)) < 400 and refused["payload"] == ""

        pub(t.command("inv-1", "max_charge_current"), b"12", qos=1, retain=True)  # live
        await async_wait_for(lambda: len(answers()) == 3)
        assert answers()[2]["result"] == "rejected" and "retained" in answers()[2]["detail"]
        pub(t.command("inv-1", "max_charge_current"), b"", qos=1, retain=True)  # clearing it
        pub(t.command("inv-1", "max_charge_current"), b"11", qos=1)
        await async_wait_for(lambda: len(answers()) == 4)
        assert answers()[3]["ok"]  # the empty retained message made no result of its own
        assert [w["values"]["max_charge_current"] for w in device.writes] == [17, 11]
        server.cancel()
        await h.stop()

    with caplog.at_level("DEBUG"):
        asyncio.run(main())
    longest = max(len(r.getMessage()) for r in caplog.records)
    assert longest < 600, longest  # a 1 MB payload never reaches a log line
    watch.close()


def test_set_payload_rounding_and_limits_table() -> None:
    amps = ValueSpec("amps", writable=True, minimum=6, maximum=32, step=1)
    tenth = ValueSpec("soc", writable=True, minimum=0, maximum=100, step=0.1)
    assert parse_set_payload(b"16.5", amps).value == 17
    assert parse_set_payload(b"16.4", amps).note == "16.4 rounded to 16 (step 1)"
    assert parse_set_payload(b"16", amps).note == ""
    assert parse_set_payload(b"33.3", tenth).value == 33.3
    assert parse_set_payload(b"33.33", tenth).value == 33.3
    with pytest.raises(mqtt_module.CommandError) as exc:
        parse_set_payload(b"x" * 5000, amps)
    assert "xxx" not in exc.value.detail
    with pytest.raises(mqtt_module.CommandError) as exc:
        parse_set_payload(("y" * 3000).encode(), amps)
    assert len(exc.value.detail) < 150
    switch = ValueSpec("ac_charge", kind="switch", writable=True, options=("Off", "On"))
    assert parse_set_payload(b"ON", switch).value == "On"  # an Off/On enum register
    assert mqtt_module.encode_state("On", switch) == "ON"
    assert mqtt_module.encode_state("Off", switch) == "OFF"


def test_a_flood_of_bad_set_payloads_is_one_warning_and_every_result(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_settings(broker.port)
    t = Topics(s.base_topic, s.discovery_prefix)
    watch = Collector(broker.port, [t.result("+"), f"{s.base_topic}/inv-1/max_charge_current"])
    state = t.state("inv-1", "max_charge_current")

    async def main() -> None:
        h = await started(s, tmp_path)
        await h.send(describe())
        await h.send(reading(1, max_charge_current=10))
        await async_wait_for(lambda: watch.on(state) == [b"10"])
        for i in range(50):
            watch.client.publish(t.command("inv-1", "max_charge_current"), f"x{i}", qos=1)
        await async_wait_for(lambda: len(watch.on(t.result("inv-1"))) == 50)
        await h.stop()

    with caplog.at_level("INFO"):
        asyncio.run(main())
    refused = [r for r in caplog.records
               if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    watch.close()
