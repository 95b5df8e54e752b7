"""paho-mqtt's network thread on one side, the transport's asyncio loop on the other.

Why paho's own thread: it reconnects with exponential backoff (``reconnect_delay_set``) and
re-sends unacknowledged QoS 1/2 messages after a reconnect, so a short broker restart costs
no duplicates. Every paho callback runs in that thread and only hops into the event loop with
``call_soon_threadsafe``; nothing else here touches the loop from the thread.

``publish_many`` returns once the broker acknowledged every message (PUBACK for QoS 1,
PUBCOMP for QoS 2, written to the socket for QoS 0), which is what the store-and-forward
buffer waits for before deleting a batch.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.backoff import FailureLog
from gateway.buffer import SinkUnavailable

Message = tuple[str, str | bytes, int, bool]  # topic, payload, qos, retain


@dataclass(frozen=True)
class LinkOptions:
    host: str
    port: int
    client_id: str
    keepalive: int = 60
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    max_inflight: int = 100
    will_topic: str = ""
    will_payload: str = ""


class MqttLink:
    """One broker connection. ``on_connected`` and ``on_message`` run in the event loop."""

    def __init__(
        self,
        options: LinkOptions,
        log: logging.Logger,
        subscriptions: Sequence[tuple[str, int]],
        *,
        on_connected: Callable[[], None],
        on_message: Callable[[str, bytes, bool], None],
        birth: Message | None = None,
        counters: Any = None,
    ) -> None:
        self.options = options
        self.log = log
        self.subscriptions = list(subscriptions)
        self.birth = birth
        self._on_connected = on_connected
        self._on_message = on_message
        # the broker's outages in the transport's status too (LAST ERROR, then "recovered")
        self.failure = FailureLog(log, f"MQTT broker {options.host}:{options.port}", counters)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._closing = False
        self._acked_lock = threading.Lock()
        self._acked_mids: list[int] = []
        self._ack_hop_pending = False
        self.connected = False

    # -- paho thread side ----------------------------------------------------------------
    def _hop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def _paho_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._hop(self.failure.failed, f"broker refused the connection: {reason}")
            return
        for topic, qos in self.subscriptions:
            # retain-as-published: a retained message keeps its flag when it arrives live,
            # so the transport can treat every retained /set the same way
            client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))
        if self.birth is not None:
            topic, payload, qos, retain = self.birth
            client.publish(topic, payload, qos, retain)
        self._hop(self._connected_in_loop)

    def _paho_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._hop(self._disconnected_in_loop, str(reason))

    def _paho_connect_fail(self, _c: Any, _u: Any) -> None:
        self._hop(self.failure.failed, "cannot connect (refused, unreachable or TLS failure)")

    def _paho_publish(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        # Acknowledgements come in bursts: one wake-up of the loop per burst, not per message.
        with self._acked_lock:
            self._acked_mids.append(mid)
            if self._ack_hop_pending:
                return
            self._ack_hop_pending = True
        self._hop(self._drain_acks)

    def _paho_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self._hop(self._on_message, msg.topic, bytes(msg.payload), bool(msg.retain))

    # -- event loop side -----------------------------------------------------------------
    def _connected_in_loop(self) -> None:
        self.connected = True
        self.failure.recovered()
        self.log.info("connected to MQTT broker %s:%d", self.options.host, self.options.port)
        self._on_connected()

    def _disconnected_in_loop(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if was and not self._closing:
            self.failure.failed(f"connection lost: {reason}")

    def _drain_acks(self) -> None:
        with self._acked_lock:
            mids, self._acked_mids = self._acked_mids, []
            self._ack_hop_pending = False
        for mid in mids:
            future = self._acks.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(None)

    def start(self) -> None:
        """Create the client and let paho's thread connect (and reconnect) in the background."""
        o = self.options
        self._loop = asyncio.get_running_loop()
        # MQTT 5 (Mosquitto >= 1.6 and every current broker): for retain-as-published.
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=paho.MQTTv5,
        )
        if o.username:
            client.username_pw_set(o.username, o.password or None)
        if o.tls:
            client.tls_set(
                ca_certs=o.ca_file or None,
                certfile=o.cert_file or None,
                keyfile=o.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if o.tls_insecure:
                client.tls_insecure_set(True)
        if o.will_topic:
            client.will_set(o.will_topic, o.will_payload, qos=1, retain=True)
        client.reconnect_delay_set(max(1, round(o.reconnect_min)), max(1, round(o.reconnect_max)))
        client.max_inflight_messages_set(o.max_inflight)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_connect_fail = self._paho_connect_fail
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        self._client = client
        client.connect_async(o.host, o.port, o.keepalive, clean_start=True)
        client.loop_start()

    def publish_nowait(self, topic: str, payload: str | bytes, qos: int, retain: bool) -> None:
        """Fire and forget (discovery configs: re-sent on every connect anyway)."""
        if self._client is not None and self.connected:
            self._client.publish(topic, payload, qos, retain)

    async def publish_many(self, messages: Sequence[Message], timeout: float) -> None:
        """Publish all; return when the broker acknowledged all, else SinkUnavailable."""
        client = self._client
        if client is None or not self.connected:
            raise SinkUnavailable("not connected to the MQTT broker")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        mids: list[int] = []
        try:
            for topic, payload, qos, retain in messages:
                info = client.publish(topic, payload, qos, retain)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    # QoS>0 stays queued in paho and is re-sent after the reconnect; the
                    # buffer retries the batch too (at-least-once: a duplicate is possible).
                    raise SinkUnavailable(f"publish failed: {paho.error_string(info.rc)}")
                future: asyncio.Future[None] = loop.create_future()
                self._acks[info.mid] = future
                futures.append(future)
                mids.append(info.mid)
            if futures:
                _, waiting = await asyncio.wait(futures, timeout=timeout)
                if waiting:
                    raise SinkUnavailable(
                        f"{len(waiting)} of {len(futures)} messages not acknowledged by the "
                        f"broker within {timeout} s"
                    )
        finally:
            for mid in mids:
                self._acks.pop(mid, None)

    async def stop(self, last_words: Message | None = None, timeout: float = 2.0) -> None:
        """Say goodbye (retained "offline"), disconnect cleanly, join paho's thread."""
        client = self._client
        if client is None:
            return
        if last_words is not None and self.connected:
            try:
                await self.publish_many([last_words], timeout)
            except SinkUnavailable as exc:
                self.log.debug("could not publish %s on the way out: %s", last_words[0], exc)
        self._closing = True
        client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)
        self.connected = False
        self._client = None
        self._acks.clear()
