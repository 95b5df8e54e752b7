"""``mqtt``: readings out to a broker, commands in from it, Home Assistant discovery.

Readings, availability and command results go through the store-and-forward buffer
(gateway/buffer.py), so a broker outage or a restart of this transport loses nothing; discovery
configs are state, not history, and are simply re-published on every (re)connect and whenever
Home Assistant says it came online. Topic layout and payloads: transports/mqtt_discovery.py and
docs/transports/mqtt.md.
"""

from __future__ import annotations

import json
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.backoff import RepeatLog
from gateway.buffer import SinkUnavailable
from gateway.buffered import BufferedOutput
from gateway.instance import mqtt_client_id
from gateway.message import EVENT, READING, STATUS, Envelope, ValueSpec
from transports import register
from transports.base import TransportContext
from transports.mqtt_client import LinkOptions, Message, MqttLink
from transports.mqtt_discovery import (
    MAX_SET_PAYLOAD,
    OFFLINE,
    ONLINE,
    CommandError,
    DeviceIdentity,
    Topics,
    default_spec,
    discovery_config,
    encode_state,
    gateway_config,
    gateway_identifier,
    parse_set_payload,
    platform_for,
    shorten,
    spec_from_dict,
    value_slug,
)
from transports.mqtt_registry import EntityRegistry
from transports.mqtt_settings import MqttSettings

DESCRIBE_RETRY = 60.0  # seconds between describe requests to a silent source
DESCRIBE_GRACE = 5.0  # seconds to wait for a describe before announcing plain sensors
PENDING_MAX = 1000  # command request ids remembered for their results


@dataclass
class Device:
    """One physical device as seen on the bridge."""

    identity: DeviceIdentity
    source: str  # the transport that owns it: commands go there
    device_id: str  # device_identifier from its envelopes ("" for single-device transports)
    values: dict[str, str] = field(default_factory=dict)  # topic slug -> value name
    last: dict[str, Any] = field(default_factory=dict)  # value name -> last value seen
    first_seen: float = field(default_factory=time.monotonic)


@register
class MqttTransport(BufferedOutput[MqttSettings]):
    kind = "mqtt"
    Settings = MqttSettings
    accepts: ClassVar[frozenset[str]] = frozenset({READING, STATUS, EVENT})
    buffer_file = "mqtt-buffer.sqlite3"
    ready_at_start = False  # delivery waits for the broker: no attempt, no warning before

    def __init__(self, settings: MqttSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.topics = Topics(settings.base_topic, settings.discovery_prefix)
        self.devices: dict[str, Device] = {}
        self.registry = EntityRegistry(ctx.state_dir / "mqtt-registry.json", self.log)
        self.registry.load()
        self.gateway_id = gateway_identifier(self.topics)
        self.announced: dict[tuple[str, str], str] = {}  # (node, value) -> config topic
        #: config topic -> payload published on the current broker connection (cleared on
        #: every connect: a broker restarted without persistence has forgotten them all)
        self.published: dict[str, str] = {}
        self._duplicates: set[tuple[str, str]] = set()  # (node, section) warned about
        self._refusals = RepeatLog(self.log)  # a flood of bad /set: one line per kind, counted
        self.availability: dict[str, str] = {}
        #: request id -> (node, value name, rounding note, number asked for, value written)
        self.pending: OrderedDict[str, tuple[str, str, str, Any, Any]] = OrderedDict()
        self._asked: dict[str, float] = {}
        self._described_sources: set[str] = set()
        self._requests = 0
        self.link: MqttLink | None = None
        for key in ("commands", "command_errors"):
            ctx.counters.extra.setdefault(key, 0)

    # -- life (the buffer's part is BufferedOutput's) ------------------------------------
    def sink_name(self) -> str:
        return f"delivery to MQTT broker {self.settings.host}:{self.settings.port}"

    async def open_sink(self) -> None:
        if self.link is not None:
            return
        s = self.settings
        # Per instance: a broker drops one of two clients that share an id.
        client_id = mqtt_client_id(s.client_id, self.ctx.general.instance) if s.client_id else (
            f"pgw-{socket.gethostname()}-{self.ctx.general.instance}-{self.ctx.name}"
        )
        subscriptions: list[tuple[str, int]] = []
        if s.commands:
            subscriptions.append((self.topics.command_filter, 1))
        if s.discovery:
            subscriptions.append((self.topics.ha_status, 1))
        self.link = MqttLink(
            LinkOptions(
                host=s.host, port=s.port, client_id=client_id, keepalive=s.keepalive,
                username=s.username, password=s.password.get_secret_value(),
                tls=s.use_tls, ca_file=s.ca_file, cert_file=s.cert_file, key_file=s.key_file,
                tls_insecure=s.tls_insecure, reconnect_min=s.reconnect_min,
                reconnect_max=s.reconnect_max, max_inflight=s.max_inflight,
                will_topic=self.topics.gateway_status, will_payload=OFFLINE,
            ),
            self.log,
            subscriptions,
            on_connected=self._connected,
            on_message=self._message,
            birth=(self.topics.gateway_status, ONLINE, 1, True),
            counters=self.ctx.counters,
        )
        self.link.start()

    async def close_sink(self) -> None:
        if self.link is not None:
            await self.link.stop(last_words=(self.topics.gateway_status, OFFLINE, 1, True))
            self.link = None

    # -- envelopes in --------------------------------------------------------------------
    def keep(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Describe events update discovery; the rest is stored for delivery."""
        keep: list[Envelope] = []
        for envelope in envelopes:
            if envelope.kind == EVENT and envelope.data.get("event") == "describe":
                # no device from a describe alone: one never read would be a ghost in HA
                self._described(envelope)
                continue
            device = self._note(envelope)
            if envelope.kind == READING:
                self._ask_describe(device)
                self._announce(device)
            keep.append(envelope)
        return keep

    def _note(self, envelope: Envelope) -> Device:
        """The device an envelope is about (created or refreshed from its identity)."""
        info = envelope.source_transport_info or {}
        if not info.get("device_identifier"):
            same = [d for d in self.devices.values() if d.source == envelope.source_transport]
            if len(same) == 1 and (not info or envelope.kind not in (READING, EVENT)):
                return self._seen(same[0], envelope)
        identity = self._identity(envelope.source_transport, info)
        device = self.devices.get(identity.node)
        refresh = envelope.kind in (READING, EVENT) and info and device is not None and (
            device.identity != identity
        )
        if device is None or refresh:
            old = device
            device = Device(identity, envelope.source_transport, info.get("device_identifier", ""))
            if old is not None:
                device.values, device.last = old.values, old.last
            for key in ((device.source, ""), (device.source, device.device_id)):
                for name in self.registry.specs.get(key, {}):  # described before first seen
                    device.values.setdefault(value_slug(name), name)
            self.devices[identity.node] = device
        return self._seen(device, envelope)

    def _identity(self, source: str, info: dict[str, str]) -> DeviceIdentity:
        """The device's identity; qualified by section when another section has its id."""
        identity = DeviceIdentity.from_info(source, info, via=self.gateway_id)
        if self.registry.claim(identity.node, identity.uid, source):
            return identity
        qualified = identity.qualified(source)
        if (identity.node, source) not in self._duplicates:
            self._duplicates.add((identity.node, source))
            owner = self.registry.owners.get(f"node:{identity.node}") or self.registry.owners.get(
                f"uid:{identity.uid}", "?")
            self.ctx.counters.error(f"device id {identity.node} used by {owner} and {source}")
            self.log.warning(
                "section %s reports device %r (serial %r), already used by section %s: "
                "published as %s so that both appear; give one a distinct identity",
                source, identity.node, identity.serial, owner, qualified.node)
        return qualified

    @staticmethod
    def _seen(device: Device, envelope: Envelope) -> Device:
        if envelope.kind == READING:
            for name, value in envelope.data.items():
                device.values.setdefault(value_slug(name), name)
                device.last[name] = value
        return device

    def spec(self, device: Device, name: str) -> ValueSpec | None:
        return self.registry.spec(device.source, device.device_id, name)

    def _described(self, envelope: Envelope) -> None:
        values = envelope.data.get("values") or {}
        specs: dict[str, ValueSpec] = {}
        for name, raw in values.items():
            try:
                specs[name] = spec_from_dict({**raw, "name": name})
            except (TypeError, ValueError) as exc:
                self.ctx.counters.error(f"bad describe for {name}: {exc}")
                self.log.warning("describe from %s: value %r unusable: %s",
                                 envelope.source_transport, name, exc)
        device_id = (envelope.source_transport_info or {}).get("device_identifier", "")
        self.registry.describe(envelope.source_transport, device_id, specs)
        self._described_sources.add(envelope.source_transport)
        for other in self.devices.values():
            if other.source == envelope.source_transport and device_id in ("", other.device_id):
                for name in specs:
                    other.values.setdefault(value_slug(name), name)
                self._announce(other)  # only what changed: a reconnect re-describes the same

    def _ask_describe(self, device: Device) -> None:
        if device.source in self._described_sources:
            return
        now = time.monotonic()
        if now - self._asked.get(device.source, -DESCRIBE_RETRY) < DESCRIBE_RETRY:
            return
        self._asked[device.source] = now
        self._requests += 1
        data = {"command": "describe", "request_id": f"{self.ctx.name}-describe-{self._requests}"}
        self.ctx.command(device.source, data)

    # -- discovery ---------------------------------------------------------------------
    def _announce(self, device: Device) -> None:
        """Publish the discovery configs of the device's values that differ from what this
        broker connection already has (a re-describe on a Modbus reconnect publishes nothing).

        Only values the device has reported (and buttons, which have no state) are announced:
        an entity whose state topic is never written would sit "unknown" in HA forever.
        """
        link = self.link
        if not self.settings.discovery or link is None or not link.connected:
            return
        described = self.registry.described(device.source)
        waited = time.monotonic() - device.first_seen > DESCRIBE_GRACE
        for name in list(device.values.values()):
            spec = self.spec(device, name)
            if spec is None:
                if not (described or waited) or name not in device.last:
                    continue
                spec = default_spec(name, device.last[name])
            elif platform_for(spec) == "button":
                if not spec.writable:
                    continue  # a button nobody may press: nothing to show
            elif name not in device.last:
                continue
            key = (device.identity.node, name)
            topic, payload = discovery_config(self.topics, device.identity, spec, self.settings.qos)
            old = self.announced.get(key)
            if old is not None and old != topic:
                link.publish_nowait(old, b"", 1, True)  # the platform changed: remove the old
                self.published.pop(old, None)
            self._publish_config(topic, payload)
            self.announced[key] = topic

    def _publish_config(self, topic: str, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        if self.published.get(topic) == text or self.link is None:
            return
        self.link.publish_nowait(topic, text, 1, True)
        self.published[topic] = text

    def _connected(self) -> None:
        """A (re)connect, or Home Assistant came online: the broker may have lost every retained
        message (restarted without persistence), so give it all we know at once: discovery,
        each device's availability and its last states, without waiting for the next scan."""
        self.published.clear()
        link = self.link
        if link is not None and link.connected:
            qos, retain = self.settings.qos, self.settings.retain
            if self.settings.discovery:
                self._publish_config(*gateway_config(self.topics, qos))
            for device in self.devices.values():
                if not device.last:
                    continue  # never read: nothing to show yet
                node = device.identity.node
                self._announce(device)
                link.publish_nowait(self.topics.availability(node),
                                    self.availability.get(node, ONLINE), qos, True)
                if self.buffer.backlog:
                    continue  # newer states are on their way from the buffer, in order
                for name, value in device.last.items():
                    link.publish_nowait(self.topics.state(node, value_slug(name)),
                                        encode_state(value, self.spec(device, name)), qos, retain)
        self.sink_up()

    # -- commands in ---------------------------------------------------------------------
    def _message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            self._handle_message(topic, payload, retained)
        except Exception as exc:  # a bad message must never stop the transport
            self.log.exception("message on %s not handled; payload %r", shorten(topic, 200),
                               payload[:200])
            parsed = self.topics.parse_command(topic)
            if parsed is not None:
                self._refuse(*parsed, payload, CommandError("error", f"internal error: {exc}"))

    def _handle_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.topics.ha_status:
            if payload.strip().lower() == ONLINE.encode():
                self._connected()
            return
        parsed = self.topics.parse_command(topic)
        if parsed is None:
            return
        node, slug_ = parsed
        if not payload:
            # Clearing a retained /set (an empty retained message) is housekeeping, not a write.
            self.log.debug("empty message on %s ignored", shorten(topic, 200))
            return
        if retained:
            # MQTT 5's retain-as-published shows the flag on live messages too, so a retained
            # /set is refused the same way whether it was there at connect or arrives later.
            self._refuse(node, slug_, payload, CommandError(
                "rejected", "retained /set refused: publish commands with retain off "
                "(a retained one would be replayed at every reconnect); clear it with an "
                "empty retained message"))
            return
        device = self.devices.get(node)
        if device is None:
            self._refuse(node, slug_, payload, CommandError(
                "unknown_device", f"no device {shorten(node)!r} seen yet"))
            return
        name = device.values.get(slug_, slug_)
        try:
            request = parse_set_payload(payload, self.spec(device, name))
        except CommandError as exc:
            self._refuse(node, slug_, payload, exc)
            return
        self._requests += 1
        request_id = request.request_id or f"{self.ctx.name}-{self._requests}"
        data: dict[str, Any] = {"command": "write", "values": {name: request.value},
                                "request_id": request_id}
        if device.device_id:
            data["device"] = device.device_id
        self.pending[request_id] = (node, name, request.note, request.requested, request.value)
        while len(self.pending) > PENDING_MAX:
            self.pending.popitem(last=False)
        self.ctx.counters.incr("commands")
        # Never waits: the runner sends it inside the target's command window or answers it
        # busy at once (the result comes back through receive_batch like any other).
        self.ctx.command(device.source, data)

    def _refuse(self, node: str, value: str, payload: bytes, exc: CommandError) -> None:
        """A short result and one log line; neither carries more than ~200 characters of what
        the sender wrote (a payload over MAX_SET_PAYLOAD is not quoted at all)."""
        self.ctx.counters.extra["command_errors"] = (
            int(self.ctx.counters.extra["command_errors"]) + 1
        )
        shown_node, shown_value = shorten(node, 80), shorten(value, 80)
        self.ctx.counters.error(exc.detail[:200])
        quoted = payload[:100] if len(payload) <= MAX_SET_PAYLOAD else b""
        self._refusals.warn(f"{shown_node}/{shown_value} {exc.result}",
                            "command on %s/%s refused (%s): %s; payload %r (%d bytes)",
                            shown_node, shown_value, exc.result, exc.detail[:200], quoted,
                            len(payload))
        body = {"value": shown_value, "ok": False, "result": exc.result,
                "detail": exc.detail[:200], "request_id": "",
                "payload": quoted.decode("utf-8", "backslashreplace")}
        if self.link is not None:
            self.link.publish_nowait(self.topics.result(node), json.dumps(body), 1, False)

    # -- the sink the buffer writes to ---------------------------------------------------
    async def write(self, batch: Sequence[Envelope]) -> None:
        if self.link is None or not self.link.connected:
            self.sink_down()  # wait for the next connection (the link logs the outage)
            raise SinkUnavailable("not connected to the MQTT broker")
        messages, availability = self._render(batch)
        await self.link.publish_many(messages, self.settings.publish_timeout)
        self.availability.update(availability)

    def _render(self, batch: Sequence[Envelope]) -> tuple[list[Message], dict[str, str]]:
        qos, retain, topics = self.settings.qos, self.settings.retain, self.topics
        messages: list[Message] = []
        availability: dict[str, str] = {}
        for env in batch:
            device = self._note(env)
            node = device.identity.node
            if env.kind == READING:
                if node not in self.availability and node not in availability:
                    availability[node] = ONLINE
                    messages.append((topics.availability(node), ONLINE, qos, True))
                for name, value in env.data.items():
                    messages.append((topics.state(node, value_slug(name)),
                                     encode_state(value, self.spec(device, name)), qos, retain))
            elif env.kind == STATUS:
                state = ONLINE if env.data.get("available") else OFFLINE
                availability[node] = state
                messages.append((topics.availability(node), state, qos, True))
            elif env.data.get("event") == "command_result":
                messages += self._result_messages(env, device)
            else:
                messages.append((topics.event(node), json.dumps(env.data, default=str), qos,
                                 False))
        return messages, availability

    def _result_messages(self, env: Envelope, device: Device) -> list[Message]:
        """The result, and the read-back values the device sent with it as states at once
        (HA's slider would otherwise snap back until the next scan)."""
        data = env.data
        request_id = str(data.get("request_id", ""))
        node, value, note, requested, written = self.pending.pop(
            request_id, (device.identity.node, "", "", None, None))
        target = self.devices.get(node, device)
        detail = str(data.get("detail", ""))
        body: dict[str, Any] = {
            "request_id": request_id, "value": value, "ok": bool(data.get("ok")),
            "result": data.get("result", ""), "detail": "; ".join(p for p in (note, detail) if p),
            "command": data.get("command", ""),
        }
        if requested is not None:
            body["requested"] = requested  # and "detail" says what it was rounded to
        qos, retain = self.settings.qos, self.settings.retain
        messages: list[Message] = []
        readback = data.get("values")
        if not isinstance(readback, dict) and data.get("ok") and value and written is not None:
            readback = {value: written}  # accepted, no read-back sent: the value written
        if isinstance(readback, dict):
            for name, got in readback.items():
                target.last[name] = got
                messages.append((self.topics.state(target.identity.node, value_slug(name)),
                                 encode_state(got, self.spec(target, name)), qos, retain))
        messages.append((self.topics.result(node), json.dumps(body, default=str), qos, False))
        return messages
