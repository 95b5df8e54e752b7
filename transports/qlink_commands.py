"""The command side of ``transport = qlink``: accept, queue, release the link, execute.

A mixin of :class:`transports.qlink.QLinkTransport`, kept apart from the link's life cycle
(connect, set up, poll, ping, events) in ``transports/qlink.py``: commands are checked and
planned when they arrive (``transports/qlink_config``), queued, and run in order by the serve
loop over the one link, or the link is released to the programming tool. The state both halves
share (queue, release deadline, wake event) is created by the transport's ``__init__``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.message import Envelope, command_result
from protocols.qlink import Command, ErrorReply, Reply
from transports.base import TransportContext
from transports.qlink_config import LINK_BUTTONS, CommandRejected, Directory, QLinkSettings, Step
from transports.qlink_link import Link, LinkError


class QLinkCommands:
    """Commands of a QLink transport; the transport supplies the link side (see below)."""

    settings: QLinkSettings
    ctx: TransportContext
    dir: Directory
    _queue: asyncio.Queue[tuple[Envelope, list[Step], float] | None]
    _release_until: float | None
    _release_envs: list[Envelope]
    _wake: asyncio.Event

    # supplied by QLinkTransport
    async def _request(
        self, link: Link, cmd: Command, poll: bool = False
    ) -> Reply | ErrorReply | None:
        raise NotImplementedError

    def _remember(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _emit(self, kind: str, data: dict[str, Any], target: Any = None) -> None:
        raise NotImplementedError

    async def receive(self, envelope: Envelope) -> None:
        if envelope.kind != "command":
            return
        data = envelope.data
        verb = data.get("command")
        values = data.get("values")
        if verb == "write" and isinstance(values, dict) and set(values) & set(LINK_BUTTONS):
            if len(values) != 1:  # an MQTT/Home Assistant button press arrives as a write
                await self._result(envelope, False, "rejected", "write release_link alone")
                return
            verb = next(iter(values))
        if verb == "release_link":
            await self._release(envelope)
            return
        if verb == "reacquire":
            self._release_until = None
            self._wake.set()
            await self._result(envelope, True, "ok", "taking the link back")
            return
        try:
            steps = self.dir.plan(data)
        except CommandRejected as exc:
            self.ctx.counters.error(f"command rejected: {exc}")
            await self._result(envelope, False, "rejected", str(exc))
            return
        if self._release_until is not None:
            await self._result(envelope, False, "rejected", "the link is released")
        elif self._queue.qsize() >= self.settings.queue_limit:
            self.ctx.counters.dropped += 1
            await self._result(envelope, False, "rejected", "command queue full")
        else:
            self._queue.put_nowait((envelope, steps, time.monotonic()))

    async def _release(self, envelope: Envelope) -> None:
        seconds = envelope.data.get("seconds", self.settings.release_seconds)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not 0 < seconds <= self.settings.release_max:
            await self._result(envelope, False, "rejected",
                               f"seconds must be 0-{self.settings.release_max:g}")
            return
        self._release_until = time.monotonic() + float(seconds)
        self._release_envs.append(envelope)
        self._queue.put_nowait(None)
        self._wake.set()

    async def _reject_queued(self, why: str) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                await self._result(item[0], False, "rejected", why)

    async def _execute(
        self, link: Link, envelope: Envelope, steps: list[Step], queued_at: float
    ) -> None:
        if time.monotonic() - queued_at > self.settings.command_max_age:
            await self._result(envelope, False, "timeout", "waited too long for the link")
            return
        replies: list[str] = []
        reading: dict[str, Any] = {}
        for step in steps:
            try:
                reply = await self._request(link, step.command)
            except LinkError:
                await self._result(envelope, False, "error", "link lost", replies=replies)
                raise
            if reply is None:
                await self._result(envelope, False, "timeout",
                                   f"{step.name}: no reply to {step.command.text()}",
                                   replies=replies)
                return
            if isinstance(reply, ErrorReply):
                self.ctx.counters.error(f"{step.command.text()} -> {reply}")
                await self._result(envelope, False, "error", f"{step.name}: {reply}",
                                   code=reply.code, error=reply.meaning, replies=replies)
                return
            replies.append(reply.text)
            if step.name in self.dir.loads and not self.settings.monitor_loads:
                reading[step.name] = step.value
        if reading:
            self._remember(reading)
            await self._emit("reading", reading)
        await self._result(envelope, True, "ok", "; ".join(replies), replies=replies)

    async def _result(
        self, envelope: Envelope, ok: bool, result: str, detail: str = "", **extra: Any
    ) -> None:
        await self._emit("event", command_result(envelope.data, ok, result, detail, **extra),
                         target=envelope.source_transport)
