"""``transport = qlink``: a Vantage QLink master through its IP-Enabler.

The conversation (QLINK.md): one TCP connection, one command in flight, paced; each command
answered by one line, events (SW, LO, LE...) pushed on the same connection, sometimes ahead of
the reply to the command that caused them. On connect we pin the reply line end (``VCL``),
enable monitoring, then poll every configured load and keypad so state is known before events
refine it. A link that stops answering (no reply to a ``VEC`` ping) is torn down and rebuilt.

Bytes and lines: ``protocols/qlink.py``; names and command planning: ``transports/qlink_config``;
connections and strategies: ``transports/qlink_link.py``; accepting, queueing and executing
commands, and releasing the link: ``transports/qlink_commands.py``. This module runs the life
cycle.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from typing import Any

from gateway.backoff import Backoff, RepeatLog
from gateway.message import Envelope, ValueSpec, command_result, describe_event
from protocols.qlink import (
    MAX_LEVEL,
    Command,
    ErrorReply,
    Event,
    Garbled,
    Reply,
    command,
)
from transports import register
from transports.base import TransportContext
from transports.device import DeviceTransport
from transports.qlink_commands import QLinkCommands
from transports.qlink_config import (
    Directory,
    QLinkSettings,
    Step,
)
from transports.qlink_link import (
    Link,
    LinkError,
    LinkOptions,
    LinkRefused,
    LinkStats,
    ReplyTimeout,
    SplitRefused,
    make_link,
)

_VOD = {"off": 0, "keypad": 1, "lcd": 2, "both": 3}
STABLE_AFTER = 10.0  # a link that lived this long (s) is reconnected at once when it drops


@register
class QLinkTransport(QLinkCommands, DeviceTransport[QLinkSettings]):
    kind = "qlink"
    Settings = QLinkSettings
    accepts = frozenset({"command"})

    def __init__(self, settings: QLinkSettings, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        s = settings
        self.dir = Directory(s)
        self.stats = LinkStats()
        self.options = LinkOptions(
            s.host, s.port, s.command_port, s.poll_port, s.command_connections,
            s.connect_timeout, s.command_gap, s.keepalive,
            b"\r\n" if s.line_end == "crlf" else b"\r")
        self.strategy = s.strategy
        self.info = {"transport_name": ctx.name, "device_identifier": f"qlink_{s.host}_{s.port}",
                     "device_manufacturer": "Vantage", "device_model": "QLink",
                     "device_name": ctx.name}
        self._queue: asyncio.Queue[tuple[Envelope, list[Step], float] | None] = asyncio.Queue()
        self._link: Link | None = None
        self._release_until: float | None = None
        self._release_envs: list[Envelope] = []
        self._wake = asyncio.Event()
        self._poll_due = False
        self._event_at: dict[str, float] = {}
        self._last_answer = time.monotonic()
        self._echo = 299
        self._unmapped: set[str] = set()
        self.levels: dict[str, int] = {}
        self._repeats = RepeatLog(self.log)  # a bad value polled again and again: one line
        self.leds: dict[str, str] = {}

    # ------------------------------------------------------------------ life

    # the reconnect loop, its logs and the status envelopes are DeviceTransport's
    reconnect_at_once_after = STABLE_AFTER
    status_on_new_reason = True  # "refused" after "unreachable" is news

    def peer_name(self) -> str:
        return f"QLink link to {self.settings.host}:{self.settings.port}"

    def backoff(self) -> Backoff:
        return Backoff(self.settings.reconnect_initial, self.settings.reconnect_max)

    def device_info(self) -> dict[str, str]:
        return self.info

    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]]:
        return [(dict(self.info), self.dir.specs())]

    async def wait_retry(self, seconds: float) -> None:
        await self._sleep(seconds)  # a release request cuts it short too

    async def run(self) -> None:
        await self._emit("event", describe_event(self.dir.specs()))
        await super().run()

    async def open(self) -> Link:
        """Hold while released; connect and set up (falling back to one connection if the
        controller refuses a split)."""
        while True:
            await self._hold_released()
            link = make_link(self.strategy, self.options, self.stats, self.log,
                             on_event=self._on_event, on_garbled=self._on_garbled)
            self._link = link
            try:
                await link.start()
                await self._setup(link)
                return link
            except SplitRefused as exc:
                self.log.warning("strategy split: %s; falling back to single (one connection "
                                 "for everything) until restart", exc)
                self.ctx.counters.extra["split_fallbacks"] = 1
                self.strategy = "single"
                await self.release(link)
            except LinkError as exc:
                await self.release(link)
                if isinstance(exc, LinkRefused):
                    raise LinkRefused(f"{exc} (another client, e.g. the QLink tool, may hold "
                                      "the one slot)") from exc
                raise

    async def serve(self, link: Link) -> None:
        await self.link_up(f"connected ({link.strategy})")
        await self._serve(link)

    async def release(self, link: Link) -> None:
        self._link = None
        await link.close()
        self._sync_counters()

    async def _setup(self, link: Link) -> None:
        """Pin the reply line end, enable monitoring, learn the version, poll everything."""
        mod = self.dir.modifier
        s = self.settings
        steps = [command("VCL", 1, 0, modifier=mod)]  # CRLF; regular unless '#' asks
        if s.monitor_switches:
            steps.append(command("VOS", 0, 1, modifier=mod))
        if s.monitor_loads:
            steps.append(command("VOL", 1, modifier=mod))
        if _VOD[s.monitor_leds]:
            steps.append(command("VOD", _VOD[s.monitor_leds], modifier=mod))
        for cmd in steps:
            reply = await self._request(link, cmd)
            if isinstance(reply, ErrorReply):
                self.log.warning("controller answered %s to %s", reply, cmd.text())
        masters = [s.address.master for s in self.dir.loads.values()] + [
            k.master for k in self.dir.keypads.values()]
        version = await self._request(link, command("VGV", min(masters, default=1)))
        if isinstance(version, Reply) and version.tag == "VER":
            self.info["device_model"] = f"QLink {' '.join(version.values[:1])}".strip()
        await self._poll(link)

    async def _serve(self, link: Link) -> None:
        """Commands in order, pings when idle, re-polls when due; returns on release/stop."""
        next_poll = time.monotonic() + max(self.settings.read_interval, 0.0)
        watcher = asyncio.create_task(self._wake_on(link.dead))
        try:
            while not self.ctx.stopping.is_set():
                if link.dead.is_set():
                    raise LinkError("the controller closed the connection")
                if self._release_until is not None:
                    return
                now = time.monotonic()
                if self._poll_due or (self.settings.read_interval > 0 and now >= next_poll):
                    self._poll_due = False
                    await self._poll(link)
                    next_poll = time.monotonic() + self.settings.read_interval
                    continue
                ping_at = self._last_answer + self.settings.ping_interval
                if now >= ping_at:
                    if not await self._ping(link):
                        raise LinkError("silent link: no reply to a VEC ping (one-way?)")
                    continue
                wait = ping_at - now
                if self.settings.read_interval > 0:
                    wait = min(wait, next_poll - now)
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(wait, 0.0))
                except TimeoutError:
                    continue
                if item is not None:
                    await self._execute(link, *item)
                self._sync_counters()
        finally:
            watcher.cancel()

    async def _wake_on(self, event: asyncio.Event) -> None:
        await event.wait()
        self._queue.put_nowait(None)

    async def _sleep(self, seconds: float) -> None:
        """Wait, but wake for a release/reacquire request or shutdown."""
        self._wake.clear()
        waits = [asyncio.ensure_future(self._wake.wait()),
                 asyncio.ensure_future(self.ctx.stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _hold_released(self) -> None:
        """The link is given to the programming tool until the time is up or reacquire."""
        until = self._release_until
        if until is None:
            return
        for env in self._release_envs:
            await self._emit("event", command_result(env.data, True, "ok", "link released"),
                             target=env.source_transport)
        self._release_envs.clear()
        await self._reject_queued("the link is released for the programming tool")
        await self.announce(False, "released for the programming tool")
        self.log.warning("link released for %.0f s", until - time.monotonic())
        while self._release_until is not None and not self.ctx.stopping.is_set():
            remaining = self._release_until - time.monotonic()
            if remaining <= 0:
                self._release_until = None
                break
            await self._sleep(remaining)
        self.log.warning("taking the link back")

    async def close(self) -> None:
        """Free the box's one slot at once (a vanished client can hold it for a long time)."""
        if self._link is not None:
            await self._link.close()
        self._sync_counters()

    # ------------------------------------------------------------------ requests

    async def _request(
        self, link: Link, cmd: Command, poll: bool = False
    ) -> Reply | ErrorReply | None:
        """One exchange; None = no reply but the link answers a ping; LinkError = link dead."""
        try:
            reply = await link.request(cmd, self.settings.reply_timeout, poll=poll)
        except ReplyTimeout as exc:
            self._count("reply_timeouts")
            self.log.info("%s; checking the link", exc)
            if not await self._ping(link):
                raise LinkError(f"silent link: {exc}, and no reply to a VEC ping") from None
            return None
        self._last_answer = time.monotonic()
        return reply

    async def _ping(self, link: Link) -> bool:
        """``VEC n`` must come back as n (R..EC n): proves the whole path, and drains stale
        replies after a timeout (anything else is dropped while it is awaited)."""
        self._echo = 300 if self._echo >= 65000 else self._echo + 1  # never 256-258
        n = str(self._echo)
        self._count("pings")
        try:
            await link.request(command("VEC", self._echo, modifier=self.dir.modifier),
                               self.settings.reply_timeout,
                               lambda r: isinstance(r, Reply) and r.values[-1:] == (n,))
        except ReplyTimeout:
            return False
        self._last_answer = time.monotonic()
        return True

    async def _poll(self, link: Link) -> None:
        """Every load's level and every keypad's LEDs, emitted as one reading."""
        data: dict[str, Any] = {}
        for step in self.dir.poll():
            while not self._queue.empty():  # commands go first: a big house polls for a while
                item = self._queue.get_nowait()
                if item is not None:
                    await self._execute(link, *item)
            reply = await self._request(link, step.command, poll=True)
            at = time.monotonic()
            if not isinstance(reply, Reply):
                self._count("poll_failures")
                self.log.warning("poll of %s: %s", step.name,
                                 reply or "no reply (timed out)")
                continue
            try:
                if step.command.verb == "VLT":
                    on, blink = reply.hex_values()[-2:]
                    values = self.dir.led_values(step.name, on, blink)
                else:
                    values = {step.name: reply.ints()[-1]}
            except (ValueError, IndexError):
                self._count("bad_replies")
                self.log.warning("poll of %s: unexpected reply %r", step.name, reply.text[:200])
                continue
            level = values.get(step.name) if step.name in self.dir.loads else None
            if level is not None and not 0 <= level <= MAX_LEVEL:  # a level is 0-100
                self._count("bad_replies")
                self._repeats.warn(f"range {step.name}",
                                   "poll of %s: level %d out of range 0-%d in %r", step.name,
                                   level, MAX_LEVEL, reply.text[:200])
                continue
            for name, value in values.items():
                if self._event_at.get(name, -1.0) < at:  # an event after the reply is newer
                    data[name] = value
        self._remember(data)
        if data:
            await self._emit("reading", data)

    def _remember(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if name in self.dir.loads:
                self.levels[name] = value
            else:
                self.leds[name] = value

    # ------------------------------------------------------------------ incoming lines

    async def _on_event(self, event: Event) -> None:
        now = time.monotonic()
        meaning = self.dir.translate(event)
        if meaning.unmapped:
            self._unmapped_note(meaning.unmapped, event)
        if meaning.repoll:
            self._poll_due = True
            self._queue.put_nowait(None)
        if meaning.kind == "reading" and meaning.data:
            for name in meaning.data:
                self._event_at[name] = now  # newer than a poll reply read before it
            self._remember(meaning.data)
        if meaning.kind and meaning.data is not None:
            await self._emit(meaning.kind, meaning.data)

    def _unmapped_note(self, what: str, event: Event) -> None:
        self._count("unmapped_events")
        if what not in self._unmapped:
            self._unmapped.add(what)
            self.log.info("event for unconfigured %s: %s (add it to loads/keypads to name "
                          "it; further ones counted)", what, event.encode())

    def _on_garbled(self, garbled: Garbled, role: str) -> None:
        self._count("garbled_lines")
        self.ctx.counters.error(f"garbled line: {garbled}")
        # one WARNING per kind of garbage (numbers aside), the repeats counted in one line
        kind = re.sub(r"\d+", "N", garbled.reason)
        self._repeats.warn(f"garbled {role} {kind}",
                           "garbled line on the %s connection, ignored: %s", role, garbled)

    # ------------------------------------------------------------------ helpers

    def _count(self, what: str) -> None:
        self.ctx.counters.incr(what)

    def _sync_counters(self) -> None:
        extra = self.ctx.counters.extra
        for key, value in asdict(self.stats).items():
            extra[f"link_{key}"] = value
        extra["strategy"] = self.strategy

    async def _emit(self, kind: str, data: dict[str, Any], target: Any = None) -> None:
        await self.ctx.emit(kind, data, target=target, info=dict(self.info))

