"""``transport = rapi_serial``: an OpenEVSE controller over RAPI on a serial port, PTY or TCP.

This module only moves bytes and keeps time: framing and checksums are ``protocols/rapi.py``,
reply decoding ``protocols/rapi_replies.py``, readings, value specs and command planning
``protocols/rapi_values.py``. Shape of the conversation, as the OpenEVSE WiFi module has it: one
command in flight, a short timeout, async lines (``$AT``...) handled as events whenever they come,
also between a command and its reply. A sequence id on each command lets a late reply be told
from the awaited one when the peer echoes it; a peer that doesn't still works.

Neighbours: ``transports/serial_link.py`` turns the pyserial port (serial device, PTY or
``socket://host:port``) into an asyncio byte link; ``transports/rapi_commands.py`` runs command
envelopes step by step. What stays here is the life cycle: connect, identify, poll, pulse the
heartbeat, match replies to the command in flight. Reconnecting with backoff, the failure and
recovery logs and the availability envelopes are ``transports/device.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections import OrderedDict
from typing import Any

from gateway.backoff import Backoff, RepeatLog
from gateway.coalesce import Coalescer
from gateway.message import EVENT, Envelope, ValueSpec, command_result, describe_event
from gateway.settings import serial_identity
from protocols import rapi_replies as rr
from protocols.rapi import RapiFrame, RapiGarbage, RapiParser, encode_command, escape
from protocols.rapi_values import HEARTBEAT_ACK, POLLED, Snapshot, set_current_step, value_specs
from transports import register
from transports.base import TransportContext
from transports.charger import CHARGER
from transports.device import DeviceTransport
from transports.rapi_charger import OWNER_ONLY, charger_status, user_request
from transports.rapi_commands import CommandState, execute_command
from transports.rapi_settings import RapiSerialSettings
from transports.serial_link import OPEN_ERRORS, LinkDown, SerialLink

#: this many commands in a row without an answer: the controller is gone, reconnect.
DEAD_AFTER_TIMEOUTS = 3
#: forwarded writes remembered for their answer (the bridge's command window is 16)
FORWARDED_MAX = 64
#: a poll woken early (after a command or an $AT) comes at least this long after the last.
MIN_POLL_GAP = 1.0


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` s. Not ``asyncio.wait_for``: on 3.11 that can
    swallow a cancellation arriving as the event fires, and a stop would hang."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


@register
class RapiSerialTransport(DeviceTransport[RapiSerialSettings]):
    kind = "rapi_serial"
    Settings = RapiSerialSettings
    #: commands, and the owner's results to the writes this charger forwarded to it
    accepts = frozenset({"command", EVENT})
    provides = frozenset({CHARGER})  # transports/charger.py, transports/rapi_charger.py

    def __init__(self, settings: RapiSerialSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.snapshot = Snapshot()
        self.info: dict[str, str] = {"transport_name": ctx.name}
        self._parser = RapiParser()
        self._link: SerialLink | None = None
        self._lock = asyncio.Lock()
        self._pending: tuple[int | None, asyncio.Future[RapiFrame]] | None = None
        self._seq = 0
        self._use_seq = settings.use_sequence_ids
        self._timeouts_in_row = 0
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._wake = asyncio.Event()
        # device events ($AT/$AB/$AN) wait here, one slot per kind: a flood is folded, not queued
        self._events = Coalescer(settings.event_min_interval)
        self._repeats = RepeatLog(self.log)
        self._connected = False
        self._unsupported: set[str] = set()
        self._rapi: tuple[int, ...] = (5,)
        self._commanded = CommandState(pulse_interval=float(settings.heartbeat_interval))
        #: request id of a write forwarded to the owner -> who asked for it
        self._forwarded: OrderedDict[str, str] = OrderedDict()
        self._garbage_logged = 0.0
        for key in ("garbage", "timeouts", "stale_replies", "bad_replies", "commands",
                    "events_coalesced"):
            ctx.counters.extra.setdefault(f"rapi_{key}", 0)

    # -- life (the reconnect loop is DeviceTransport's) ----------------------------------
    def peer_name(self) -> str:
        return f"RAPI controller at {self.settings.port}"

    def backoff(self) -> Backoff:
        s = self.settings
        return Backoff(s.reconnect_backoff_ms / 1000.0, 30.0, s.reconnect_timeout_sec)

    def device_info(self) -> dict[str, str]:
        return self.info

    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]]:
        return [(dict(self.info), value_specs(self.snapshot.current_range))]

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def open(self) -> SerialLink:
        self._lost.clear()
        self._lost_reason = ""
        self._parser.reset()
        self._timeouts_in_row = 0
        self._unsupported.clear()
        link = SerialLink(self.settings.port, self.settings.baudrate, name="rapi")
        try:
            await link.open(self._on_data, self._on_lost)
        except OPEN_ERRORS as exc:
            await link.close()
            raise LinkDown(f"cannot open: {exc}") from exc
        self._link = link
        return link

    async def serve(self, link: SerialLink) -> None:
        """One connection's life; raises LinkDown when it ends, returns when we stop."""
        tasks = {
            asyncio.create_task(self._serve(), name="rapi-serve"),
            asyncio.create_task(self._lost.wait()),
            asyncio.create_task(self.ctx.stopping.wait()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = ""
            for task in done:
                if task.get_name() == "rapi-serve":
                    exc = task.exception()
                    if isinstance(exc, LinkDown):
                        reason = str(exc)
                    elif exc is not None:
                        raise exc
            if self._lost.is_set():
                reason = self._lost_reason
            if not self.ctx.stopping.is_set():
                raise LinkDown(reason or "disconnected")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def release(self, link: SerialLink) -> None:
        self._link = None
        self._connected = False
        await link.close()
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(LinkDown("disconnected"))

    async def _serve(self) -> None:
        drain = asyncio.create_task(self._drain_outbox())
        pulse = asyncio.create_task(self._pulse())
        try:
            await self._identify()
            self._connected = True
            await self.link_up("connected")
            await self._emit("event", describe_event(value_specs(self.snapshot.current_range)))
            await self._restore()
            gap = min(MIN_POLL_GAP, self.settings.read_interval)
            while True:
                self._wake.clear()
                polled = time.monotonic()
                await self._poll()
                await self._emit("reading", self.snapshot.reading())
                await wait_event(self._wake, self.settings.read_interval)
                # a woken poll (after a command or $AT) waits out the gap: a burst of
                # set_current must not turn into a burst of polls on a 115200 baud line
                await asyncio.sleep(max(0.0, gap - (time.monotonic() - polled)))
        finally:
            for task in (drain, pulse):
                task.cancel()
            await asyncio.gather(drain, pulse, return_exceptions=True)

    async def _identify(self) -> None:
        self._use_seq = self.settings.use_sequence_ids
        version = await self._ask("GV")
        if version is None and self._use_seq:
            self._use_seq = False  # a pre-3.0 controller takes ":ss" for a parameter
            version = await self._ask("GV")
            if version is not None:
                self.log.info("controller refuses sequence ids; sending without")
        if version is None:
            raise LinkDown("no answer to $GV")
        v = rr.parse_version(version)
        self._rapi = v.rapi_tuple or (5,)
        mcu = await self._ask("GI")
        raw_id = mcu[0] if mcu else serial_identity(self.settings.port)
        ident = re.sub(r"[^A-Za-z0-9]+", "_", raw_id).strip("_")
        self.info.update(
            device_identifier=f"openevse_{ident}",
            device_manufacturer="OpenEVSE",
            device_model=f"OpenEVSE controller (RAPI {v.rapi or '?'})",
            device_serial_number=mcu[0] if mcu else "",
            device_name=self.ctx.name,
            firmware_version=v.firmware,
        )
        await self._ask_into("GC")
        self.log.info("RAPI controller %s firmware %s RAPI %s", ident, v.firmware, v.rapi)

    async def _restore(self) -> None:
        """After a (re)connect or a controller boot: heartbeat and our volatile current."""
        s = self.settings
        if s.heartbeat_interval > 0:
            await self._ask("SY", str(s.heartbeat_interval), str(s.heartbeat_amps))
        if self._commanded.last_current is not None:
            await self._ask("SC", *set_current_step(self._commanded.last_current).params)

    async def _poll(self) -> None:
        heartbeat = self._commanded.pulse_interval > 0 or self.snapshot.heartbeat
        names = POLLED + (("GY",) if heartbeat else ())
        for name in names:
            await self._ask_into(name)

    async def _pulse(self) -> None:
        """Our own ``$SY`` pulses; a missed one is acknowledged and our current re-sent."""
        while True:
            interval = self._commanded.pulse_interval
            await asyncio.sleep(max(0.2, interval / 3.0) if interval > 0 else 1.0)
            if interval <= 0 or not self._connected:
                continue
            try:
                reply = await self._request("SY", dead_check=False)
                if reply is not None and not reply.ok:
                    self.log.warning("controller reports a missed heartbeat; acknowledging")
                    await self._request("SY", str(HEARTBEAT_ACK), dead_check=False)
                    if self._commanded.last_current is not None:
                        step = set_current_step(self._commanded.last_current)
                        await self._request(step.name, *step.params, dead_check=False)
                    await self._emit("event", {"event": "heartbeat_missed"})
            except LinkDown:
                continue  # the session notices and reconnects

    # -- requests -------------------------------------------------------------------------
    async def _ask(self, name: str, *params: str) -> tuple[str, ...] | None:
        """Params of an ``$OK`` reply, or None (NK, timeout: logged by ``_request``)."""
        reply = await self._request(name, *params)
        return reply.params if reply is not None and reply.ok else None

    async def _ask_into(self, name: str) -> None:
        """Poll one get command into the snapshot; a command answered NK isn't asked again."""
        if name in self._unsupported:
            return
        reply = await self._request(name)
        if reply is None:
            return
        if not reply.ok:
            self._unsupported.add(name)
            if name == "G0":  # decided once per connection (open() clears _unsupported)
                self.snapshot.use_state_for_ev()
                self.log.info("controller answers $G0 with $NK; vehicle presence read from the "
                              "$GS state from now on")
            else:
                self.log.info("controller answers $%s with $NK; not asking again", name)
            return
        try:
            self.snapshot.apply(name, reply.params, self._rapi)
        except rr.RapiReplyError as exc:
            self._bad_reply(exc, escape(reply.raw))

    async def _request(
        self, name: str, *params: str, retries: int = 0, dead_check: bool = True
    ) -> RapiFrame | None:
        """Send one command, wait for its reply; None on timeout. Raises LinkDown (also, with
        ``dead_check``, when too many commands in a row went unanswered)."""
        link = self._link
        if link is None or self._lost.is_set():
            raise LinkDown(self._lost_reason or "not connected")
        for _attempt in range(retries + 1):
            async with self._lock:
                seq = None
                if self._use_seq:
                    self._seq = self._seq % 0xFF + 1
                    seq = self._seq
                line = encode_command(name, *params, seq=seq)
                future: asyncio.Future[RapiFrame] = asyncio.get_running_loop().create_future()
                self._pending = (seq, future)
                try:
                    await link.write(line)
                    async with asyncio.timeout(self.settings.command_timeout):
                        return await future
                except TimeoutError:
                    self.ctx.counters.incr("rapi_timeouts")
                    self._timeouts_in_row += 1
                    self.log.debug("no reply to %r", line)
                finally:
                    self._pending = None
            if dead_check and self._timeouts_in_row >= DEAD_AFTER_TIMEOUTS:
                raise LinkDown(f"no reply to {DEAD_AFTER_TIMEOUTS} commands in a row")
        return None

    # -- bytes in (called on the loop by the reader thread) -------------------------------
    def _on_lost(self, reason: str) -> None:
        self._lost_reason = reason
        self._lost.set()
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(LinkDown(reason))

    def _on_data(self, data: bytes) -> None:
        for event in self._parser.feed(data):
            if isinstance(event, RapiGarbage):
                self._garbage(event)
            elif event.is_reply:
                self._reply(event)
            elif event.is_async:
                self._async(event)
            else:
                self._garbage(RapiGarbage("unexpected", event.raw, f"${event.name} from device"))

    def _reply(self, frame: RapiFrame) -> None:
        pending = self._pending
        if pending is None or pending[1].done():
            self.ctx.counters.incr("rapi_stale_replies")
            self.log.debug("reply with no command waiting: %s", escape(frame.raw))
            return
        seq, future = pending
        if seq is not None and frame.seq is not None and frame.seq != seq:
            self.ctx.counters.incr("rapi_stale_replies")
            self.log.debug("late reply (seq %02X, waiting %02X) dropped", frame.seq, seq)
            return
        self._timeouts_in_row = 0
        future.set_result(frame)

    def _async(self, frame: RapiFrame) -> None:
        """Device events go through the coalescer: at most one envelope (and one restore) per
        kind per ``event_min_interval``, whatever the line rate."""
        try:
            if frame.name == "AT":
                self.snapshot.apply_async(rr.parse_async_state(frame.params))
                self._events.offer("reading", self.snapshot.reading(), dedupe=True)
                self._wake.set()
            elif frame.name == "AB":
                boot = rr.parse_boot(frame.params)
                self._repeats.warn(f"boot {boot.postcode}",
                                   "controller rebooted (post code %02x)", boot.postcode)
                self._events.offer("boot", {"event": "boot", "postcode": boot.postcode})
                self._events.offer("restore", {})
            elif frame.name == "AN":
                long_press = frame.params[:1] == ("1",)
                self._events.offer("button", {"event": "button", "long": long_press})
        except rr.RapiReplyError as exc:
            self._bad_reply(exc, escape(frame.raw))

    def _bad_reply(self, exc: rr.RapiReplyError, raw: str) -> None:
        """A reply or async line we cannot use: counted, one line per kind (repeats counted)."""
        self.ctx.counters.incr("rapi_bad_replies")
        self.ctx.counters.error(str(exc)[:200])
        self._repeats.warn(f"bad {exc.what}", "%s: %s", str(exc)[:200], raw[:200])

    def _garbage(self, garbage: RapiGarbage) -> None:
        self.ctx.counters.incr("rapi_garbage")
        self.ctx.counters.error(garbage.describe())
        now = time.monotonic()
        if now - self._garbage_logged > 10.0:
            self._garbage_logged = now
            self.log.warning("%s (counted; further ones within 10 s at DEBUG)", garbage.describe())
        else:
            self.log.debug("%s", garbage.describe())

    async def _drain_outbox(self) -> None:
        while True:
            key, data, offers = await self._events.take()
            if offers > 1:
                self.ctx.counters.incr("rapi_events_coalesced", offers - 1)
            if key == "restore":
                with contextlib.suppress(LinkDown):
                    await self._restore()
            elif key == "reading":
                await self._emit("reading", data)
            else:
                await self._emit("event", {**data, "count": offers} if offers > 1 else data)

    # -- envelopes ------------------------------------------------------------------------
    async def _emit(self, kind: str, data: dict[str, Any], target: Any = None) -> None:
        await self.ctx.emit(kind, data, target=target, info=dict(self.info))
        owner = self.settings.charger_owner
        if kind == "reading" and owner:  # the Charger capability's reading, to its one writer
            await self.ctx.emit("event", charger_status(data).event(), target=owner,
                                info=dict(self.info))

    async def receive(self, envelope: Envelope) -> None:
        data = envelope.data
        reply_to = envelope.source_transport
        if envelope.kind == EVENT:
            await self._relay_result(data)
            return
        if await self._to_owner(data, reply_to):
            return
        send = functools.partial(self._request, retries=1, dead_check=False)
        result = await execute_command(data, send, self._connected, self._commanded, self.log)
        self.ctx.counters.incr("rapi_commands")
        await self._emit("event", result, target=reply_to)
        self._wake.set()

    async def _to_owner(self, data: dict[str, Any], source: str) -> bool:
        """One writer: a grouped charger's current is written by its owner alone; another's
        write goes to the owner as a request, whose answer we pass on. True when handled."""
        owner = self.settings.charger_owner
        if not owner or source == owner:
            return False
        if data.get("command") in OWNER_ONLY:
            await self._emit("event", command_result(
                data, False, "rejected", f"supervision of this charger belongs to [{owner}]"),
                target=source)
            return True
        try:
            request = user_request(data, source)
        except ValueError as exc:
            await self._emit("event", command_result(data, False, "rejected", str(exc)),
                             target=source)
            return True
        if request is None:
            return False
        # The owner answers us (the one it got the command from, so the bridge's command
        # windows see every command answered by its target); we pass the answer on.
        self._forwarded[request.request_id] = source
        while len(self._forwarded) > FORWARDED_MAX:
            self._forwarded.popitem(last=False)
        self.ctx.command(owner, request.command())
        return True

    async def _relay_result(self, data: dict[str, Any]) -> None:
        """The owner's (or the runner's busy/timeout) answer to a forwarded write, to the
        transport that asked us for it."""
        if data.get("event") != "command_result":
            return
        requester = self._forwarded.pop(str(data.get("request_id", "")), None)
        if requester is not None:
            await self.ctx.emit(EVENT, data, target=requester, info=dict(self.info))
